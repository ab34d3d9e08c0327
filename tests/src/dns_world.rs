//! The DNS tests' world: a network namespace with the test's own DNS
//! servers on its `lo` (the resolver of the policies, and a rogue one no
//! policy trusts), every 198.18.0.0/15 address local to it, and a TCP echo
//! on :443. Nothing leaves the namespace.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Agent, Fixture, sh, spawn_ready};

pub const RESOLVER: &str = "10.53.0.53";
pub const ROGUE: &str = "10.99.0.53";

pub const ZONE: &str = "
api.example.test 30 A 198.18.0.10
other.example.test 30 A 198.18.0.11
www.example.test 30 CNAME edge.cdn.test
edge.cdn.test 30 A 198.18.0.12
meta.example.test 30 A 169.254.169.254
priv.example.test 30 A 10.20.0.1
vault.example.test 30 A 10.20.0.1
short.example.test 1 A 198.18.0.13
multi.example.test 30 A 198.18.0.21
multi.example.test 30 A 198.18.0.22
multi.example.test 30 A 198.18.0.23
*.fresh.test 30 A 198.19.0.0/16
slow.example.test 30 A 198.18.0.14
";

pub const ROGUE_ZONE: &str = "
api.example.test 30 A 198.18.0.99
";

/// The test's namespace with its DNS servers and a TCP echo on :443.
pub struct World {
    pub f: Fixture,
    /// `tiergate proxy`, when the test runs the proxies apart from the agent.
    pub proxy: Option<Agent>,
    pub children: Vec<Child>,
    pub log: PathBuf,
    pub rogue_log: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            p.kill();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl World {
    pub fn new(name: &str) -> World {
        let f = Fixture::new(name);
        let ns = f.netns.clone();
        for a in [RESOLVER, ROGUE] {
            sh(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{a}/32"), "dev", "lo"],
            );
        }
        // Every 198.18.0.0/15 address is local to the namespace.
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
        let w = |file: &str, text: &str| {
            let p = f.dir.join(file);
            std::fs::write(&p, text).expect("write");
            p
        };
        let zone = w("zone", ZONE);
        let rogue_zone = w("rogue.zone", ROGUE_ZONE);
        let log = f.dir.join("queries.log");
        let rogue_log = f.dir.join("rogue.log");
        w(
            "resolv.conf",
            &format!("nameserver {RESOLVER}\noptions timeout:1 attempts:1\n"),
        );
        w(
            "resolv-tcp.conf",
            &format!("nameserver {RESOLVER}\noptions use-vc timeout:1 attempts:1\n"),
        );
        w(
            "resolv-rogue.conf",
            &format!("nameserver {ROGUE}\noptions timeout:1 attempts:1\n"),
        );
        let s = |p: &PathBuf| p.to_str().expect("utf-8").to_string();
        let children = vec![
            spawn_ready(&[
                "--netns",
                &ns,
                "dns-serve",
                &format!("{RESOLVER}:53"),
                &s(&zone),
                &s(&log),
            ]),
            spawn_ready(&[
                "--netns",
                &ns,
                "dns-serve",
                &format!("{ROGUE}:53"),
                &s(&rogue_zone),
                &s(&rogue_log),
            ]),
            spawn_ready(&["--netns", &ns, "serve", "0.0.0.0:443"]),
        ];
        World {
            f,
            proxy: None,
            children,
            log,
            rogue_log,
        }
    }

    pub fn resolv(&self, which: &str) -> String {
        self.f.dir.join(which).to_str().expect("utf-8").to_string()
    }

    /// Runs the probe in cgroup `rel` with resolver file `which`.
    pub fn probe(&self, rel: &str, which: &str, args: &[&str]) -> Vec<String> {
        let mut a = vec!["--resolv".to_string(), self.resolv(which)];
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        self.f.probe(rel, &a)
    }

    pub fn resolve_connect(&self, rel: &str, name: &str, port: u16) -> String {
        self.probe(
            rel,
            "resolv.conf",
            &["resolve-connect", name, &port.to_string()],
        )
        .remove(0)
    }

    pub fn queried(&self, log: &PathBuf) -> String {
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// The agent's flags for proxies served by `tiergate proxy`
    /// ([`World::start_proxy`]).
    pub fn separate(&self) -> Vec<String> {
        crate::proxyproc::separate_args(&self.f)
    }

    pub fn proxy_dir(&self) -> PathBuf {
        crate::proxyproc::proxy_dir(&self.f)
    }

    /// Starts `tiergate proxy` beside the agent (started with
    /// [`World::separate`]) and waits until it serves by the agent's view.
    pub fn start_proxy(&mut self) -> &mut Agent {
        self.start_proxy_in(None)
    }

    /// [`World::start_proxy`], the process starting in cgroup `dir`.
    pub fn start_proxy_in(&mut self, dir: Option<&std::path::Path>) -> &mut Agent {
        self.start_proxy_with(dir, &[])
    }

    /// [`World::start_proxy_in`], run through `wrapper` (e.g. `setpriv`).
    pub fn start_proxy_with(
        &mut self,
        dir: Option<&std::path::Path>,
        wrapper: &[&str],
    ) -> &mut Agent {
        let p = crate::proxyproc::start(&self.f, dir, wrapper, &[]);
        self.proxy.insert(p)
    }

    /// `tiergate proxy` for this world, admin on `port`, through `wrapper`.
    pub fn proxy_command(&self, port: u16, wrapper: &[&str]) -> std::process::Command {
        crate::proxyproc::command(&self.f, port, wrapper, &[])
    }

    /// With whoever served `rel`'s namespace dead: the address it learned
    /// stays open (the kernel alone decides), a new lookup fails at once
    /// (the proxy's port refuses; no C library timeout), nothing it would
    /// have taught opens, and nothing reaches the resolver.
    pub fn assert_unserved_fails_fast_and_closed(&self, rel: &str) {
        assert_eq!(self.f.tcp(rel, "198.18.0.10:443"), "ok");
        let started = Instant::now();
        let r = self.resolve_connect(rel, "www.example.test", 443);
        assert!(r.starts_with("resolve-error"), "{r}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(self.f.tcp(rel, "198.18.0.12:443"), "EPERM");
        assert!(
            !self.queried(&self.log).contains("www.example.test"),
            "a query went around the proxy"
        );
    }

    /// SIGTERM to `pid` (whoever serves `t0/a`'s namespace) while a
    /// lookup of `slow.example.test` waits for the resolver: that lookup
    /// is answered, and a lookup begun during the stop fails at once.
    pub fn sigterm_answers_what_was_taken(&self, pid: i32) {
        let (slow, during) = std::thread::scope(|s| {
            let slow = s.spawn(|| {
                let t = Instant::now();
                let r = self.resolve_connect("t0/a", "slow.example.test", 443);
                (r, t.elapsed())
            });
            // Its queries are at the resolver, answered 600 ms later.
            eventually("the slow name's query reaches the resolver", || {
                self.queried(&self.log).contains("slow.example.test")
            });
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(100));
            let t = Instant::now();
            let r = self.resolve_connect("t0/a", "www.example.test", 443);
            let during = (r, t.elapsed());
            (slow.join().expect("lookup thread"), during)
        });
        assert_eq!(
            slow.0, "ok 198.18.0.14",
            "the lookup in flight at the stop is answered"
        );
        assert!(
            slow.1 < Duration::from_millis(1500),
            "answered, not after a timeout: {:?}",
            slow.1
        );
        assert!(during.0.starts_with("resolve-error"), "{}", during.0);
        assert!(
            during.1 < Duration::from_millis(900),
            "a lookup during the stop fails at once: {:?}",
            during.1
        );
    }

    /// The A record of the slow lookup is in the event stream.
    pub fn assert_slow_lookup_reported(&self) {
        self.f.wait_event("the answered lookup's record", |e| {
            is_dns(e, "slow.example.test") && e["query"]["type"] == "A" && e["rcode"] == "NoError"
        });
    }

    /// Whoever serves the namespaces: the proxy process, else the agent.
    pub fn server(&self) -> &Agent {
        self.proxy
            .as_ref()
            .or(self.f.agent.as_ref())
            .expect("an agent")
    }

    /// A namespace the proxy does not serve yet: lookups fail at once
    /// (EPERM on the query: never a bypass, never a 5 s client timeout).
    /// Then a long-lived process of the tier in it (as a pod's sandbox is)
    /// makes the agent serve it, and lookups work.
    pub fn warm_up(&mut self, rel: &str) {
        let started = Instant::now();
        let r = self.resolve_connect(rel, "api.example.test", 443);
        assert!(
            r.starts_with("resolve-error"),
            "before the namespace is served: {r}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "an unserved lookup must fail fast, took {:?}",
            started.elapsed()
        );
        let dir = self.f.cgroup("t0/sandbox");
        self.children.push(spawn_ready(&[
            "--cgroup",
            dir.to_str().expect("utf-8"),
            "--netns",
            &self.f.netns,
            "hold",
        ]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .server()
            .metric("tiergate_dns_namespaces")
            .unwrap_or(0.0)
            < 1.0
        {
            assert!(Instant::now() < deadline, "the namespace was never served");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            self.resolve_connect(rel, "api.example.test", 443),
            "ok 198.18.0.10"
        );
    }
}

/// The DNS tests' policy: tier `t0` may reach `names` (and
/// vault.example.test, private) on TCP 443, `locked` nothing.
pub fn dns_policy(root: &str, mode: &str, names: &str) -> String {
    format!(
        r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: e2e-dns
spec:
  mode: {mode}
  defaultTier: locked
  dns:
    resolvers: ["{RESOLVER}"]
  tiers:
    - name: t0
      egress:
        - fqdns: [{names}]
          ports: ["443"]
          protocols: [tcp]
        - fqdns: ["vault.example.test"]
          allowPrivate: true
          ports: ["443"]
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

/// The names `t0` may resolve in most tests.
pub const NAMES: &str = r#""api.example.test", "www.example.test", "meta.example.test", "priv.example.test", "short.example.test""#;

/// A DNS Activity record for `name`.
pub fn is_dns(e: &Value, name: &str) -> bool {
    e["class_uid"] == 4003 && e["query"]["hostname"] == name
}

/// Waits up to 10 s for `f` to hold.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to 6 s for `a` to end by itself, with status 0.
pub fn ends_cleanly(a: &mut Agent) {
    let deadline = Instant::now() + Duration::from_secs(6);
    let status = loop {
        if let Some(st) = a.child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "it did not end by itself");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
