//! Time-boxed elevation on the real kernel: a tier0 workload denied,
//! elevated to tier2 over the admin socket, allowed with the grant in its
//! events, denied again at expiry — also with the agent killed before the
//! expiry (the kernel compares the time itself); refusals; revoke; a grant
//! kept across restart and reload, ended by a reload that disallows it.

use std::time::{Duration, Instant};

use serde_json::Value;
use tiergate_tests::held::{Client, start_echo_on};
use tiergate_tests::{Fixture, tg};

const T0_PORT: &str = "10.20.0.1:80";
const T2_ONLY: &str = "10.30.0.1:80";

fn policy(root: &str, max: &str) -> String {
    format!(
        r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: e2e
spec:
  defaultTier: locked
  elevation:
    - from: t0
      to: t2
      maxDuration: {max}
  tiers:
    - name: t0
      egress:
        - cidrs: ["10.20.0.0/16"]
          ports: ["80"]
    - name: t1
      egress: []
    - name: t2
      egress:
        - cidrs: ["10.20.0.0/16", "10.30.0.0/16"]
    - name: locked
      egress: []
  bindings:
    - tier: t0
      match:
        cgroupPath: "{root}/t0/**"
"#
    )
}

/// `tiergate elevate ...` against this test's agent: (exit code, reply).
fn elevate(f: &Fixture, args: &[&str]) -> (i32, Value, String) {
    f.elevate(args)
}

fn grant(f: &Fixture, cg: &str, to: &str, dur: &str) -> (i32, Value, String) {
    elevate(
        f,
        &[
            "--cgroup",
            cg,
            "--to",
            to,
            "--for",
            dur,
            "--ticket",
            "INC-1234",
            "--reason",
            "debug a failing sync",
        ],
    )
}

fn wait_for(f: &Fixture, what: &str, target: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = f.tcp("t0/a", target);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {target} gives {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn grant_allows_until_expiry_even_with_the_agent_killed() {
    let mut f = Fixture::new("elevate");
    let p = policy(&f.cg_path.clone(), "1m");
    f.start_agent(&p);
    let cg = f.cg("t0/a");
    f.known_cgroup("t0/a");
    assert_eq!(f.tcp("t0/a", T2_ONLY), "EPERM");

    let (code, r, err) = grant(&f, &cg, "t2", "4s");
    assert_eq!(code, 0, "{err} {r}");
    let id = r["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(r["grant"]["from"], "t0");
    assert_eq!(r["grant"]["granted_by"]["id"], "uid:0");
    let granted = Instant::now();
    assert_eq!(f.tcp("t0/a", T2_ONLY), "ok");
    let ev = f.wait_event("allowed under the grant", |e| {
        tg(e)["kind"] == "connection"
            && e["dst_endpoint"]["ip"] == "10.30.0.1"
            && tg(e)["verdict"] == "allow"
    });
    assert_eq!(tg(&ev)["tier"], "t2");
    assert_eq!(tg(&ev)["elevation"]["id"], id.as_str());
    assert_eq!(tg(&ev)["elevation"]["ticket"], "INC-1234");
    assert_eq!(tg(&ev)["elevation"]["granted_by"]["uid"], "0");
    let rec = f.wait_event("grant record", |e| {
        e["class_uid"] == 3005 && e["activity_id"] == 1
    });
    assert_eq!(rec["metadata"]["correlation_uid"], id.as_str());

    // Killed before the expiry: the kernel ends the grant on time.
    f.agent.as_mut().unwrap().kill9();
    assert_eq!(f.tcp("t0/a", T2_ONLY), "ok", "still inside the grant");
    let left = Duration::from_secs(4).saturating_sub(granted.elapsed());
    std::thread::sleep(left + Duration::from_millis(300));
    assert_eq!(
        f.tcp("t0/a", T2_ONLY),
        "EPERM",
        "expired with no agent running"
    );
    assert_eq!(f.tcp("t0/a", T0_PORT), "ok", "its own tier still applies");

    // The next agent reports the expiry and lists nothing.
    f.start_agent(&p);
    let end = f.wait_event("expiry record", |e| {
        e["class_uid"] == 3005 && e["activity_id"] == 2
    });
    assert_eq!(end["metadata"]["correlation_uid"], id.as_str());
    assert_eq!(tg(&end)["elevation"]["end"], "expired");
    let (code, r, _) = elevate(&f, &["list"]);
    assert_eq!(code, 0);
    assert_eq!(r["grants"].as_array().unwrap().len(), 0, "{r}");
}

#[test]
fn refusals_revoke_restart_and_reload() {
    let mut f = Fixture::new("elevate-ops");
    let root = f.cg_path.clone();
    let p = policy(&root, "10m");
    f.start_agent(&p);
    let cg = f.cg("t0/a");
    f.known_cgroup("t0/a");

    // Refused, each with its sentence; nothing changes.
    for (to, dur, why) in [
        ("t1", "1m", "no elevation from"),
        ("t2", "2h", "exceeds"),
        ("t2", "0s", "needs an expiry"),
        ("nope", "1m", "no tier named"),
    ] {
        let (code, r, err) = grant(&f, &cg, to, dur);
        assert_eq!(code, 1, "{to} {dur}: {r}");
        assert!(err.contains(why), "{to} {dur}: {err}");
    }
    let (code, _, err) = elevate(
        &f,
        &[
            "--cgroup", "/nowhere", "--to", "t2", "--for", "1m", "--ticket", "T", "--reason", "R",
        ],
    );
    assert!(code == 1 && err.contains("no workload"), "{err}");
    assert_eq!(f.tcp("t0/a", T2_ONLY), "EPERM");
    // Unauthenticated: a non-root caller cannot reach the socket (0600).
    let sock = f.admin_socket();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tiergate_tests::tiergate_bin())
        .args(["elevate", "list", "--admin-socket", sock.to_str().unwrap()])
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin socket"),
        "{out:?}"
    );

    // Revoke: denied at once, a revoke record.
    let (_, r, _) = grant(&f, &cg, "t2", "5m");
    let id = r["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(f.tcp("t0/a", T2_ONLY), "ok");
    let (code, _, err) = elevate(&f, &["revoke", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(f.tcp("t0/a", T2_ONLY), "EPERM");
    let rev = f.wait_event("revoke record", |e| {
        e["class_uid"] == 3005
            && e["activity_id"] == 2
            && e["metadata"]["correlation_uid"] == id.as_str()
    });
    assert_eq!(tg(&rev)["elevation"]["end"], "revoked");
    let (code, _, err) = elevate(&f, &["revoke", &id]);
    assert!(code == 1 && err.contains("no grant"), "{err}");

    // A grant survives a restart (pins and the grants file) and a reload.
    let (_, r, _) = grant(&f, &cg, "t2", "5m");
    let id = r["grant"]["id"].as_str().unwrap().to_string();
    f.agent.as_mut().unwrap().kill9();
    f.start_agent(&p);
    assert_eq!(f.tcp("t0/a", T2_ONLY), "ok");
    let (_, r, _) = elevate(&f, &["list"]);
    assert_eq!(r["grants"][0]["id"], id.as_str(), "{r}");
    // A reload that keeps the rule keeps the grant (tiers renumbered too).
    let reordered = p.replace("    - name: t1\n      egress: []\n", "").replace(
        "    - name: locked\n      egress: []\n",
        "    - name: locked\n      egress: []\n    - name: t1\n      egress: []\n",
    );
    let v0 = f.wait_event("policy", |e| tg(e)["kind"] == "policy")["unmapped"]["tiergate"]["policy"]["version"].clone();
    f.write_policy(&reordered);
    f.wait_event("reload", |e| {
        tg(e)["kind"] == "policy"
            && tg(e)["action"] == "applied"
            && tg(e)["policy"]["version"] != v0
    });
    assert_eq!(f.tcp("t0/a", T2_ONLY), "ok", "kept across the reload");
    // A reload without the elevation rule ends it.
    let without = reordered.replace(
        "  elevation:\n    - from: t0\n      to: t2\n      maxDuration: 10m\n",
        "",
    );
    f.write_policy(&without);
    wait_for(
        &f,
        "grant ended by the reload",
        T2_ONLY,
        "EPERM",
        Duration::from_secs(5),
    );
    let end = f.wait_event("policy end", |e| {
        e["class_uid"] == 3005
            && e["metadata"]["correlation_uid"] == id.as_str()
            && e["activity_id"] == 2
    });
    assert_eq!(tg(&end)["elevation"]["end"], "policy");
    assert!(
        f.agent
            .as_ref()
            .unwrap()
            .metric("tiergate_elevations_active")
            .is_some_and(|v| v == 0.0)
    );
}

/// A connection opened under the grant to a destination only the granted
/// tier allows is closed when the grant ends; one its own tier allows stays.
#[test]
fn connections_opened_under_a_grant_are_closed_at_its_end() {
    let mut f = Fixture::new("elevate-conns");
    let p =
        policy(&f.cg_path.clone(), "1m").replace("ports: [\"80\"]", "ports: [\"80\", \"9101\"]");
    start_echo_on(&f.netns, "10.30.0.1:9100 10.20.0.1:9101");
    f.start_agent(&p);
    let cg = f.cg("t0/a");
    let dir = f.known_cgroup("t0/a");
    let (code, r, err) = grant(&f, &cg, "t2", "3s");
    assert_eq!(code, 0, "{err} {r}");
    let mut held = Client::start_with(&f, &dir, &["10.30.0.1:9100", "10.20.0.1:9101"]);
    assert_eq!(held.check(), "ok ok");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = held.check();
        if got == "ECONNABORTED ok" {
            break;
        }
        assert_eq!(got, "ok ok", "only the granted tier's connection may go");
        assert!(
            Instant::now() < deadline,
            "the grant's connection outlived it"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = f
        .agent
        .as_ref()
        .unwrap()
        .metric("tiergate_elevation_sockets_closed_total");
    assert_eq!(m, Some(1.0));
}
