//! The metadata proxy (`metadata: filter`) on the real kernel: real curl in
//! an enforced cgroup connects to 169.254.169.254:80, the hook sends the
//! connection to the agent's proxy (the caller known by its cgroup), and
//! each request is decided on its canonical path and forwarded to a fake
//! metadata service the test owns on the host's loopback.
//!
//! No packet reaches the machine's own 169.254.169.254: clients in the
//! test's namespace would reach the namespace's own echo server on that
//! address if the redirect failed, and the one host-namespace client runs
//! behind an nftables rule that drops anything its cgroup sends to a
//! metadata address.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tiergate_tests::imds::{self, FakeImds};
use tiergate_tests::{Fixture, probe_bin, proxyproc, spawn_ready, tg};

const TOKEN_PATH: &str = "/latest/api/token";
const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

const FILTER: &str = r#"      metadata:
        mode: filter
        require: imdsv2
        allowPaths:
          - /latest/meta-data/instance-id
          - /latest/meta-data/placement/**
          - /latest/meta-data/iam/**
          - /computeMetadata/v1/instance/zone
        denyPaths:
          - /latest/meta-data/iam/security-credentials/**
          - /computeMetadata/v1/instance/service-accounts/**
          - /metadata/identity/**"#;

/// What curl got: status (0 when it could not connect), body, and the peer
/// it reports (getpeername of its socket).
#[derive(Debug)]
struct Got {
    status: u16,
    body: String,
    peer: String,
}

/// The agent with a fake metadata service upstream, and the proxy serving
/// the test namespace.
struct World {
    f: Fixture,
    imds: FakeImds,
    holders: Vec<Child>,
    /// `tiergate proxy`, when the proxies run apart from the agent.
    proxy: Option<tiergate_tests::Agent>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            p.kill();
        }
        for c in &mut self.holders {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn policy(f: &Fixture, tier: &str) -> String {
    tiergate_tests::policy(&f.cg_path, tier)
}

impl World {
    fn new(name: &str, tier: &str) -> World {
        World::with_policy(name, |f| policy(f, tier))
    }

    fn with_policy(name: &str, policy: impl Fn(&Fixture) -> String) -> World {
        World::serving(name, policy, false)
    }

    /// With `separate`, the proxies run in `tiergate proxy` beside the agent.
    fn serving(name: &str, policy: impl Fn(&Fixture) -> String, separate: bool) -> World {
        let mut f = Fixture::new(name);
        let imds = FakeImds::start("127.0.0.1:0".parse().expect("addr")).expect("fake imds");
        let upstream = imds.addr().to_string();
        let p = policy(&f);
        let mut proxy = None;
        if separate {
            let mut args = proxyproc::separate_args(&f);
            args.extend(["--metadata-upstream".into(), upstream.clone()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            f.start_agent_with(&p, &args);
            proxy = Some(proxyproc::start(
                &f,
                None,
                &[],
                &["--metadata-upstream", &upstream],
            ));
        } else {
            f.start_agent_with(&p, &["--metadata-upstream", &upstream]);
        }
        let mut w = World {
            f,
            imds,
            holders: Vec::new(),
            proxy,
        };
        w.hold("t0/hold", true);
        w
    }

    /// Parks a process of cgroup `rel` in the test namespace (or the
    /// host's) and waits until the proxies serve that namespace.
    fn hold(&mut self, rel: &str, in_netns: bool) {
        // Whoever serves the namespaces: the proxy process, else the agent.
        let agent = self
            .proxy
            .as_ref()
            .or(self.f.agent.as_ref())
            .expect("agent");
        let before = agent.metric("tiergate_dns_namespaces").unwrap_or(0.0);
        let dir = self.f.known_cgroup(rel);
        let dir = dir.to_str().expect("utf-8");
        let mut args = vec!["--cgroup", dir];
        if in_netns {
            args.extend(["--netns", self.f.netns.as_str()]);
        }
        args.push("hold");
        self.holders.push(spawn_ready(&args));
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent.metric("tiergate_dns_namespaces").unwrap_or(0.0) <= before {
            assert!(
                Instant::now() < deadline,
                "the proxies did not serve the namespace of {rel}:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// curl from cgroup `rel` in the test namespace (`host`: the host's).
    fn curl_in(&self, rel: &str, host: bool, args: &[&str]) -> Got {
        let dir = self.f.cgroup(rel);
        let mut cmd = Command::new(probe_bin());
        cmd.arg("--cgroup").arg(&dir);
        if !host {
            cmd.args(["--netns", &self.f.netns]);
        }
        let out = cmd
            .args(["exec", "curl", "-s", "--path-as-is", "-m", "8", "-w"])
            .arg("\n%{http_code} %{remote_ip}:%{remote_port}")
            .args(args)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
        let (code, peer) = last.split_once(' ').unwrap_or((last, ""));
        Got {
            status: code.parse().unwrap_or(0),
            body: body.to_string(),
            peer: peer.to_string(),
        }
    }

    fn curl(&self, rel: &str, args: &[&str]) -> Got {
        self.curl_in(rel, false, args)
    }

    fn url(path: &str) -> String {
        format!("http://169.254.169.254{path}")
    }

    /// A session token for cgroup `rel`.
    fn token(&self, rel: &str) -> String {
        let g = self.curl(
            rel,
            &[
                "-X",
                "PUT",
                "-H",
                &format!("{}: 300", imds::TTL_HEADER),
                &Self::url(TOKEN_PATH),
            ],
        );
        assert_eq!(g.status, 200, "token request: {g:?}");
        g.body
    }

    fn get(&self, rel: &str, path: &str, token: Option<&str>, extra: &[&str]) -> Got {
        let url = Self::url(path);
        let th = token.map(|t| format!("{}: {t}", imds::TOKEN_HEADER));
        let mut args: Vec<&str> = Vec::new();
        if let Some(h) = &th {
            args.extend(["-H", h]);
        }
        args.extend(extra);
        args.push(&url);
        self.curl(rel, &args)
    }

    /// Targets the fake service received.
    fn upstream_targets(&self) -> Vec<String> {
        self.imds
            .requests()
            .iter()
            .filter_map(|r| r["target"].as_str().map(str::to_string))
            .collect()
    }

    fn http_events(&self) -> Vec<Value> {
        self.f
            .events()
            .into_iter()
            .filter(|e| e["class_uid"] == 4002)
            .collect()
    }

    fn wait_http(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.f
            .wait_event(what, |e| e["class_uid"] == 4002 && pred(e))
    }
}

fn cgroup_of(e: &Value) -> String {
    tg(e)["workload"]["cgroup_path"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn filter_decides_each_request_on_its_canonical_path() {
    let w = World::new("md-filter", FILTER);
    let a = "t0/a";

    // IMDSv2 required: a token-less GET is refused before anything is
    // forwarded, and the application still sees the metadata address.
    let g = w.get(a, INSTANCE_ID, None, &[]);
    assert_eq!(g.status, 403, "{g:?}");
    assert!(
        g.body.contains("tiergate") && g.body.contains("require: imdsv2"),
        "{g:?}"
    );
    assert_eq!(g.peer, "169.254.169.254:80", "getpeername restored");
    assert!(
        w.upstream_targets().is_empty(),
        "{:?}",
        w.upstream_targets()
    );

    let token = w.token(a);
    let g = w.get(a, INSTANCE_ID, Some(&token), &[]);
    assert_eq!((g.status, g.body.as_str()), (200, imds::INSTANCE_ID));
    // IPv6 (fd00:ec2::254) goes to the same proxy, its peer restored too.
    let g = w.curl(
        a,
        &[
            "-H",
            &format!("{}: {token}", imds::TOKEN_HEADER),
            "http://[fd00:ec2::254]/latest/meta-data/instance-id",
        ],
    );
    assert_eq!(
        (g.status, g.body.as_str()),
        (200, imds::INSTANCE_ID),
        "{g:?}"
    );
    assert_eq!(g.peer, "fd00:ec2::254:80", "getpeername6 restored");
    // A dated version prefix is the same path, forwarded canonically.
    let g = w.get(a, "/2021-07-15/meta-data/instance-id", Some(&token), &[]);
    assert_eq!(g.status, 200, "{g:?}");
    let g = w.get(a, "/latest/meta-data/iam/", Some(&token), &[]);
    assert_eq!(g.status, 200, "{g:?}");

    // Every spelling of the credential path is the denied path.
    for path in [
        CREDS,
        "/latest/meta-data/iam/security-credentials",
        "/latest/meta-data/iam/security-credentials/tiergate-test-role",
        "//latest/meta-data/iam/security-credentials/",
        "/latest//meta-data/iam/security-credentials/",
        "/latest/meta-data/./iam/security-credentials/",
        "/latest/meta-data/x/../iam/security-credentials/",
        "/latest/meta-data/%69am/security-credentials/",
        "/latest/meta-data/iam/%73ecurity-credentials/tiergate-test-role",
        "/2021-07-15/meta-data/iam/security-credentials/",
        "/1.0/meta-data/iam/security-credentials/",
    ] {
        let g = w.get(a, path, Some(&token), &[]);
        assert_eq!(g.status, 403, "{path}: {g:?}");
        assert!(g.body.contains("denyPaths"), "{path}: {g:?}");
    }
    // What cannot be put in one canonical form is refused.
    for path in [
        "/latest/meta-data/iam%2Fsecurity-credentials/",
        "/latest/meta-data/%2e%2e/%2e%2e/%2e%2e/x",
        "/latest/meta-data/%252e%252e/iam/security-credentials/",
    ] {
        let g = w.get(a, path, Some(&token), &[]);
        assert!(g.status == 400 || g.status == 403, "{path}: {g:?}");
    }
    // Paths outside allowPaths, proxied requests, other workloads' tokens.
    let g = w.get(a, "/latest/user-data", Some(&token), &[]);
    assert_eq!(g.status, 403, "{g:?}");
    let g = w.get(
        a,
        INSTANCE_ID,
        Some(&token),
        &["-H", "X-Forwarded-For: 10.0.0.1"],
    );
    assert_eq!(g.status, 403, "{g:?}");
    let g = w.get("t0/b", INSTANCE_ID, Some(&token), &[]);
    assert_eq!(
        g.status, 403,
        "a token issued to t0/a, presented by t0/b: {g:?}"
    );
    assert!(g.body.contains("another workload"), "{g:?}");
    let g = w.get("t0/b", INSTANCE_ID, Some("forged-token"), &[]);
    assert_eq!(g.status, 401, "{g:?}");
    // GCP: the flavor header is required.
    let zone = "/computeMetadata/v1/instance/zone";
    assert_eq!(w.get(a, zone, None, &[]).status, 403);
    let g = w.get(a, zone, None, &["-H", "Metadata-Flavor: Google"]);
    assert_eq!((g.status, g.body.as_str()), (200, imds::GCP_ZONE));

    // Upstream saw only allowed requests, each in canonical form.
    let targets = w.upstream_targets();
    assert_eq!(
        targets,
        vec![
            TOKEN_PATH,
            INSTANCE_ID,
            INSTANCE_ID,
            INSTANCE_ID,
            "/latest/meta-data/iam/",
            zone
        ],
        "upstream targets"
    );

    // Events: one HTTP Activity per request, attributed, with the rule.
    let denied = w.wait_http("credential path denied", |e| {
        e["http_request"]["url"]["path"] == "/latest/meta-data/iam/security-credentials"
            && tg(e)["verdict"] == "deny"
    });
    assert_eq!(denied["http_response"]["code"], 403);
    assert_eq!(denied["activity_id"], 3, "Get");
    assert_eq!(denied["disposition"], "Blocked");
    assert_eq!(tg(&denied)["reason"], "path-denied");
    assert_eq!(
        tg(&denied)["rule"],
        "denyPaths: /latest/meta-data/iam/security-credentials/**"
    );
    assert_eq!(tg(&denied)["token_presented"], true);
    assert_eq!(tg(&denied)["tier"], "t0");
    assert!(tg(&denied)["policy"]["version"].as_str().is_some());
    assert_eq!(cgroup_of(&denied), w.f.cg(a));
    let tokenless = w.wait_http("token-less refused", |e| {
        tg(e)["reason"] == "imdsv2-required"
    });
    assert_eq!(tg(&tokenless)["token_presented"], false);
    let allowed = w.wait_http("allowed request", |e| {
        e["http_request"]["url"]["path"] == INSTANCE_ID && tg(e)["verdict"] == "allow"
    });
    assert_eq!(allowed["http_response"]["code"], 200);
    assert_eq!(cgroup_of(&allowed), w.f.cg(a));
    let other = w.wait_http("other workload's token", |e| {
        tg(e)["reason"] == "token-of-another-workload"
    });
    assert_eq!(cgroup_of(&other), w.f.cg("t0/b"));
    // No event carries a token value.
    let text = std::fs::read_to_string(w.f.events_path()).expect("events");
    assert!(
        !text.contains(&token),
        "a session token leaked into the events"
    );
    // The connect itself is reported too, as sent to the proxy.
    w.f.wait_event("redirected connect", |e| {
        tg(e)["kind"] == "connection"
            && e["dst_endpoint"]["ip"] == "169.254.169.254"
            && tg(e)["reason"] == "metadata-proxy"
    });
    assert!(w.http_events().len() >= 20);
}

#[test]
fn host_namespace_clients_are_filtered_and_attributed_too() {
    let mut w = World::new("md-host", FILTER);
    // Belt and braces for the machine's own metadata service: drop anything
    // the test's cgroups send to a metadata address from the host namespace.
    let table = format!("tg_{}", std::process::id());
    let rules = format!(
        "table inet {table} {{\n  chain out {{\n    type filter hook output priority -300; policy accept;\n    socket cgroupv2 level 1 \"{}\" ip daddr {{ 169.254.0.0/16, 100.100.100.200, 192.0.0.192 }} drop\n  }}\n}}\n",
        w.f.name
    );
    // nft resolves cgroup paths under /sys/fs/cgroup; v2 may be mounted
    // elsewhere (TOOLCHAIN.md), so mount it there in a private namespace.
    let nft = |args: &[&str], input: Option<&str>| {
        let mut c = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t cgroup2 none /sys/fs/cgroup && exec nft \"$@\"",
                "nft",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        if let Some(i) = input {
            std::io::Write::write_all(c.stdin.as_mut().expect("stdin"), i.as_bytes())
                .expect("write");
        }
        drop(c.stdin.take());
        assert!(c.wait().expect("nft").success(), "nft {args:?}");
    };
    nft(&["-f", "-"], Some(&rules));
    struct Drop_(String);
    impl Drop for Drop_ {
        fn drop(&mut self) {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &self.0])
                .status();
        }
    }
    let _cleanup = Drop_(table);

    w.hold("t0/host", false);
    let g = w.curl_in(
        "t0/host",
        true,
        &[
            "-X",
            "PUT",
            "-H",
            &format!("{}: 60", imds::TTL_HEADER),
            &World::url(TOKEN_PATH),
        ],
    );
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(g.peer, "169.254.169.254:80");
    let token = g.body;
    let g = w.curl_in(
        "t0/host",
        true,
        &[
            "-H",
            &format!("{}: {token}", imds::TOKEN_HEADER),
            &World::url(CREDS),
        ],
    );
    assert_eq!(g.status, 403, "{g:?}");
    let e = w.wait_http("host-namespace request", |e| {
        cgroup_of(e) == w.f.cg("t0/host") && tg(e)["reason"] == "path-denied"
    });
    assert_eq!(tg(&e)["tier"], "t0");
}

/// Tries to bind the metadata proxy's port from cgroup `rel`.
fn bind_from(f: &Fixture, rel: &str, netns: bool, addr: &str) -> String {
    let dir = f.cgroup(rel);
    let mut cmd = Command::new(probe_bin());
    cmd.arg("--cgroup").arg(&dir);
    if netns {
        cmd.args(["--netns", &f.netns]);
    }
    let out = cmd.args(["bind", addr]).output().expect("bind probe");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn with_the_agent_away_no_path_opens_and_nobody_takes_its_port() {
    let mut w = World::new("md-away", FILTER);
    let token = w.token("t0/a");
    assert_eq!(w.get("t0/a", INSTANCE_ID, Some(&token), &[]).status, 200);
    // A namespace the proxies do not serve (no process of a filter tier has
    // lived in it): refused in the kernel, never straight through.
    let other = format!("{}x", w.f.netns);
    let ns = |args: &[&str]| {
        assert!(
            Command::new("ip")
                .args(args)
                .status()
                .expect("ip")
                .success(),
            "ip {args:?}"
        )
    };
    ns(&["netns", "add", &other]);
    ns(&["-n", &other, "link", "set", "lo", "up"]);
    let dir = w.f.cgroup("t0/z");
    let out = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(&dir)
        .args(["--netns", &other, "connect", "169.254.169.254:80"])
        .output()
        .expect("probe");
    ns(&["netns", "del", &other]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EPERM");
    w.f.wait_event("unserved namespace refused", |e| {
        tg(e)["kind"] == "connection"
            && tg(e)["reason"] == "metadata-unfiltered"
            && tg(e)["verdict"] == "deny"
            && cgroup_of(e) == w.f.cg("t0/z")
    });
    // Only the agent may bind the proxy's port, even while it runs.
    assert_eq!(bind_from(&w.f, "t0/x", true, "127.0.0.1:15054"), "EPERM");

    w.f.agent.as_mut().expect("agent").kill9();
    let seen = w.upstream_targets().len();
    for _ in 0..3 {
        let g = w.get("t0/a", INSTANCE_ID, Some(&token), &[]);
        assert_eq!(g.status, 0, "with the agent dead nothing answers: {g:?}");
    }
    assert_eq!(w.upstream_targets().len(), seen, "nothing was forwarded");
    for (rel, netns, addr) in [
        ("t0/x", true, "127.0.0.1:15054"),
        ("t0/x", true, "0.0.0.0:15054"),
        ("t0/x", true, "[::]:15054"),
        ("locked/y", false, "127.0.0.1:15054"),
        ("t0/x", true, "0.0.0.0:15053"),
    ] {
        assert_eq!(bind_from(&w.f, rel, netns, addr), "EPERM", "{rel} {addr}");
    }
    // Other ports stay free to bind.
    assert_eq!(bind_from(&w.f, "t0/x", true, "127.0.0.1:15055"), "ok");

    // Back: the namespace is served again and a new token works (the old
    // one is unknown to the new agent: 401, as IMDS answers an old token).
    let upstream = w.imds.addr().to_string();
    let p = policy(&w.f, FILTER);
    w.f.start_agent_with(&p, &["--metadata-upstream", &upstream]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let g = w.get("t0/a", INSTANCE_ID, Some(&token), &[]);
        if g.status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "not served again: {g:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = w.token("t0/a");
    assert_eq!(w.get("t0/a", INSTANCE_ID, Some(&token), &[]).status, 200);
}

#[test]
fn reloads_reach_open_connections_and_hostile_clients_stay_cheap() {
    let open = "      metadata:\n        mode: filter\n        allowPaths: [/latest/meta-data/instance-id]";
    let w = World::new("md-hostile", open);
    let addr = "169.254.169.254:80";
    let probe = |args: &[&str]| -> String {
        let dir = w.f.cgroup("t0/a");
        let out = Command::new(probe_bin())
            .arg("--cgroup")
            .arg(&dir)
            .args(["--netns", &w.f.netns])
            .args(args)
            .output()
            .expect("probe");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // A keep-alive connection keeps nothing a reload takes away.
    let dir = w.f.cgroup("t0/a");
    let pair = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(&dir)
        .args([
            "--netns",
            &w.f.netns,
            "http-pair",
            addr,
            INSTANCE_ID,
            INSTANCE_ID,
            "2000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("pair");
    std::thread::sleep(Duration::from_millis(500));
    w.f.write_policy(&policy(&w.f, "      metadata: deny"));
    let out = pair.wait_with_output().expect("pair");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200 403");
    w.wait_http("refused after the reload", |e| {
        tg(e)["reason"] == "metadata-denied"
    });
    // New connections are refused by the kernel now.
    assert_eq!(w.get("t0/a", INSTANCE_ID, None, &[]).status, 0);

    w.f.write_policy(&policy(&w.f, open));
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.get("t0/a", INSTANCE_ID, None, &[]).status != 200 {
        assert!(Instant::now() < deadline, "filter not back after reload");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A 10 MB head: refused once the head passes the bound, not buffered.
    let r = probe(&["http-big-head", addr, "10000000"]);
    assert!(r == "431" || r == "closed", "big head: {r}");
    // A head that never ends is cut off (5 s head timeout).
    let r = probe(&["http-slow-head", addr]);
    let ms: u64 = r
        .rsplit(' ')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(u64::MAX);
    assert!((4000..9000).contains(&ms), "slow head: {r}");
    // Thousands of pipelined requests: each decided on its own (denied
    // here: not in allowPaths), at most 1000 on one connection.
    // The proxy closes with the rest unread, so the kernel resets the
    // connection and the client may lose answers still in flight: the
    // proxy's own records say what it decided.
    let r = probe(&["http-flood", addr, "3000", CREDS]);
    let n: usize = r
        .split(' ')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((1..=1000).contains(&n), "flood: {r}");
    let flooded = |w: &World| {
        w.http_events()
            .iter()
            .filter(|e| {
                e["http_request"]["url"]["path"] == "/latest/meta-data/iam/security-credentials"
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while flooded(&w) < 1000 {
        assert!(Instant::now() < deadline, "flood: {} records", flooded(&w));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(flooded(&w), 1000, "at most 1000 requests on one connection");
    assert!(
        w.upstream_targets().iter().all(|t| t == INSTANCE_ID),
        "{:?}",
        w.upstream_targets()
    );
}

#[test]
fn audit_tiers_forward_and_report_what_filter_would_refuse() {
    let audit = "      mode: audit\n      metadata:\n        mode: filter\n        denyPaths: [/latest/meta-data/iam/security-credentials/**]";
    let w = World::new("md-audit", audit);
    let g = w.get(
        "t0/a",
        "/latest/meta-data//iam/security-credentials/",
        None,
        &[],
    );
    assert_eq!((g.status, g.body.as_str()), (200, imds::ROLE), "{g:?}");
    assert_eq!(
        w.upstream_targets(),
        vec![CREDS],
        "forwarded in canonical form"
    );
    let e = w.wait_http("audit-deny", |e| tg(e)["verdict"] == "audit-deny");
    assert_eq!(tg(&e)["reason"], "path-denied");
    assert_eq!(e["disposition"], "Allowed");
    assert_eq!(e["http_response"]["code"], 200);
}

/// Under an elevation grant the proxy judges each request by the granted
/// tier's metadata rules (as the kernel judges the connection by its
/// flags), and the request record carries the grant; at revoke the own
/// tier's rules are back.
#[test]
fn an_elevation_grant_brings_the_granted_tiers_metadata_rules() {
    let w = World::with_policy("md-elev", |f| {
        policy(f, FILTER).replace(
            "  tiers:\n",
            "  elevation:\n    - {from: t0, to: t2, maxDuration: 1h}\n  tiers:\n    - name: t2\n      metadata:\n        mode: filter\n        allowPaths: [/latest/meta-data/**]\n",
        )
    });
    let a = "t0/a";
    let token = w.token(a);
    let creds = format!("{CREDS}{}", imds::ROLE);
    assert_eq!(
        w.get(a, &creds, Some(&token), &[]).status,
        403,
        "t0 denies it"
    );

    let cg = w.f.cg(a);
    let elevate = |args: &[&str]| {
        let (code, v, err) = w.f.elevate(args);
        assert_eq!(code, 0, "{err}");
        v
    };
    let g = elevate(&[
        "--cgroup", &cg, "--to", "t2", "--for", "10m", "--ticket", "INC-5", "--reason", "rotate",
    ]);
    let id = g["grant"]["id"].as_str().unwrap().to_string();
    let got = w.get(a, &creds, Some(&token), &[]);
    assert_eq!(got.status, 200, "t2 allows it: {got:?}");
    let e = w.wait_http("allowed under the grant", |e| {
        tg(e)["verdict"] == "allow" && e["http_request"]["url"]["path"] == creds.as_str()
    });
    assert_eq!(tg(&e)["tier"], "t2");
    assert_eq!(tg(&e)["elevation"]["id"], id.as_str());
    let before = w.wait_http("denied before the grant", |e| {
        tg(e)["verdict"] == "deny" && e["http_request"]["url"]["path"] == creds.as_str()
    });
    assert!(tg(&before).get("elevation").is_none(), "{before}");

    elevate(&["revoke", &id]);
    assert_eq!(w.get(a, &creds, Some(&token), &[]).status, 403, "t0 again");
}

/// With the proxies in `tiergate proxy` (`--proxies separate`), metadata
/// requests are filtered the same and their records reach the agent's
/// stream, attributed; with the agent dead the proxy keeps filtering.
#[test]
fn the_proxy_process_filters_metadata_too() {
    let mut w = World::serving("md-sep", |f| policy(f, FILTER), true);
    let a = "t0/a";
    let token = w.token(a);
    let g = w.get(a, INSTANCE_ID, Some(&token), &[]);
    assert_eq!((g.status, g.body.as_str()), (200, imds::INSTANCE_ID));
    let g = w.get(a, &format!("{CREDS}role"), Some(&token), &[]);
    assert_eq!(g.status, 403, "{g:?}");
    let denied = w.f.wait_event("the proxy's metadata record", |e| {
        e["class_uid"] == 4002 && tg(e)["verdict"] == "deny"
    });
    assert_eq!(tg(&denied)["tier"], "t0");
    assert!(cgroup_of(&denied).ends_with("/t0/a"), "{denied}");

    w.f.agent.as_mut().expect("agent").kill9();
    let g = w.get(a, INSTANCE_ID, Some(&token), &[]);
    assert_eq!((g.status, g.body.as_str()), (200, imds::INSTANCE_ID));
    let g = w.get(a, &format!("{CREDS}role"), Some(&token), &[]);
    assert_eq!(g.status, 403, "with no agent: {g:?}");
}
