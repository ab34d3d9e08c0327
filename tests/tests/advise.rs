//! `tiergate advise` end to end: a week of synthetic traffic in an event
//! file, and a real agent's events (an enforced test cgroup making real
//! connections in a test network namespace) read both from its `--events`
//! file and from a real collector's SQLite store: the same report either
//! way, an exact over-privilege index, and a proposed policy that passes
//! `policy check` and allows every observed allowed attempt.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tiergate_collector::store::{Store, cgroup_pattern};
use tiergate_tests::collector::{Collector, Pki, agent_args};
use tiergate_tests::pki::Leaf;
use tiergate_tests::{Fixture, policy, tg};

const BODY: &str = r#"      egress:
        - cidrs: ["10.20.0.0/16"]
          ports: ["80"]
          protocols: [tcp]
        - cidrs: ["10.20.0.0/16"]
          ports: ["81"]
          protocols: [tcp]
        - cidrs: ["10.40.0.0/16"]"#;

fn advise(f: &Fixture, args: &[&str]) -> Value {
    let policy = f.policy_path();
    let mut all = vec!["advise", "--policy", policy.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = f.tiergate(&all);
    assert_eq!(code, 0, "advise failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn identity<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["identity"] == id)
        .unwrap_or_else(|| panic!("{id} not in {report:#}"))
}

fn check_passes(f: &Fixture, file: &std::path::Path) {
    let (code, out, err) = f.tiergate(&["policy", "check", file.to_str().unwrap()]);
    assert_eq!(code, 0, "proposed policy fails policy check: {err}\n{out}");
}

/// Real attempts: rule 1 used once, long before the window; rule 0 used in
/// it; rule 2 never. Index 2/3; the proposal keeps only rule 0's port and
/// address. The store gives the same answer as the events file.
#[test]
fn real_agent_events_give_the_index_and_a_tighter_policy() {
    let mut f = Fixture::new("advise");
    let pki = Pki::new();
    let store = format!("sqlite:{}", f.dir.join("store.db").display());
    let c = Collector::start_with(
        &f.dir,
        pki.collector(),
        vec![format!("file:{}", f.dir.join("collected.jsonl").display())],
        vec!["--store".into(), store.clone()],
        "collector.log",
    );
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let args = agent_args(&c, &files, &f.dir.join("spool"));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = policy(&f.cg_path.clone(), BODY);
    f.start_agent_with(&p, &a);

    // Before the window: the identity and rule 1 are seen.
    assert_eq!(f.tcp("t0/a", "10.20.0.1:81"), "ok");
    std::thread::sleep(Duration::from_secs(10));
    // In the window: rule 0, and a denied attempt (never use).
    for _ in 0..3 {
        assert_eq!(f.tcp("t0/a", "10.20.0.1:80"), "ok");
    }
    assert_eq!(f.tcp("t0/a", "10.30.0.1:80"), "EPERM");
    let id = format!("cgroup:{}", cgroup_pattern(&f.cg("t0/a")));
    f.wait_event("last deny", |e| tg(e)["verdict"] == "deny");
    // Wait for the store to hold all five attempts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = Store::open(&store).unwrap().observations(0).unwrap();
        let n: u64 = rows
            .iter()
            .filter(|r| r.key.identity == id)
            .map(|r| r.seen.count)
            .sum();
        if n == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "store has {n} of 5: {rows:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = f.dir.join("proposed.yaml");
    let events = f.events_path();
    let from_events = advise(
        &f,
        &[
            "--events",
            events.to_str().unwrap(),
            "--since",
            "8s",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let from_store = advise(&f, &["--store", &store, "--since", "8s"]);
    for r in [&from_events, &from_store] {
        let me = identity(r, &id);
        assert_eq!(me["tier"], "t0");
        assert_eq!(me["judged_rules"], 3, "{me:#}");
        let idx = me["over_privilege_index"].as_f64().unwrap();
        assert!((idx - 2.0 / 3.0).abs() < 1e-9, "{me:#}");
        let unused: Vec<u64> = me["unused_rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect();
        assert_eq!(unused, [1, 2]);
        assert!(me["unused_rules"][0]["last_used_ms"].as_u64().is_some());
        assert!(me["unused_rules"][1]["last_used_ms"].is_null());
        assert_eq!(me["observed"]["allowed"], 3);
        assert_eq!(me["observed"]["denied"], 1);
        assert!(r["unowned"].as_array().unwrap().contains(&json!(id)));
    }
    assert_eq!(from_events["proposal"], {
        let mut p = from_store["proposal"].clone();
        p["file"] = from_events["proposal"]["file"].clone();
        p
    });
    check_passes(&f, &out);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("cidrs: [\"10.20.0.1/32\"]"), "{text}");
    assert!(text.contains("3 allowed attempts by 1 identity"), "{text}");
    assert!(text.contains("removed egress[2]"), "{text}");
    // The proposal, put in force, still lets the workload do what it did.
    f.write_policy(&text);
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.tcp("t0/a", "10.20.0.1:81") != "EPERM" {
        assert!(Instant::now() < deadline, "proposal not in force");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(f.tcp("t0/a", "10.20.0.1:80"), "ok");
    assert_eq!(f.tcp("t0/a", "10.20.0.2:80"), "EPERM");
}

/// One synthetic record of the shape the agent writes.
fn record(
    time_ms: u64,
    seq: u64,
    dst: &str,
    port: u16,
    verdict: &str,
    rule: Option<&str>,
) -> Value {
    let mut t = json!({
        "kind": "connection", "seq": seq, "verdict": verdict,
        "reason": if verdict == "allow" { "egress-rule" } else { "no-matching-rule" },
        "tier": "t0", "hook": "connect4", "metadata_service": false, "tier_inherited": false,
        "policy": {"name": "e2e", "version": "sha256:week"},
        "workload": {"cgroup_id": 7, "cgroup_path": "/kubepods.slice/x",
            "namespace": "agents", "pod": "tool-0", "service_account": "tool"},
    });
    if let Some(r) = rule {
        t["rule"] = json!({"uid": r, "index": 0});
    }
    json!({
        "class_uid": 4001, "activity_id": 1, "time": time_ms,
        "connection_info": {"protocol_name": "tcp", "protocol_num": 6},
        "dst_endpoint": {"ip": dst, "port": port},
        "device": {"hostname": "node-a"},
        "metadata": {"uid": format!("week-{seq}"), "product": {"name": "tiergate"}},
        "unmapped": {"tiergate": t},
    })
}

/// A week of traffic in an event file, without any agent: rules in force
/// for eight days, the workload seen for eight; one rule used every hour,
/// one used once six days ago, one never; a malformed line skipped.
#[test]
fn a_week_of_synthetic_traffic_from_an_event_file() {
    let f = Fixture::new("advise-week");
    let p = policy(&f.cg_path.clone(), BODY);
    let path = f.write_policy(&p);
    let (code, out, _) = f.tiergate(&[
        "policy",
        "explain",
        "--policy",
        path.to_str().unwrap(),
        "--cgroup",
        &f.cg("t0/a"),
        "--to",
        "10.20.0.1:80",
        "--json",
    ]);
    assert_eq!(code, 0);
    let r0: Value = serde_json::from_str(&out).unwrap();
    let (_, out, _) = f.tiergate(&[
        "policy",
        "explain",
        "--policy",
        path.to_str().unwrap(),
        "--cgroup",
        &f.cg("t0/a"),
        "--to",
        "10.40.0.1:443",
        "--json",
    ]);
    let r2: Value = serde_json::from_str(&out).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hour = 3_600_000;
    let day = 24 * hour;
    // The policy record listing the rules (as the agent writes it).
    let refs: Value = {
        let (_, o, _) = f.tiergate(&[
            "policy",
            "explain",
            "--policy",
            path.to_str().unwrap(),
            "--cgroup",
            &f.cg("t0/a"),
            "--to",
            "10.20.0.1:81",
            "--json",
        ]);
        let r1: Value = serde_json::from_str(&o).unwrap();
        json!([
            {"tier": "t0", "index": 0, "uid": r0["rule_uid"]},
            {"tier": "t0", "index": 1, "uid": r1["rule_uid"]},
            {"tier": "t0", "index": 2, "uid": r2["rule_uid"]},
        ])
    };
    let mut lines = vec![json!({
        "class_uid": 0, "time": now - 8 * day, "device": {"hostname": "node-a"},
        "metadata": {"uid": "week-0"},
        "unmapped": {"tiergate": {"kind": "policy", "action": "applied", "seq": 0,
            "policy": {"name": "e2e", "version": "sha256:week"}, "rules": refs, "rules_omitted": 0}},
    })
    .to_string()];
    let mut seq = 1;
    lines.push(record(now - 8 * day, seq, "10.30.0.9", 22, "deny", None).to_string());
    for h in 0..(7 * 24) {
        seq += 1;
        let dst = format!("10.20.{}.{}", h % 2, 1 + h % 5);
        lines.push(
            record(
                now - 7 * day + h * hour,
                seq,
                &dst,
                80,
                "allow",
                r0["rule_uid"].as_str(),
            )
            .to_string(),
        );
    }
    seq += 1;
    lines.push(
        record(
            now - 6 * day,
            seq,
            "10.40.3.3",
            443,
            "allow",
            r2["rule_uid"].as_str(),
        )
        .to_string(),
    );
    lines.push("{not json".into());
    let events = f.dir.join("week.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();

    let out = f.dir.join("week-proposed.yaml");
    let r = advise(
        &f,
        &[
            "--events",
            events.to_str().unwrap(),
            "--since",
            "7d",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let me = identity(&r, "k8s:agents/tool");
    assert_eq!(me["judged_rules"], 3, "{me:#}");
    let idx = me["over_privilege_index"].as_f64().unwrap();
    assert!((idx - 1.0 / 3.0).abs() < 1e-9, "{me:#}");
    assert_eq!(me["unused_rules"][0]["index"], 1);
    assert_eq!(me["observed"]["allowed"], 7 * 24 + 1);
    // Denials before the window are not in it.
    assert_eq!(me["observed"]["denied"], 0);
    check_passes(&f, &out);
    let text = std::fs::read_to_string(&out).unwrap();
    // Five addresses in each /24 seen: the /24s (inside the granted /16).
    assert!(
        text.contains("\"10.20.0.0/24\", \"10.20.1.0/24\""),
        "{text}"
    );
    assert!(text.contains("cidrs: [\"10.40.3.3/32\"]"), "{text}");
    assert!(text.contains("rare path"), "{text}");
    assert!(
        r["proposal"]["diff"]
            .as_str()
            .unwrap()
            .contains("-          ports: [\"81\"]"),
        "{r:#}"
    );
    // The text report says the same for people.
    let (code, text_report, _) = f.tiergate(&[
        "advise",
        "--policy",
        path.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--since",
        "7d",
    ]);
    assert_eq!(code, 0);
    assert!(
        text_report.contains("over-privilege 0.33 of 3 judged rules"),
        "{text_report}"
    );
    assert!(text_report.contains("no owner label"), "{text_report}");
}
