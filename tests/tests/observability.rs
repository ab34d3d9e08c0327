//! What operators look at: the Grafana dashboard (deploy/grafana/tiergate.json)
//! and the alert rules (deploy/kubernetes/components/prometheus-operator/)
//! name only metrics a running agent and collector really export; and the
//! admin endpoint, bound to every address as the DaemonSet binds it, serves
//! workload identities to loopback clients only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tiergate_tests::pki::{AGENT_ID, COLLECTOR_ID, Ca, Leaf, TempDir, TlsFiles};
use tiergate_tests::promql::{exported_names, metric_names};
use tiergate_tests::{Fixture, free_port, http_get, metric_value, policy, tiergate_bin};

const BODY: &str = r#"      egress:
        - cidrs: ["10.20.0.0/16"]"#;

/// Series alert rules may name that Prometheus itself makes.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A `tiergate collector` on loopback, killed on drop.
struct Collector {
    child: Child,
    port: u16,
    admin: u16,
}

impl Collector {
    fn start(dir: &Path, files: &TlsFiles) -> Collector {
        let (port, admin) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join("collector.log")).unwrap();
        let child = Command::new(tiergate_bin())
            .arg("collector")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .arg("--tls-ca")
            .arg(&files.ca)
            .arg("--tls-cert")
            .arg(&files.cert)
            .arg("--tls-key")
            .arg(&files.key)
            .args(["--allow-spiffe", AGENT_ID])
            .arg("--sink")
            .arg(format!("file:{}", dir.join("collected.jsonl").display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn collector");
        let c = Collector { child, port, admin };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(admin, "/readyz").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "collector not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .expect("collector /metrics")
            .1
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent streaming to a collector, both with real SVIDs; the agent's
/// admin endpoint bound to `admin` (the harness reaches it on loopback).
fn agent_and_collector(f: &mut Fixture, pki: &TempDir, admin: &str) -> Collector {
    let ca = Ca::new("tiergate test CA");
    let cfiles = pki.write("collector", &ca.pem(), &ca.issue(Leaf::collector()));
    let afiles = pki.write("agent", &ca.pem(), &ca.issue(Leaf::agent()));
    let c = Collector::start(&f.dir, &cfiles);
    let spool = f.dir.join("spool");
    let args: Vec<String> = vec![
        "--admin-addr".into(),
        admin.into(),
        "--collector".into(),
        format!("https://127.0.0.1:{}", c.port),
        "--collector-spiffe-id".into(),
        COLLECTOR_ID.into(),
        "--tls-ca".into(),
        afiles.ca.display().to_string(),
        "--tls-cert".into(),
        afiles.cert.display().to_string(),
        "--tls-key".into(),
        afiles.key.display().to_string(),
        "--spool".into(),
        spool.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = policy(&f.cg_path.clone(), BODY);
    f.start_agent_with(&p, &args);
    c
}

/// Every PromQL expression of a Grafana dashboard: panel targets (rows'
/// nested panels included) and template variable queries.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// `expr:` lines of the alert rules (one expression per line, by the file's
/// own convention).
fn rule_exprs(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| {
            let e = e.trim();
            assert!(
                !e.starts_with('|') && !e.starts_with('>'),
                "keep alert expressions on one line: {e}"
            );
            e.trim_matches('"').to_string()
        })
        .collect()
}

/// The names `exprs` select that `exported` lacks, with the expression.
fn unknown(exprs: &[String], exported: &BTreeSet<String>, also: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    for e in exprs {
        let names = metric_names(e).unwrap_or_else(|err| panic!("bad PromQL: {err}"));
        for n in names {
            if !exported.contains(&n) && !also.contains(&n.as_str()) {
                missing.push(format!("{n} (in {e})"));
            }
        }
    }
    missing
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    let mut f = Fixture::new("obsnames");
    let pki = TempDir::new();
    let c = agent_and_collector(&mut f, &pki, &format!("127.0.0.1:{}", free_port()));
    // Traffic, so the labelled families have samples too and the records
    // travel to the collector.
    assert_eq!(f.tcp("t0/a", "10.20.0.1:80"), "ok");
    assert_eq!(f.tcp("t0/a", "10.30.0.1:80"), "EPERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric_value(&c.metrics(), "tiergate_collector_records_total").unwrap_or(0.0) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "no records reached the collector"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent = f.agent.as_ref().unwrap();
    let (status, agent_metrics) = agent.get("/metrics").expect("agent /metrics");
    assert_eq!(status, 200);
    let mut exported = exported_names(&agent_metrics);
    exported.extend(exported_names(&c.metrics()));
    for sure in [
        "tiergate_ready",
        "tiergate_events_total",
        "tiergate_events_lost_total",
        "tiergate_collector_gaps_total",
    ] {
        assert!(exported.contains(sure), "{sure} not exported: {exported:?}");
    }

    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/tiergate.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 25, "only {} expressions found", exprs.len());
    let named: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| metric_names(e).unwrap_or_default())
        .collect();
    assert!(named.len() >= 25, "dashboard names only {named:?}");
    let missing = unknown(&exprs, &exported, &[]);
    assert!(
        missing.is_empty(),
        "the dashboard names metrics nobody exports:\n{}",
        missing.join("\n")
    );

    let rules = std::fs::read_to_string(
        repo().join("deploy/kubernetes/components/prometheus-operator/prometheusrule.yaml"),
    )
    .unwrap();
    let exprs = rule_exprs(&rules);
    assert!(exprs.len() >= 8, "only {} alert expressions", exprs.len());
    let missing = unknown(&exprs, &exported, PROMETHEUS_OWN);
    assert!(
        missing.is_empty(),
        "the alerts name metrics nobody exports:\n{}",
        missing.join("\n")
    );
}

/// A veth pair from the host to the fixture's namespace: the namespace is a
/// client off the node. Removed on drop (and with the namespace).
struct Veth {
    host: String,
}

impl Veth {
    const HOST_ADDR: &'static str = "198.51.100.1";

    fn new(netns: &str) -> Veth {
        let n = std::process::id() % 100_000;
        let (host, peer) = (format!("tgoh{n}"), format!("tgon{n}"));
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", netns,
        ]);
        let v = Veth { host: host.clone() };
        ip(&["addr", "add", "198.51.100.1/30", "dev", &host]);
        ip(&["link", "set", &host, "up"]);
        ip(&["-n", netns, "addr", "add", "198.51.100.2/30", "dev", &peer]);
        ip(&["-n", netns, "link", "set", &peer, "up"]);
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .output();
    }
}

/// HTTP status of a GET made with curl from inside `netns`.
fn curl_from(netns: &str, url: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}", url])
        .output()
        .expect("curl (the set-up installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn identities_are_served_to_loopback_clients_only() {
    let mut f = Fixture::new("obsadmin");
    let pki = TempDir::new();
    let port = free_port();
    let _c = agent_and_collector(&mut f, &pki, &format!("0.0.0.0:{port}"));
    let veth = Veth::new(&f.netns);
    let base = format!("http://{}:{port}", Veth::HOST_ADDR);
    // Off the node: metrics and health, never identities.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            curl_from(&f.netns, &format!("{base}{path}")),
            "200",
            "{path}"
        );
    }
    for path in [
        "/inventory",
        "/inventory?enforced=true",
        "/dns/learned?cgroup=/x&ip=10.0.0.1",
    ] {
        assert_eq!(
            curl_from(&f.netns, &format!("{base}{path}")),
            "403",
            "{path}"
        );
    }
    // On the node: the inventory and `tiergate inventory` as before.
    let agent = f.agent.as_ref().unwrap();
    let (status, body) = agent.get("/inventory").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"node\":\"test-node\""), "{body}");
    let (code, out, err) = f.tiergate(&["inventory", "--admin-addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node test-node"), "{out}");
    drop(veth);
}
