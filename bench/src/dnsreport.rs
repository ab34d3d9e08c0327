//! Section 5 of docs/BENCHMARKS.md and its rows of the targets table.

use std::fmt::Write as _;

use crate::dns::{DnsFigures, QPS_PROCS, QPS_SECS, QPS_WINDOW, SIDES, pct};
use crate::dnsstress::{BULK_STEP, BULK_STEPS, BULK_WINDOW, KILL_GAP, KILL_LOAD_US, KILLS};
use crate::report::Report;
use crate::stats::Stats;

/// What the learned map holds at most (`TG_LEARNED`, an LRU hash).
const LEARNED_MAX: f64 = 65_536.0;

impl DnsFigures {
    fn med(&self, of: &std::collections::BTreeMap<&'static str, Vec<f64>>, side: &str) -> f64 {
        Stats::new(of.get(side).cloned().unwrap_or_default()).median()
    }

    fn rate_ratio(&self) -> f64 {
        self.med(&self.gai, "proxy") / self.med(&self.gai, "direct")
    }

    fn lat(&self, side: &str, p: f64) -> f64 {
        pct(self.lat_us.get(side).map_or(&[][..], |v| v), p)
    }

    fn count(&self, side: &str, k: &str) -> u64 {
        self.qps_counts
            .get(side)
            .and_then(|v| v[k].as_u64())
            .unwrap_or(0)
    }

    fn kill_failed(&self) -> u64 {
        self.kills.iter().map(|k| k.failed).sum()
    }

    fn outages(&self) -> Stats {
        Stats::new(
            self.kills
                .iter()
                .map(|k| k.outage_ms.unwrap_or(0.0))
                .collect(),
        )
    }

    /// The most entries the map held after a step (all workloads).
    fn max_entries(&self) -> u64 {
        let total = self
            .bulk
            .iter()
            .filter_map(|b| b.entries.map(|(a, b)| a + b));
        total.max().unwrap_or(0)
    }
}

impl Report {
    /// Section 5: lookups through the proxy against no hooks, latency,
    /// queries/s, fresh names, agent kills.
    pub(crate) fn write_dns(&self, s: &mut String) {
        let Some(f) = &self.dns else { return };
        let _ = writeln!(
            s,
            "\n## 5. DNS names (lookups through the agent's proxy)\n\nRun: {}. A test DNS server (tiergate-tests' `dnsserver`, hickory-proto, one UDP thread) listens on 10.53.0.53:53 on the namespace's `lo` and answers `api.bench.test` with 198.18.0.10 (a TCP listener on :80 there) and every `*.bulk.test` name with a new address of 198.18.0.0/15 (local to the namespace). The policy's tier `names` allows `api.bench.test` and `*.bulk.test` on tcp/80 and names that resolver; a sandbox process of the tier lives in the namespace, so the agent serves it. `direct`: the same load from a cgroup outside the agent's `--cgroup-root` (no hooks: queries go straight to the resolver, connects are not judged); `proxy`: from a cgroup of the tier (every port-53 send goes to the proxy, which filters, forwards, writes the learned address to the kernel and only then answers; events to a file). The sides alternate within each repetition. Clients use a per-process resolv.conf (`nameserver 10.53.0.53`, `options timeout:1 attempts:1`).\n",
            f.run
        );
        let _ = writeln!(
            s,
            "| load | direct (no hooks) | proxy | ratio |\n|---|---|---|---|"
        );
        let cell = |v: Option<&Vec<f64>>| Stats::new(v.cloned().unwrap_or_default()).fmt(1.0, 0);
        let _ = writeln!(
            s,
            "| getaddrinfo (glibc, AF_UNSPEC) + TCP connect to the address, iterations/s, one process, {:.1} s per point ({} reps) | {} | {} | {:.3} |",
            f.secs,
            f.gai.get("proxy").map_or(0, Vec::len),
            cell(f.gai.get("direct")),
            cell(f.gai.get("proxy")),
            f.rate_ratio()
        );
        let _ = writeln!(
            s,
            "| raw UDP A queries answered/s, {QPS_PROCS} processes × {QPS_WINDOW} in flight, {QPS_SECS:.0} s per point | {} | {} | {:.3} |",
            cell(f.qps.get("direct")),
            cell(f.qps.get("proxy")),
            f.med(&f.qps, "proxy") / f.med(&f.qps, "direct")
        );
        let per = |side| 1e6 / f.med(&f.gai, side);
        let commit = Stats::new(f.commit_us.clone());
        let _ = writeln!(
            s,
            "\nWhere the lookup+connect time goes: an iteration takes {:.0} µs direct and {:.0} µs through the proxy (+{:.0} µs); failed iterations: direct {}, proxy {}. glibc sends {:.2} queries per lookup through the proxy (A and AAAA in parallel), each a round trip client → proxy → resolver → proxy → client instead of client → resolver: alone, a query through the proxy takes {:+.0} µs at p50 (latency table below). The rest is CPU on a machine whose 2 cores also run the client and the resolver: the agent spends {} µs of CPU per lookup (utime+stime over the proxy runs: both queries, their two DNS records and the connect's connection record). Of the proxy's time per A query, writing the learned address into the kernel map (the DNS events' `commit_us`, {} samples) is p50 {:.0} µs, p99 {:.0} µs.",
            per("direct"),
            per("proxy"),
            per("proxy") - per("direct"),
            f.gai_failed.get("direct").unwrap_or(&0),
            f.gai_failed.get("proxy").unwrap_or(&0),
            f.queries_per_lookup,
            f.lat("proxy", 50.0) - f.lat("direct", 50.0),
            Stats::new(f.cpu_us.clone()).fmt(1.0, 0),
            commit.v.len(),
            commit.pct(50.0),
            commit.pct(99.0)
        );
        let _ = writeln!(
            s,
            "\nLookup latency (µs; one raw A query in flight at a time, `{}` for {:.1} s per point, pooled over the reps):\n\n| side | p50 | p90 | p99 | max | answered | unanswered |\n|---|---|---|---|---|---|---|",
            crate::dns::NAME,
            f.secs
        );
        for side in SIDES {
            let v = f.lat_us.get(side).map_or(0, Vec::len);
            let _ = writeln!(
                s,
                "| {side} | {:.0} | {:.0} | {:.0} | {:.0} | {v} | {} |",
                f.lat(side, 50.0),
                f.lat(side, 90.0),
                f.lat(side, 99.0),
                f.lat(side, 100.0),
                f.lat_failed.get(side).unwrap_or(&0)
            );
        }
        let _ = writeln!(
            s,
            "| added by the proxy | {:+.0} | {:+.0} | {:+.0} | | | |",
            f.lat("proxy", 50.0) - f.lat("direct", 50.0),
            f.lat("proxy", 90.0) - f.lat("direct", 90.0),
            f.lat("proxy", 99.0) - f.lat("direct", 99.0)
        );
        let _ = writeln!(
            s,
            "\nQueries/s outcomes, summed over the reps (a query unanswered after 2 s is a timeout; the proxy itself answers SERVFAIL after 1.5 s without a resolver answer):\n\n| side | sent | answered | NXDOMAIN | SERVFAIL | other rcode | timeouts | send errors | refused (ICMP) |\n|---|---|---|---|---|---|---|---|---|"
        );
        for side in SIDES {
            let c = |k| f.count(side, k);
            let _ = writeln!(
                s,
                "| {side} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c("sent"),
                c("answered"),
                c("nxdomain"),
                c("servfail"),
                c("other_rcode"),
                c("timeouts"),
                c("send_err"),
                c("refused")
            );
        }
        let _ = writeln!(
            s,
            "\nUnder the query load the agent used {} % of one core; Δ `tiergate_dns_overloaded` (SERVFAIL at once for want of room, bound 4,096 in flight) = {}; Δ `tiergate_events_lost_total` = {}.",
            Stats::new(f.qps_cpu.clone()).fmt(1.0, 0),
            f.overloaded,
            f.events_lost
        );
        Self::write_dns_stress(s, f);
    }

    fn write_dns_stress(s: &mut String, f: &DnsFigures) {
        let entries =
            |e: Option<(u64, u64)>| e.map_or("n/a | n/a".into(), |(a, b)| format!("{a} | {b}"));
        let _ = writeln!(
            s,
            "\nFresh names from one workload: raw A queries for n0.bulk.test, n1.bulk.test, … ({BULK_WINDOW} in flight), each answered with a new address (TTL 3600 s), so each learned answer is a new `TG_LEARNED` key (LRU hash of 65,536). Entries are counted by walking the pinned map after each step: the flooding workload's, and the other workloads' (the earlier loads' cgroups, which learned `api.bench.test`).\n\n| names | entries, flooding workload | entries, other workloads | agent RSS (MB) | names/s | failed (SERVFAIL) |\n|---|---|---|---|---|---|\n| 0 | {} | {:.1} | | |",
            entries(f.learned_before),
            f.rss_before_kb / 1024.0
        );
        for b in &f.bulk {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.0} | {} |",
                b.names,
                entries(b.entries),
                b.rss_kb as f64 / 1024.0,
                b.rate,
                b.failed
            );
        }
        let _ = writeln!(
            s,
            "\n12 s after the last step (the agent walks the map for its gauge every 10 s): `tiergate_dns_learned` = {}, agent RSS {:.1} MB.",
            f.gauge,
            f.rss_after_kb / 1024.0
        );
        if let (Some((_, before)), Some(last)) = (f.learned_before, f.bulk.last())
            && let Some((own, after)) = last.entries
        {
            let _ = writeln!(
                s,
                "After {} fresh names the flooding workload holds {own} entries ({:.1} % of the map's 65,536); the other workloads held {before} entries before the flood and {after} after it.",
                last.names,
                own as f64 / LEARNED_MAX * 100.0
            );
        }
        let load = &f.kill_load;
        let restart = Stats::new(f.kills.iter().map(|k| k.restart_ms).collect());
        let sum = |g: fn(&crate::dnsstress::Kill) -> u64| f.kills.iter().map(g).sum::<u64>();
        let _ = writeln!(
            s,
            "\nAgent kills (N = {KILLS}, enough to see the pattern): a steady load of one glibc lookup every {} ms (one after the other, from one workload of the tier) while the agent is killed (`kill -9`) and restarted {KILLS} times, {} s apart. The proxy lives in the agent, so lookups fail while it is down (README, \"Limits today\"); addresses already learned stay open (the map is pinned). Lookups: {} in all, **{} failed**: {} at once (the proxy's port refused them while no agent ran) and {} after the 1 s resolver timeout (`options timeout:1`; glibc's default is 5 s): a query the dying agent had taken is lost, not refused. {} more lookups succeeded only after that timeout (one of glibc's two parallel queries was lost). Restart (spawn → /readyz 200): {} ms. Disruption per kill (kill → lookups answering normally again): {} ms.\n\n| kill | restart, ms | disruption, ms | failed lookups | of which after the 1 s timeout | lookups answered after the timeout |\n|---|---|---|---|---|---|",
            KILL_LOAD_US as f64 / 1000.0,
            KILL_GAP.as_secs(),
            load["n"],
            load["resolve_fail"],
            sum(|k| k.failed) - sum(|k| k.slow),
            sum(|k| k.slow),
            sum(|k| k.stalled),
            restart.fmt(1.0, 0),
            f.outages().fmt(1.0, 0)
        );
        for (i, k) in f.kills.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} | {} | {} |",
                i + 1,
                k.restart_ms,
                k.outage_ms.map_or("none".into(), |o| format!("{o:.0}")),
                k.failed,
                k.slow,
                k.stalled
            );
        }
    }

    /// The DNS rows of the targets table (each starts with "| DNS").
    pub(crate) fn write_dns_targets(&self, s: &mut String) {
        let Some(f) = &self.dns else { return };
        let yes = |b: bool| if b { "met" } else { "**missed**" };
        let r = f.rate_ratio();
        let _ = writeln!(
            s,
            "| DNS: getaddrinfo + connect through the proxy ≥ 0.9 × no hooks | {r:.3} | {} |",
            yes(r >= 0.9)
        );
        let added = f.lat("proxy", 99.0) - f.lat("direct", 99.0);
        let _ = writeln!(
            s,
            "| DNS: added lookup latency p99 < 2 ms | {added:+.0} µs (p99 {:.0} µs through the proxy, {:.0} µs direct) | {} |",
            f.lat("proxy", 99.0),
            f.lat("direct", 99.0),
            yes(added < 2000.0)
        );
        let q = f.med(&f.qps, "proxy");
        let _ = writeln!(
            s,
            "| DNS: proxy ≥ 20,000 queries/s on 2 cores ({QPS_PROCS} clients) | {q:.0}/s | {} |",
            yes(q >= 20_000.0)
        );
        let lost = f.count("proxy", "timeouts");
        let _ = writeln!(
            s,
            "| DNS: no query silently dropped under load (timeouts) | {lost} of {} | {} |",
            f.count("proxy", "sent"),
            yes(lost == 0 && f.count("proxy", "sent") > 0)
        );
        let e = f.max_entries();
        let names = BULK_STEP * BULK_STEPS;
        let _ = writeln!(
            s,
            "| DNS: learned map bounded after {names} fresh names (≤ 65,536 entries) | max {e} entries, gauge {}, RSS {:.1} MB | {} |",
            f.gauge,
            f.rss_after_kb / 1024.0,
            yes(e > 0 && e as f64 <= LEARNED_MAX)
        );
        let _ = writeln!(
            s,
            "| DNS: lookups across {KILLS} agent kills (no target; a known limit) | {} failed of {}, disruption {} ms per kill | known limit (README) |",
            f.kill_failed(),
            f.kill_load["n"],
            f.outages().fmt(1.0, 0)
        );
    }
}
