//! Probing detection on the real kernel (issue 13): a workload whose
//! connects are denied to many distinct destinations in a window raises one
//! Detection Finding (created, updated while it grows, closed when quiet),
//! and every deny is still reported; below the thresholds, nothing; an
//! audit tier's would-be denies count too.
//!
//! Every destination is inside the fixture's network namespace: its `lo`
//! takes 10.40.0.0/16 as local addresses, so even if enforcement broke, no
//! packet could leave the namespace.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use tiergate_tests::{Fixture, policy, sh, tg};

/// Only 10.20.0.0/16 port 80 is allowed: everything the probes try is
/// denied.
const T0_WEB: &str = r#"      egress:
        - cidrs: ["10.20.0.0/16"]
          ports: ["80"]
          protocols: [tcp]"#;

/// An audit tier: what it would deny is let through and reported
/// `audit-deny`, and counts for probing too.
const STAGING: &str = r#"
    - name: staging
      mode: audit
      egress: []"#;

/// A 3 s window (Updates at most every second), sweeps from 10 hosts, scans
/// from 8 ports.
const FLAGS: &[&str] = &[
    "--probe-window",
    "3s",
    "--probe-hosts",
    "10",
    "--probe-ports",
    "8",
];
const WINDOW: Duration = Duration::from_secs(3);

fn is_finding(e: &Value) -> bool {
    e["class_uid"] == 2004
}

/// Deny records of workload `cg_path` to `ip:port` destinations.
fn denies_of(evs: &[Value], cg_path: &str) -> BTreeSet<String> {
    evs.iter()
        .filter(|e| {
            tg(e)["kind"] == "connection"
                && tg(e)["verdict"] == "deny"
                && tg(e)["workload"]["cgroup_path"] == cg_path
        })
        .map(|e| {
            format!(
                "{}:{}",
                e["dst_endpoint"]["ip"].as_str().unwrap(),
                e["dst_endpoint"]["port"]
            )
        })
        .collect()
}

/// Waits until workload `cg_path` has deny records for every one of `want`.
fn wait_denies(f: &Fixture, cg_path: &str, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = denies_of(&f.events(), cg_path);
        let missing: Vec<&String> = want.iter().filter(|t| !got.contains(*t)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "deny records missing after 10 s for {cg_path}: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects from cgroup `rel` to every target in one probe; each must be
/// refused by the hook.
fn connect_all(f: &Fixture, rel: &str, targets: &[String]) {
    let mut args = vec!["connect"];
    args.extend(targets.iter().map(String::as_str));
    let out = f.probe(rel, &args);
    assert_eq!(out.len(), targets.len(), "{out:?}");
    for (t, r) in targets.iter().zip(&out) {
        assert_eq!(r, "EPERM", "{t} was not denied");
    }
}

#[test]
fn many_distinct_denies_raise_one_finding_and_few_raise_none() {
    let mut f = Fixture::new("probing");
    // 10.40.0.0/16 answers on the namespace's loopback: nothing the probes
    // try can leave it.
    sh(
        "ip",
        &[
            "-n",
            &f.netns,
            "route",
            "add",
            "local",
            "10.40.0.0/16",
            "dev",
            "lo",
        ],
    );
    let root = f.cg_path.clone();
    let p = policy(&root, &format!("{T0_WEB}{STAGING}")).replace(
        "  bindings:\n",
        &format!("  bindings:\n    - tier: staging\n      match:\n        cgroupPath: \"{root}/staging/**\"\n"),
    );
    f.start_agent_with(&p, FLAGS);

    // Below both thresholds: 9 hosts on port 80, 7 ports on one host.
    let mut quiet: Vec<String> = (1..=9).map(|n| format!("10.40.0.{n}:80")).collect();
    quiet.extend((2001..=2007).map(|p| format!("10.40.0.100:{p}")));
    connect_all(&f, "t0/quiet", &quiet);
    let quiet_path = f.cg("t0/quiet");
    wait_denies(&f, &quiet_path, &quiet);
    // A full window and more for anything late to show.
    std::thread::sleep(WINDOW + Duration::from_secs(1));
    let evs = f.events();
    let findings: Vec<&Value> = evs.iter().filter(|e| is_finding(e)).collect();
    assert!(
        findings.is_empty(),
        "finding below the thresholds: {findings:?}"
    );
    assert_eq!(
        denies_of(&evs, &quiet_path).len(),
        16,
        "every deny reported"
    );

    // Above: 12 hosts on port 80 (a sweep from the 10th), then, within the
    // window but after the update interval, 18 more.
    let sweep: Vec<String> = (1..=30).map(|n| format!("10.40.1.{n}:80")).collect();
    let start = Instant::now();
    connect_all(&f, "t0/sweeper", &sweep[..12]);
    std::thread::sleep(Duration::from_millis(1500));
    connect_all(&f, "t0/sweeper", &sweep[12..]);
    assert!(
        start.elapsed() < WINDOW,
        "the two bursts must fall within one window"
    );
    let path = f.cg("t0/sweeper");
    wait_denies(&f, &path, &sweep);
    // Close comes a window after the last new destination.
    let close = f.wait_event("a Close of the sweep", |e| {
        is_finding(e) && e["activity_id"] == 3
    });
    // Nothing more comes after the Close.
    std::thread::sleep(Duration::from_secs(1));
    let evs = f.events();

    let findings: Vec<&Value> = evs.iter().filter(|e| is_finding(e)).collect();
    let uids: BTreeSet<&str> = findings
        .iter()
        .map(|e| e["finding_info"]["uid"].as_str().expect("finding_info.uid"))
        .collect();
    assert_eq!(uids.len(), 1, "one finding: {findings:?}");
    let activities: Vec<u64> = findings
        .iter()
        .map(|e| e["activity_id"].as_u64().unwrap())
        .collect();
    let count = |a: u64| activities.iter().filter(|x| **x == a).count();
    assert_eq!(count(1), 1, "one Create: {activities:?}");
    assert!(
        count(2) >= 1,
        "the sweep grew after Create: an Update: {activities:?}"
    );
    assert!(count(2) <= 3, "Updates are rate-limited: {activities:?}");
    assert_eq!(count(3), 1, "one Close: {activities:?}");
    assert_eq!(activities.first(), Some(&1), "Create first: {activities:?}");
    assert_eq!(activities.last(), Some(&3), "Close last: {activities:?}");
    // Counts grow from the threshold to all 30.
    let distinct: Vec<u64> = findings
        .iter()
        .map(|e| tg(e)["probing"]["distinct"].as_u64().unwrap())
        .collect();
    assert_eq!(distinct[0], 10, "Create at the threshold: {distinct:?}");
    let open = &distinct[..distinct.len() - 1];
    assert!(
        open.windows(2).all(|w| w[0] < w[1]),
        "an Update only when grown: {distinct:?}"
    );
    assert_eq!(
        open.last(),
        Some(&30),
        "the last Update has all 30: {distinct:?}"
    );
    assert_eq!(distinct.last(), Some(&30), "Close: {distinct:?}");

    for e in &findings {
        assert_eq!(e["category_uid"], 2);
        assert_eq!(e["type_uid"], 200400 + e["activity_id"].as_u64().unwrap());
        assert_eq!(
            e["finding_info"]["types"],
            serde_json::json!(["probing", "sweep"])
        );
        assert_eq!(e["device"]["hostname"], "test-node");
        let t = tg(e);
        assert_eq!(t["kind"], "finding");
        assert_eq!(t["tier"], "t0");
        assert_eq!(t["policy"]["name"], "e2e");
        assert_eq!(t["workload"]["cgroup_path"], path.as_str());
        assert!(t["workload"]["cgroup_id"].as_u64().unwrap() > 0);
        let p = &t["probing"];
        assert_eq!(p["kind"], "sweep");
        assert_eq!(p["port"], 80);
        assert_eq!(p["window_s"], 3);
        assert_eq!(p["threshold"], 10);
        let samples: Vec<&str> = p["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(samples.len(), 10, "{samples:?}");
        assert!(
            samples.iter().all(|s| sweep.iter().any(|t| t == s)),
            "{samples:?}"
        );
    }
    let fi = &close["finding_info"];
    assert!(fi["first_seen_time"].as_u64() <= fi["last_seen_time"].as_u64());
    assert_eq!(tg(&close)["probing"]["end"], "quiet");
    assert_eq!(close["status"], "Closed");

    // The finding is added, not substituted: all 30 denies are there, and
    // seq stays without gaps.
    assert_eq!(denies_of(&evs, &path).len(), 30);
    let seqs: Vec<u64> = evs.iter().map(|e| tg(e)["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap in seq: {seqs:?}"
    );

    let agent = f.agent.as_ref().expect("agent");
    let metric = |a: &str| {
        agent
            .metric(&format!(
                "tiergate_findings_total{{kind=\"sweep\",activity=\"{a}\"}}"
            ))
            .unwrap_or(0.0) as usize
    };
    assert_eq!(metric("create"), 1);
    assert_eq!(metric("update"), count(2));
    assert_eq!(metric("close"), 1);

    // Audit-denies count: 10 hosts from a staging workload (let through,
    // refused by the namespace's empty ports) raise a sweep there too.
    f.known_cgroup("staging/tool");
    let staged: Vec<String> = (1..=10).map(|n| format!("10.40.2.{n}:443")).collect();
    let mut args = vec!["connect"];
    args.extend(staged.iter().map(String::as_str));
    for r in f.probe("staging/tool", &args) {
        assert_eq!(r, "ECONNREFUSED", "audit lets it through to a closed port");
    }
    let staging_path = f.cg("staging/tool");
    let created = f.wait_event("a sweep from the audit tier", |e| {
        is_finding(e) && tg(e)["workload"]["cgroup_path"] == staging_path.as_str()
    });
    assert_eq!(created["activity_id"], 1);
    assert_eq!(tg(&created)["tier"], "staging");
    assert_eq!(tg(&created)["probing"]["port"], 443);
    let audited = f
        .events()
        .iter()
        .filter(|e| {
            tg(e)["verdict"] == "audit-deny"
                && tg(e)["workload"]["cgroup_path"] == staging_path.as_str()
        })
        .count();
    assert_eq!(audited, 10, "every audit-deny reported");
}
