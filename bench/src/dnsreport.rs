//! Section 5 of docs/BENCHMARKS.md and its rows of the targets table.

use std::fmt::Write as _;

use crate::dns::{DnsFigures, QPS_PROCS, QPS_SECS, QPS_WINDOW, SIDES, pct};
use crate::dnsstress::{
    ANSWERED_BY_THE_DEAD_MS, BULK_STEP, BULK_STEPS, BULK_WINDOW, KILL_GAP, KILL_LOAD_US,
    KILL_NAMES, KILLS, Kill, PROXY_DOWN, PROXY_GAP, PROXY_KILL_NAMES, PROXY_KILLS,
};
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
            "\n## 5. DNS names (lookups through the agent's proxy)\n\nRun: {}. A test DNS server (tiergate-tests' `dnsserver`, hickory-proto, one UDP thread) listens on 10.53.0.53:53 on the namespace's `lo` and answers `api.bench.test` with 198.18.0.10 (a TCP listener on :80 there) and every `*.bulk.test` name with a new address of 198.18.0.0/15 (local to the namespace). The policy's tier `names` allows `api.bench.test` and `*.bulk.test` on tcp/80 and names that resolver; a sandbox process of the tier lives in the namespace, so the agent serves it. `direct`: the same load from a cgroup outside the agent's `--cgroup-root` (no hooks: queries go straight to the resolver, connects are not judged); `proxy`: from a cgroup of the tier (every port-53 send goes to the proxy, which filters, forwards, writes the learned address to the kernel and only then answers; events to a file). The proxy is the agent's own (`--proxies agent`, the default) up to the fresh names; the kill runs at the end run it in `tiergate proxy`. The sides alternate within each repetition. Clients use a per-process resolv.conf (`nameserver 10.53.0.53`, `options timeout:1 attempts:1`).\n",
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
        Self::write_dns_kills(s, f);
        Self::write_proxy_kills(s, f);
    }

    fn write_dns_kills(s: &mut String, f: &DnsFigures) {
        let load = &f.kill_load;
        let restart = Stats::new(f.kills.iter().map(|k| k.restart_ms).collect());
        let reconnect = Stats::new(f.kills.iter().map(|k| k.reconnect_ms).collect());
        let sum = |g: fn(&Kill) -> u64| f.kills.iter().map(g).sum::<u64>();
        let failed = f.kill_failed();
        let _ = writeln!(
            s,
            "\nAgent kills (N = {KILLS}, issue 10's benchmark), with the proxies in a process of their own: the agent runs with `--proxies separate --proxy-dir DIR`, and `tiergate proxy --proxy-dir DIR --bpffs <the agent's>` beside it serves the namespace (the agent publishes its view into DIR; the proxy serves by the last view it read, writes learned addresses into the pinned map itself, and hands its records to the agent over a socket in DIR, at least once). A steady load of one glibc lookup every {} ms (one after the other, from one workload of the tier), each of a name never asked before ({}: a new address each, so every lookup goes to the resolver and teaches the kernel an address), each followed by a TCP connect to the address it answered, while the agent is killed (`kill -9`) and restarted {KILLS} times, each kill {:.1} s after the restarted agent took the proxy's records again. Lookups: {} in all, **{failed} failed** (target 0): {} at once, {} after the 1 s resolver timeout (`options timeout:1`); {} answered, but only after that timeout (stalled: one of glibc's two parallel queries lost); connects refused by the host after an answered lookup (EPERM: the address did not open) {}, other connect errors {} (ECONNREFUSED is the expected outcome: only 198.18.0.10 has a listener). Lookup time over the run (µs): p50 {}, p99 {}, p99.9 {}, max {}. Agent restart (spawn → /readyz 200): {} ms; kill → the proxy hands its records to the new agent (the agent's `tiergate_proxy_connections` back to 1; the proxy looks for an agent every 200 ms): {} ms.",
            KILL_LOAD_US as f64 / 1000.0,
            KILL_NAMES.replace("{}", "0") + ", " + &KILL_NAMES.replace("{}", "1") + ", …",
            KILL_GAP.as_secs_f64(),
            load["n"],
            sum(|k| k.failed) - sum(|k| k.slow),
            sum(|k| k.slow),
            sum(|k| k.stalled),
            load["connect_eperm"],
            load["connect_other"],
            load["took_us"]["p50"],
            load["took_us"]["p99"],
            load["took_us"]["p999"],
            load["took_us"]["max"],
            restart.fmt(1.0, 0),
            reconnect.fmt(1.0, 0)
        );
        if let Some(d) = &f.delivery {
            let losses = if d.losses.is_empty() {
                "none".to_string()
            } else {
                d.losses
                    .iter()
                    .map(|(stage, n)| format!("`{stage}` {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let restart = if d.losses.contains_key("agent-restart") {
                " (`agent-restart`: connection records the kernel had handed to a killed agent that died before writing them, counted by the next agent; the agent's own path, not the proxy's)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "\nTheir records (written by whichever agent ran when they arrived, read from the event stream once it stopped growing): a DNS record for **{} of the {} names** looked up, {} DNS records (A and AAAA), of which {} repeat a (name, type) already written (at least once: a record whose ack a killed agent never sent is written again by the next); records reported lost, by stage: {losses}{restart}.",
                d.names, load["n"], d.records, d.repeats
            );
        }
        let hit: Vec<(usize, &Kill)> = f
            .kills
            .iter()
            .enumerate()
            .filter(|(_, k)| k.failed + k.stalled > 0)
            .collect();
        if !hit.is_empty() {
            let _ = writeln!(
                s,
                "\nKills with a failed or stalled lookup (the others had none):\n\n| kill | restart, ms | disruption, ms | failed lookups | of which after the 1 s timeout | lookups answered after the timeout |\n|---|---|---|---|---|---|"
            );
            for (i, k) in hit {
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
        let _ = writeln!(
            s,
            "\nWith the proxies in the agent (`--proxies agent`, the default) the agent's death is a DNS outage: new lookups fail until it is back (addresses already learned stay open; the map is pinned). The last run of that measurement (2026-12-01: 10 kills 3 s apart, the same load of one name) had 212 of 33095 lookups fail, 204 of them at once and 8 after the 1 s timeout, about 1 s of disruption per kill; it is not repeated."
        );
    }

    fn write_proxy_kills(s: &mut String, f: &DnsFigures) {
        if f.proxy_kills.is_empty() {
            return;
        }
        let load = &f.proxy_kill_load;
        let restart = Stats::new(f.proxy_kills.iter().map(|k| k.restart_ms).collect());
        let sum = |g: fn(&Kill) -> u64| f.proxy_kills.iter().map(g).sum::<u64>();
        let errors = load["errors"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{} {v}", eai_name(k.parse().unwrap_or(0))))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "none".into());
        let in_flight = sum(|k| k.in_flight);
        let slow = sum(|k| k.slow);
        let stalled = sum(|k| k.stalled);
        let reaped = Stats::new(f.proxy_kills.iter().map(|k| k.reaped_ms).collect());
        let _ = writeln!(
            s,
            "\nProxy kills (N = {PROXY_KILLS}, a run of its own, the same load with names {}): the proxy process is killed (`kill -9`), started again {} ms after it was reaped (longer than the 1 s resolver timeout, so that lookups begun after the kill's in-flight one timed out still meet no proxy), and killed again {:.1} s after it serves. While no proxy runs the kernel still sends the tier's DNS to the proxy's port, where nothing listens (a new proxy first clears the namespaces an earlier one served: EPERM until it serves them). Lookups: {} in all, {} failed: **{} at once** (under 0.5 s) and **{slow} after the 1 s resolver timeout**; {stalled} answered only after the timeout; getaddrinfo's errors: {errors}. Of the {} that waited for the timeout, {in_flight} had begun before the killed proxy was reaped (kill → reaped: {} ms): the lookup in flight while the proxy died (begun before the `kill` or up to about 1 ms after it, before the dying process's sockets were gone), whose queries the dying proxy had taken or that were queued on its sockets, is lost rather than refused: nothing answers or refuses it, and glibc waits for its timeout (5 s by default). Lookups begun once the sockets were gone fail at once. Lookups answered while no proxy ran (after the kill + {} ms, before the new proxy's spawn: a way around the proxy): **{}**; connects refused by the host after an answered lookup (EPERM): {}. Proxy restart (spawn → /readyz 200 and the namespace served): {} ms; disruption per kill (kill → lookups answering normally again, the {} ms without a proxy included): {} ms.\n\n| proxy kill | kill → reaped, ms | restart, ms | disruption, ms | failed at once | failed after the 1 s timeout | answered after the timeout | of those two, in flight while it died | answered with no proxy |\n|---|---|---|---|---|---|---|---|---|",
            PROXY_KILL_NAMES.replace("{}", "0") + ", …",
            PROXY_DOWN.as_millis(),
            PROXY_GAP.as_secs_f64(),
            load["n"],
            load["resolve_fail"],
            sum(|k| k.failed) - slow,
            slow + stalled,
            reaped.fmt(1.0, 1),
            ANSWERED_BY_THE_DEAD_MS,
            sum(|k| k.answered_while_down),
            load["connect_eperm"],
            restart.fmt(1.0, 0),
            PROXY_DOWN.as_millis(),
            Stats::new(
                f.proxy_kills
                    .iter()
                    .map(|k| k.outage_ms.unwrap_or(0.0))
                    .collect()
            )
            .fmt(1.0, 0)
        );
        for (i, k) in f.proxy_kills.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                k.reaped_ms,
                k.restart_ms,
                k.outage_ms.map_or("none".into(), |o| format!("{o:.0}")),
                k.failed - k.slow,
                k.slow,
                k.stalled,
                k.in_flight,
                k.answered_while_down
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
        let n = f.kill_load["n"].as_u64().unwrap_or(0);
        let failed = f.kill_failed();
        let stalled: u64 = f.kills.iter().map(|k| k.stalled).sum();
        let _ = writeln!(
            s,
            "| DNS: failed lookups across {KILLS} agent kills (`tiergate proxy`, agent `--proxies separate`; fresh names) = 0 | {failed} failed of {n}, {stalled} stalled, restart {} ms | {} |",
            Stats::new(f.kills.iter().map(|k| k.restart_ms).collect()).fmt(1.0, 0),
            yes(failed == 0 && n > 0 && f.kills.len() == KILLS)
        );
        if !f.proxy_kills.is_empty() {
            let slow: u64 = f.proxy_kills.iter().map(|k| k.slow + k.stalled).sum();
            let in_flight: u64 = f.proxy_kills.iter().map(|k| k.in_flight).sum();
            let failed: u64 = f.proxy_kills.iter().map(|k| k.failed).sum();
            let fast: u64 = f.proxy_kills.iter().map(|k| k.failed - k.slow).sum();
            let open: u64 = f
                .proxy_kills
                .iter()
                .map(|k| k.answered_while_down)
                .sum::<u64>()
                + f.proxy_kill_load["connect_eperm"].as_u64().unwrap_or(0);
            let _ = writeln!(
                s,
                "| DNS: {PROXY_KILLS} proxy kills: lookups fail at once, never after the resolver timeout; none answered without a proxy | {fast} of {failed} failed at once; {slow} waited for the 1 s timeout ({in_flight} of them in flight while the proxy died); {open} answered without a proxy | {} |",
                yes(slow == 0 && open == 0 && fast > 0)
            );
        }
    }
}

/// getaddrinfo's error code by its name.
fn eai_name(code: i32) -> String {
    match code {
        libc::EAI_AGAIN => "EAI_AGAIN".into(),
        libc::EAI_FAIL => "EAI_FAIL".into(),
        libc::EAI_NONAME => "EAI_NONAME".into(),
        libc::EAI_NODATA => "EAI_NODATA".into(),
        libc::EAI_SYSTEM => "EAI_SYSTEM".into(),
        c => format!("code {c}"),
    }
}
