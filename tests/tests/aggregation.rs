//! Aggregated allowed attempts on the real kernel (`--aggregate-allowed`):
//! a workload makes thousands of real allowed and denied UDP connects; the
//! allowed ones arrive as a few records whose `count`s add up to exactly the
//! attempts the workload saw succeed, the denied ones one record each. The
//! sums stay exact across `kill -9` (attempts folded while no agent runs
//! included) and when a restarted agent turns aggregation off.

use std::time::{Duration, Instant};

use serde_json::Value;
use tiergate_tests::{Fixture, is_conn, tg};

const ALLOWED: &str = "10.20.0.1";
const DENIED: &str = "10.30.0.1";

fn policy(root: &str) -> String {
    tiergate_tests::policy(root, "      egress:\n        - cidrs: [\"10.20.0.0/16\"]")
}

/// Runs `secs` of connects from `t0/a` alternating allowed and denied;
/// returns (allowed ok, denied EPERM) as the workload saw them.
fn load(f: &Fixture, secs: &str) -> (u64, u64) {
    let out = f.probe(
        "t0/a",
        &[
            "loop",
            "3000",
            secs,
            &format!("udp:{ALLOWED}:80"),
            &format!("udp:{DENIED}:80"),
        ],
    );
    let field = |line: &str, name: &str| -> u64 {
        let w: Vec<&str> = line.split_whitespace().collect();
        let i = w.iter().position(|x| *x == name).expect(name);
        w[i + 1].parse().expect("number")
    };
    assert_eq!(
        field(&out[0], "eperm") + field(&out[0], "other"),
        0,
        "{out:?}"
    );
    assert_eq!(field(&out[1], "ok") + field(&out[1], "other"), 0, "{out:?}");
    (field(&out[0], "ok"), field(&out[1], "eperm"))
}

/// (sum of `count` over allowed records, allowed records, aggregated
/// records, denied records) for `t0/a`.
fn tally(f: &Fixture) -> (u64, usize, usize, usize) {
    let cg = f.cg("t0/a");
    let mine = |e: &Value| tg(e)["workload"]["cgroup_path"] == cg.as_str();
    let events = f.events();
    let allowed: Vec<&Value> = events
        .iter()
        .filter(|e| is_conn(e, ALLOWED, 80, "allow") && mine(e))
        .collect();
    let sum = allowed
        .iter()
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum();
    let aggregated = allowed.iter().filter(|e| e.get("count").is_some()).count();
    let denied = events
        .iter()
        .filter(|e| is_conn(e, DENIED, 80, "deny") && mine(e))
        .count();
    (sum, allowed.len(), aggregated, denied)
}

/// Waits until the allowed records add up to `want` (and checks they never
/// add up to more).
fn wait_sum(f: &Fixture, want: u64) -> (u64, usize, usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = tally(f);
        assert!(
            t.0 <= want,
            "more attempts reported than made: {t:?}, made {want}"
        );
        if t.0 == want {
            // One more window: nothing may arrive twice.
            std::thread::sleep(Duration::from_millis(800));
            assert_eq!(tally(f).0, want, "a window arrived twice");
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "allowed records add up to {} of {want} attempts",
            t.0
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn allowed_attempts_fold_into_exact_counts_and_denies_stay_one_record_each() {
    let mut f = Fixture::new("agg");
    let p = policy(&f.cg_path.clone());
    f.start_agent_with(&p, &["--aggregate-allowed", "300ms"]);
    f.known_cgroup("t0/a");
    let (ok, eperm) = load(&f, "2");
    assert!(ok > 500, "the load made {ok} allowed attempts");
    let (sum, records, aggregated, _) = wait_sum(&f, ok);
    assert_eq!(sum, ok);
    assert_eq!(aggregated, records, "every allowed record is an aggregate");
    assert!(
        records * 20 < ok as usize,
        "{records} records for {ok} attempts: not aggregated"
    );
    // Denies: each its own record, exactly as many as the workload saw.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tally(&f).3 < eperm as usize {
        assert!(
            Instant::now() < deadline,
            "denies missing: {:?} of {eperm}",
            tally(&f)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tally(&f).3, eperm as usize);
    let events = f.events();
    let denies: Vec<&Value> = events
        .iter()
        .filter(|e| is_conn(e, DENIED, 80, "deny"))
        .collect();
    assert!(denies.iter().all(|e| e.get("count").is_none()));
    // An aggregate is a full record: identity, rule, process, its span.
    let agg = events
        .iter()
        .find(|e| is_conn(e, ALLOWED, 80, "allow") && e.get("count").is_some())
        .unwrap();
    let (start, end) = (
        agg["start_time"].as_u64().unwrap(),
        agg["end_time"].as_u64().unwrap(),
    );
    assert!(start <= end && agg["time"].as_u64() == Some(end), "{agg}");
    assert_eq!(tg(agg)["tier"], "t0");
    assert!(
        tg(agg)["rule"]["uid"]
            .as_str()
            .is_some_and(|u| u.starts_with("r-"))
    );
    assert!(agg["actor"]["process"]["pid"].as_u64().unwrap() > 0);
    assert_eq!(agg["connection_info"]["protocol_name"], "udp");
}

#[test]
fn killed_agents_and_turning_it_off_lose_no_folded_attempt() {
    let mut f = Fixture::new("aggkill");
    let p = policy(&f.cg_path.clone());
    f.start_agent_with(&p, &["--aggregate-allowed", "300ms"]);
    f.known_cgroup("t0/a");
    let (a, _) = load(&f, "1");
    // Killed with folds not yet drained; the kernel keeps folding while no
    // agent runs.
    f.agent.as_mut().unwrap().kill9();
    let (b, _) = load(&f, "1");
    f.start_agent_with(&p, &["--aggregate-allowed", "300ms"]);
    wait_sum(&f, a + b);
    // Killed again, restarted without aggregation: what was folded arrives,
    // new attempts get a record each.
    f.agent.as_mut().unwrap().kill9();
    let (c, _) = load(&f, "1");
    f.start_agent(&p);
    let (d, _) = load(&f, "1");
    let (_, records, aggregated, _) = wait_sum(&f, a + b + c + d);
    assert!(
        records - aggregated >= d as usize,
        "attempts after aggregation was turned off have their own records"
    );
}
