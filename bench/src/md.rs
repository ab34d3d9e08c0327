//! Section 6, metadata requests: HTTP GETs of the instance id from a tier
//! with `metadata: allow` (straight to a fake metadata service on the
//! namespace's own 169.254.169.254:80) and from a tier with `metadata:
//! filter` (the hook sends them to the agent's proxy, which forwards them to
//! a second fake on the host's 127.0.0.1), side by side: a new connection
//! per request and many requests on one kept-alive connection, and a
//! refused path (answered by the proxy itself).
//!
//! Nothing goes to the host's 169.254.169.254: every client runs in the
//! bench's namespace, where that address is on `lo`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tiergate_tests::free_port;

use crate::agent::metric;
use crate::report::Report;
use crate::world::World;
use crate::{say, sh};

/// Where the clients connect (an address on the namespace's `lo`).
pub(crate) const IMDS: &str = "169.254.169.254:80";
/// The path every measured request asks for (the filter tier's only allowed path).
pub(crate) const PATH: &str = "/latest/meta-data/instance-id";
/// A path the filter tier is not allowed: the proxy answers 403 itself.
pub(crate) const REFUSED_PATH: &str = "/latest/meta-data/placement/availability-zone";
/// `direct`: tier with `metadata: allow`; `proxied`: tier with `metadata: filter`.
pub(crate) const SIDES: [&str; 2] = ["direct", "proxied"];
/// Requests per kept-alive connection (the proxy closes one after 1,000).
pub(crate) const KEEP: usize = 100;
/// (name, requests per connection).
pub(crate) const MODES: [(&str, usize); 2] = [("fresh", 1), ("keep-alive", KEEP)];
/// Seconds per point of the refused requests.
pub(crate) const REFUSED_SECS: f64 = 0.5;

/// One series of requests (a side and a mode), pooled over the reps.
#[derive(Default)]
pub(crate) struct Series {
    /// Requests/s, per rep.
    pub(crate) rate: Vec<f64>,
    /// µs per request, every request of every rep.
    pub(crate) lat_us: Vec<f64>,
    /// Outcome counts (the clients' JSON, summed).
    pub(crate) counts: BTreeMap<String, u64>,
    /// Agent CPU µs per request, per rep.
    pub(crate) cpu_us: Vec<f64>,
}

impl Series {
    pub(crate) fn count(&self, k: &str) -> u64 {
        self.counts.get(k).copied().unwrap_or(0)
    }

    /// Requests that did not get the expected answer (status, body, or none at all).
    pub(crate) fn failed(&self) -> u64 {
        ["bad_status", "bad_body", "io_err", "connect_err"]
            .iter()
            .map(|k| self.count(k))
            .sum()
    }
}

/// The section's measurements.
#[derive(Default)]
pub(crate) struct MdFigures {
    /// (side, mode) → series; side "refused" for the denied path.
    pub(crate) series: BTreeMap<(&'static str, &'static str), Series>,
    pub(crate) secs: f64,
    pub(crate) reps: usize,
    /// The proxy's own `latency_us` (OCSF 4002 records): forwarded, refused.
    pub(crate) proxy_allow_us: Vec<f64>,
    pub(crate) proxy_deny_us: Vec<f64>,
    /// Requests the upstream fake received, and on how many connections.
    pub(crate) upstream: (u64, u64),
    /// Δ `tiergate_metadata_requests` (all verdicts) over the section.
    pub(crate) decided: f64,
    pub(crate) overloaded: f64,
    pub(crate) events_lost: f64,
    /// When and how this section ran (it can run alone: `--only metadata`).
    pub(crate) run: String,
}

impl MdFigures {
    pub(crate) fn get(&self, side: &str, mode: &str) -> Option<&Series> {
        self.series
            .iter()
            .find(|((s, m), _)| *s == side && *m == mode)
            .map(|(_, v)| v)
    }
}

impl World {
    fn md_cg(&self, job: &str) -> PathBuf {
        self.cg_base.join(format!("enf/md/{job}"))
    }

    fn md_policy(&self) -> String {
        format!(
            "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: bench-metadata\nspec:\n  mode: enforce\n  defaultTier: locked\n  tiers:\n    - name: direct\n      metadata: allow\n      egress: []\n    - name: filtered\n      metadata:\n        mode: filter\n        allowPaths: [\"{PATH}\"]\n      egress: []\n    - name: locked\n      egress: []\n  bindings:\n    - tier: direct\n      match:\n        cgroupPath: \"{p}/enf/md/direct/**\"\n    - tier: filtered\n      match:\n        cgroupPath: \"{p}/enf/md/proxied/**\"\n    - tier: locked\n      match:\n        cgroupPath: \"{p}/enf/locked/**\"\n",
            p = self.cg_path
        )
    }
}

/// The fakes, the cgroups, the policy, the filter tier's sandbox and the
/// agent. Returns (events file, upstream fake's stats file).
fn setup(w: &mut World) -> Result<(PathBuf, PathBuf)> {
    let ns = w.netns.clone();
    sh(
        "ip",
        &["-n", &ns, "addr", "add", "169.254.169.254/32", "dev", "lo"],
    )?;
    for job in ["direct/load", "proxied/sandbox", "proxied/load"] {
        std::fs::create_dir_all(w.md_cg(job))?;
    }
    let (direct_stats, up_stats) = (w.dir.join("imds-direct.json"), w.dir.join("imds-up.json"));
    let ds = direct_stats.to_string_lossy().into_owned();
    w.spawn_ready(&["imds-serve", "--netns", &ns, "--addr", IMDS, "--stats", &ds])?;
    let upstream = format!("127.0.0.1:{}", free_port());
    let us = up_stats.to_string_lossy().into_owned();
    w.spawn_ready(&["imds-serve", "--addr", &upstream, "--stats", &us])?;
    w.write_policy(&w.md_policy())?;
    // A process of the filter tier in the namespace: the agent serves it.
    let sandbox = w.md_cg("proxied/sandbox").to_string_lossy().into_owned();
    w.spawn_ready(&["server", "--cgroup", &sandbox, "--netns", &ns])?;
    let events = w.dir.join("md-events.jsonl");
    let ms = w.start_agent("m", &events, &["--metadata-upstream".into(), upstream])?;
    let port = w.agent.as_ref().context("agent")?.port;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(port, "tiergate_dns_namespaces") < 1.0 {
        if Instant::now() > deadline {
            bail!("the metadata proxy did not serve the bench namespace within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    say(&format!(
        "metadata: agent ready in {ms:.0} ms, namespace served"
    ));
    Ok((events, up_stats))
}

/// One client run: its JSON and the agent's CPU ticks meanwhile.
fn run_http(
    w: &World,
    side: &str,
    path: &str,
    want: u16,
    per_conn: usize,
    secs: f64,
) -> Result<(serde_json::Value, u64)> {
    let cg = w.md_cg(&format!("{side}/load"));
    let args = [
        "http",
        "--cgroup",
        &cg.to_string_lossy(),
        "--netns",
        &w.netns,
        "--to",
        IMDS,
        "--path",
        path,
        "--want",
        &want.to_string(),
        "--per-conn",
        &per_conn.to_string(),
        "--secs",
        &secs.to_string(),
    ]
    .map(String::from);
    let (mut outs, ticks, _) = w.run_procs(&args, 1)?;
    Ok((outs.remove(0), ticks))
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// Files one run under (side, mode).
fn record(f: &mut MdFigures, key: (&'static str, &'static str), v: &serde_json::Value, ticks: u64) {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let s = f.series.entry(key).or_default();
    s.rate.push(v["rate"].as_f64().unwrap_or(f64::NAN));
    let lat = v["lat_us"].as_array().cloned().unwrap_or_default();
    s.lat_us.extend(lat.iter().filter_map(|x| x.as_f64()));
    for k in [
        "n",
        "ok",
        "bad_status",
        "bad_body",
        "via_proxy",
        "connect_err",
        "io_err",
        "conns",
    ] {
        *s.counts.entry(k.into()).or_default() += num(v, k);
    }
    s.cpu_us
        .push(ticks as f64 / tick * 1e6 / (num(v, "n") as f64).max(1.0));
    let compact = serde_json::json!({"n": v["n"], "ok": v["ok"], "via_proxy": v["via_proxy"],
        "io_err": v["io_err"], "connect_err": v["connect_err"], "rate": v["rate"]});
    say(&format!("  {compact}"));
}

/// Both sides answer, and each through the way it should: a direct
/// request must not meet the proxy, a proxied one must.
fn check(w: &World) -> Result<()> {
    for (side, path, want) in [
        ("direct", PATH, 200),
        ("proxied", PATH, 200),
        ("proxied", REFUSED_PATH, 403),
    ] {
        let (v, _) = run_http(w, side, path, want, 1, 0.1)?;
        let (n, ok, via) = (num(&v, "n"), num(&v, "ok"), num(&v, "via_proxy"));
        let through = if side == "direct" { 0 } else { n };
        if n == 0 || ok != n || via != through {
            bail!(
                "{side} GET {path} does not answer as expected: n {n}, ok {ok}, via proxy {via}; see {}/agent-m.log",
                w.dir.display()
            );
        }
    }
    Ok(())
}

pub(crate) fn md_path(w: &mut World, rep: &mut Report, command: &str) -> Result<()> {
    let started = Instant::now();
    let (events, up_stats) = setup(w)?;
    let port = w.agent.as_ref().context("agent")?.port;
    check(w)?;
    let counters = |port| {
        (
            metric(port, "tiergate_metadata_requests"),
            metric(port, "tiergate_metadata_overloaded"),
            metric(port, "tiergate_events_lost_total"),
        )
    };
    std::thread::sleep(Duration::from_millis(1200));
    let before = counters(port);
    let up_before = read_stats(&up_stats);
    let mut f = MdFigures {
        secs: (rep.secs * 2.0).max(1.0),
        reps: rep.reps,
        ..Default::default()
    };
    for r in 0..rep.reps {
        for (mode, per_conn) in MODES {
            for k in 0..SIDES.len() {
                let side = SIDES[(k + r) % SIDES.len()];
                say(&format!(
                    "rep {}/{} metadata GET, {mode}: {side}",
                    r + 1,
                    rep.reps
                ));
                let (v, ticks) = run_http(w, side, PATH, 200, per_conn, f.secs)?;
                record(&mut f, (side, mode), &v, ticks);
            }
        }
        for (mode, per_conn) in MODES {
            say(&format!(
                "rep {}/{} metadata refused GET, {mode}",
                r + 1,
                rep.reps
            ));
            let (v, ticks) = run_http(w, "proxied", REFUSED_PATH, 403, per_conn, REFUSED_SECS)?;
            record(&mut f, ("refused", mode), &v, ticks);
        }
    }
    // The gauges are refreshed every second, the fakes' stats every 200 ms.
    std::thread::sleep(Duration::from_millis(1200));
    let after = counters(port);
    let up_after = read_stats(&up_stats);
    f.decided = after.0 - before.0;
    f.overloaded = after.1 - before.1;
    f.events_lost = after.2 - before.2;
    f.upstream = (up_after.0 - up_before.0, up_after.1 - up_before.1);
    proxy_latency(&mut f, &events)?;
    w.stop_agent();
    f.run = format!(
        "`{command}`, {}, {:.0} s",
        crate::utc_now(),
        started.elapsed().as_secs_f64()
    );
    rep.md = Some(f);
    Ok(())
}

/// (requests, connections) the fake counted so far.
fn read_stats(p: &Path) -> (u64, u64) {
    let v: serde_json::Value = std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    (num(&v, "requests"), num(&v, "connections"))
}

/// The proxy's own time per request (`latency_us` of its OCSF 4002
/// records), forwarded and refused, over the whole section.
fn proxy_latency(f: &mut MdFigures, events: &Path) -> Result<()> {
    let text = std::fs::read(events)?;
    for line in text.split(|&b| b == b'\n') {
        if !contains(line, b"\"class_uid\":4002") {
            continue;
        }
        let Ok(e) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let t = &e["unmapped"]["tiergate"];
        let Some(us) = t["latency_us"].as_f64() else {
            continue;
        };
        match t["verdict"].as_str() {
            Some("allow") => f.proxy_allow_us.push(us),
            Some("deny") => f.proxy_deny_us.push(us),
            _ => {}
        }
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
