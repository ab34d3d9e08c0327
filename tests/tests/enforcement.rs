//! Enforcement on the real kernel: verdicts (EPERM or success) and the
//! events that report them, for every behaviour of CONTRACT section 2.

use serde_json::Value;
use tiergate_tests::{Fixture, is_conn, policy, tg};

const T0_WEB: &str = r#"      egress:
        - cidrs: ["10.20.0.0/16", "fd00:20::/64"]
          ports: ["80"]
          protocols: [tcp]"#;

#[test]
fn tier_allows_listed_egress_and_denies_the_rest_with_events() {
    let mut f = Fixture::new("allowdeny");
    f.start_agent(&policy(&f.cg_path.clone(), T0_WEB));
    // Allowed: listed CIDR, port and protocol.
    assert_eq!(f.tcp("t0/tool", "10.20.0.1:80"), "ok");
    assert_eq!(f.tcp("t0/tool", "[fd00:20::1]:80"), "ok");
    // Denied: other network, other port, other protocol.
    assert_eq!(f.tcp("t0/tool", "10.30.0.1:80"), "EPERM");
    assert_eq!(f.tcp("t0/tool", "10.20.0.1:81"), "EPERM");
    assert_eq!(f.tcp("t0/tool", "[fd00:30::1]:80"), "EPERM");
    assert_eq!(
        f.probe("t0/tool", &["connect", "--udp", "10.20.0.1:80"]),
        ["EPERM"]
    );
    // A cgroup no binding covers is host: not enforced (once the agent has
    // seen it; see new_cgroups_are_enforced_from_their_first_connect).
    f.known_cgroup("elsewhere");
    assert_eq!(f.tcp("elsewhere", "10.30.0.1:80"), "ok");

    let deny = f.wait_event("deny to 10.30.0.1:80", |e| {
        is_conn(e, "10.30.0.1", 80, "deny")
    });
    assert_eq!(deny["class_uid"], 4001);
    assert_eq!(deny["activity_id"], 1);
    assert_eq!(deny["disposition_id"], 2);
    assert_eq!(deny["disposition"], "Blocked");
    assert_eq!(deny["connection_info"]["protocol_name"], "tcp");
    assert_eq!(deny["actor"]["process"]["name"], "tg-probe");
    assert!(deny["actor"]["process"]["pid"].as_u64().unwrap() > 1);
    assert_eq!(deny["device"]["hostname"], "test-node");
    assert_eq!(deny["metadata"]["product"]["name"], "tiergate");
    assert!(deny["time"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(
        deny["metadata"]["uid"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let t = tg(&deny);
    assert_eq!(t["reason"], "no-matching-rule");
    assert_eq!(t["tier"], "t0");
    assert_eq!(t["policy"]["name"], "e2e");
    assert!(
        t["policy"]["version"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(t["workload"]["cgroup_path"], f.cg("t0/tool"));
    assert!(t["workload"]["cgroup_id"].as_u64().unwrap() > 0);
    assert_eq!(t["metadata_service"], false);

    let allow = f.wait_event("allow to 10.20.0.1:80", |e| {
        is_conn(e, "10.20.0.1", 80, "allow")
    });
    assert_eq!(allow["disposition"], "Allowed");
    assert_eq!(tg(&allow)["reason"], "egress-rule");
    // The rule that allowed it, by the id `policy explain` gives it.
    let (code, out, err) = f.tiergate(&[
        "policy",
        "explain",
        "--policy",
        f.policy_path().to_str().unwrap(),
        "--cgroup",
        &f.cg("t0/tool"),
        "--to",
        "10.20.0.1:80",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let explained: Value = serde_json::from_str(&out).unwrap();
    let uid = explained["rule_uid"]
        .as_str()
        .expect("explain names a rule");
    assert_eq!(tg(&allow)["rule"]["uid"], uid);
    assert_eq!(allow["firewall_rule"]["uid"], uid);
    assert!(tg(&deny)["rule"].is_null() && deny["firewall_rule"].is_null());
    let udp = f.wait_event("udp deny", |e| {
        is_conn(e, "10.20.0.1", 80, "deny") && e["connection_info"]["protocol_name"] == "udp"
    });
    assert_eq!(tg(&udp)["reason"], "no-matching-rule");
    f.wait_event("v6 deny", |e| is_conn(e, "fd00:30::1", 80, "deny"));
    // Host connections other than metadata are not reported.
    let evs = f.events();
    assert!(
        !evs.iter()
            .any(|e| tg(e)["tier"] == "host" && e["dst_endpoint"]["ip"] == "10.30.0.1"),
        "host connection was reported"
    );
    // Sequence numbers have no gaps.
    let seqs: Vec<u64> = evs.iter().map(|e| tg(e)["seq"].as_u64().unwrap()).collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap in seq: {seqs:?}");
    }
}

#[test]
fn metadata_deny_wins_over_catch_all_and_host_access_is_reported() {
    let mut f = Fixture::new("metadata");
    let body = r#"      egress:
        - cidrs: ["0.0.0.0/0", "::/0"]
    - name: meta
      metadata: allow
      egress: []"#;
    let p = policy(&f.cg_path.clone(), body).replace(
        "  bindings:\n",
        &format!(
            "  bindings:\n    - tier: meta\n      match:\n        cgroupPath: \"{}/meta/**\"\n",
            f.cg_path
        ),
    );
    f.start_agent(&p);
    // 0.0.0.0/0 opens everything but the metadata endpoints.
    assert_eq!(f.tcp("t0/a", "10.30.0.1:80"), "ok");
    for m in [
        "169.254.169.254:80",
        "169.254.170.2:80",
        "100.100.100.200:80",
        "[fd00:ec2::254]:80",
    ] {
        assert_eq!(
            f.tcp("t0/a", m),
            "EPERM",
            "metadata endpoint {m} reachable through 0.0.0.0/0"
        );
    }
    // IPv4-mapped form of the metadata address is judged as IPv4.
    assert_eq!(f.tcp("t0/a", "[::ffff:169.254.169.254]:80"), "EPERM");
    assert_eq!(
        f.probe("t0/a", &["connect", "--sendto", "169.254.169.254:80"]),
        ["EPERM"]
    );
    // metadata: allow opens it, and only it.
    assert_eq!(f.tcp("meta/x", "169.254.169.254:80"), "ok");
    assert_eq!(f.tcp("meta/x", "10.30.0.1:80"), "EPERM");
    // Host cgroups are not enforced, but their metadata accesses are reported.
    f.known_cgroup("hostsvc");
    assert_eq!(f.tcp("hostsvc", "169.254.169.254:80"), "ok");

    let d = f.wait_event("metadata deny", |e| {
        is_conn(e, "169.254.169.254", 80, "deny")
    });
    assert_eq!(tg(&d)["reason"], "metadata-service");
    assert_eq!(tg(&d)["metadata_service"], true);
    let a = f.wait_event("metadata allow in tier meta", |e| {
        is_conn(e, "169.254.169.254", 80, "allow") && tg(e)["tier"] == "meta"
    });
    assert_eq!(tg(&a)["metadata_service"], true);
    let h = f.wait_event("host metadata access", |e| {
        is_conn(e, "169.254.169.254", 80, "allow") && tg(e)["tier"] == "host"
    });
    assert_eq!(tg(&h)["metadata_service"], true);
    assert_eq!(tg(&h)["workload"]["cgroup_path"], f.cg("hostsvc"));
    f.wait_event("v6 metadata deny", |e| {
        is_conn(e, "fd00:ec2::254", 80, "deny")
    });
}

#[test]
fn audit_mode_lets_through_and_reports_audit_deny() {
    let mut f = Fixture::new("audit");
    let body = r#"      mode: audit
      egress:
        - cidrs: ["10.20.0.0/16"]"#;
    f.start_agent(&policy(&f.cg_path.clone(), body));
    assert_eq!(f.tcp("t0/a", "10.30.0.1:80"), "ok");
    assert_eq!(f.tcp("t0/a", "169.254.169.254:80"), "ok");
    // The other tier is still enforced: audit is per tier.
    assert_eq!(f.tcp("locked/a", "10.30.0.1:80"), "EPERM");
    let e = f.wait_event("audit-deny", |e| is_conn(e, "10.30.0.1", 80, "audit-deny"));
    assert_eq!(e["disposition_id"], 1);
    assert_eq!(e["disposition"], "Allowed");
    assert_eq!(tg(&e)["reason"], "no-matching-rule");
    let m = f.wait_event("audit metadata", |e| {
        is_conn(e, "169.254.169.254", 80, "audit-deny")
    });
    assert_eq!(tg(&m)["reason"], "metadata-service");
    f.wait_event("locked deny", |e| {
        is_conn(e, "10.30.0.1", 80, "deny") && tg(e)["tier"] == "locked"
    });
}

#[test]
fn loopback_is_always_allowed_and_mapped_addresses_judged_as_ipv4() {
    let mut f = Fixture::new("loopback");
    f.start_agent(&policy(&f.cg_path.clone(), T0_WEB));
    f.known_cgroup("locked/a");
    assert_eq!(f.tcp("locked/a", "127.0.0.1:80"), "ok");
    assert_eq!(f.tcp("locked/a", "[::1]:80"), "ok");
    assert_eq!(f.tcp("locked/a", "10.20.0.1:80"), "EPERM");
    // ::ffff:10.20.0.1 is allowed like 10.20.0.1; ::ffff:10.30.0.1 denied.
    assert_eq!(f.tcp("t0/a", "[::ffff:10.20.0.1]:80"), "ok");
    assert_eq!(f.tcp("t0/a", "[::ffff:10.30.0.1]:80"), "EPERM");
    let l = f.wait_event("loopback", |e| is_conn(e, "127.0.0.1", 80, "allow"));
    assert_eq!(tg(&l)["reason"], "loopback");
    f.wait_event("mapped deny judged as v4", |e| {
        is_conn(e, "10.30.0.1", 80, "deny")
    });
}

#[test]
fn unconnected_udp_and_other_socket_kinds_are_closed() {
    let mut f = Fixture::new("sidedoors");
    let body = r#"      egress:
        - cidrs: ["10.20.0.0/16"]
          protocols: [udp]"#;
    f.start_agent(&policy(&f.cg_path.clone(), body));
    assert_eq!(
        f.probe("t0/a", &["connect", "--sendto", "10.20.0.1:80"]),
        ["ok"]
    );
    assert_eq!(
        f.probe("t0/a", &["connect", "--sendto", "10.30.0.1:80"]),
        ["EPERM"]
    );
    assert_eq!(
        f.probe("t0/a", &["connect", "--sendto", "[::ffff:10.30.0.1]:80"]),
        ["EPERM"]
    );
    assert_eq!(
        f.probe("t0/a", &["connect", "--sendto", "[fd00:30::1]:80"]),
        ["EPERM"]
    );
    // TCP Fast Open connects inside sendto(): still judged.
    assert_eq!(
        f.probe("t0/a", &["connect", "--fastopen", "10.30.0.1:80"]),
        ["EPERM"]
    );
    assert_eq!(
        f.probe("t0/a", &["connect", "--fastopen", "[::ffff:10.30.0.1]:80"]),
        ["EPERM"]
    );
    // Sockets that bypass the connect/sendmsg hooks are refused in a tier...
    let kinds = ["raw", "raw6", "ping", "sctp", "udplite", "packet", "tcp"];
    let got = f.probe(
        "t0/a",
        &["socket"].iter().copied().chain(kinds).collect::<Vec<_>>(),
    );
    // Whether the agent could attach its socket_create LSM hook here.
    let lsm = f.bpffs.join("tiergate/v1/links/tg_socket_create").exists();
    for (k, r) in kinds.iter().zip(&got) {
        match *k {
            "tcp" => assert_eq!(r, "ok", "plain TCP sockets must stay possible"),
            // AF_PACKET needs the BPF LSM (the cgroup hook sees only inet sockets).
            "packet" if !lsm => {}
            // Kernels without SCTP refuse it on their own.
            "sctp" if r == "errno93" => {}
            _ => assert_eq!(r, "EPERM", "socket kind {k} was not refused"),
        }
    }
    // ...and allowed on the host.
    f.known_cgroup("hostsvc");
    assert_eq!(f.probe("hostsvc", &["socket", "raw", "ping"]), ["ok", "ok"]);
    let e = f.wait_event("socket deny", |e| {
        tg(e)["kind"] == "socket" && tg(e)["verdict"] == "deny"
    });
    assert_eq!(tg(&e)["reason"], "socket-type");
    assert_eq!(tg(&e)["tier"], "t0");
}

#[test]
fn reload_to_stricter_policy_applies_on_next_connect_and_bad_reload_keeps_last_good() {
    let mut f = Fixture::new("reload");
    let open = policy(&f.cg_path.clone(), T0_WEB);
    f.start_agent(&open);
    assert_eq!(f.tcp("t0/a", "10.20.0.1:80"), "ok");
    let v1 = f.wait_event("policy applied", |e| tg(e)["kind"] == "policy")["unmapped"]["tiergate"]
        ["policy"]["version"]
        .clone();

    // Stricter: port 80 no longer listed.
    let strict = open.replace("ports: [\"80\"]", "ports: [\"443\"]");
    f.write_policy(&strict);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while f.tcp("t0/a", "10.20.0.1:80") != "EPERM" {
        assert!(
            std::time::Instant::now() < deadline,
            "stricter policy not enforced within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let applied = f.wait_event("second policy applied", |e| {
        tg(e)["kind"] == "policy"
            && tg(e)["action"] == "applied"
            && tg(e)["policy"]["version"] != v1
    });
    let v2 = tg(&applied)["policy"]["version"].clone();
    // The record lists the rules in force, by id (evidence for `advise`).
    let rules = tg(&applied)["rules"].as_array().expect("rules listed");
    assert!(
        !rules.is_empty()
            && rules
                .iter()
                .all(|r| r["uid"].as_str().is_some_and(|u| u.starts_with("r-")))
    );
    assert_eq!(tg(&applied)["rules_omitted"], 0);
    let deny = f.wait_event("deny under v2", |e| is_conn(e, "10.20.0.1", 80, "deny"));
    assert_eq!(tg(&deny)["policy"]["version"], v2);

    // A broken file: rejected with a record, the last good policy stays.
    f.write_policy("apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata: {name: x}\nspec:\n  tiers: 7\n");
    let rej = f.wait_event("policy rejected", |e| {
        tg(e)["kind"] == "policy" && tg(e)["action"] == "rejected"
    });
    let errors = tg(&rej)["errors"].as_array().expect("errors list");
    assert!(
        errors
            .iter()
            .any(|l| l.as_str().unwrap().contains("policy.yaml:5:")),
        "errors lack positions: {errors:?}"
    );
    assert_eq!(
        tg(&rej)["policy"]["version"],
        v2,
        "rejection must name the policy still in force"
    );
    assert_eq!(f.tcp("t0/a", "10.20.0.1:443"), "ECONNREFUSED"); // allowed: nothing listens on 443
    assert_eq!(f.tcp("t0/a", "10.20.0.1:80"), "EPERM");
    let agent = f.agent.as_ref().unwrap();
    assert!(
        agent
            .metric("tiergate_policy_reloads_total{result=\"rejected\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        agent.log_text().contains("policy rejected"),
        "no log line for the rejection"
    );

    // SIGHUP re-reads: a fixed file applies.
    f.write_policy(&open);
    f.agent.as_ref().unwrap().signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while f.tcp("t0/a", "10.20.0.1:80") != "ok" {
        assert!(
            std::time::Instant::now() < deadline,
            "fixed policy not applied within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits (up to 5 s) until a TCP connect from `rel` to `target` gives `want`.
fn eventually(f: &Fixture, rel: &str, target: &str, want: &str, why: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = f.tcp(rel, target);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{why}: {target} gives {got}, expected {want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Swaps write only the difference to what the inactive generation holds
/// (the policy of two swaps before, or whatever an earlier agent left): a
/// rule dropped, a rule whose ports changed and a new rule must all be
/// right after each swap, across generations and an agent restart.
#[test]
fn policy_swaps_write_the_difference_across_generations_and_restarts() {
    let mut f = Fixture::new("swapdiff");
    let root = f.cg_path.clone();
    let tier = |rules: &[(&str, &str)]| {
        let mut body = String::from("      egress:\n");
        for (cidr, port) in rules {
            body += &format!("        - cidrs: [\"{cidr}\"]\n          ports: [\"{port}\"]\n");
        }
        policy(&root, body.trim_end())
    };
    let check = |f: &Fixture, why: &str, expect: &[(&str, &str)]| {
        for (target, want) in expect {
            eventually(f, "t0/a", target, want, why);
        }
    };
    let a = tier(&[("10.20.0.1/32", "80")]);
    let b = tier(&[("10.30.0.1/32", "80")]);
    let c = tier(&[("10.20.0.1/32", "81"), ("fd00:30::/64", "80")]);
    let d = tier(&[("10.30.0.1/32", "80"), ("10.20.0.0/16", "81")]);

    f.start_agent(&a);
    check(
        &f,
        "A",
        &[("10.20.0.1:80", "ok"), ("10.30.0.1:80", "EPERM")],
    );
    f.write_policy(&b);
    check(
        &f,
        "B",
        &[("10.20.0.1:80", "EPERM"), ("10.30.0.1:80", "ok")],
    );
    // Written into the generation that still holds A.
    let path = f.write_policy(&c);
    let c_expect = [
        ("10.20.0.1:80", "EPERM"),
        ("10.20.0.1:81", "ok"),
        ("10.30.0.1:80", "EPERM"),
        ("[fd00:30::1]:80", "ok"),
    ];
    check(&f, "C over A", &c_expect);

    // A new agent re-adopts the maps, reads back what they hold and writes D.
    f.agent.as_mut().unwrap().kill9();
    f.start_agent(&d);
    let d_expect = [
        ("10.30.0.1:80", "ok"),
        ("10.20.0.1:80", "EPERM"),
        ("10.20.0.1:81", "ok"),
        ("[fd00:30::1]:80", "EPERM"),
    ];
    check(&f, "D after restart", &d_expect);

    // An in-place write (no rename) is read once the file is closed.
    std::fs::write(&path, &a).expect("write the policy in place");
    check(
        &f,
        "A written in place",
        &[
            ("10.20.0.1:80", "ok"),
            ("10.20.0.1:81", "EPERM"),
            ("10.30.0.1:80", "EPERM"),
            ("[fd00:30::1]:80", "EPERM"),
        ],
    );
    let applied = f
        .agent
        .as_ref()
        .unwrap()
        .metric("tiergate_policy_reloads_total{result=\"applied\"}")
        .unwrap_or(0.0);
    assert!(applied >= 1.0, "the in-place write was not applied");

    // An editor's save: the file moved out of the directory, a new one
    // created and, a moment later, written. The agent waits for the new
    // file to be closed instead of reporting it missing or empty.
    let aside = f.dir.join("old");
    std::fs::create_dir_all(&aside).expect("backup directory");
    std::fs::rename(&path, aside.join("policy.yaml")).expect("move the policy away");
    let mut file = std::fs::File::create(&path).expect("create the new policy");
    std::thread::sleep(std::time::Duration::from_millis(3));
    std::io::Write::write_all(&mut file, d.as_bytes()).expect("write the new policy");
    drop(file);
    check(&f, "D saved editor-style", &d_expect);
    let rejected = f
        .agent
        .as_ref()
        .unwrap()
        .metric("tiergate_policy_reloads_total{result=\"rejected\"}")
        .unwrap_or(0.0);
    assert_eq!(
        rejected, 0.0,
        "an editor-style save was reported as a bad policy"
    );
}

#[test]
fn new_cgroups_are_enforced_from_their_first_connect() {
    let mut f = Fixture::new("newcg");
    f.start_agent(&policy(&f.cg_path.clone(), T0_WEB));
    // Created while the agent runs, connecting at once.
    for i in 0..5 {
        let rel = format!("t0/new{i}/deep/er");
        assert_eq!(
            f.tcp(&rel, "10.30.0.1:80"),
            "EPERM",
            "new cgroup {rel} escaped its tier"
        );
        assert_eq!(f.tcp(&rel, "10.20.0.1:80"), "ok");
    }
    // With no agent at all (killed), the kernel alone must judge new cgroups
    // by their nearest known ancestor.
    f.agent.as_mut().unwrap().kill9();
    assert_eq!(f.tcp("t0/born-orphan/x", "10.30.0.1:80"), "EPERM");
    assert_eq!(f.tcp("t0/born-orphan/x", "10.20.0.1:80"), "ok");
    assert_eq!(f.tcp("locked/born-orphan", "10.20.0.1:80"), "EPERM");
    // Directly under the root, a new cgroup could still turn out to be a
    // bound path, so until user space names it, it is in defaultTier.
    assert_eq!(f.tcp("unbound-orphan", "10.30.0.1:80"), "EPERM");
    // Under a known host cgroup that no binding can reach, it is host.
    f.start_agent(&policy(&f.cg_path.clone(), T0_WEB));
    f.known_cgroup("hostsvc");
    f.agent.as_mut().unwrap().kill9();
    assert_eq!(f.tcp("hostsvc/child/grandchild", "10.30.0.1:80"), "ok");
}

#[test]
fn enforcement_survives_kill9_restart_readopts_and_uninstall_removes_all() {
    let mut f = Fixture::new("survive");
    let p = policy(&f.cg_path.clone(), T0_WEB);
    f.start_agent(&p);
    assert_eq!(f.tcp("t0/a", "10.30.0.1:80"), "EPERM");
    let progs_before = f.attached_programs().len();
    assert!(
        progs_before >= 5,
        "expected our cgroup programs attached, bpftool shows {progs_before}"
    );
    let denies_before = f
        .agent
        .as_ref()
        .unwrap()
        .metric("tiergate_kernel_verdicts{verdict=\"deny\"}")
        .unwrap();

    f.agent.as_mut().unwrap().kill9();
    assert_eq!(
        f.tcp("t0/a", "10.30.0.1:80"),
        "EPERM",
        "enforcement lapsed when the agent died"
    );
    assert_eq!(f.tcp("t0/a", "10.20.0.1:80"), "ok");

    // Restart: re-adopts the pins, no second attachment, counters go on, and
    // the event written while no agent ran is delivered.
    f.start_agent(&p);
    assert_eq!(
        f.attached_programs().len(),
        progs_before,
        "restart attached a second copy"
    );
    assert_eq!(f.tcp("t0/a", "10.30.0.1:80"), "EPERM");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let d = f
            .agent
            .as_ref()
            .unwrap()
            .metric("tiergate_kernel_verdicts{verdict=\"deny\"}")
            .unwrap_or(0.0);
        if d >= denies_before + 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kernel counters restarted: {d} < {denies_before} + 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Before the kill, while dead, after the restart: all three reported.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while f
        .events()
        .iter()
        .filter(|e| is_conn(e, "10.30.0.1", 80, "deny"))
        .count()
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "deny made while no agent ran was not delivered after restart"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Uninstall: nothing attached, nothing pinned, traffic flows.
    f.agent.as_mut().unwrap().kill();
    let (code, out, err) = f.uninstall();
    assert_eq!(code, 0, "uninstall failed: {out}{err}");
    assert_eq!(
        f.attached_programs().len(),
        0,
        "programs still attached after uninstall"
    );
    assert!(
        !f.bpffs.join("tiergate").exists(),
        "pins left after uninstall"
    );
    assert_eq!(f.tcp("t0/a", "10.30.0.1:80"), "ok");
}

#[test]
fn losses_are_counted_and_reported_exactly() {
    let mut f = Fixture::new("loss");
    let body = r#"      egress:
        - cidrs: ["10.20.0.0/16"]"#;
    // The smallest ring: a page holds a few dozen records.
    f.start_agent_with(
        &policy(&f.cg_path.clone(), body),
        &["--ring-buffer-bytes", "4096"],
    );
    assert_eq!(f.tcp("t0/a", "10.20.0.1:80"), "ok");
    f.wait_event("first allow", |e| is_conn(e, "10.20.0.1", 80, "allow"));
    f.known_cgroup("t0/b");
    // Stop the reader, make far more attempts than fit, resume.
    f.agent.as_ref().unwrap().signal(libc::SIGSTOP);
    let n_allow = 200;
    let n_deny = 20;
    // Denies first: they take room the kernel then keeps from allowed events.
    let mut args = vec!["connect", "--sendto"];
    args.extend(std::iter::repeat_n("10.30.0.1:80", n_deny));
    args.extend(std::iter::repeat_n("10.20.0.1:80", n_allow));
    let out = f.probe("t0/b", &args);
    assert_eq!(out.iter().filter(|r| *r == "ok").count(), n_allow);
    assert_eq!(out.iter().filter(|r| *r == "EPERM").count(), n_deny);
    f.agent.as_ref().unwrap().signal(libc::SIGCONT);
    std::thread::sleep(std::time::Duration::from_secs(2));

    let evs = f.events();
    let from_b = |v: &str| {
        evs.iter()
            .filter(|e| tg(e)["workload"]["cgroup_path"] == f.cg("t0/b") && tg(e)["verdict"] == v)
            .count() as u64
    };
    let lost: u64 = evs
        .iter()
        .filter(|e| tg(e)["kind"] == "loss")
        .map(|e| tg(e)["count"].as_u64().unwrap())
        .sum();
    let shed = evs
        .iter()
        .any(|e| tg(e)["kind"] == "loss" && tg(e)["stage"] == "kernel-shed-allowed");
    assert!(shed, "no loss record for shed allowed events");
    // Denies were kept: the kernel sheds allowed events first.
    assert_eq!(from_b("deny"), n_deny as u64, "denies were dropped");
    // Produced = delivered + reported lost, exactly.
    assert_eq!(
        from_b("allow") + from_b("deny") + lost,
        (n_allow + n_deny) as u64
    );
    let agent = f.agent.as_ref().unwrap();
    let metric = agent
        .metric("tiergate_events_lost_total{stage=\"kernel-shed-allowed\"}")
        .unwrap_or(0.0)
        + agent
            .metric("tiergate_events_lost_total{stage=\"kernel-ringbuf\"}")
            .unwrap_or(0.0);
    assert_eq!(
        metric as u64, lost,
        "loss metric disagrees with loss records"
    );
}

#[test]
fn sigterm_writes_what_is_queued_and_exits_promptly() {
    let mut f = Fixture::new("sigterm");
    f.start_agent(&policy(&f.cg_path.clone(), T0_WEB));
    assert_eq!(f.tcp("t0/a", "10.30.0.1:80"), "EPERM");
    let agent = f.agent.as_mut().expect("agent");
    let started = std::time::Instant::now();
    agent.kill();
    // The writer stops when told, after writing what is queued (it used to
    // wait out a 2 s timeout, its loop never seeing its inputs close).
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "SIGTERM took {:?}",
        started.elapsed()
    );
    assert!(
        f.events()
            .iter()
            .any(|e| is_conn(e, "10.30.0.1", 80, "deny")),
        "the deny made before SIGTERM is not in the events file"
    );
}
