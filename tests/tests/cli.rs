//! The command line of CONTRACT section 1: `policy check`, `policy explain`,
//! the agent's refusals to start, and the admin endpoint.

use std::process::Command;

use tiergate_tests::{Fixture, policy, run_tiergate as run, tiergate_bin};

fn repo_file(rel: &str) -> String {
    format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn policy_check_accepts_the_bundled_policy_and_lists_every_error_of_a_bad_one() {
    let (code, out, err) = run(&["policy", "check", &repo_file("deploy/policy/default.yaml")]);
    assert_eq!(code, 0, "default policy rejected: {err}");
    assert!(
        out.contains("version:  sha256:"),
        "summary lacks the version: {out}"
    );
    assert!(out.contains("tier0"), "summary lacks the tiers: {out}");

    let dir = std::env::temp_dir().join(format!("tg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: x\nspec:\n  defaultTier: nope\n  tiers:\n    - name: t\n      egress:\n        - cidrs: [\"10.0.0.1/8\"]\n          ports: [\"70000\"]\n  bogus: 1\n",
    )
    .unwrap();
    let (code, out, err) = run(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "bad policy accepted: {out}");
    let file = bad.display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 4, "expected every error, got:\n{err}");
    for l in &lines {
        assert!(l.starts_with(&format!("{file}:")), "not FILE:LINE:COL: {l}");
        let rest = &l[file.len() + 1..];
        let mut parts = rest.splitn(3, ':');
        assert!(
            parts.next().unwrap().parse::<u32>().is_ok(),
            "no line number: {l}"
        );
        assert!(
            parts.next().unwrap().parse::<u32>().is_ok(),
            "no column: {l}"
        );
    }
    assert!(err.contains(":6:"), "defaultTier error missing: {err}");
    assert!(err.contains("host bits"), "host-bits error missing: {err}");
    assert!(err.contains("70000"), "port error missing: {err}");
    assert!(err.contains("bogus"), "unknown-key error missing: {err}");

    let (code, _, err) = run(&["policy", "check", "/nonexistent/policy.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/policy.yaml"),
        "missing-file error lacks the name: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn policy_explain_names_binding_tier_verdict_and_reason() {
    let f = Fixture::new("explain");
    let body = r#"      egress:
        - cidrs: ["10.20.0.0/16"]
          ports: ["443"]"#;
    let p = f.write_policy(&policy(&f.cg_path, body));
    let p = p.to_str().unwrap();
    let cg = f.cg("t0/tool");
    let (code, out, err) = run(&[
        "policy",
        "explain",
        "--policy",
        p,
        "--cgroup",
        &cg,
        "--to",
        "10.20.0.5:443",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(j["tier"], "t0");
    assert_eq!(j["binding"], 0);
    assert_eq!(j["verdict"], "allow");
    assert_eq!(j["reason"], "egress-rule");
    assert_eq!(j["rule"], "spec.tiers[0].egress[0]");

    let (_, out, _) = run(&[
        "policy",
        "explain",
        "--policy",
        p,
        "--cgroup",
        &cg,
        "--to",
        "10.20.0.5:443",
        "--udp",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["verdict"], "allow", "rule without protocols admits udp");
    let (_, out, _) = run(&[
        "policy",
        "explain",
        "--policy",
        p,
        "--cgroup",
        &cg,
        "--to",
        "169.254.169.254:80",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["verdict"], "deny");
    assert_eq!(j["reason"], "metadata-service");
    assert_eq!(j["metadata_service"], true);

    // --pid: a live process in a locked cgroup.
    let dir = f.cgroup("locked/x");
    let mut child = tiergate_tests::hold(&dir);
    let pid = child.id().to_string();
    let (code, out, err) = run(&[
        "policy",
        "explain",
        "--policy",
        p,
        "--pid",
        &pid,
        "--to",
        "10.20.0.5:443",
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tier:        locked"), "{out}");
    assert!(out.contains("verdict:     deny"), "{out}");
    assert!(out.contains("reason:      no-matching-rule"), "{out}");
    assert!(out.contains(&f.cg("locked/x")), "{out}");

    // Neither --cgroup nor --pid: usage error.
    let (code, _, _) = run(&["policy", "explain", "--policy", p, "--to", "10.0.0.1:1"]);
    assert_ne!(code, 0);
}

#[test]
fn agent_refuses_to_start_with_one_clear_sentence() {
    let f = Fixture::new("refuse");
    let dir = f.dir.to_str().unwrap().to_string();
    let bad = format!("{dir}/bad.yaml");
    std::fs::write(&bad, "kind: Nope\n").unwrap();
    let base = [
        "--cgroup-root",
        f.cg_root.to_str().unwrap(),
        "--bpffs",
        f.bpffs.to_str().unwrap(),
        "--admin-addr",
        "127.0.0.1:0",
    ];

    let (code, _, err) = run(&[&["agent", "--policy", &bad][..], &base[..]].concat());
    assert_eq!(code, 1);
    assert!(
        err.contains("policy") && err.contains("is invalid") && err.contains("bad.yaml:1:1"),
        "{err}"
    );

    let (code, _, err) = run(&[
        &["agent", "--policy", &format!("{dir}/missing.yaml")][..],
        &base[..],
    ]
    .concat());
    assert_eq!(code, 1);
    assert!(err.contains("missing.yaml"), "{err}");

    let good = f.write_policy(&policy(&f.cg_path, "      egress: []"));
    let (code, _, err) = run(&[
        "agent",
        "--policy",
        good.to_str().unwrap(),
        "--cgroup-root",
        "/tmp",
        "--bpffs",
        f.bpffs.to_str().unwrap(),
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--cgroup-root /tmp is not a cgroup v2 directory"),
        "{err}"
    );

    // Without privileges: drop to nobody with no capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(tiergate_bin())
        .args(["agent", "--policy", good.to_str().unwrap()])
        .args(base)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tiergate agent lacks CAP_SYS_ADMIN (")
            && err.contains(", CAP_SYS_PTRACE (")
            && err.contains("and CAP_NET_ADMIN ("),
        "{err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "more than one sentence: {err}"
    );
    // Nothing was pinned by the refused runs.
    assert!(!f.bpffs.join("tiergate").exists());
}

#[test]
fn admin_endpoint_serves_health_readiness_and_metrics() {
    let mut f = Fixture::new("admin");
    f.start_agent(&policy(&f.cg_path.clone(), "      egress: []"));
    let agent = f.agent.as_ref().unwrap();
    assert_eq!(agent.get("/healthz").unwrap().0, 200);
    assert_eq!(agent.get("/readyz").unwrap().0, 200);
    let (status, body) = agent.get("/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "tiergate_policy_info{",
        "tiergate_programs_attached ",
        "tiergate_cgroups_known ",
        "tiergate_kernel_verdicts{",
        "tiergate_policy_rules ",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    assert!(agent.metric("tiergate_programs_attached").unwrap() >= 5.0);
    assert_eq!(agent.get("/nope").unwrap().0, 404);
}
