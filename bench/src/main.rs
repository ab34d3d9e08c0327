//! tiergate's benchmark suite (root; see docs/BENCHMARKS.md for the output).
//!
//!   tiergate-bench --tiergate target/release/tiergate --out docs/BENCHMARKS.md [--reps N] [--secs S]
//!
//! Everything runs in a network namespace, a cgroup subtree and a bpffs
//! directory this process creates and removes (also on error). Traffic only
//! goes to addresses on that namespace's `lo`.

mod client;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tiergate_tests::{cgroup2_mount, free_port, http_get, remove_cgroup_tree};

const ALLOW: &str = "10.20.0.1:80";
const DENY: &str = "10.30.0.1:80";
const WORKLOADS: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("client") => return client::client(&args[1..]),
        Some("flip") => return client::flip(&args[1..]),
        Some("server") => return client::server(&args[1..]),
        _ => {}
    }
    if let Err(e) = run(&args) {
        eprintln!("tiergate-bench: {e:#}");
        std::process::exit(1);
    }
}

/// The value after the last `name` (so `cargo xtask bench --out X` overrides
/// the default the xtask passes first).
fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .rposition(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn say(s: &str) {
    eprintln!("bench: {s}");
}

fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sum of every sample whose line starts with `prefix` (NaN when the
/// endpoint does not answer).
fn metric(port: u16, prefix: &str) -> f64 {
    http_get(port, "/metrics")
        .map(|(_, b)| {
            b.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(f64::NAN)
}

/// (utime+stime ticks, VmRSS kB) of a pid.
fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

struct Stats {
    v: Vec<f64>,
}

impl Stats {
    fn new(mut v: Vec<f64>) -> Self {
        v.retain(|x| x.is_finite());
        v.sort_by(|a, b| a.total_cmp(b));
        Stats { v }
    }
    fn median(&self) -> f64 {
        let n = self.v.len();
        if n == 0 {
            return f64::NAN;
        }
        if n % 2 == 1 {
            self.v[n / 2]
        } else {
            (self.v[n / 2 - 1] + self.v[n / 2]) / 2.0
        }
    }
    fn fmt(&self, scale: f64, prec: usize) -> String {
        if self.v.is_empty() {
            return "n/a".into();
        }
        format!(
            "{:.p$} ({:.p$}–{:.p$})",
            self.median() / scale,
            self.v[0] / scale,
            self.v[self.v.len() - 1] / scale,
            p = prec
        )
    }
}

/// Everything the run creates; dropping it removes all of it.
struct World {
    bin: PathBuf,
    me: PathBuf,
    name: String,
    netns: String,
    cg_base: PathBuf,
    cg_path: String,
    dir: PathBuf,
    bpffs: Vec<PathBuf>,
    children: Vec<Child>,
    agent: Option<Agent>,
}

struct Agent {
    child: Child,
    port: u16,
    bpffs: PathBuf,
}

impl World {
    fn new(bin: PathBuf) -> Result<Self> {
        let name = format!("tgbench{}", std::process::id());
        let mount = cgroup2_mount();
        let w = World {
            bin,
            me: std::env::current_exe()?,
            netns: name.clone(),
            cg_base: mount.join(&name),
            cg_path: format!("/{name}"),
            dir: std::env::temp_dir().join(&name),
            name,
            bpffs: Vec::new(),
            children: Vec::new(),
            agent: None,
        };
        std::fs::create_dir_all(&w.dir)?;
        for side in ["enf", "plain"] {
            for i in 0..WORKLOADS {
                std::fs::create_dir_all(w.cg_base.join(format!("{side}/t0/w{i:04}")))?;
            }
            std::fs::create_dir_all(w.cg_base.join(format!("{side}/locked")))?;
        }
        sh("ip", &["netns", "add", &w.netns])?;
        sh("ip", &["-n", &w.netns, "link", "set", "lo", "up"])?;
        for a in ["10.20.0.1/32", "10.30.0.1/32"] {
            sh("ip", &["-n", &w.netns, "addr", "add", a, "dev", "lo"])?;
        }
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &w.netns,
                "sh",
                "-c",
                "echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range; echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; echo 8192 > /proc/sys/net/core/somaxconn",
            ],
        )?;
        Ok(w)
    }

    fn start_server(&mut self) -> Result<()> {
        let mut c = Command::new(&self.me)
            .args(["server", "--netns", &self.netns, ALLOW, DENY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().expect("stdout")).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("server did not start");
        }
        self.children.push(c);
        Ok(())
    }

    fn cg(&self, side: &str, w: usize) -> PathBuf {
        self.cg_base.join(format!("{side}/t0/w{w:04}"))
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }

    /// A policy whose tier t0 (bound to enf/t0/**) has `n` /32 rules; the
    /// one in the middle allows 10.20.0.1 (or, `allow = false`, 10.21.0.1).
    fn policy(&self, n: usize, allow: bool) -> String {
        self.policy_variant(n, allow, 64, None)
    }

    /// `policy(n, allow)` with the destinations of rules 2..n in 10.`net`.x.y
    /// instead of 10.64.x.y and, with `tag`, the first rule's destination
    /// made unique to that tag (10.63.x.y).
    fn policy_variant(&self, n: usize, allow: bool, net: usize, tag: Option<usize>) -> String {
        let mut s = format!(
            "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: bench-{n}-{allow}\nspec:\n  mode: enforce\n  defaultTier: locked\n  tiers:\n    - name: t0\n      egress:\n"
        );
        for i in 0..n {
            // The measured destination sits in the middle of the list: a
            // packet filter that walks its rules meets it after half of
            // them, as it would an average destination.
            let ip = match (i, tag) {
                (i, _) if i == n / 2 && allow => "10.20.0.1".into(),
                (i, _) if i == n / 2 => "10.21.0.1".into(),
                (0, Some(t)) => format!("10.63.{}.{}", t / 250 % 250, t % 250 + 1),
                _ => format!("10.{net}.{}.{}", i / 250, i % 250 + 1),
            };
            let _ = writeln!(
                s,
                "        - cidrs: [\"{ip}/32\"]\n          ports: [\"80\"]"
            );
        }
        let _ = write!(
            s,
            "    - name: locked\n      egress: []\n  bindings:\n    - tier: t0\n      match:\n        cgroupPath: \"{p}/enf/t0/**\"\n    - tier: locked\n      match:\n        cgroupPath: \"{p}/enf/locked/**\"\n",
            p = self.cg_path
        );
        s
    }

    fn write_policy(&self, yaml: &str) -> Result<()> {
        let tmp = self.dir.join(".policy.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.policy_path())?;
        Ok(())
    }

    /// Writes the policy and waits until the agent has applied it.
    fn apply_policy(&self, yaml: &str) -> Result<()> {
        let port = self.agent.as_ref().context("no agent")?.port;
        // Re-writing the policy in force is answered "unchanged", not "applied".
        let done = |port| {
            metric(port, "tiergate_policy_reloads_total{result=\"applied\"}")
                + metric(port, "tiergate_policy_reloads_total{result=\"unchanged\"}")
        };
        let rejected = |port| metric(port, "tiergate_policy_reloads_total{result=\"rejected\"}");
        let (before, rejected_before) = (done(port), rejected(port));
        self.write_policy(yaml)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while done(port) <= before {
            if rejected(port) > rejected_before {
                bail!("the agent rejected the benchmark policy");
            }
            if Instant::now() > deadline {
                bail!("agent did not apply the policy within 20 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Spawns the agent; returns ms from spawn to /readyz 200.
    fn start_agent(&mut self, tag: &str, events: &Path, extra: &[String]) -> Result<f64> {
        let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("{}-{tag}", self.name));
        self.bpffs.push(bpffs.clone());
        let port = free_port();
        let log = std::fs::File::create(self.dir.join(format!("agent-{tag}.log")))?;
        let t0 = Instant::now();
        let child = Command::new(&self.bin)
            .arg("agent")
            .arg("--policy")
            .arg(self.policy_path())
            .arg("--cgroup-root")
            .arg(self.cg_base.join("enf"))
            .arg("--bpffs")
            .arg(&bpffs)
            .arg("--events")
            .arg(events)
            .args(["--admin-addr", &format!("127.0.0.1:{port}")])
            .args(["--node-name", "bench"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.agent = Some(Agent { child, port, bpffs });
        loop {
            if let Some((200, _)) = http_get(port, "/readyz") {
                break;
            }
            let a = self.agent.as_mut().expect("agent");
            if let Ok(Some(st)) = a.child.try_wait() {
                bail!(
                    "agent exited ({st}); see {}/agent-{tag}.log",
                    self.dir.display()
                );
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("agent not ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            // SAFETY: signalling our own child (SIGCONT in case it was stopped).
            unsafe {
                libc::kill(a.child.id() as i32, libc::SIGCONT);
                libc::kill(a.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = a.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = a.child.kill();
            let _ = a.child.wait();
            let _ = Command::new(&self.bin)
                .args(["uninstall", "--bpffs"])
                .arg(&a.bpffs)
                .output();
            let _ = std::fs::remove_dir(&a.bpffs);
        }
    }

    /// Runs the timed connect loop in a cgroup; while it runs, samples the
    /// agent's CPU ticks and peak RSS. Returns (client JSON, ticks, rss kB).
    fn client(
        &self,
        cg: &Path,
        mode: &str,
        to: &str,
        secs: f64,
    ) -> Result<(serde_json::Value, u64, u64)> {
        self.clients(cg, mode, to, secs, 1)
    }

    /// `procs` client processes side by side in `cg`; their counts and rates
    /// summed. Also returns the agent's CPU ticks and peak RSS (kB) meanwhile.
    fn clients(
        &self,
        cg: &Path,
        mode: &str,
        to: &str,
        secs: f64,
        procs: usize,
    ) -> Result<(serde_json::Value, u64, u64)> {
        let apid = self.agent.as_ref().map(|a| a.child.id());
        let (t0, _) = apid.map(proc_usage).unwrap_or((0, 0));
        let mut cs = Vec::with_capacity(procs);
        for _ in 0..procs {
            cs.push(
                Command::new(&self.me)
                    .arg("client")
                    .arg("--cgroup")
                    .arg(cg)
                    .args(["--netns", &self.netns, "--mode", mode, "--to", to])
                    .args(["--secs", &secs.to_string()])
                    .stdout(Stdio::piped())
                    .spawn()?,
            );
        }
        let mut rss = 0;
        while cs.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
            if let Some(p) = apid {
                rss = rss.max(proc_usage(p).1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (t1, _) = apid.map(proc_usage).unwrap_or((0, 0));
        let mut sum = serde_json::Map::new();
        for mut c in cs {
            c.wait()?;
            let mut out = String::new();
            c.stdout.take().expect("stdout").read_to_string(&mut out)?;
            let v: serde_json::Value = serde_json::from_str(out.trim())
                .with_context(|| format!("client output {out:?}"))?;
            for (k, x) in v.as_object().context("client output is not an object")? {
                let prev = sum.get(k).and_then(|p| p.as_f64()).unwrap_or(0.0);
                let x = x.as_f64().unwrap_or(0.0);
                // Durations: the longest; counts and rates: the sum.
                let merged = if k == "secs" { prev.max(x) } else { prev + x };
                sum.insert(k.clone(), merged_number(k, merged));
            }
        }
        Ok((serde_json::Value::Object(sum), t1.saturating_sub(t0), rss))
    }

    fn nft(&self, rules: Option<&str>) -> Result<()> {
        let _ = sh(
            "ip",
            &["netns", "exec", &self.netns, "nft", "flush", "ruleset"],
        );
        if let Some(r) = rules {
            let f = self.dir.join("rules.nft");
            std::fs::write(&f, r)?;
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.netns,
                    "sh",
                    "-c",
                    &format!(
                        "mount -t cgroup2 none /sys/fs/cgroup && nft -f {}",
                        f.display()
                    ),
                ],
            )?;
        }
        Ok(())
    }

    /// The same policy as `policy(n, true)` for the `plain` side, as
    /// nftables `socket cgroupv2` rules: "chain", "set" or "vmap".
    fn nft_rules(&self, n: usize, form: &str) -> String {
        let ips: Vec<String> = (0..n)
            .map(|i| {
                // As in `policy`: the allowed destination in the middle.
                if i == n / 2 {
                    "10.20.0.1".into()
                } else {
                    format!("10.64.{}.{}", i / 250, i % 250 + 1)
                }
            })
            .collect();
        let cg = format!("{}/plain/t0", &self.cg_path[1..]);
        let mut s = String::from("table inet tgbench {\n");
        match form {
            "set" => {
                s += "  set allow { type ipv4_addr . inet_service; elements = { ";
                s += &ips
                    .iter()
                    .map(|ip| format!("{ip} . 80"))
                    .collect::<Vec<_>>()
                    .join(", ");
                s += " } }\n  chain t0 {\n    ip daddr . th dport @allow accept\n";
            }
            "vmap" => {
                s += "  map allow { type ipv4_addr . inet_service : verdict; elements = { ";
                s += &ips
                    .iter()
                    .map(|ip| format!("{ip} . 80 : accept"))
                    .collect::<Vec<_>>()
                    .join(", ");
                s += " } }\n  chain t0 {\n    ip daddr . th dport vmap @allow\n";
            }
            _ => {
                s += "  chain t0 {\n";
                for ip in &ips {
                    let _ = writeln!(s, "    ip daddr {ip} th dport 80 accept");
                }
            }
        }
        s += "    meta l4proto tcp reject with tcp reset\n    drop\n  }\n";
        let _ = write!(
            s,
            "  chain output {{\n    type filter hook output priority 0; policy accept;\n    socket cgroupv2 level 3 \"{cg}\" jump t0\n  }}\n}}\n"
        );
        s
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_agent();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for b in &self.bpffs {
            let _ = Command::new(&self.bin)
                .args(["uninstall", "--bpffs"])
                .arg(b)
                .output();
            let _ = std::fs::remove_dir(b);
        }
        remove_cgroup_tree(&self.cg_base);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        // TIERGATE_BENCH_KEEP=1 keeps the agents' logs and files.
        if std::env::var_os("TIERGATE_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Counts stay integers (callers read them with `as_u64`).
fn merged_number(key: &str, x: f64) -> serde_json::Value {
    if key == "secs" || key == "rate" {
        serde_json::json!(x)
    } else {
        serde_json::json!(x as u64)
    }
}

fn run(args: &[String]) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root (it loads eBPF programs and creates namespaces)");
    }
    let bin = PathBuf::from(arg(args, "--tiergate").unwrap_or("target/release/tiergate".into()));
    let bin = std::fs::canonicalize(&bin).with_context(|| format!("{}", bin.display()))?;
    let out = PathBuf::from(arg(args, "--out").unwrap_or("docs/BENCHMARKS.md".into()));
    let reps: usize = arg(args, "--reps")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let secs: f64 = arg(args, "--secs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0.5);
    // For working on one part: connect, reload, events (writes a partial report).
    let only: Option<Vec<String>> =
        arg(args, "--only").map(|s| s.split(',').map(str::to_string).collect());
    let command = format!("tiergate-bench {}", args.join(" "));
    let fs = sh("stat", &["-f", "-c", "%T", "/sys/fs/bpf"]).unwrap_or_default();
    if !fs.contains("bpf") {
        sh("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }
    sh("nft", &["--version"]).context("nftables (nft) is needed: apt-get install nftables")?;
    let started = Instant::now();
    let mut w = World::new(bin)?;
    w.start_server()?;
    let mut rep = Report {
        reps,
        secs,
        only,
        ..Default::default()
    };
    if rep.wants("connect") || rep.wants("reload") {
        connect_path(&mut w, &mut rep)?;
    }
    if rep.wants("events") {
        event_path(&mut w, &mut rep)?;
    }
    drop(w);
    rep.total_s = started.elapsed().as_secs_f64();
    let md = rep.render(&command);
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&out, md)?;
    say(&format!("wrote {} ({:.0} s)", out.display(), rep.total_s));
    Ok(())
}

#[derive(Default)]
struct Report {
    /// Sections to run (all when `None`).
    only: Option<Vec<String>>,
    reps: usize,
    secs: f64,
    total_s: f64,
    /// (config, workload) → rates per rep.
    rates: BTreeMap<(String, String), Vec<f64>>,
    start_ms: Vec<f64>,
    rss_idle_kb: Vec<f64>,
    rss_load_kb: Vec<f64>,
    cpu_per_10k: Vec<f64>,
    /// (rules, load, program) → ns per call (bpf_stats).
    hook_ns: BTreeMap<(usize, String, String), f64>,
    /// (rules, kind of change) → ms.
    reload_ms: BTreeMap<(usize, &'static str), Vec<f64>>,
    mixed: Option<(u64, u64, u64)>,
    events: BTreeMap<String, Vec<f64>>,
    accounting: Vec<String>,
    notes: Vec<String>,
}

const CONFIGS: &[&str] = &[
    "none",
    "tg-10",
    "tg-1k",
    "tg-10k",
    "nft-chain-10",
    "nft-chain-1k",
    "nft-chain-10k",
    "nft-set-10",
    "nft-set-1k",
    "nft-set-10k",
    "nft-vmap-10k",
];
const LOADS: &[(&str, &str, &str)] = &[
    ("tcp-allow", "tcp", ALLOW),
    ("tcp-deny", "tcp", DENY),
    ("udp-allow", "udp", ALLOW),
    ("udp-deny", "udp", DENY),
];

fn size(c: &str) -> usize {
    if c.ends_with("10k") {
        10_000
    } else if c.ends_with("1k") {
        1_000
    } else {
        10
    }
}

fn connect_path(w: &mut World, rep: &mut Report) -> Result<()> {
    w.write_policy(&w.policy(10_000, true))?;
    // Agent A: its events go to /dev/null (the event path is measured below).
    let ms = w.start_agent("a", Path::new("/dev/null"), &[])?;
    rep.start_ms.push(ms);
    say(&format!(
        "agent ready in {ms:.0} ms with 10k rules, {WORKLOADS} workloads"
    ));
    std::thread::sleep(Duration::from_secs(1));
    rep.rss_idle_kb
        .push(proc_usage(w.agent.as_ref().expect("agent").child.id()).1 as f64);
    // Sanity: the enforced side denies and allows as the policy says.
    let (v, _, _) = w.client(&w.cg("enf", 1), "udp", DENY, 0.05)?;
    if v["eperm"].as_u64() != v["n"].as_u64() {
        bail!("tiergate does not deny {DENY} from enf/t0: {v}");
    }
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let reps = if rep.wants("connect") { rep.reps } else { 0 };
    for r in 0..reps {
        for k in 0..CONFIGS.len() {
            let c = CONFIGS[(k + r) % CONFIGS.len()];
            say(&format!("rep {}/{} connect path: {c}", r + 1, rep.reps));
            let side = if c.starts_with("tg") {
                w.nft(None)?;
                w.apply_policy(&w.policy(size(c), true))?;
                "enf"
            } else if let Some(rest) = c.strip_prefix("nft-") {
                let form = rest.split('-').next().unwrap_or("chain");
                w.nft(Some(&w.nft_rules(size(c), form)))?;
                "plain"
            } else {
                w.nft(None)?;
                "plain"
            };
            for (i, (name, mode, to)) in LOADS.iter().enumerate() {
                let cg = w.cg(side, (r * 7 + i * 13) % WORKLOADS);
                let (v, ticks, rss) = w.client(&cg, mode, to, rep.secs)?;
                let n = v["n"].as_u64().unwrap_or(0);
                let good = if name.ends_with("allow") {
                    v["ok"].as_u64()
                } else {
                    Some(n - v["ok"].as_u64().unwrap_or(0) - v["other"].as_u64().unwrap_or(0))
                };
                if good != Some(n) && (c != "none" || name.ends_with("allow")) {
                    rep.notes
                        .push(format!("{c} {name}: unexpected outcomes {v}"));
                }
                let rate = v["rate"].as_f64().unwrap_or(f64::NAN);
                rep.rates
                    .entry((c.into(), name.to_string()))
                    .or_default()
                    .push(rate);
                if c == "tg-10k" && *name == "tcp-allow" {
                    rep.rss_load_kb.push(rss as f64);
                    let cpu = ticks as f64 / tick / v["secs"].as_f64().unwrap_or(1.0);
                    rep.cpu_per_10k.push(cpu / (rate / 10_000.0) * 100.0);
                }
            }
        }
    }
    w.nft(None)?;
    if rep.wants("connect") {
        hook_costs(w, rep)?;
    }
    if rep.wants("reload") {
        reload(w, rep)?;
    }
    w.stop_agent();
    Ok(())
}

/// `run_time_ns` and `run_cnt` of each program attached through the agent's
/// pinned links (named by the link pin), from bpftool.
fn prog_stats(bpffs: &Path) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    let dir = bpffs.join("tiergate/v1/links");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let link: serde_json::Value = serde_json::from_str(&sh(
            "bpftool",
            &["--json", "link", "show", "pinned", &path.to_string_lossy()],
        )?)?;
        let id = link["prog_id"].as_u64().context("link without prog_id")?;
        let prog: serde_json::Value = serde_json::from_str(&sh(
            "bpftool",
            &["--json", "prog", "show", "id", &id.to_string()],
        )?)?;
        out.insert(
            name,
            (
                prog["run_time_ns"].as_u64().unwrap_or(0),
                prog["run_cnt"].as_u64().unwrap_or(0),
            ),
        );
    }
    Ok(out)
}

/// Kernel time per call of the connect and socket-creation hooks, per
/// policy size and load, from the kernel's BPF run-time statistics
/// (`kernel.bpf_stats_enabled`, on only for these short runs: it adds two
/// clock reads to every call).
fn hook_costs(w: &mut World, rep: &mut Report) -> Result<()> {
    let bpffs = w.agent.as_ref().context("no agent")?.bpffs.clone();
    let cg = w.cg("enf", 3);
    let set_stats = |on: bool| {
        std::fs::write(
            "/proc/sys/kernel/bpf_stats_enabled",
            if on { "1" } else { "0" },
        )
    };
    for n in [10usize, 1_000, 10_000] {
        w.apply_policy(&w.policy(n, true))?;
        for (name, mode, to) in LOADS {
            say(&format!("hook cost: {n} rules, {name}"));
            set_stats(true)?;
            let before = prog_stats(&bpffs);
            let run = w.client(&cg, mode, to, 0.3);
            let after = prog_stats(&bpffs);
            set_stats(false)?;
            let (before, after) = (before?, after?);
            run?;
            record_costs(rep, (n, name), &before, &after);
        }
    }
    // The same allowed connects without their ring-buffer records: the
    // agent is stopped until the ring passes 3/4 full, from where the hook
    // sheds allowed records (counting them) instead of writing them.
    let pid = w.agent.as_ref().context("no agent")?.child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let shed = (|| -> Result<()> {
        say("hook cost: allowed connects with the ring buffer full");
        w.client(&cg, "udp", ALLOW, 2.0)?; // fills the ring
        set_stats(true)?;
        let before = prog_stats(&bpffs);
        let run = w.client(&cg, "udp", ALLOW, 0.3);
        let after = prog_stats(&bpffs);
        set_stats(false)?;
        run?;
        record_costs(rep, (10_000, SHED), &before?, &after?);
        Ok(())
    })();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    shed
}

/// Column of the hook-cost table for allowed connects whose record is shed.
const SHED: &str = "udp-allow, record shed";

fn record_costs(
    rep: &mut Report,
    (n, load): (usize, &str),
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) {
    for (prog, (t1, c1)) in after {
        let (t0, c0) = before.get(prog).copied().unwrap_or((0, 0));
        if *c1 > c0 {
            rep.hook_ns.insert(
                (n, load.to_string(), prog.clone()),
                (t1 - t0) as f64 / (c1 - c0) as f64,
            );
        }
    }
}

/// Time from the policy file's rename to the flipped verdict, both ways.
fn reload(w: &mut World, rep: &mut Report) -> Result<()> {
    let cg = w.cg("enf", 5);
    for n in [10usize, 1_000, 10_000] {
        for change in [ONE_RULE, ALL_RULES] {
            w.apply_policy(&w.policy(n, true))?;
            let mut sample = 0;
            for r in 0..rep.reps.max(3) {
                for allow_next in [false, true] {
                    say(&format!("reload {n} rules ({change}), sample {}", r + 1));
                    // The agent diffs against the generation it is about to
                    // write (which holds the policy of two swaps ago), so no
                    // sample repeats an earlier policy. ONE_RULE: 10.20.0.1's
                    // rule and one other rule differ from the policy in
                    // force; ALL_RULES: every destination differs.
                    sample += 1;
                    let net = if change == ALL_RULES { 64 + sample } else { 64 };
                    let yaml = w.policy_variant(n, allow_next, net, Some(sample));
                    match reload_sample(w, &cg, &yaml, allow_next)? {
                        Some(ms) => rep.reload_ms.entry((n, change)).or_default().push(ms),
                        None => rep.notes.push(format!(
                            "reload {n} ({change}): verdict did not flip within 10 s"
                        )),
                    }
                    // Let the file watcher settle before the next sample.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    Ok(())
}

const ONE_RULE: &str = "two rules changed";
const ALL_RULES: &str = "every rule changed";

/// Renames `yaml` into place and returns the ms until a client in `cg` sees
/// 10.20.0.1 allowed (`allow`) or denied.
fn reload_sample(w: &World, cg: &Path, yaml: &str, allow: bool) -> Result<Option<f64>> {
    let mut c = Command::new(&w.me)
        .arg("flip")
        .arg("--cgroup")
        .arg(cg)
        .args(["--netns", &w.netns, "--to", ALLOW])
        .args(["--want", if allow { "ok" } else { "denied" }])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(c.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    let tmp = w.dir.join(".policy.tmp");
    std::fs::write(&tmp, yaml)?;
    let t0 = client::mono_ns();
    std::fs::rename(&tmp, w.policy_path())?;
    line.clear();
    out.read_line(&mut line)?;
    c.wait()?;
    let t1: i64 = line.trim().parse().unwrap_or(-1);
    Ok((t1 >= 0).then(|| (t1 as u64 - t0) as f64 / 1e6))
}

/// The event path's load: UDP connects to the denied destination from
/// `TIERGATE_BENCH_EVENT_PROCS` processes (default 1). A denied connect is
/// the cheapest attempt to generate (EPERM before any packet), so one core
/// produces more records than an allowed connect loop can, and denies are
/// never shed: every record must arrive or be reported lost.
fn event_load(w: &World, cg: &Path, secs: f64) -> Result<(serde_json::Value, u64, u64)> {
    let procs = std::env::var("TIERGATE_BENCH_EVENT_PROCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    w.clients(cg, "udp", DENY, secs, procs)
}

fn count_file(path: &Path, from: u64) -> (u64, u64, u64, Vec<(String, String)>) {
    // (connection records, loss records' summed counts, loss records, (version, verdict) of connections)
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(_) => return (0, 0, 0, Vec::new()),
    };
    use std::io::Seek;
    let _ = f.seek(std::io::SeekFrom::Start(from));
    let (mut conn, mut lost, mut lossrec, mut vv) = (0, 0, 0, Vec::new());
    for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
        if line.contains("\"kind\":\"connection\"") {
            conn += 1;
            let pol = line.find("\"policy\":{").map(|i| &line[i..]).unwrap_or("");
            if let (Some(v), Some(d)) =
                (field(pol, "\"version\":\""), field(&line, "\"verdict\":\""))
            {
                vv.push((v, d));
            }
        } else if line.contains("\"kind\":\"loss\"")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
        {
            lossrec += 1;
            lost += v["unmapped"]["tiergate"]["count"].as_u64().unwrap_or(0);
        }
    }
    (conn, lost, lossrec, vv)
}

fn field(line: &str, key: &str) -> Option<String> {
    let i = line.find(key)? + key.len();
    let j = line[i..].find('"')?;
    Some(line[i..i + j].to_string())
}

fn produced(port: u16) -> f64 {
    ["allow", "deny", "audit-deny", "socket-deny"]
        .iter()
        .map(|v| {
            metric(
                port,
                &format!("tiergate_kernel_verdicts{{verdict=\"{v}\"}}"),
            )
        })
        .sum()
}

fn event_path(w: &mut World, rep: &mut Report) -> Result<()> {
    let load_s = 2.0;
    w.write_policy(&w.policy(10, true))?;
    let events = w.dir.join("events.jsonl");
    let ms = w.start_agent("b", &events, &[])?;
    rep.start_ms.push(ms);
    let mut port = w.agent.as_ref().expect("agent").port;
    let cg = w.cg("enf", 9);
    for r in 0..rep.reps.min(3) {
        say(&format!("event path rep {}: file sink", r + 1));
        let settle = |w: &World| {
            // Wait until the agent has delivered what the kernel produced.
            let mut last = (-1.0, 0.0);
            for _ in 0..200 {
                let cur = (
                    metric(port, "tiergate_events_total"),
                    metric(port, "tiergate_events_lost_total"),
                );
                if cur == last {
                    break;
                }
                last = cur;
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = w;
        };
        settle(w);
        let p0 = produced(port);
        let off = std::fs::metadata(&events).map(|m| m.len()).unwrap_or(0);
        let t0 = Instant::now();
        let (v, _, _) = event_load(w, &cg, load_s)?;
        // Delivered when the events counter stops moving.
        let mut last = -1.0;
        let mut t_end = t0.elapsed();
        loop {
            let cur =
                metric(port, "tiergate_events_total") + metric(port, "tiergate_events_lost_total");
            if cur != last {
                last = cur;
                t_end = t0.elapsed();
            } else if t0.elapsed() - t_end > Duration::from_millis(500) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let prod = produced(port) - p0;
        let (conn, lost, lossrec, _) = count_file(&events, off);
        rep.events
            .entry("file".into())
            .or_default()
            .push(conn as f64 / t_end.as_secs_f64());
        rep.accounting.push(format!(
            "file rep {}: attempts {} · kernel produced {prod} · delivered {conn} · lost {lost} (in {lossrec} loss records) · produced − delivered − lost = {}",
            r + 1, v["n"], prod as i64 - conn as i64 - lost as i64
        ));

        // The ceiling: a minimal reader on the pinned ring buffer, agent stopped.
        say(&format!(
            "event path rep {}: minimal ring-buffer reader",
            r + 1
        ));
        // The agent is killed (its pins stay and the programs go on
        // producing): a ring buffer has one consumer, and a second reader
        // would move the consumer position under the agent's feet.
        let mut dead = w.agent.take().expect("agent");
        let _ = dead.child.kill();
        let _ = dead.child.wait();
        let pin = dead.bpffs.join("tiergate/v1/maps/TG_EVENTS");
        let res = (|| -> Result<f64> {
            let md = aya::maps::MapData::from_pin(&pin)?;
            let mut rb = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(md))?;
            while rb.next().is_some() {}
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s2 = stop.clone();
            let h = std::thread::spawn(move || {
                let (mut n, mut first, mut last) = (0u64, None, Instant::now());
                loop {
                    let mut got = false;
                    while let Some(item) = rb.next() {
                        std::hint::black_box(item.len());
                        n += 1;
                        got = true;
                    }
                    if got {
                        first.get_or_insert_with(Instant::now);
                        last = Instant::now();
                    } else if s2.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    } else {
                        std::thread::yield_now();
                    }
                }
                let d = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
                (n, d)
            });
            let (_v, _, _) = event_load(w, &cg, load_s)?;
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let (n, d) = h.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
            Ok(n as f64 / d.max(1e-9))
        })();
        // A fresh agent re-adopts the pins for the next rep.
        w.start_agent("b", &events, &[])?;
        port = w.agent.as_ref().expect("agent").port;
        match res {
            Ok(rate) => rep.events.entry("reader".into()).or_default().push(rate),
            Err(e) => rep.notes.push(format!("minimal reader failed: {e:#}")),
        }
    }
    mixed_verdicts(w, rep, &events)?;
    w.stop_agent();
    collector(w, rep, load_s)?;
    Ok(())
}

/// Alternates two 10k-rule policies while a client connects in a loop;
/// every event's verdict must match its own policy version's.
fn mixed_verdicts(w: &mut World, rep: &mut Report, events: &Path) -> Result<()> {
    say("policy swaps under load (mixed-verdict check)");
    let cgp = format!("{}/enf/t0/w0011", w.cg_path);
    let mut expect = BTreeMap::new();
    for allow in [true, false] {
        let f = w.dir.join(format!("ref-{allow}.yaml"));
        std::fs::write(&f, w.policy(10_000, allow))?;
        let out = sh(
            w.bin.to_str().unwrap_or("tiergate"),
            &[
                "policy",
                "explain",
                "--policy",
                f.to_str().unwrap_or(""),
                "--cgroup",
                &cgp,
                "--to",
                ALLOW,
                "--udp",
                "--json",
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        expect.insert(
            v["policy"]["version"].as_str().unwrap_or("").to_string(),
            v["verdict"].as_str().unwrap_or("").to_string(),
        );
    }
    w.apply_policy(&w.policy(10_000, true))?;
    std::thread::sleep(Duration::from_millis(300));
    let off = std::fs::metadata(events).map(|m| m.len()).unwrap_or(0);
    let phase_start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut c = Command::new(&w.me)
        .arg("client")
        .arg("--cgroup")
        .arg(w.cg("enf", 11))
        .args([
            "--netns", &w.netns, "--mode", "udp", "--to", ALLOW, "--secs", "4",
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let mut swaps = 0;
    let t0 = Instant::now();
    let mut allow = false;
    while t0.elapsed() < Duration::from_millis(3600) {
        w.apply_policy(&w.policy(10_000, allow))?;
        allow = !allow;
        swaps += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    c.wait()?;
    std::thread::sleep(Duration::from_secs(2));
    // Only this phase's client: records written after `off` can include a
    // backlog from earlier phases (the ring holds 65,536 of them), judged
    // under other policies.
    let text = std::fs::read_to_string(events)?;
    let tail = text.get(off as usize..).unwrap_or("");
    let mut mixed = 0;
    let mut n = 0;
    for line in tail.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let t = &e["unmapped"]["tiergate"];
        if t["kind"] != "connection"
            || t["workload"]["cgroup_path"] != cgp.as_str()
            || e["time"].as_u64().unwrap_or(0) < phase_start_ms
        {
            continue;
        }
        n += 1;
        let ver = t["policy"]["version"].as_str().unwrap_or("");
        let verdict = t["verdict"].as_str().unwrap_or("");
        if expect.get(ver).map(String::as_str) != Some(verdict) {
            mixed += 1;
        }
    }
    rep.mixed = Some((swaps, n, mixed));
    Ok(())
}

fn collector(w: &mut World, rep: &mut Report, load_s: f64) -> Result<()> {
    let pki = w.dir.join("pki");
    let root = std::env::current_dir()?;
    let st = Command::new("cargo")
        .current_dir(root)
        .args(["xtask", "certs"])
        .arg(&pki)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        rep.notes
            .push("collector: `cargo xtask certs` failed; collector not measured".into());
        return Ok(());
    }
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let listen = free_port();
    let cadmin = free_port();
    let sink = w.dir.join("collected.jsonl");
    let log = std::fs::File::create(w.dir.join("collector.log"))?;
    let c = Command::new(&w.bin)
        .arg("collector")
        .args([
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin-addr",
            &format!("127.0.0.1:{cadmin}"),
        ])
        .args([
            "--tls-ca",
            &p("ca.pem"),
            "--tls-cert",
            &p("collector.pem"),
            "--tls-key",
            &p("collector-key.pem"),
        ])
        .args(["--allow-spiffe", "spiffe://corp.example/ns/tiergate/sa/*"])
        .args([
            "--sink",
            &format!("file:{}?max-bytes=100000000000&keep=1", sink.display()),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    w.children.push(c);
    let extra: Vec<String> = [
        "--collector",
        &format!("https://127.0.0.1:{listen}"),
        "--collector-spiffe-id",
        "spiffe://corp.example/tiergate/collector",
        "--tls-ca",
        &p("ca.pem"),
        "--tls-cert",
        &p("agent.pem"),
        "--tls-key",
        &p("agent-key.pem"),
        "--spool",
        &w.dir.join("spool").to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    w.write_policy(&w.policy(10, true))?;
    let ms = w.start_agent("c", Path::new("/dev/null"), &extra)?;
    rep.start_ms.push(ms);
    let port = w.agent.as_ref().expect("agent").port;
    let cg = w.cg("enf", 21);
    let recs = |_: ()| metric(cadmin, "tiergate_collector_records_total");
    for r in 0..rep.reps.min(3) {
        say(&format!("event path rep {}: collector over mTLS", r + 1));
        let mut last = -1.0;
        for _ in 0..300 {
            let cur = recs(()) + metric(port, "tiergate_events_lost_total");
            if cur == last && metric(port, "tiergate_spool_pending") == 0.0 {
                break;
            }
            last = cur;
            std::thread::sleep(Duration::from_millis(100));
        }
        let p0 = produced(port);
        let off = std::fs::metadata(&sink).map(|m| m.len()).unwrap_or(0);
        let t0 = Instant::now();
        let (v, _, _) = event_load(w, &cg, load_s)?;
        let mut last = -1.0;
        let mut t_end = t0.elapsed();
        loop {
            let cur = recs(());
            if cur != last {
                last = cur;
                t_end = t0.elapsed();
            } else if t0.elapsed() - t_end > Duration::from_millis(1500) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                rep.notes
                    .push("collector: still receiving after 60 s".into());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let prod = produced(port) - p0;
        let (conn, lost, lossrec, _) = count_file(&sink, off);
        rep.events
            .entry("collector".into())
            .or_default()
            .push(conn as f64 / t_end.as_secs_f64());
        rep.accounting.push(format!(
            "collector rep {}: attempts {} · kernel produced {prod} · delivered {conn} · lost {lost} (in {lossrec} loss records) · produced − delivered − lost = {} · collector duplicates so far {}",
            r + 1, v["n"], prod as i64 - conn as i64 - lost as i64, metric(cadmin, "tiergate_collector_duplicates_total")
        ));
    }
    w.stop_agent();
    Ok(())
}

impl Report {
    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == section))
    }

    fn med(&self, c: &str, l: &str) -> f64 {
        self.rates
            .get(&(c.to_string(), l.to_string()))
            .map(|v| Stats::new(v.clone()).median())
            .unwrap_or(f64::NAN)
    }

    fn render(&self, command: &str) -> String {
        let mut s = String::new();
        let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpu
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|x| x.1.trim().to_string())
            .unwrap_or("unknown".into());
        let mem = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .and_then(|k| k.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1048576.0;
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let kernel = sh("uname", &["-r"]).unwrap_or_default();
        let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
        let nftv = sh("nft", &["--version"]).unwrap_or_default();
        let _ = writeln!(
            s,
            "# tiergate benchmarks\n\nWritten by `tiergate-bench` (`cargo xtask bench`); do not edit by hand.\n"
        );
        let _ = writeln!(
            s,
            "| | |\n|---|---|\n| machine | {nproc} CPUs, {model}, {mem:.1} GiB |\n| kernel | {} |\n| nftables | {} |\n| date | {} |\n| command | `{command}` |\n| repetitions | {} per connect-path point ({:.1} s each), interleaved: every repetition runs every configuration in a rotated order; 3 for the event path; {} reload samples per size and direction |\n| total run time | {:.0} s |\n",
            kernel.trim(),
            nftv.trim(),
            date.trim(),
            self.reps,
            self.secs,
            self.reps.max(3),
            self.total_s
        );
        let _ = writeln!(
            s,
            "Figures are median (min–max) over the repetitions. Every client runs in its own cgroup and in a network namespace created for the run; destinations are addresses on that namespace's `lo` (10.20.0.1:80 allowed, 10.30.0.1:80 denied; a TCP listener on both). 1,000 workload cgroups exist under the enforced tier `t0` (and 1,000 under the nftables side). Rules are /32 destinations on port 80, tcp+udp; the allowed destination's rule is the middle one of the list (a packet filter walking its rules meets it after half of them, as it would an average destination).\n"
        );
        let _ = writeln!(s, "## 1. Connect path (connects/s, one client process)\n");
        let _ = writeln!(
            s,
            "TCP: socket + SO_LINGER 0 + connect + close (blocking connect to a listener in the namespace; a denied attempt fails with EPERM for tiergate, ECONNREFUSED for nftables' `reject with tcp reset`). UDP: socket + connect + send(1 byte) + close (the datagram makes the flow visible to nftables; tiergate judges the connect). `none` and `nft-*` clients run in a cgroup outside the agent's `--cgroup-root` (no BPF hooks at all); `tg-*` clients in `t0`, bound by the policy, with the agent running (events written to /dev/null here; the event path is measured in section 2). nft forms: `chain` = one rule per destination; `set` = `ip daddr . th dport @set`; `vmap` = verdict map; all behind `socket cgroupv2 level 3 \"…/t0\" jump t0` in an output chain. Ratio = median / median of `none` for the same load.\n"
        );
        let _ = writeln!(
            s,
            "| config | tcp-allow | ratio | tcp-deny | ratio | udp-allow | ratio | udp-deny | ratio |\n|---|---|---|---|---|---|---|---|---|"
        );
        for c in CONFIGS {
            let mut row = format!("| {c} |");
            for (l, _, _) in LOADS {
                let v = self
                    .rates
                    .get(&(c.to_string(), l.to_string()))
                    .cloned()
                    .unwrap_or_default();
                let st = Stats::new(v);
                let _ = write!(
                    row,
                    " {} | {:.3} |",
                    st.fmt(1.0, 0),
                    st.median() / self.med("none", l)
                );
            }
            let _ = writeln!(s, "{row}");
        }
        let _ = writeln!(
            s,
            "\n### tiergate vs nftables (ratio of medians, >1 = tiergate faster)\n\n| load | tg-10 / nft-chain-10 | tg-10 / nft-set-10 | tg-10k / nft-chain-10k | tg-10k / nft-set-10k | tg-10k / nft-vmap-10k |\n|---|---|---|---|---|---|"
        );
        for (l, _, _) in LOADS {
            let tg10 = self.med("tg-10", l);
            let tg10k = self.med("tg-10k", l);
            let _ = writeln!(
                s,
                "| {l} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                tg10 / self.med("nft-chain-10", l),
                tg10 / self.med("nft-set-10", l),
                tg10k / self.med("nft-chain-10k", l),
                tg10k / self.med("nft-set-10k", l),
                tg10k / self.med("nft-vmap-10k", l)
            );
        }
        if !self.hook_ns.is_empty() {
            let _ = writeln!(
                s,
                "\n### Kernel time per hook call (ns, `kernel.bpf_stats_enabled`)\n\nMeasured in separate 0.3 s runs with the statistics on (they add two clock reads per call, so these figures are slightly high); `tg_connect4` judges the connect and, for every attempt reported, writes the ring-buffer record; the last column is the same allowed connect with the agent stopped and the ring past 3/4 full, where the hook sheds (and counts) allowed records instead of writing them: the difference to `udp-allow` is the price of the record. `tg_sock_create` runs on every `socket()`.\n"
            );
            let progs: std::collections::BTreeSet<&String> =
                self.hook_ns.keys().map(|k| &k.2).collect();
            for prog in progs {
                let _ = writeln!(
                    s,
                    "| `{prog}` | tcp-allow | tcp-deny | udp-allow | udp-deny | {SHED} |\n|---|---|---|---|---|---|"
                );
                for n in [10usize, 1_000, 10_000] {
                    let cells: Vec<String> = LOADS
                        .iter()
                        .map(|(l, _, _)| *l)
                        .chain([SHED])
                        .map(|l| {
                            self.hook_ns
                                .get(&(n, l.to_string(), prog.clone()))
                                .map_or("—".into(), |v| format!("{v:.0}"))
                        })
                        .collect();
                    let _ = writeln!(s, "| {n} rules | {} |", cells.join(" | "));
                }
                let _ = writeln!(s);
            }
        }
        let _ = writeln!(
            s,
            "\n## 2. Event path (records/s delivered)\n\nLoad: one client in `t0` doing UDP connects to the denied destination as fast as it can for 2 s (every attempt is a deny record; a denied connect is the cheapest attempt to generate, so one core produces more records than an allowed-connect loop, and denies are never shed: each must arrive or be reported lost). The client, the agent and (for `collector`) the collector share the machine's 2 cores. Rate = records delivered / (time from load start until delivery stopped). `file`: agent with `--events FILE`. `collector`: agent (events file /dev/null) streaming over gRPC+mTLS to `tiergate collector` with a file sink; records counted in the sink file. `reader`: the agent killed (its pinned programs keep producing), a minimal aya `RingBuf` reader on the pinned `TG_EVENTS` map counting records (first to last record read) — the ceiling; a fresh agent re-adopts the pins afterwards.\n"
        );
        let _ = writeln!(s, "| path | records/s | ratio to reader |\n|---|---|---|");
        let rd = self
            .events
            .get("reader")
            .map(|v| Stats::new(v.clone()).median())
            .unwrap_or(f64::NAN);
        for k in ["reader", "file", "collector"] {
            let st = Stats::new(self.events.get(k).cloned().unwrap_or_default());
            let _ = writeln!(s, "| {k} | {} | {:.2} |", st.fmt(1.0, 0), st.median() / rd);
        }
        let _ = writeln!(
            s,
            "\nAccounting (produced = Δ `tiergate_kernel_verdicts` allow+deny+audit-deny+socket-deny; delivered = connection records in the file/sink; lost = sum of `count` of loss records in the same file):\n"
        );
        for a in &self.accounting {
            let _ = writeln!(s, "- {a}");
        }
        let _ = writeln!(
            s,
            "\n## 3. Policy reload (ms from the policy file's rename to the flipped verdict)\n\nA client bound to `t0` tries a UDP connect to 10.20.0.1:80 every 0.1 ms; the bench writes a new policy of the same size next to the old one and renames it into place, and takes the time until the client sees the other verdict (CLOCK_MONOTONIC in both processes). Both directions are samples. No sample repeats an earlier policy (the agent writes only what differs from the generation it writes into, which holds the policy of two swaps before). *{ONE_RULE}*: 10.20.0.1's rule is replaced or restored and one other destination changes (a typical edit); *{ALL_RULES}*: every destination moves to a new /16 (10.65.x.y, 10.66.x.y, …), so the whole generation is rewritten (the worst case).\n\n| rules | {ONE_RULE}, ms | {ALL_RULES}, ms |\n|---|---|---|"
        );
        let sizes: std::collections::BTreeSet<usize> = self.reload_ms.keys().map(|k| k.0).collect();
        for n in sizes {
            let cell = |kind| {
                self.reload_ms
                    .get(&(n, kind))
                    .map(|v| Stats::new(v.clone()).fmt(1.0, 1))
                    .unwrap_or_else(|| "—".into())
            };
            let _ = writeln!(s, "| {n} | {} | {} |", cell(ONE_RULE), cell(ALL_RULES));
        }
        if let Some((swaps, n, mixed)) = self.mixed {
            let _ = writeln!(
                s,
                "\nSwaps under load: {swaps} alternations of two 10k-rule policies (one allows 10.20.0.1, one denies it) about every 50 ms while a client connected in a loop; {n} connection events checked against `tiergate policy explain --json` of the version each event names: **{mixed} mismatched**."
            );
        }
        let _ = writeln!(s, "\n## 4. Footprint\n\n| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| start to enforcing (spawn → /readyz 200), ms | {} (samples: 10k rules + 1,000 workloads; then 10 rules twice) |",
            Stats::new(self.start_ms.clone()).fmt(1.0, 0)
        );
        let _ = writeln!(
            s,
            "| RSS idle, 10k rules, 1,000 workloads (MB) | {} |",
            Stats::new(self.rss_idle_kb.clone()).fmt(1024.0, 1)
        );
        let _ = writeln!(
            s,
            "| RSS under load (tcp-allow at 10k rules; peak of 100 ms samples) (MB) | {} |",
            Stats::new(self.rss_load_kb.clone()).fmt(1024.0, 1)
        );
        let _ = writeln!(
            s,
            "| agent CPU per 10k connects/s (% of one core; utime+stime during tcp-allow at 10k rules) | {} |",
            Stats::new(self.cpu_per_10k.clone()).fmt(1.0, 1)
        );

        // Targets.
        let yes = |b: bool| if b { "met" } else { "**missed**" };
        let ratio = |a: &str, b: &str, l: &str| self.med(a, l) / self.med(b, l);
        let _ = writeln!(s, "\n## Targets\n\n| target | measured | |\n|---|---|---|");
        let t = ratio("tg-10k", "none", "tcp-allow").min(ratio("tg-10k", "none", "tcp-deny"));
        let _ = writeln!(
            s,
            "| TCP connect at 10k rules ≥ 0.95 × no hooks | allow {:.3}, deny {:.3} | {} |",
            ratio("tg-10k", "none", "tcp-allow"),
            ratio("tg-10k", "none", "tcp-deny"),
            yes(t >= 0.95)
        );
        let u = ratio("tg-10k", "none", "udp-allow").min(ratio("tg-10k", "none", "udp-deny"));
        let _ = writeln!(
            s,
            "| UDP connect at 10k rules ≥ 0.90 × no hooks | allow {:.3}, deny {:.3} | {} |",
            ratio("tg-10k", "none", "udp-allow"),
            ratio("tg-10k", "none", "udp-deny"),
            yes(u >= 0.90)
        );
        let mut m10 = f64::INFINITY;
        let mut m10k = f64::INFINITY;
        let mut best = f64::INFINITY;
        for (l, _, _) in LOADS {
            let best_nft10 = self.med("nft-chain-10", l).max(self.med("nft-set-10", l));
            m10 = m10.min(self.med("tg-10", l) / best_nft10);
            m10k = m10k.min(ratio("tg-10k", "nft-chain-10k", l));
            let bs = self.med("nft-set-10k", l).max(self.med("nft-vmap-10k", l));
            best = best.min(self.med("tg-10k", l) / bs);
        }
        let _ = writeln!(
            s,
            "| 10 rules: at least as fast as nftables (worst load, vs nft's faster form) | {m10:.2}× | {} |",
            yes(m10 >= 1.0)
        );
        let _ = writeln!(
            s,
            "| 10k rules: ≥ 2 × nftables rule chain (worst load) | {m10k:.2}× | {} |",
            yes(m10k >= 2.0)
        );
        let _ = writeln!(
            s,
            "| 10k rules: no slower than nftables' best set form (worst load) | {best:.2}× | {} |",
            yes(best >= 1.0)
        );
        let col = self
            .events
            .get("collector")
            .map(|v| Stats::new(v.clone()).median())
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| events to the collector ≥ 100,000/s | {col:.0}/s | {} |",
            yes(col >= 100_000.0)
        );
        let _ = writeln!(
            s,
            "| events to the collector ≥ 0.5 × minimal reader | {:.2}× | {} |",
            col / rd,
            yes(col / rd >= 0.5)
        );
        let exact = !self.accounting.is_empty()
            && self.accounting.iter().all(|a| {
                a.ends_with("produced − delivered − lost = 0")
                    || a.contains("produced − delivered − lost = 0 ")
            });
        let _ = writeln!(
            s,
            "| produced = delivered + lost exactly | see accounting lines | {} |",
            yes(exact)
        );
        for kind in [ONE_RULE, ALL_RULES] {
            let Some(v) = self.reload_ms.get(&(10_000, kind)) else {
                continue;
            };
            let st = Stats::new(v.clone());
            let (m, mx) = (st.median(), st.v.last().copied().unwrap_or(f64::NAN));
            let _ = writeln!(
                s,
                "| reload of 10k rules ≤ 50 ms to enforced ({kind}) | median {m:.1} ms, max {mx:.1} ms | {} |",
                yes(mx <= 50.0)
            );
        }
        if let Some((_, n, mixed)) = self.mixed {
            let _ = writeln!(
                s,
                "| zero mixed verdicts during swaps | {mixed} of {n} | {} |",
                yes(mixed == 0 && n > 0)
            );
        }
        let rss = Stats::new(
            self.rss_idle_kb
                .iter()
                .chain(&self.rss_load_kb)
                .copied()
                .collect(),
        )
        .v
        .last()
        .copied()
        .unwrap_or(f64::NAN)
            / 1024.0;
        let _ = writeln!(
            s,
            "| agent RSS ≤ 64 MB at 10k rules | max {rss:.1} MB | {} |",
            yes(rss <= 64.0)
        );
        let st = Stats::new(self.start_ms.clone());
        let _ = writeln!(
            s,
            "| start to enforcing ≤ 1 s | max {:.0} ms | {} |",
            st.v.last().copied().unwrap_or(f64::NAN),
            yes(st.v.last().copied().unwrap_or(f64::INFINITY) <= 1000.0)
        );
        if m10 < 1.0 || best < 1.0 {
            self.explain_allowed_gap(&mut s);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes from the run\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

impl Report {
    /// Per-connect costs behind a missed comparison with nftables, from this
    /// run's own rates and hook statistics.
    fn explain_allowed_gap(&self, s: &mut String) {
        // Extra µs per attempt over the no-hooks baseline, per load.
        let extra = |c: &str, l: &str| 1e6 / self.med(c, l) - 1e6 / self.med("none", l);
        let worst = LOADS
            .iter()
            .map(|(l, _, _)| *l)
            .min_by(|a, b| {
                let r = |l: &str| {
                    self.med("tg-10", l)
                        / self.med("nft-chain-10", l).max(self.med("nft-set-10", l))
                };
                r(a).total_cmp(&r(b))
            })
            .unwrap_or("udp-allow");
        let deny = ["tcp-deny", "udp-deny"]
            .iter()
            .map(|l| self.med("tg-10k", l) / self.med("nft-set-10k", l))
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
                (lo.min(r), hi.max(r))
            });
        let hook = |n: usize, l: &str| {
            self.hook_ns
                .get(&(n, l.to_string(), "tg_connect4".to_string()))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let _ = writeln!(
            s,
            "\n## Where the remaining gap comes from\n\nThe comparisons with nftables that are missed are on `{worst}`: an allowed attempt that tiergate reports. Per attempt, over the no-hooks baseline, tiergate adds {:.2} µs at 10 rules and {:.2} µs at 10k; nftables adds {:.2} µs (chain, 10 rules) and {:.2} µs (set, 10k) and reports nothing. Of tiergate's share, the `tg_connect4` hook takes {:.0} ns at 10k rules (table above), of which writing the ring-buffer record is {:.0} ns (the same attempt with the record shed costs {:.0} ns); the rest is `tg_sock_create` on the `socket()` call (second table) and the record's trip through the agent on the other core (wakeups are batched, see ARCHITECTURE.md). Denied attempts, which are the point of the filter, go {:.1}–{:.1}× as fast with tiergate (10k rules) as with nftables' set form, and the hook's cost does not grow with the rule count. Closing the allowed-attempt gap means writing fewer records per attempt: exact in-kernel aggregation of repeated allowed flows (DESIGN.md allows it when counts stay exact). It is not built: keeping counts exact needs a double-buffered map-in-map swapped under an RCU barrier (`BPF_MAP_TYPE_ARRAY_OF_MAPS` updates wait for running programs), and it changes the event stream (an OCSF `count` per event), so it is left for its own issue.",
            extra("tg-10", worst),
            extra("tg-10k", worst),
            extra("nft-chain-10", worst),
            extra("nft-set-10k", worst),
            hook(10_000, "udp-allow"),
            hook(10_000, "udp-allow") - hook(10_000, SHED),
            hook(10_000, SHED),
            deny.0,
            deny.1,
        );
    }
}

#[allow(dead_code)]
fn _unused(_: ChildStdout) {}
