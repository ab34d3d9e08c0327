//! The observation store end to end: a real agent enforcing a test cgroup
//! in a test network namespace, a real collector with `--store`, and the
//! store read back through the API `tiergate advise` uses. SQLite (the
//! embedded default) and a real PostgreSQL started by the test.

use std::time::{Duration, Instant};

use tiergate_collector::store::{Aggregate, ObservationRow, Store, cgroup_pattern, observe};
use tiergate_tests::collector::{Collector, Pki, agent_args};
use tiergate_tests::pki::Leaf;
use tiergate_tests::postgres::Postgres;
use tiergate_tests::{Fixture, policy};

const BODY: &str = r#"      egress:
        - cidrs: ["10.20.0.0/16"]"#;

const ALLOWED: &str = "10.20.0.1";
const DENIED: &str = "10.30.0.1";

fn connects(f: &Fixture, n: usize, ip: &str) {
    let target = format!("{ip}:80");
    let mut args = vec!["connect"];
    args.extend(std::iter::repeat_n(target.as_str(), n));
    f.probe("t0/a", &args);
}

/// (allowed, denied) TCP attempts of t0/a to the two test addresses.
fn counts(rows: &[ObservationRow], identity: &str) -> (u64, u64) {
    let of = |ip: &str, verdict: &str| {
        rows.iter()
            .filter(|r| {
                r.key.identity == identity
                    && r.key.destination == ip
                    && r.key.port == 80
                    && r.key.protocol == "tcp"
                    && r.key.verdict == verdict
                    && r.key.tier == "t0"
            })
            .map(|r| r.seen.count)
            .sum()
    };
    (of(ALLOWED, "allow"), of(DENIED, "deny"))
}

/// Waits until the store holds exactly `want` for `identity`.
fn wait_counts(url: &str, identity: &str, want: (u64, u64), c: &Collector) -> Vec<ObservationRow> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = Store::open(url)
            .and_then(|mut s| s.observations(0))
            .unwrap_or_else(|e| panic!("reading the store: {e}"));
        let got = counts(&rows, identity);
        if got == want {
            return rows;
        }
        assert!(
            got.0 <= want.0 && got.1 <= want.1,
            "more than the attempts made: {got:?} > {want:?}: {rows:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "store holds {got:?} (allowed, denied), want {want:?}; rows: {rows:#?}\ncollector log:\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Real attempts → exact counts in the store; the collector killed and
/// restarted (records spooled meanwhile) → counts kept and growing.
fn attempts_are_counted_across_restarts(f: &mut Fixture, url: &str) {
    let pki = Pki::new();
    let collected = f.dir.join("collected.jsonl");
    let mut c = Collector::start_with(
        &f.dir,
        pki.collector(),
        vec![format!("file:{}", collected.display())],
        vec!["--store".into(), url.into()],
        "collector.log",
    );
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let args = agent_args(&c, &files, &f.dir.join("spool"));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = policy(&f.cg_path.clone(), BODY);
    f.start_agent_with(&p, &a);
    let identity = format!("cgroup:{}", cgroup_pattern(&f.cg("t0/a")));

    connects(f, 20, ALLOWED);
    connects(f, 10, DENIED);
    wait_counts(url, &identity, (20, 10), &c);

    // Killed, not stopped: what was acknowledged had been written.
    c.stop();
    connects(f, 5, ALLOWED);
    connects(f, 5, DENIED);
    c.restart();
    connects(f, 10, ALLOWED);
    let rows = wait_counts(url, &identity, (35, 15), &c);
    for r in rows.iter().filter(|r| r.key.identity == identity) {
        assert!(
            r.seen.first_ms <= r.seen.last_ms && r.seen.first_ms > 0,
            "{r:?}"
        );
        assert!(
            r.key.policy_version.starts_with("sha256:"),
            "policy version of {r:?}"
        );
    }

    let mut store = Store::open(url).unwrap();
    let ids = store.identities().unwrap();
    let me: Vec<_> = ids.iter().filter(|i| i.identity == identity).collect();
    assert_eq!(me.len(), 1, "one inventory row for t0/a: {ids:#?}");
    assert_eq!(me[0].attempts, 50);
    assert_eq!(me[0].tiers, vec!["t0".to_string()]);
    assert!(me[0].last_attempt_ms.is_some());
    let versions = store.policy_versions().unwrap();
    assert!(
        versions
            .iter()
            .any(|v| v.version == rows[0].key.policy_version),
        "{versions:?}"
    );
    assert_eq!(
        c.metric("tiergate_collector_store_dropped_total"),
        0.0,
        "{}",
        c.log_text()
    );
    assert!(c.metric("tiergate_collector_store_records_total") > 0.0);

    // The collector's file holds the same records: read as JSON lines,
    // they make the same counts (what `advise --events` reads).
    let (agg, report) = tiergate_collector::store::from_jsonl(&[&collected]).unwrap();
    assert_eq!(report.malformed, 0, "{:?}", report.examples);
    assert_eq!(counts(&agg.observations(0), &identity), (35, 15));
    // And so does the agent's own --events file.
    let (agg, _) = tiergate_collector::store::from_jsonl(&[f.events_path()]).unwrap();
    assert_eq!(counts(&agg.observations(0), &identity), (35, 15));
}

#[test]
fn sqlite_store_counts_every_attempt_across_collector_restarts() {
    let mut f = Fixture::new("store");
    let url = format!("sqlite:{}", f.dir.join("store.db").display());
    attempts_are_counted_across_restarts(&mut f, &url);
}

#[test]
fn postgres_store_counts_every_attempt_across_collector_restarts() {
    let mut f = Fixture::new("storepg");
    let pg = Postgres::start(&f.dir);
    attempts_are_counted_across_restarts(&mut f, &pg.url());
}

fn update(ip: &str, verdict: &str, time: u64) -> tiergate_collector::store::Update {
    let rec = serde_json::json!({
        "class_uid": 4001, "time": time,
        "connection_info": {"protocol_name": "tcp"},
        "dst_endpoint": {"ip": ip, "port": 443},
        "device": {"hostname": "node-1"},
        "unmapped": {"tiergate": {"kind": "connection", "verdict": verdict, "tier": "t",
            "policy": {"name": "p", "version": "sha256:1"},
            "workload": {"namespace": "ns", "service_account": "sa"}}}
    });
    observe(rec.to_string().as_bytes()).unwrap().unwrap()
}

/// Two replicas writing one PostgreSQL database at once: every count lands
/// (the database adds, not the replica), and the bound holds.
#[test]
fn replicas_share_one_postgres_database() {
    let dir = tiergate_tests::pki::TempDir::new();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pg = Postgres::start(dir.path());
    let url = pg.url();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = Store::open(&url).unwrap_or_else(|e| panic!("{e}"));
                for i in 0..50u64 {
                    let mut agg = Aggregate::default();
                    for d in 0..20 {
                        agg.add(update(&format!("10.0.0.{d}"), "allow", 1000 + i));
                    }
                    agg.add(update("10.9.9.9", "deny", 1000 + w));
                    s.record(&agg).unwrap_or_else(|e| panic!("{e}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let mut s = Store::open(&url).unwrap();
    let rows = s.observations(0).unwrap();
    assert_eq!(rows.len(), 21);
    for r in &rows {
        let want = 100;
        assert_eq!(r.seen.count, want, "{r:?}");
    }
    let ids = s.identities().unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].identity, "k8s:ns/sa");
    assert_eq!(ids[0].attempts, 2 * 50 * 21);

    // Bounded: 21 rows, at most 5 kept, the most recently seen.
    let mut small = Store::open_bounded(&url, 5).unwrap();
    let mut agg = Aggregate::default();
    agg.add(update("10.1.1.1", "allow", 5000));
    assert_eq!(small.record(&agg).unwrap().evicted, 17);
    let kept = small.observations(0).unwrap();
    assert_eq!(kept.len(), 5);
    assert!(kept.iter().any(|r| r.key.destination == "10.1.1.1"));
    assert!(kept.iter().all(|r| r.seen.last_ms >= 1049), "{kept:#?}");
    drop(pg);
}
