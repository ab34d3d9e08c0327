//! Harness for tiergate's privileged end-to-end tests.
//!
//! Each [`Fixture`] owns a cgroup subtree (the agent's `--cgroup-root`), a
//! network namespace whose `lo` holds the test destinations (metadata
//! addresses included, so no packet ever leaves it), a bpffs pin directory
//! and a scratch directory; dropping it stops the agent, uninstalls the pins
//! and removes everything. Tests panic with a clear message on failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod collector;
mod processes;
pub use processes::{Agent, hold, http_get, metric_value, run_tiergate, spawn_ready};
mod records;
pub use records::{is_conn, policy, tg};
pub mod dns_world;
pub mod dnsserver;
pub mod held;
pub mod httpprobe;
pub mod imds;
mod resolv;
pub use resolv::use_resolv_conf;
pub mod kubeapi;
pub mod postgres;
pub mod promql;
pub mod proxyproc;
pub mod resolvers;
pub use tiergate_testpki as pki;
pub mod rsyslog;
pub mod soak;

use serde_json::Value;

/// Addresses every fixture puts on its namespace's `lo`.
pub const NS_ADDRS: &[&str] = &[
    "10.20.0.1/32",
    "10.30.0.1/32",
    "169.254.169.254/32",
    "169.254.170.2/32",
    "100.100.100.200/32",
    "fd00:20::1/128",
    "fd00:30::1/128",
    "fd00:ec2::254/128",
];

/// Where test servers listen (TCP and UDP) inside the namespace.
pub const SERVERS: &[&str] = &[
    "10.20.0.1:80",
    "10.20.0.1:81",
    "10.30.0.1:80",
    "169.254.169.254:80",
    "169.254.170.2:80",
    "100.100.100.200:80",
    "[fd00:20::1]:80",
    "[fd00:30::1]:80",
    "[fd00:ec2::254]:80",
    "127.0.0.1:80",
    "[::1]:80",
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The agent binary under test (set by `cargo xtask test`).
pub fn tiergate_bin() -> PathBuf {
    let p = std::env::var_os("TIERGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("TIERGATE_BIN is not set: run the privileged tests with `cargo xtask test`")
        });
    assert!(p.exists(), "TIERGATE_BIN={} does not exist", p.display());
    p
}

/// The probe binary: cargo builds it next to the test executables' `deps/`.
pub fn probe_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let p = dir.join("tg-probe");
    assert!(
        p.exists(),
        "{} missing (cargo builds it with the tests)",
        p.display()
    );
    p
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for line in text.lines() {
        if let Some((left, right)) = line.split_once(" - ")
            && right.starts_with("cgroup2 ")
        {
            return PathBuf::from(left.split_whitespace().nth(4).expect("mount point"));
        }
    }
    panic!("no cgroup2 mount on this machine");
}

/// Runs `cmd args`, failing the test with its stderr if it fails.
pub fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ensure_bpffs() {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T", "/sys/fs/bpf"])
        .output()
        .expect("stat");
    if !String::from_utf8_lossy(&out.stdout).contains("bpf") {
        sh("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]);
    }
}

/// A free TCP port on loopback for the agent's admin endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One test's world.
pub struct Fixture {
    pub name: String,
    pub netns: String,
    /// cgroup directory used as the agent's --cgroup-root.
    pub cg_root: PathBuf,
    /// Its path as /proc/<pid>/cgroup shows it.
    pub cg_path: String,
    pub bpffs: PathBuf,
    pub dir: PathBuf,
    servers: Option<Child>,
    pub agent: Option<Agent>,
}

impl Fixture {
    pub fn new(test: &str) -> Self {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "privileged tests need root (run `cargo xtask test` as root)"
        );
        ensure_bpffs();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("tg{}-{}-{n}", std::process::id(), test);
        let name: String = name.chars().take(40).collect();
        let mount = cgroup2_mount();
        let cg_root = mount.join(&name);
        std::fs::create_dir_all(&cg_root).expect("create test cgroup");
        let cg_path = format!("/{name}");
        let bpffs = PathBuf::from("/sys/fs/bpf").join(&name);
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let netns = name.clone();
        sh("ip", &["netns", "add", &netns]);
        sh("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        for a in NS_ADDRS {
            // nodad: an IPv6 address still "tentative" refuses connections.
            let mut args = vec!["-n", &netns, "addr", "add", a, "dev", "lo"];
            if a.contains(':') {
                args.push("nodad");
            }
            sh("ip", &args);
        }
        // Unprivileged ICMP "ping" sockets are off by default; allow them in
        // the namespace so the test shows tiergate (not the sysctl) refusing them.
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "sh",
                "-c",
                "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range",
            ],
        );
        let mut f = Fixture {
            name,
            netns,
            cg_root,
            cg_path,
            bpffs,
            dir,
            servers: None,
            agent: None,
        };
        // The tier parents exist before the agent starts, as slices do on a
        // real node; workloads are then created below them.
        for parent in ["t0", "locked", "meta"] {
            f.cgroup(parent);
        }
        f.start_servers();
        f
    }

    fn start_servers(&mut self) {
        // Servers run in the namespace but outside the enforced subtree.
        let mut args = vec!["--netns", self.netns.as_str(), "serve"];
        args.extend_from_slice(SERVERS);
        self.servers = Some(spawn_ready(&args));
    }

    /// Creates (mkdir -p) a cgroup below the root; returns its directory.
    pub fn cgroup(&self, rel: &str) -> PathBuf {
        let d = self.cg_root.join(rel);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }

    /// Creates a cgroup and waits until the agent has written its entry
    /// (until then the kernel judges it by its parent's child tier, which
    /// fails closed where a binding could still match it).
    pub fn known_cgroup(&self, rel: &str) -> PathBuf {
        let agent = self.agent.as_ref().expect("agent running");
        let metric = "tiergate_cgroups_known";
        let before = agent.metric(metric).expect("cgroups metric");
        let d = self.cgroup(rel);
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent.metric(metric).unwrap_or(0.0) <= before {
            assert!(
                Instant::now() < deadline,
                "agent did not learn cgroup {rel} within 5 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// The /proc-style path of a cgroup below the root.
    pub fn cg(&self, rel: &str) -> String {
        format!("{}/{rel}", self.cg_path)
    }

    /// Runs the probe in cgroup `rel` (created if needed) inside the namespace.
    pub fn probe(&self, rel: &str, args: &[&str]) -> Vec<String> {
        let dir = self.cgroup(rel);
        let out = Command::new(probe_bin())
            .arg("--cgroup")
            .arg(&dir)
            .args(["--netns", &self.netns])
            .args(args)
            .output()
            .expect("run probe");
        assert!(
            out.status.success(),
            "probe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// One TCP connect from cgroup `rel`; "ok" or an errno name.
    pub fn tcp(&self, rel: &str, target: &str) -> String {
        self.probe(rel, &["connect", target]).remove(0)
    }

    /// Writes the policy file (a fresh name is not used: reloads rewrite it).
    pub fn write_policy(&self, yaml: &str) -> PathBuf {
        let p = self.policy_path();
        let tmp = self.dir.join(".policy.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write policy");
        std::fs::rename(&tmp, &p).expect("rename policy");
        p
    }

    /// The agent's `--admin-socket` (elevation grants).
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// `tiergate elevate --admin-socket <this test's> --json ARGS`: (exit
    /// code, the JSON reply or Null, stderr).
    pub fn elevate(&self, args: &[&str]) -> (i32, Value, String) {
        let sock = self.admin_socket();
        let mut all = vec![
            "elevate",
            "--admin-socket",
            sock.to_str().expect("utf-8"),
            "--json",
        ];
        all.extend_from_slice(args);
        let (code, out, err) = self.tiergate(&all);
        (
            code,
            serde_json::from_str(out.trim()).unwrap_or(Value::Null),
            err,
        )
    }

    /// Where [`Fixture::write_policy`] writes (the agent's `--policy`).
    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    /// Starts the agent with `policy` and waits until /readyz says ready.
    pub fn start_agent(&mut self, policy: &str) -> &mut Agent {
        self.start_agent_with(policy, &[])
    }

    pub fn start_agent_with(&mut self, policy: &str, extra: &[&str]) -> &mut Agent {
        let path = self.write_policy(policy);
        // `--admin-addr` in `extra` (e.g. 0.0.0.0:PORT) replaces the loopback
        // default; the harness still talks to it on 127.0.0.1:PORT.
        let own_admin = extra.iter().position(|a| *a == "--admin-addr");
        let port = own_admin
            .and_then(|i| extra.get(i + 1)?.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(free_port);
        let default_admin = format!("127.0.0.1:{port}");
        let admin: &[&str] = if own_admin.is_some() {
            &[]
        } else {
            &["--admin-addr", &default_admin]
        };
        // This test's own admin socket and grants file (tests run in
        // parallel; the defaults are the node's).
        let socket = format!("--admin-socket={}", self.admin_socket().display());
        let grants = format!("--grants-file={}", self.dir.join("grants.json").display());
        let mut own: Vec<&str> = Vec::new();
        if !extra.iter().any(|a| a.starts_with("--admin-socket")) {
            own.push(&socket);
        }
        if !extra.iter().any(|a| a.starts_with("--grants-file")) {
            own.push(&grants);
        }
        let log = std::fs::File::create(self.dir.join("agent.log")).expect("log");
        let child = Command::new(tiergate_bin())
            .arg("agent")
            .arg("--policy")
            .arg(&path)
            .arg("--cgroup-root")
            .arg(&self.cg_root)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--events")
            .arg(self.events_path())
            .args(admin)
            .args(["--node-name", "test-node"])
            .args(&own)
            .args(extra)
            .env("TIERGATE_LOG", "info,tiergate=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.agent = Some(Agent {
            child,
            port,
            log: self.dir.join("agent.log"),
        });
        let agent = self.agent.as_mut().expect("agent");
        agent.wait_ready(Duration::from_secs(30));
        agent
    }

    /// The events written so far (a last line still being written is left
    /// out; a line cut short by a `kill -9` of the agent is skipped).
    pub fn events(&self) -> Vec<Value> {
        complete_lines(&self.events_path())
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Lines of the events file that are not JSON objects.
    pub fn bad_event_lines(&self) -> usize {
        complete_lines(&self.events_path())
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).is_err())
            .count()
    }

    /// Waits until an event satisfies `pred`; panics with the events seen.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let evs = self.events();
            if let Some(e) = evs.iter().find(|e| pred(e)) {
                return e.clone();
            }
            if Instant::now() > deadline {
                let tail: Vec<String> = evs.iter().rev().take(10).map(|e| e.to_string()).collect();
                panic!(
                    "no event {what} within 10 s; last events:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `tiergate` with arguments; returns (exit code, stdout, stderr).
    pub fn tiergate(&self, args: &[&str]) -> (i32, String, String) {
        run_tiergate(args)
    }

    pub fn uninstall(&self) -> (i32, String, String) {
        self.tiergate(&["uninstall", "--bpffs", self.bpffs.to_str().expect("utf8")])
    }

    /// IDs of BPF programs attached to the fixture's root cgroup (any type).
    pub fn attached_programs(&self) -> Vec<Value> {
        let out = Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(&self.cg_root)
            .output()
            .expect("bpftool");
        let s = String::from_utf8_lossy(&out.stdout);
        if s.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str::<Vec<Value>>(s.trim()).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
        let _ = Command::new(tiergate_bin_or_none())
            .args(["uninstall", "--bpffs"])
            .arg(&self.bpffs)
            .output();
        let _ = std::fs::remove_dir(&self.bpffs);
        if let Some(mut s) = self.servers.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        remove_cgroup_tree(&self.cg_root);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        if std::env::var_os("TIERGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A file's text up to its last newline.
fn complete_lines(path: &Path) -> String {
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
    text
}

fn tiergate_bin_or_none() -> PathBuf {
    std::env::var_os("TIERGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/bin/false".into())
}

/// Kills every process left in the cgroup tree under `root` and removes the
/// tree, deepest first (shared by the fixtures and the benchmark suite).
pub fn remove_cgroup_tree(root: &Path) {
    let mut dirs = Vec::new();
    walk(root, &mut dirs);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        let _ = std::fs::write(d.join("cgroup.kill"), "1");
    }
    for d in &dirs {
        for _ in 0..50 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Moves this process into cgroup directory `cgroup` (so the kernel judges
/// it as that workload) and then into network namespace `netns` (so nothing
/// it sends leaves the machine). Call before starting any thread.
pub fn enter(cgroup: Option<&str>, netns: Option<&str>) {
    if let Some(dir) = cgroup {
        std::fs::write(
            format!("{dir}/cgroup.procs"),
            std::process::id().to_string(),
        )
        .unwrap_or_else(|e| panic!("cannot join cgroup {dir}: {e}"));
    }
    if let Some(ns) = netns {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))
            .unwrap_or_else(|e| panic!("netns {ns}: {e}"));
        // SAFETY: setns on a valid fd of a netns file; single-threaded here.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
    }
}

fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), out);
            }
        }
    }
}
