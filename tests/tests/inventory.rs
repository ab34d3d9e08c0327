//! The inventory with last use: a real agent counts an enforced workload's
//! real attempts (allowed, denied, a refused socket) and serves them with
//! the last attempt's time on `/inventory` and `tiergate inventory`; and
//! `tiergate inventory --store` merges the identities of two nodes from
//! a collector's SQLite store.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tiergate_collector::store::{Aggregate, Store, observe};
use tiergate_tests::{Fixture, policy, tg};

const BODY: &str = r#"      egress:
        - cidrs: ["10.20.0.0/16"]"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn rfc3339(ms: u64) -> String {
    let mut s = String::new();
    tiergate_collector::sinks::push_timestamp(&mut s, ms);
    s
}

/// The `/inventory` row of cgroup `path`, if the agent lists it.
fn row(f: &Fixture, path: &str) -> Option<Value> {
    let (status, body) = f.agent.as_ref().expect("agent").get("/inventory")?;
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("inventory JSON");
    doc["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .find(|w| w["cgroup_path"] == path)
        .cloned()
}

fn attempts(w: &Value) -> (u64, u64, u64) {
    let a = &w["attempts"];
    let n = |k: &str| {
        a[k].as_u64()
            .unwrap_or_else(|| panic!("attempts.{k} in {w}"))
    };
    (n("allowed"), n("denied"), n("audit_denied"))
}

#[test]
fn inventory_counts_real_attempts_with_the_last_attempt_time() {
    let mut f = Fixture::new("inventory");
    let pol = policy(&f.cg_path, BODY);
    f.start_agent(&pol);
    f.known_cgroup("t0/a");
    f.known_cgroup("t0/idle");
    let (a, idle) = (f.cg("t0/a"), f.cg("t0/idle"));
    let (allowed, denied) = (5usize, 3usize);

    let before = now_ms();
    let mut args = vec!["connect"];
    args.extend(std::iter::repeat_n("10.20.0.1:80", allowed));
    args.extend(std::iter::repeat_n("10.30.0.1:80", denied));
    let out = f.probe("t0/a", &args);
    assert_eq!(out[..allowed], vec!["ok"; allowed][..], "{out:?}");
    assert!(out[allowed..].iter().all(|r| r == "EPERM"), "{out:?}");
    // A refused socket is a denied attempt too.
    assert_ne!(f.probe("t0/a", &["socket", "raw"]), ["ok"]);
    let after = now_ms();
    let want = (allowed as u64, denied as u64 + 1, 0);

    let deadline = Instant::now() + Duration::from_secs(10);
    let w = loop {
        let w = row(&f, &a).expect("t0/a listed");
        let got = attempts(&w);
        assert!(
            got.0 <= want.0 && got.1 <= want.1 && got.2 == 0,
            "more than the attempts made: {w}"
        );
        if got == want {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "want {want:?}, inventory has {w}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let time = |k: &str| w[k].as_u64().unwrap_or_else(|| panic!("{k} in {w}"));
    let (last, last_allowed, last_denied) = (
        time("last_attempt_ms"),
        time("last_allowed_ms"),
        time("last_denied_ms"),
    );
    for t in [last, last_allowed, last_denied] {
        assert!(
            before <= t && t <= after,
            "{t} not in [{before}, {after}]: {w}"
        );
    }
    // The refused socket came last.
    assert_eq!(last, last_denied, "{w}");
    assert!(last_allowed <= last_denied, "{w}");
    // Exactly the records' times: the last allowed and the last of all.
    let evs = f.events();
    let mine = |verdict: &str| {
        evs.iter()
            .filter(|e| tg(e)["workload"]["cgroup_path"] == a.as_str())
            .filter(|e| tg(e)["verdict"] == verdict)
            .map(|e| e["time"].as_u64().expect("time"))
            .collect::<Vec<_>>()
    };
    assert_eq!(mine("allow").len(), allowed);
    assert_eq!(mine("allow").into_iter().max(), Some(last_allowed));
    assert_eq!(mine("deny").into_iter().max(), Some(last_denied));

    // A workload that made no attempt: zeros and nulls.
    let i = row(&f, &idle).expect("t0/idle listed");
    assert_eq!(attempts(&i), (0, 0, 0), "{i}");
    for k in ["last_attempt_ms", "last_allowed_ms", "last_denied_ms"] {
        assert!(i[k].is_null(), "{k}: {i}");
    }

    // The CLI: --json passes the fields through; the table shows them.
    let addr = format!("127.0.0.1:{}", f.agent.as_ref().expect("agent").port);
    let (code, out, err) = f.tiergate(&["inventory", "--admin-addr", &addr, "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("--json is JSON");
    let j = doc["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .find(|r| r["cgroup_path"] == a.as_str())
        .unwrap_or_else(|| panic!("t0/a in {out}"));
    assert_eq!(attempts(j), want, "{j}");
    assert_eq!(j["last_attempt_ms"], last, "{j}");
    assert_eq!(j["last_allowed_ms"], last_allowed, "{j}");
    assert_eq!(j["last_denied_ms"], last_denied, "{j}");
    let (code, out, err) = f.tiergate(&["inventory", "--admin-addr", &addr]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().nth(1).unwrap_or("").contains("LAST ATTEMPT"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.contains(&format!("{a} ")) || l.ends_with(a.as_str()))
        .unwrap_or_else(|| panic!("t0/a in\n{out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[..6],
        ["t0", "yes", "none", &rfc3339(last), "5/4", &a][..],
        "{out}"
    );
    let line = out.lines().find(|l| l.contains(&idle)).expect("idle row");
    assert_eq!(line.split_whitespace().nth(3), Some("-"), "{out}");

    // The cgroup goes, its entry with it.
    std::fs::remove_dir(f.cgroup("t0/a")).expect("rmdir t0/a");
    let deadline = Instant::now() + Duration::from_secs(5);
    while row(&f, &a).is_some() {
        assert!(Instant::now() < deadline, "t0/a still listed after rmdir");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One connection record of `k8s:ns/<sa>` on `node`.
fn record(node: &str, sa: &str, verdict: &str, time: u64) -> tiergate_collector::store::Update {
    let rec = serde_json::json!({
        "class_uid": 4001, "time": time,
        "connection_info": {"protocol_name": "tcp"},
        "dst_endpoint": {"ip": "10.20.0.1", "port": 443},
        "device": {"hostname": node},
        "unmapped": {"tiergate": {"kind": "connection", "verdict": verdict, "tier": "t0",
            "policy": {"name": "p", "version": "sha256:1"},
            "workload": {"namespace": "ns", "service_account": sa}}}
    });
    observe(rec.to_string().as_bytes())
        .expect("a record")
        .expect("an update")
}

#[test]
fn inventory_from_the_store_merges_nodes() {
    let dir = tiergate_tests::pki::TempDir::new();
    let url = format!("sqlite:{}", dir.path().join("obs.db").display());
    const T: u64 = 1_764_000_000_000;
    let mut store = Store::open(&url).unwrap_or_else(|e| panic!("{e}"));
    // Two collector flushes: node-1's records, then node-2's.
    let mut agg = Aggregate::default();
    for (i, verdict) in ["allow", "allow", "allow", "deny"].iter().enumerate() {
        agg.add(record("node-1", "sa", verdict, T + 1_000 * i as u64));
    }
    agg.add(record("node-1", "old", "allow", T - 60_000));
    store.record(&agg).unwrap_or_else(|e| panic!("{e}"));
    let mut agg = Aggregate::default();
    agg.add(record("node-2", "sa", "allow", T + 7_000));
    agg.add(record("node-2", "sa", "deny", T + 9_000));
    store.record(&agg).unwrap_or_else(|e| panic!("{e}"));
    drop(store);

    let f = tiergate_tests::run_tiergate;
    let (code, out, err) = f(&["inventory", "--store", &url, "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).expect("--json is JSON");
    assert_eq!(
        rows,
        serde_json::json!([
            {"identity": "k8s:ns/old", "nodes": ["node-1"], "tiers": ["t0"], "owner": null,
             "first_seen_ms": T - 60_000, "last_seen_ms": T - 60_000,
             "last_attempt_ms": T - 60_000, "attempts": 1},
            {"identity": "k8s:ns/sa", "nodes": ["node-1", "node-2"], "tiers": ["t0"], "owner": null,
             "first_seen_ms": T, "last_seen_ms": T + 9_000,
             "last_attempt_ms": T + 9_000, "attempts": 6},
        ]),
        "{out}"
    );

    let (code, out, err) = f(&["inventory", "--store", &url]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[1][0], "k8s:ns/old",
        "the oldest last attempt on top: {out}"
    );
    assert_eq!(
        lines[2],
        [
            "k8s:ns/sa",
            "node-1,node-2",
            "t0",
            "-",
            &rfc3339(T),
            &rfc3339(T + 9_000),
            &rfc3339(T + 9_000),
            "6"
        ],
        "{out}"
    );

    // One source at a time; a store that is not there is not created.
    let (code, _, err) = f(&["inventory", "--store", &url, "--admin-addr", "127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let missing = dir.path().join("missing.db");
    let (code, _, err) = f(&[
        "inventory",
        "--store",
        &format!("sqlite:{}", missing.display()),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no such file"), "{err}");
    assert!(!missing.exists());
}
