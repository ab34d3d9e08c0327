//! Section 5, DNS names: the namespace's resolver, the name tier's agent and
//! its sandbox; lookup+connect rate, lookup latency and queries/s through
//! the proxy against the same loads with no hooks, side by side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agent::metric;
use crate::dnsstress::{agent_kills, bulk_names};
use crate::load::summed;
use crate::report::Report;
use crate::stats::Stats;
use crate::world::World;
use crate::{say, sh};

/// The resolver the policy names, on the namespace's `lo`.
pub(crate) const RESOLVER: &str = "10.53.0.53";
/// The allowed name; its rule opens port 80 and a listener waits at its address.
pub(crate) const NAME: &str = "api.bench.test";
const TARGET: &str = "198.18.0.10:80";
/// Each bulk.test name gets the next address of 198.18.0.0/15 (131,072
/// addresses: twice the learned map's 65,536 entries).
const ZONE: &str = "api.bench.test 300 A 198.18.0.10\n*.bulk.test 3600 A 198.18.0.0/15\n";
const ANSWERS: &str = "198.18.0.0/15";
/// `direct`: a cgroup outside the agent's root (no hooks, queries go
/// straight to the resolver); `proxy`: a cgroup of the name tier.
pub(crate) const SIDES: [&str; 2] = ["direct", "proxy"];
/// The cgroups of each side, one per load.
const JOBS: [&str; 7] = ["sandbox", "gai", "lat", "qps", "kill", "pkill", "bulk"];
pub(crate) const QPS_PROCS: usize = 4;
pub(crate) const QPS_WINDOW: usize = 32;
pub(crate) const QPS_SECS: f64 = 2.0;

/// The section's measurements.
#[derive(Default)]
pub(crate) struct DnsFigures {
    /// Side → lookup+connect iterations/s, per rep.
    pub(crate) gai: BTreeMap<&'static str, Vec<f64>>,
    /// Side → failed iterations (lookup or connect) over all reps.
    pub(crate) gai_failed: BTreeMap<&'static str, u64>,
    /// Agent CPU µs per lookup (proxy side), per rep.
    pub(crate) cpu_us: Vec<f64>,
    /// `commit_us` of the A queries' DNS events of the rate loop.
    pub(crate) commit_us: Vec<f64>,
    /// DNS events per lookup of the rate loop (A and AAAA: 2 expected).
    pub(crate) queries_per_lookup: f64,
    pub(crate) secs: f64,
    /// Side → µs per query, one query in flight, pooled over reps.
    pub(crate) lat_us: BTreeMap<&'static str, Vec<f64>>,
    pub(crate) lat_failed: BTreeMap<&'static str, u64>,
    /// Side → answered queries/s, per rep.
    pub(crate) qps: BTreeMap<&'static str, Vec<f64>>,
    /// Side → outcome counts summed over reps.
    pub(crate) qps_counts: BTreeMap<&'static str, serde_json::Value>,
    /// Agent CPU (% of one core) under the query load, per rep.
    pub(crate) qps_cpu: Vec<f64>,
    /// Δ `tiergate_dns_overloaded` and Δ `tiergate_events_lost_total` over the query load.
    pub(crate) overloaded: f64,
    pub(crate) events_lost: f64,
    /// Agent kills (`--proxies separate`, the proxies in `tiergate proxy`).
    pub(crate) kills: Vec<crate::dnsstress::Kill>,
    /// The steady load across the agent kills (the client's JSON).
    pub(crate) kill_load: serde_json::Value,
    /// The agent-kill run's DNS records in the agent's event stream.
    pub(crate) delivery: Option<crate::dnsstress::Delivery>,
    /// Kills of the proxy process, and the load across them.
    pub(crate) proxy_kills: Vec<crate::dnsstress::Kill>,
    pub(crate) proxy_kill_load: serde_json::Value,
    pub(crate) bulk: Vec<crate::dnsstress::BulkStep>,
    /// (flooding workload's, others') entries before the fresh names.
    pub(crate) learned_before: Option<(u64, u64)>,
    pub(crate) rss_before_kb: f64,
    pub(crate) rss_after_kb: f64,
    /// `tiergate_dns_learned` once refreshed after the bulk load.
    pub(crate) gauge: f64,
    /// When and how this section ran (it can run alone: `--only dns`).
    pub(crate) run: String,
}

impl World {
    pub(crate) fn dns_cg(&self, side: &str, job: &str) -> PathBuf {
        let top = if side == "proxy" { "enf" } else { "plain" };
        self.cg_base.join(format!("{top}/dns/{job}"))
    }

    /// The arguments of a load process `mode` of `side` in cgroup `job`.
    pub(crate) fn dns_args(&self, mode: &str, side: &str, job: &str, rest: &[&str]) -> Vec<String> {
        let cg = self.dns_cg(side, job);
        [
            mode,
            "--cgroup",
            &cg.to_string_lossy(),
            "--netns",
            &self.netns,
        ]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
    }

    pub(crate) fn resolv_conf(&self) -> String {
        self.dir.join("resolv.conf").to_string_lossy().into_owned()
    }

    fn dns_policy(&self) -> String {
        format!(
            "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: bench-dns\nspec:\n  mode: enforce\n  defaultTier: locked\n  dns:\n    resolvers: [\"{RESOLVER}\"]\n  tiers:\n    - name: names\n      egress:\n        - fqdns: [\"{NAME}\", \"*.bulk.test\"]\n          ports: [\"80\"]\n          protocols: [tcp]\n    - name: locked\n      egress: []\n  bindings:\n    - tier: names\n      match:\n        cgroupPath: \"{p}/enf/dns/**\"\n    - tier: locked\n      match:\n        cgroupPath: \"{p}/enf/locked/**\"\n",
            p = self.cg_path
        )
    }

    /// Starts the agent with the name tier (events to `events`) and waits
    /// until its proxy serves the namespace (the sandbox lives there).
    pub(crate) fn start_dns_agent(&mut self, events: &Path) -> Result<f64> {
        let ms = self.start_agent("d", events, &[])?;
        let port = self.agent.as_ref().context("agent")?.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(port, "tiergate_dns_namespaces") < 1.0 {
            if Instant::now() > deadline {
                bail!("the DNS proxy did not serve the bench namespace within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(ms)
    }
}

/// The resolver and its zone, the allowed name's listener, the cgroups, the
/// agent and the namespace's sandbox. Returns the events file.
fn setup(w: &mut World) -> Result<PathBuf> {
    let ns = w.netns.clone();
    let resolver = format!("{RESOLVER}/32");
    sh("ip", &["-n", &ns, "addr", "add", &resolver, "dev", "lo"])?;
    // Every address the zone answers is local to the namespace.
    let route = ["-n", &ns, "route", "add", "local", ANSWERS, "dev", "lo"];
    sh("ip", &route)?;
    for side in SIDES {
        for job in JOBS {
            std::fs::create_dir_all(w.dns_cg(side, job))?;
        }
    }
    let zone = w.dir.join("dns.zone");
    std::fs::write(&zone, ZONE)?;
    std::fs::write(
        w.resolv_conf(),
        format!("nameserver {RESOLVER}\noptions timeout:1 attempts:1\n"),
    )?;
    let addr = format!("{RESOLVER}:53");
    let zone = zone.to_string_lossy().into_owned();
    w.spawn_ready(&[
        "dns-serve",
        "--netns",
        &ns,
        "--addr",
        &addr,
        "--zone",
        &zone,
    ])?;
    w.spawn_ready(&["server", "--netns", &ns, TARGET])?;
    w.write_policy(&w.dns_policy())?;
    let events = w.dir.join("dns-events.jsonl");
    // The sandbox first: the agent serves a namespace a process of a name
    // tier lives in (as a pod's sandbox makes its namespace served).
    let sandbox = w.dns_cg("proxy", "sandbox").to_string_lossy().into_owned();
    w.spawn_ready(&["server", "--cgroup", &sandbox, "--netns", &ns])?;
    let ms = w.start_dns_agent(&events)?;
    say(&format!("DNS: agent ready in {ms:.0} ms, namespace served"));
    Ok(events)
}

pub(crate) fn dns_path(w: &mut World, rep: &mut Report, command: &str) -> Result<()> {
    let started = Instant::now();
    let events = setup(w)?;
    let mut f = DnsFigures {
        secs: (rep.secs * 2.0).max(1.0),
        ..Default::default()
    };
    // TIERGATE_BENCH_DNS_KILLS_ONLY=1: only the kill runs (for working on
    // them; the rest of the section then reads NaN, so give another --out).
    if std::env::var_os("TIERGATE_BENCH_DNS_KILLS_ONLY").is_none() {
        lookup_rate(w, &mut f, rep.reps, &events)?;
        latency(w, &mut f, rep.reps)?;
        throughput(w, &mut f, rep.reps.min(3))?;
        bulk_names(w, &mut f)?;
    }
    // The kills with the proxies in a process of their own: a new agent.
    w.stop_agent();
    agent_kills(w, &mut f)?;
    f.run = format!(
        "`{command}`, {}, {:.0} s",
        crate::utc_now(),
        started.elapsed().as_secs_f64()
    );
    rep.dns = Some(f);
    Ok(())
}

fn num(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

/// One run of the lookup+connect loop on `side` for `secs`: (its JSON, agent CPU ticks).
fn gai_once(w: &World, side: &str, secs: f64) -> Result<(serde_json::Value, u64)> {
    let resolv = w.resolv_conf();
    let rest = [
        "--resolv",
        &resolv,
        "--name",
        NAME,
        "--port",
        "80",
        "--connect",
    ];
    let mut args = w.dns_args("gai", side, "gai", &rest);
    args.extend(["--secs".to_string(), secs.to_string()]);
    let (mut outs, ticks, _) = w.run_procs(&args, 1)?;
    let v = outs.remove(0);
    say(&format!("  {v}"));
    Ok((v, ticks))
}

/// Files one run's rate, failures and agent CPU per lookup under `side`.
fn record_gai(f: &mut DnsFigures, side: &'static str, v: &serde_json::Value, ticks: u64) {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.gai.entry(side).or_default().push(num(v, "rate"));
    *f.gai_failed.entry(side).or_default() +=
        (num(v, "resolve_fail") + num(v, "connect_fail")) as u64;
    if side == "proxy" {
        let us = ticks as f64 / tick * 1e6 / num(v, "n").max(1.0);
        say(&format!("  agent CPU per lookup: {us:.0} µs"));
        f.cpu_us.push(us);
    }
}

/// Item 1: getaddrinfo of the allowed name then a TCP connect to its address, in
/// a loop in one process, each side in turn.
fn lookup_rate(w: &World, f: &mut DnsFigures, reps: usize, events: &Path) -> Result<()> {
    let (v, _) = gai_once(w, "proxy", 0.2)?;
    if num(&v, "ok") == 0.0 || num(&v, "resolve_fail") > 0.0 {
        bail!(
            "lookups of {NAME} through the proxy fail: {v}; see {}/agent-d.log",
            w.dir.display()
        );
    }
    let off = std::fs::metadata(events).map_or(0, |m| m.len());
    let mut lookups = 0.0;
    for r in 0..reps {
        for k in 0..SIDES.len() {
            let side = SIDES[(k + r) % SIDES.len()];
            say(&format!("rep {}/{reps} DNS lookup+connect: {side}", r + 1));
            let (v, ticks) = gai_once(w, side, f.secs)?;
            record_gai(f, side, &v, ticks);
            if side == "proxy" {
                lookups += num(&v, "n");
            }
        }
    }
    // The writer's queue drained, then this loop's DNS events.
    std::thread::sleep(Duration::from_secs(1));
    let text = std::fs::read(events)?;
    let tail = String::from_utf8_lossy(text.get(off as usize..).unwrap_or(&[]));
    let mut queries = 0.0;
    for e in tail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        if e["class_uid"] != 4003 || e["query"]["hostname"] != NAME {
            continue;
        }
        queries += 1.0;
        let commit = e["unmapped"]["tiergate"]["commit_us"].as_f64();
        if let (true, Some(c)) = (e["query"]["type"] == "A", commit) {
            f.commit_us.push(c);
        }
    }
    f.queries_per_lookup = queries / lookups.max(1.0);
    Ok(())
}

/// Item 2: one raw query in flight at a time; each answer's time.
fn latency(w: &World, f: &mut DnsFigures, reps: usize) -> Result<()> {
    let to = format!("{RESOLVER}:53");
    let secs = f.secs.to_string();
    for r in 0..reps {
        for k in 0..SIDES.len() {
            let side = SIDES[(k + r) % SIDES.len()];
            say(&format!("rep {}/{reps} DNS lookup latency: {side}", r + 1));
            let rest = [
                "--to", &to, "--name", NAME, "--window", "1", "--secs", &secs,
            ];
            let mut args = w.dns_args("query", side, "lat", &rest);
            args.push("--lat".into());
            let (outs, _, _) = w.run_procs(&args, 1)?;
            let v = &outs[0];
            let lat = v["lat_us"].as_array().cloned().unwrap_or_default();
            f.lat_us
                .entry(side)
                .or_default()
                .extend(lat.iter().filter_map(|x| x.as_f64()));
            *f.lat_failed.entry(side).or_default() += (num(v, "sent") - num(v, "answered")) as u64;
        }
    }
    Ok(())
}

/// Item 3: `QPS_PROCS` clients with `QPS_WINDOW` queries in flight each.
fn throughput(w: &World, f: &mut DnsFigures, reps: usize) -> Result<()> {
    let port = w.agent.as_ref().context("agent")?.port;
    let over0 = metric(port, "tiergate_dns_overloaded");
    let lost0 = metric(port, "tiergate_events_lost_total");
    let to = format!("{RESOLVER}:53");
    let window = QPS_WINDOW.to_string();
    let secs = QPS_SECS.to_string();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    for r in 0..reps {
        for k in 0..SIDES.len() {
            let side = SIDES[(k + r) % SIDES.len()];
            say(&format!("rep {}/{reps} DNS queries/s: {side}", r + 1));
            let rest = [
                "--to", &to, "--name", NAME, "--window", &window, "--secs", &secs,
            ];
            let args = w.dns_args("query", side, "qps", &rest);
            let (outs, ticks, _) = w.run_procs(&args, QPS_PROCS)?;
            let v = summed(&outs)?;
            say(&format!("  {v}"));
            f.qps.entry(side).or_default().push(num(&v, "rate"));
            if side == "proxy" {
                f.qps_cpu
                    .push(ticks as f64 / tick / num(&v, "secs").max(1e-9) * 100.0);
            }
            let total = match f.qps_counts.remove(side) {
                Some(prev) => summed(&[prev, v])?,
                None => v,
            };
            f.qps_counts.insert(side, total);
        }
    }
    // The overload gauge is refreshed every second.
    std::thread::sleep(Duration::from_millis(1200));
    f.overloaded = metric(port, "tiergate_dns_overloaded") - over0;
    f.events_lost = metric(port, "tiergate_events_lost_total") - lost0;
    Ok(())
}

/// Percentile `p` of `v` (NaN when empty).
pub(crate) fn pct(v: &[f64], p: f64) -> f64 {
    Stats::new(v.to_vec()).pct(p)
}
