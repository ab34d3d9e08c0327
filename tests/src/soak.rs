//! The chaos soak (issue 12): clients in an enforced tier connect to allowed
//! and denied destinations without pause while a driver, at random,
//! `kill -9`s and restarts the agent, stops the collector for a while,
//! reloads valid and invalid policies, and creates and removes workload
//! cgroups. At the end a ledger compares what the clients did, what the
//! kernel counted and what reached the collector:
//!
//! - leaks: connects to a denied destination that succeeded (must be 0);
//!   allowed connects refused (must be 0);
//! - every attempt the kernel counted is at the collector exactly once (by
//!   `metadata.uid`) or counted in a loss record (unaccounted must be 0,
//!   duplicates must be 0);
//! - the agent's RSS, open files and cgroup map stay bounded, the spool
//!   drains.
//!
//! `cargo xtask soak --minutes N` runs it long; `cargo xtask test` runs a
//! short one (tests/tests/soak.rs).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::collector::{Collector, Pki, agent_args};
use crate::pki::Leaf;
use crate::{Fixture, policy, probe_bin, tg};

/// What a run does.
#[derive(Clone, Debug)]
pub struct Config {
    pub duration: Duration,
    /// The longest collector outage.
    pub max_outage: Duration,
    /// Mean time between chaos actions.
    pub action_every: Duration,
    /// Attempts per second of each steady client.
    pub rate: u32,
    pub seed: u64,
}

/// Destinations the tier allows (a server answers on each) and denies.
const ALLOWED: &[&str] = &[
    "tcp:10.20.0.1:80",
    "sendto:10.20.0.1:81",
    "tcp:[fd00:20::1]:80",
];
const DENIED: &[&str] = &[
    "tcp:10.30.0.1:80",
    "sendto:10.30.0.1:80",
    "tcp:[fd00:30::1]:80",
    "tcp:169.254.169.254:80",
];
const STEADY_CLIENTS: usize = 3;

fn body(variant: u64) -> String {
    // Both variants allow the same destinations; the second adds a range
    // nobody uses, so a reload really changes the compiled policy.
    let extra = if variant % 2 == 1 {
        ", \"10.99.0.0/16\""
    } else {
        ""
    };
    format!(
        "      egress:\n        - cidrs: [\"10.20.0.0/16\", \"fd00:20::/64\"{extra}]\n          ports: [\"80-81\"]"
    )
}

/// The figures of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub seconds: f64,
    pub seed: u64,
    pub agent_deaths: u64,
    pub collector_outages: u64,
    pub longest_outage_s: f64,
    pub reloads_valid: u64,
    pub reloads_invalid: u64,
    pub cgroups_churned: u64,
    pub attempts: u64,
    pub attempts_denied: u64,
    pub leaked: u64,
    pub allowed_refused: u64,
    pub client_other_errors: u64,
    pub kernel_verdicts: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub lost_reported: BTreeMap<String, u64>,
    pub unaccounted: i64,
    pub max_rss_kib: u64,
    pub max_fds: u64,
    pub max_spool_bytes: u64,
    pub max_cgroups_known: u64,
    pub cgroups_known_end: u64,
}

impl Report {
    pub fn lost_total(&self) -> u64 {
        self.lost_reported.values().sum()
    }

    /// Markdown table rows, for docs/RELIABILITY.md.
    pub fn table(&self) -> String {
        let mut s = String::from("| figure | value |\n|---|---|\n");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "| {k} | {v} |");
        };
        row("duration", format!("{:.0} s", self.seconds));
        row("seed", self.seed.to_string());
        row("agent `kill -9` + restart", self.agent_deaths.to_string());
        row(
            "collector outages (longest)",
            format!(
                "{} ({:.1} s)",
                self.collector_outages, self.longest_outage_s
            ),
        );
        row(
            "policy reloads valid / invalid",
            format!("{} / {}", self.reloads_valid, self.reloads_invalid),
        );
        row(
            "workload cgroups created and removed",
            self.cgroups_churned.to_string(),
        );
        row(
            "attempts by clients (to denied destinations)",
            format!("{} ({})", self.attempts, self.attempts_denied),
        );
        row(
            "denied attempts that connected (leaks)",
            self.leaked.to_string(),
        );
        row("allowed attempts refused", self.allowed_refused.to_string());
        row(
            "attempts the kernel counted",
            self.kernel_verdicts.to_string(),
        );
        row(
            "records at the collector (unique uids)",
            self.delivered.to_string(),
        );
        row(
            "duplicate uids at the collector",
            self.duplicates.to_string(),
        );
        row(
            "named in loss records",
            format!("{} {:?}", self.lost_total(), self.lost_reported),
        );
        row("unaccounted", self.unaccounted.to_string());
        row("agent peak RSS", format!("{} MiB", self.max_rss_kib / 1024));
        row("agent peak open files", self.max_fds.to_string());
        row("spool peak", format!("{} KiB", self.max_spool_bytes / 1024));
        row(
            "cgroups in the kernel map: peak / at the end",
            format!("{} / {}", self.max_cgroups_known, self.cgroups_known_end),
        );
        s
    }
}

/// A tiny deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn duration(&mut self, max: Duration) -> Duration {
        Duration::from_millis(self.below(max.as_millis() as u64 + 1))
    }
}

struct Client {
    child: Child,
    cgroup: Option<String>,
}

fn spawn_client(f: &Fixture, rel: &str, rate: u32, secs: f64) -> Child {
    let dir = f.cgroup(rel);
    Command::new(probe_bin())
        .arg("--cgroup")
        .arg(&dir)
        .args(["--netns", &f.netns, "loop"])
        .arg(rate.to_string())
        .arg(format!("{secs:.3}"))
        .args(ALLOWED)
        .args(DENIED)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn soak client")
}

/// Adds a finished client's tally to the report.
fn tally(r: &mut Report, child: Child) {
    let out = child.wait_with_output().expect("soak client");
    assert!(out.status.success(), "soak client failed: {out:?}");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [target, "ok", ok, "eperm", eperm, "other", other] = w[..] else {
            panic!("soak client printed {line:?}");
        };
        let (ok, eperm, other): (u64, u64, u64) = (
            ok.parse().unwrap(),
            eperm.parse().unwrap(),
            other.parse().unwrap(),
        );
        r.attempts += ok + eperm + other;
        r.client_other_errors += other;
        if DENIED.contains(&target) {
            r.attempts_denied += ok + eperm + other;
            r.leaked += ok;
        } else {
            r.allowed_refused += eperm;
        }
    }
}

fn sample(f: &Fixture, spool: &Path, r: &mut Report) {
    let Some(agent) = f.agent.as_ref() else {
        return;
    };
    let pid = agent.child.id();
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        r.max_rss_kib = r.max_rss_kib.max(rss);
    }
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        r.max_fds = r.max_fds.max(d.count() as u64);
    }
    r.max_spool_bytes = r.max_spool_bytes.max(dir_bytes(spool));
    if let Some(n) = agent.metric("tiergate_cgroups_known") {
        r.max_cgroups_known = r.max_cgroups_known.max(n as u64);
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runs the soak; the caller checks the report.
pub fn run(cfg: &Config) -> Report {
    let mut r = Report {
        seed: cfg.seed,
        ..Report::default()
    };
    let mut rng = Rng(cfg.seed | 1);
    let mut f = Fixture::new("soak");
    let pki = Pki::new();
    let collected = f.dir.join("collected.jsonl");
    let mut c = Collector::start(
        &f.dir,
        pki.collector(),
        // No rotation: the ledger reads one file.
        vec![format!("file:{}?max-bytes=0", collected.display())],
    );
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let spool = f.dir.join("spool");
    let args = agent_args(&c, &files, &spool);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cg_path = f.cg_path.clone();
    let mut variant = 0;
    f.start_agent_with(&policy(&cg_path, &body(variant)), &args);

    let start = Instant::now();
    let secs = cfg.duration.as_secs_f64();
    let mut clients: Vec<Client> = (0..STEADY_CLIENTS)
        .map(|i| Client {
            child: spawn_client(&f, &format!("t0/steady{i}"), cfg.rate, secs),
            cgroup: None,
        })
        .collect();
    let mut outage_until: Option<Instant> = None;
    let mut outage_started = start;
    let mut churn = 0u64;
    let mut last_sample = start;
    while start.elapsed() < cfg.duration {
        std::thread::sleep(rng.duration(cfg.action_every * 2));
        if let Some(until) = outage_until
            && Instant::now() >= until
        {
            c.restart();
            r.longest_outage_s = r
                .longest_outage_s
                .max(outage_started.elapsed().as_secs_f64());
            outage_until = None;
        }
        // Reap finished churn clients and remove their cgroups.
        let mut i = 0;
        while i < clients.len() {
            let done =
                clients[i].cgroup.is_some() && matches!(clients[i].child.try_wait(), Ok(Some(_)));
            if done {
                let cl = clients.swap_remove(i);
                let rel = cl.cgroup.clone().unwrap();
                tally(&mut r, cl.child);
                let _ = std::fs::remove_dir(f.cg_root.join(&rel));
                r.cgroups_churned += 1;
            } else {
                i += 1;
            }
        }
        if last_sample.elapsed() > Duration::from_millis(500) {
            sample(&f, &spool, &mut r);
            last_sample = Instant::now();
        }
        let left = cfg.duration.saturating_sub(start.elapsed()).as_secs_f64();
        match rng.below(100) {
            0..50 => {
                f.agent.as_mut().expect("agent").kill9();
                r.agent_deaths += 1;
                std::thread::sleep(rng.duration(Duration::from_millis(300)));
                f.start_agent_with(&policy(&cg_path, &body(variant)), &args);
            }
            50..62 if outage_until.is_none() => {
                c.stop();
                r.collector_outages += 1;
                outage_started = Instant::now();
                outage_until = Some(Instant::now() + rng.duration(cfg.max_outage));
            }
            62..70 => {
                variant += 1;
                f.write_policy(&policy(&cg_path, &body(variant)));
                if rng.below(2) == 0 {
                    f.agent.as_ref().expect("agent").signal(libc::SIGHUP);
                }
                r.reloads_valid += 1;
            }
            70..76 => {
                f.write_policy("apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nspec: [\n");
                r.reloads_invalid += 1;
                // Back to a good file, so a restart finds one.
                std::thread::sleep(Duration::from_millis(200));
                f.write_policy(&policy(&cg_path, &body(variant)));
            }
            _ if left > 2.0 => {
                churn += 1;
                let rel = format!("t0/churn{churn}");
                let child = spawn_client(&f, &rel, cfg.rate, 1.0);
                clients.push(Client {
                    child,
                    cgroup: Some(rel),
                });
            }
            _ => {}
        }
    }
    if outage_until.is_some() {
        c.restart();
    }
    for cl in clients {
        tally(&mut r, cl.child);
        if let Some(rel) = cl.cgroup {
            let _ = std::fs::remove_dir(f.cg_root.join(&rel));
            r.cgroups_churned += 1;
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    settle(&f, &c, &mut r);
    ledger(&collected, &mut r);
    r
}

/// Waits until the spool has drained to the collector and the agent has
/// caught up with the kernel.
fn settle(f: &Fixture, c: &Collector, r: &mut Report) {
    let agent = f.agent.as_ref().expect("agent");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = Instant::now();
    let mut last = (f64::NAN, f64::NAN);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = (
            agent.metric("tiergate_spool_pending").unwrap_or(-1.0),
            c.metric("tiergate_collector_records_total"),
        );
        if now != last || now.0 != 0.0 {
            quiet_since = Instant::now();
            last = now;
        }
        if quiet_since.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spool did not drain: pending {now:?}\n{}",
            c.log_text()
        );
    }
    r.cgroups_known_end = agent.metric("tiergate_cgroups_known").unwrap_or(0.0) as u64;
    r.kernel_verdicts = ["allow", "deny", "audit-deny", "socket-deny"]
        .iter()
        .map(|v| {
            agent
                .metric(&format!("tiergate_kernel_verdicts{{verdict=\"{v}\"}}"))
                .unwrap_or(0.0) as u64
        })
        .sum();
}

fn ledger(collected: &Path, r: &mut Report) {
    let text = std::fs::read_to_string(collected).expect("collector file");
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in text.lines() {
        let e: Value = serde_json::from_str(line).expect("collector line is JSON");
        let t = tg(&e);
        match t["kind"].as_str() {
            Some("connection") => {
                // Every hook of this fixture's maps is attached at its own
                // cgroup root: every connection record is a client's.
                let uid = e["metadata"]["uid"].as_str().expect("uid").to_string();
                *seen.entry(uid).or_default() += 1;
            }
            Some("loss") => {
                let stage = t["stage"].as_str().unwrap_or("?").to_string();
                if !stage.starts_with("events-file") {
                    *r.lost_reported.entry(stage).or_default() += t["count"].as_u64().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    r.delivered = seen.len() as u64;
    r.duplicates = seen.values().map(|n| u64::from(n - 1)).sum();
    r.unaccounted = r.kernel_verdicts as i64 - r.delivered as i64 - r.lost_total() as i64;
}
