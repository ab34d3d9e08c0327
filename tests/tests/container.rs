//! The container image, run as the DaemonSet runs it: the security context
//! is read from `deploy/kubernetes/` (capabilities dropped to the documented
//! set, not privileged, read-only root, hostPID, host network, seccomp) and
//! turned into podman flags, with the DaemonSet's mounts (bpffs with
//! HostToContainer propagation, the node's cgroup v2 tree read-only at
//! /sys/fs/cgroup, the policy read-only at /etc/tiergate) and a private
//! cgroup namespace, as containerd and CRI-O give containers on cgroup v2
//! nodes. `--bpffs` and `--cgroup-root` point at this test's own pin
//! directory and cgroup.
//!
//! Checked: the agent starts with exactly that set and becomes ready; a deny
//! is enforced in a test cgroup while an allowed destination connects; the
//! DNS proxy serves a workload's network namespace (the reason for
//! CAP_SYS_ADMIN, CAP_SYS_PTRACE and CAP_NET_ADMIN); enforcement holds while the container
//! is stopped and the restarted container re-adopts the pins; and without
//! any one capability of the set the agent exits 1 with its one sentence.
//!
//! The image is built by `cargo xtask image --bin $TIERGATE_BIN` (cached
//! layers make a rebuild of the same binary instant). Skipped, with the
//! reason printed, only where podman is missing (`cargo xtask setup`
//! installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tiergate_tests::{Fixture, cgroup2_mount, free_port, http_get, metric_value, sh, spawn_ready};

/// The test image's tag (not the release tags `cargo xtask image` gives).
const IMAGE: &str = "localhost/tiergate:container-test";
const RESOLVER: &str = "10.53.0.53";
const ZONE: &str = "api.example.test 30 A 198.18.0.10\n";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn podman_present() -> bool {
    Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("run podman")
}

/// Builds the image from the binary under test, once per test run.
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bin = tiergate_tests::tiergate_bin()
            .canonicalize()
            .expect("TIERGATE_BIN");
        let started = Instant::now();
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace())
            .args(["xtask", "image", "--tag", IMAGE, "--bin"])
            .arg(&bin)
            .output()
            .expect("run cargo xtask image");
        assert!(
            out.status.success(),
            "cargo xtask image failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "image {IMAGE} built from {} in {:?}",
            bin.display(),
            started.elapsed()
        );
    });
    IMAGE
}

/// The agent container's security context and pod-level host namespaces,
/// as the DaemonSet under deploy/kubernetes/ declares them.
#[derive(Debug)]
struct DaemonSetSecurity {
    file: PathBuf,
    /// capabilities.add, without the CAP_ prefix (Kubernetes spelling).
    add: Vec<String>,
    drop_all: bool,
    privileged: bool,
    read_only_root: bool,
    host_pid: bool,
    host_network: bool,
    /// seccompProfile.type (absent: Kubernetes runs Unconfined).
    seccomp: Option<String>,
}

/// Every YAML file under `dir`.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

/// `key: value` of the first line (comments removed) whose key is `key`,
/// with the line's index.
fn find_key<'a>(lines: &[&'a str], key: &str) -> Option<(usize, &'a str)> {
    lines.iter().enumerate().find_map(|(i, l)| {
        let l = l.trim_start().trim_start_matches("- ");
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| (i, v.trim()))
    })
}

/// A YAML sequence written `[A, B]` or as `- A` lines below `at`.
fn sequence(lines: &[&str], at: usize, inline: &str) -> Vec<String> {
    if let Some(flow) = inline.strip_prefix('[') {
        return flow
            .trim_end_matches(']')
            .split(',')
            .map(|s| s.trim().trim_matches(['"', '\'']).to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    lines[at + 1..]
        .iter()
        .map(|l| l.trim())
        .take_while(|l| l.starts_with("- "))
        .map(|l| l[2..].trim().trim_matches(['"', '\'']).to_string())
        .collect()
}

fn daemonset_security() -> DaemonSetSecurity {
    let mut files = Vec::new();
    yaml_files(&workspace().join("deploy/kubernetes"), &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        // The DaemonSet document that adds the agent's capabilities (an
        // overlay's sidecars may only drop theirs; tiergate-proxy's are its
        // own).
        for doc in text.split("\n---") {
            if doc.contains("kind: DaemonSet")
                && doc.contains("capabilities:")
                && doc.contains("add:")
                && doc.contains("            - agent\n")
            {
                found.push((file.clone(), doc.to_string()));
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "expected exactly one agent DaemonSet adding capabilities under deploy/kubernetes, found {:?}",
        found.iter().map(|(f, _)| f).collect::<Vec<_>>()
    );
    let (file, doc) = found.remove(0);
    let lines: Vec<&str> = doc
        .lines()
        .map(|l| l.split_once(" #").map_or(l, |(a, _)| a))
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let flag = |key: &str| find_key(&lines, key).is_some_and(|(_, v)| v == "true");
    let list = |key: &str| {
        find_key(&lines, key)
            .map(|(i, v)| sequence(&lines, i, v))
            .unwrap_or_default()
    };
    let seccomp = find_key(&lines, "seccompProfile").and_then(|(i, v)| {
        if let Some(inner) = v.strip_prefix('{') {
            inner.trim_end_matches('}').split(',').find_map(|kv| {
                kv.trim()
                    .strip_prefix("type:")
                    .map(|t| t.trim().to_string())
            })
        } else {
            find_key(&lines[i + 1..], "type").map(|(_, t)| t.to_string())
        }
    });
    DaemonSetSecurity {
        add: list("add"),
        drop_all: list("drop") == ["ALL"],
        privileged: flag("privileged"),
        read_only_root: flag("readOnlyRootFilesystem"),
        host_pid: flag("hostPID"),
        host_network: flag("hostNetwork"),
        seccomp,
        file,
    }
}

/// The podman flags for that context, with `caps` as capabilities.add.
fn security_flags(sc: &DaemonSetSecurity, caps: &[String]) -> Vec<String> {
    let mut f: Vec<String> = vec![
        // Checked facts of these machines: crun refuses the hybrid cgroup
        // layout, and root cannot raise ulimits (no CAP_SYS_RESOURCE).
        "--runtime=runc".into(),
        "--ulimit=nofile=1024:1024".into(),
        "--ulimit=nproc=1024:1024".into(),
        // containerd and CRI-O on cgroup v2 nodes: a cgroup namespace per
        // container (podman's default on this hybrid host would be the
        // host's).
        "--cgroupns=private".into(),
    ];
    if sc.drop_all {
        f.push("--cap-drop=ALL".into());
    }
    if !caps.is_empty() {
        f.push(format!("--cap-add={}", caps.join(",")));
    }
    if sc.privileged {
        f.push("--privileged".into());
    }
    if sc.read_only_root {
        f.push("--read-only".into());
    }
    if sc.host_pid {
        f.push("--pid=host".into());
    }
    if sc.host_network {
        f.push("--network=host".into());
    }
    match sc.seccomp.as_deref() {
        // podman's default profile is its RuntimeDefault.
        Some("RuntimeDefault") => {}
        Some("Unconfined") | None => f.push("--security-opt=seccomp=unconfined".into()),
        Some(other) => panic!("seccompProfile type {other} is not modelled by this test"),
    }
    f
}

/// One test's container world: the fixture, the DNS server, and the
/// container (removed first on drop, before the fixture uninstalls).
struct World {
    name: String,
    port: u16,
    args: Vec<String>,
    children: Vec<Child>,
    f: Fixture,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "5", &self.name]);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl World {
    fn new() -> World {
        let f = Fixture::new("container");
        let ns = f.netns.clone();
        sh(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{RESOLVER}/32"),
                "dev",
                "lo",
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "local",
                "198.18.0.0/15",
                "dev",
                "lo",
            ],
        );
        let zone = f.dir.join("zone");
        std::fs::write(&zone, ZONE).expect("zone");
        std::fs::write(
            f.dir.join("resolv.conf"),
            format!("nameserver {RESOLVER}\noptions timeout:1 attempts:1\n"),
        )
        .expect("resolv.conf");
        let s = |p: &Path| p.to_str().expect("utf-8").to_string();
        let children = vec![
            spawn_ready(&[
                "--netns",
                &ns,
                "dns-serve",
                &format!("{RESOLVER}:53"),
                &s(&zone),
                &s(&f.dir.join("queries.log")),
            ]),
            spawn_ready(&["--netns", &ns, "serve", "0.0.0.0:443"]),
        ];
        // The policy directory, mounted read-only as the ConfigMap is.
        let etc = f.dir.join("etc");
        std::fs::create_dir_all(&etc).expect("etc");
        std::fs::write(etc.join("policy.yaml"), policy(&f.cg_path)).expect("policy");
        let port = free_port();
        let rel = f
            .cg_root
            .strip_prefix(cgroup2_mount())
            .expect("under the mount");
        // The DaemonSet's arguments, with this test's cgroup, pins and port.
        let args = vec![
            "agent".to_string(),
            "--policy=/etc/tiergate/policy.yaml".into(),
            "--events=-".into(),
            format!("--cgroup-root=/sys/fs/cgroup/{}", rel.display()),
            format!("--bpffs={}", f.bpffs.display()),
            format!("--admin-addr=127.0.0.1:{port}"),
            "--grants-file=/var/lib/tiergate/grants/grants.json".into(),
            "--log-format=json".into(),
            "--node-name=test-node".into(),
        ];
        World {
            name: f.name.clone(),
            port,
            args,
            children,
            f,
        }
    }

    /// The DaemonSet's volume mounts.
    fn mounts(&self) -> Vec<String> {
        vec![
            format!(
                "--volume={}:/etc/tiergate:ro",
                self.f.dir.join("etc").display()
            ),
            "--volume=/sys/fs/bpf:/sys/fs/bpf:rslave".into(),
            format!("--volume={}:/sys/fs/cgroup:ro", cgroup2_mount().display()),
            // The admin socket and the grants, as the DaemonSet mounts them.
            format!("--volume={}:/run/tiergate", self.dir("run").display()),
            format!(
                "--volume={}:/var/lib/tiergate/grants",
                self.dir("grants").display()
            ),
        ]
    }

    /// A directory of this test's, created.
    fn dir(&self, name: &str) -> std::path::PathBuf {
        let d = self.f.dir.join(name);
        std::fs::create_dir_all(&d).expect("test dir");
        d
    }

    /// `podman run` arguments: security flags, mounts, image, agent args.
    fn run_args(&self, sc: &DaemonSetSecurity, caps: &[String], bpffs: &Path) -> Vec<String> {
        let mut a = security_flags(sc, caps);
        a.extend(self.mounts());
        a.push(image().to_string());
        a.extend(self.args.iter().map(|s| {
            if s.starts_with("--bpffs=") {
                format!("--bpffs={}", bpffs.display())
            } else {
                s.clone()
            }
        }));
        a
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn running(&self) -> bool {
        let out = podman(&["inspect", "-f", "{{.State.Running}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    fn wait_ready(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((200, _)) = http_get(self.port, "/readyz") {
                return;
            }
            if !self.running() || Instant::now() > deadline {
                panic!("agent container not ready ({what}):\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metric(&self, name: &str) -> f64 {
        http_get(self.port, "/metrics")
            .and_then(|(_, body)| metric_value(&body, name))
            .unwrap_or(0.0)
    }

    fn wait_until(&self, what: &str, ok: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what} within 10 s; container log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resolve_connect(&self, rel: &str) -> String {
        let resolv = self.f.dir.join("resolv.conf");
        self.f
            .probe(
                rel,
                &[
                    "--resolv",
                    resolv.to_str().expect("utf-8"),
                    "resolve-connect",
                    "api.example.test",
                    "443",
                ],
            )
            .remove(0)
    }
}

/// t0 may reach 10.20.0.0/16 and api.example.test:443; locked nothing.
fn policy(root: &str) -> String {
    format!(
        r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: e2e-container
spec:
  mode: enforce
  defaultTier: locked
  dns:
    resolvers: ["{RESOLVER}"]
  tiers:
    - name: t0
      egress:
        - cidrs: ["10.20.0.0/16"]
        - fqdns: ["api.example.test"]
          ports: ["443"]
          protocols: [tcp]
    - name: locked
      egress: []
  bindings:
    - tier: t0
      match:
        cgroupPath: "{root}/t0/**"
    - tier: locked
      match:
        cgroupPath: "{root}/locked/**"
"#
    )
}

/// The effective capabilities of the container's process, by name.
fn effective_caps(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff")
}

/// capability.h bit numbers of the capabilities this test may meet.
fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} is not in this test's table"),
    }
}

#[test]
fn image_runs_the_agent_with_exactly_the_daemonset_security_context() {
    if !podman_present() {
        eprintln!("SKIPPED: podman is not installed (`cargo xtask setup` installs it)");
        return;
    }
    let started = Instant::now();
    let sc = daemonset_security();
    assert!(
        sc.drop_all && !sc.privileged && sc.read_only_root && sc.host_pid && sc.host_network,
        "the DaemonSet's context is not the documented one: {sc:?}"
    );
    assert!(!sc.add.is_empty(), "no capabilities added in {sc:?}");
    let mut w = World::new();
    let image = image();

    // 1. Start with exactly the set; ready; the process holds exactly it.
    let mut run = vec!["run", "-d", "--name", &w.name];
    let args = w.run_args(&sc, &sc.add, &w.f.bpffs);
    run.extend(args.iter().map(String::as_str));
    let out = podman(&run);
    assert!(
        out.status.success(),
        "podman run {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.wait_ready("first start");
    let pid = podman(&["inspect", "-f", "{{.State.Pid}}", &w.name]);
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let want = sc.add.iter().fold(0u64, |m, c| m | 1 << cap_bit(c));
    assert_eq!(
        effective_caps(&pid),
        want,
        "the agent's effective capabilities are not exactly {:?}",
        sc.add
    );
    let log = w.logs();
    if let Some(l) = log.lines().find(|l| l.contains("cgroup namespace")) {
        eprintln!("{l}");
    }
    assert!(
        log.contains("entered the node's cgroup namespace"),
        "the agent did not leave its private cgroup namespace:\n{log}"
    );

    // 2. A deny in a test cgroup; an allowed destination connects.
    assert_eq!(w.f.tcp("t0/a", "10.20.0.1:80"), "ok");
    assert_eq!(w.f.tcp("t0/a", "10.30.0.1:80"), "EPERM");
    assert_eq!(w.f.tcp("locked/a", "10.20.0.1:80"), "EPERM");
    w.wait_until("no deny event on the container's stdout", || {
        w.logs().lines().any(|l| {
            l.contains("\"class_uid\":4001")
                && l.contains("\"verdict\":\"deny\"")
                && l.contains("\"ip\":\"10.30.0.1\"")
        })
    });

    // 3. The DNS proxy serves the workload's namespace: /proc/<pid>/ns/net
    // of a root process with every capability (CAP_SYS_PTRACE) and
    // setns(CLONE_NEWNET) into it (CAP_SYS_ADMIN).
    let sandbox = w.f.cgroup("t0/sandbox");
    let netns = w.f.netns.clone();
    w.children.push(spawn_ready(&[
        "--cgroup",
        sandbox.to_str().expect("utf-8"),
        "--netns",
        &netns,
        "hold",
    ]));
    w.wait_until("the DNS proxy never served the namespace", || {
        w.metric("tiergate_dns_namespaces") >= 1.0
    });
    assert_eq!(w.resolve_connect("t0/b"), "ok 198.18.0.10");

    // 4. Stop: enforcement stays (pinned). Start: the pins are re-adopted
    // (no second attachment, the kernel's counters go on).
    let attached = w.f.attached_programs().len();
    assert!(attached >= 5, "bpftool shows {attached} programs attached");
    let denies = w.metric("tiergate_kernel_verdicts{verdict=\"deny\"}");
    let out = podman(&["stop", "-t", "10", &w.name]);
    assert!(out.status.success(), "podman stop failed");
    assert_eq!(
        w.f.tcp("t0/a", "10.30.0.1:80"),
        "EPERM",
        "enforcement lapsed with the container stopped"
    );
    assert_eq!(w.f.tcp("t0/a", "10.20.0.1:80"), "ok");
    let out = podman(&["start", &w.name]);
    assert!(
        out.status.success(),
        "podman start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.wait_ready("after the restart");
    assert_eq!(
        w.f.attached_programs().len(),
        attached,
        "the restarted agent attached a second copy"
    );
    assert_eq!(w.f.tcp("t0/a", "10.30.0.1:80"), "EPERM");
    assert_eq!(w.f.tcp("t0/a", "10.20.0.1:80"), "ok");
    w.wait_until("the kernel's deny counter did not go on", || {
        w.metric("tiergate_kernel_verdicts{verdict=\"deny\"}") >= denies + 2.0
    });
    w.wait_until("the restarted agent never served the namespace", || {
        w.metric("tiergate_dns_namespaces") >= 1.0
    });
    assert_eq!(w.resolve_connect("t0/c"), "ok 198.18.0.10");
    let _ = podman(&["rm", "-f", "-t", "10", &w.name]);

    // 5. Without any one capability of the set: exit 1, one sentence that
    // names it, and nothing touched (no pin directory).
    let refused_pins = PathBuf::from(format!("{}-refused", w.f.bpffs.display()));
    for gone in &sc.add {
        let caps: Vec<String> = sc.add.iter().filter(|c| *c != gone).cloned().collect();
        let mut run = vec!["run", "--rm"];
        let args = w.run_args(&sc, &caps, &refused_pins);
        run.extend(args.iter().map(String::as_str));
        let out = podman(&run);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "without {gone}: {err}");
        let err = err.trim();
        eprintln!("without {gone}: {err}");
        assert_eq!(
            err.lines().count(),
            1,
            "without {gone}, more than one line: {err}"
        );
        assert!(
            err.starts_with(&format!("tiergate: tiergate agent lacks CAP_{gone} (")),
            "without {gone}: {err}"
        );
        for kept in &caps {
            assert!(
                !err.contains(&format!("lacks CAP_{kept}")),
                "without {gone}, {kept} is named missing too: {err}"
            );
        }
        // The set the agent asks for is the DaemonSet's.
        let named: Vec<String> = sc.add.iter().map(|c| format!("CAP_{c}")).collect();
        let listed = match named.as_slice() {
            [one] => one.clone(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
            [] => unreachable!(),
        };
        assert!(
            err.contains(&format!("it needs exactly {listed} (")),
            "the agent's set differs from the DaemonSet's {:?} ({}): {err}",
            sc.add,
            sc.file.display()
        );
        assert!(
            !refused_pins.exists(),
            "a refused start created {}",
            refused_pins.display()
        );
    }
    eprintln!(
        "container test: {:?} proven on this kernel (CAP_SYS_RESOURCE is asked for only \
         below Linux 5.11, see the preflight unit tests) in {:?}",
        sc.add,
        started.elapsed()
    );
}
