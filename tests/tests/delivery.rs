//! Event delivery end to end: real agent, real collector, real TLS with
//! SPIFFE SVIDs made in the test, real sockets on loopback, real rsyslog.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tiergate_tests::collector::{Collector, Pki, agent_args, lines, uids};
use tiergate_tests::pki::{Ca, Leaf, TlsFiles, write_svid};
use tiergate_tests::{Fixture, free_port, policy, tg, tiergate_bin};

const BODY: &str = r#"      egress:
        - cidrs: ["10.20.0.0/16"]"#;

fn start_agent(f: &mut Fixture, args: &[String]) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = policy(&f.cg_path.clone(), BODY);
    f.start_agent_with(&p, &a);
}

/// Waits until the collector's file holds every uid of the agent's own
/// events file; returns the collector's records.
fn wait_delivered(f: &Fixture, collected: &Path, what: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = uids(&f.events());
        let got = lines(collected);
        let missing: Vec<_> = want.difference(&uids(&got)).cloned().collect();
        if missing.is_empty() && !want.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {} records never reached the collector, e.g. {:?}",
            missing.len(),
            want.len(),
            missing.iter().take(3).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connects(f: &Fixture, rel: &str, n: usize, target: &str) {
    let mut args = vec!["connect", "--sendto"];
    args.extend(std::iter::repeat_n(target, n));
    f.probe(rel, &args);
}

#[test]
fn every_event_reaches_the_collector_across_a_collector_outage() {
    let mut f = Fixture::new("dlv");
    let pki = Pki::new();
    let collected = f.dir.join("collected.jsonl");
    let mut c = Collector::start(
        &f.dir,
        pki.collector(),
        vec![format!("file:{}", collected.display())],
    );
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let spool = f.dir.join("spool");
    start_agent(&mut f, &agent_args(&c, &files, &spool));
    connects(&f, "t0/a", 20, "10.20.0.1:80");
    connects(&f, "t0/a", 10, "10.30.0.1:80");
    wait_delivered(&f, &collected, "before the outage");
    c.stop();
    connects(&f, "t0/a", 25, "10.20.0.1:80");
    connects(&f, "t0/a", 5, "10.30.0.1:80");
    std::thread::sleep(Duration::from_millis(700));
    c.restart();
    connects(&f, "t0/a", 10, "10.20.0.1:80");
    let got = wait_delivered(&f, &collected, "after the outage");
    // Exactly the attempts made, by uid, and byte-identical records.
    let from_a: BTreeSet<String> = got
        .iter()
        .filter(|e| {
            tg(e)["kind"] == "connection" && tg(e)["workload"]["cgroup_path"] == f.cg("t0/a")
        })
        .map(|e| e["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        from_a.len(),
        70,
        "connection records from t0/a at the collector"
    );
    let mine = std::fs::read_to_string(f.events_path()).unwrap();
    let theirs = std::fs::read_to_string(&collected).unwrap();
    for line in mine.lines() {
        assert!(
            theirs.contains(line),
            "collector record differs from the agent's: {line}"
        );
    }
    assert_eq!(
        c.metric("tiergate_collector_gaps_total"),
        0.0,
        "false gap:\n{}",
        c.log_text()
    );
    let agent = f.agent.as_ref().unwrap();
    assert_eq!(agent.metric("tiergate_spool_pending").unwrap_or(-1.0), 0.0);
}

#[test]
fn kill9_with_a_full_spool_loses_nothing_and_numbering_continues() {
    let mut f = Fixture::new("dlvkill");
    let pki = Pki::new();
    let collected = f.dir.join("collected.jsonl");
    let mut c = Collector::start(
        &f.dir,
        pki.collector(),
        vec![format!("file:{}", collected.display())],
    );
    c.stop();
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let spool = f.dir.join("spool");
    let args = agent_args(&c, &files, &spool);
    start_agent(&mut f, &args);
    connects(&f, "t0/a", 30, "10.30.0.1:80");
    f.wait_event("the 30th deny", |_| {
        f.events()
            .iter()
            .filter(|e| tg(e)["verdict"] == "deny")
            .count()
            >= 30
    });
    std::thread::sleep(Duration::from_millis(500)); // the writer's batch flush (fdatasync)
    f.agent.as_mut().unwrap().kill9();
    start_agent(&mut f, &args);
    connects(&f, "t0/a", 5, "10.30.0.1:80");
    c.restart();
    let got = wait_delivered(&f, &collected, "after kill -9");
    let seqs: BTreeSet<u64> = got.iter().map(|e| tg(e)["seq"].as_u64().unwrap()).collect();
    let (lo, hi) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    assert_eq!(lo, 1);
    assert_eq!(
        seqs.len() as u64,
        hi,
        "seq has gaps across the restart: {seqs:?}"
    );
    let id = got[0]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .rsplit_once('-')
        .unwrap()
        .0
        .to_string();
    assert!(
        got.iter()
            .all(|e| e["metadata"]["uid"].as_str().unwrap().starts_with(&id)),
        "agent id changed across restart"
    );
    assert_eq!(
        got.iter().filter(|e| tg(e)["verdict"] == "deny").count(),
        35
    );
}

#[test]
fn collector_refuses_wrong_identities_and_plaintext() {
    let f = Fixture::new("dlvrej");
    let pki = Pki::new();
    let collected = f.dir.join("collected.jsonl");
    let c = Collector::start(
        &f.dir,
        pki.collector(),
        vec![format!("file:{}", collected.display())],
    );
    let other_ca = Ca::new("someone else");
    let cases: Vec<(&str, TlsFiles)> = vec![
        (
            "spiffe-not-allowed",
            pki.agent(
                "intruder",
                &pki.ca
                    .issue(Leaf::new().uri("spiffe://corp.example/ns/default/sa/intruder")),
            ),
        ),
        (
            "expired",
            pki.agent("expired", &pki.ca.issue(Leaf::agent().expired())),
        ),
        ("unknown-ca", {
            let files = pki.dir.files("foreign");
            std::fs::write(&files.ca, pki.ca.pem()).unwrap();
            write_svid(&files, &other_ca.issue(Leaf::agent()));
            files
        }),
    ];
    for (reason, files) in cases {
        let spool = f.dir.join(format!("spool-{reason}"));
        let mut args = vec!["agent".to_string(), "--policy".into()];
        let pfile = f.write_policy(&policy(&f.cg_path, BODY));
        args.push(pfile.display().to_string());
        // The agent refuses its own expired certificate at start: that is a
        // refusal too, and the collector never sees it.
        let out = Command::new(tiergate_bin())
            .args(["uninstall", "--bpffs"])
            .arg(&f.bpffs)
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut cmd = Command::new(tiergate_bin());
        cmd.args(&args)
            .args([
                "--cgroup-root",
                f.cg_root.to_str().unwrap(),
                "--bpffs",
                f.bpffs.to_str().unwrap(),
            ])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .args(agent_args(&c, &files, &spool))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if reason == "expired" {
            let st = child.wait().unwrap();
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(
                !st.success() && err.contains("--tls-cert"),
                "agent started with an expired certificate: {err}"
            );
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while c.metric(&format!(
            "tiergate_collector_rejected_total{{reason=\"{reason}\"}}"
        )) < 1.0
        {
            assert!(
                Instant::now() < deadline,
                "collector did not refuse {reason}:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    // Plaintext: the handshake fails and nothing is written.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    std::io::Write::write_all(&mut s, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "plaintext got an answer that is not a TLS alert"
    );
    assert!(
        lines(&collected).is_empty(),
        "a refused client got records written"
    );
    assert!(
        c.log_text().contains("spiffe"),
        "refusal reasons not logged:\n{}",
        c.log_text()
    );
}

#[test]
fn rotated_agent_certificate_is_used_on_the_next_connection() {
    let mut f = Fixture::new("dlvrot");
    let pki = Pki::new();
    let collected = f.dir.join("collected.jsonl");
    let mut c = Collector::start(
        &f.dir,
        pki.collector(),
        vec![format!("file:{}", collected.display())],
    );
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent().serial(0x1111)));
    let spool = f.dir.join("spool");
    start_agent(&mut f, &agent_args(&c, &files, &spool));
    connects(&f, "t0/a", 1, "10.30.0.1:80");
    wait_delivered(&f, &collected, "first SVID");
    assert!(c.log_text().contains("serial=1111"), "{}", c.log_text());
    // Rotate (write + rename, as SPIRE agents do), then force a reconnect.
    let fresh = pki.ca.issue(Leaf::agent().serial(0x2222));
    let tmp = pki.dir.files("agent-next");
    write_svid(&tmp, &fresh);
    std::fs::rename(&tmp.key, &files.key).unwrap();
    std::fs::rename(&tmp.cert, &files.cert).unwrap();
    c.stop();
    c.restart();
    connects(&f, "t0/a", 1, "10.30.0.1:80");
    f.wait_event("the second deny", |_| {
        f.events()
            .iter()
            .filter(|e| tg(e)["verdict"] == "deny")
            .count()
            == 2
    });
    wait_delivered(&f, &collected, "rotated SVID");
    assert!(
        c.log_text().contains("serial=2222"),
        "rotated certificate not used:\n{}",
        c.log_text()
    );
}

#[test]
fn full_spool_gives_up_allowed_events_first_and_reports_exact_losses() {
    let mut f = Fixture::new("dlvfull");
    let pki = Pki::new();
    let collected = f.dir.join("collected.jsonl");
    let mut c = Collector::start(
        &f.dir,
        pki.collector(),
        vec![format!("file:{}", collected.display())],
    );
    c.stop();
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let spool = f.dir.join("spool");
    let mut args = agent_args(&c, &files, &spool);
    args.extend(["--spool-max-bytes".into(), "262144".into()]);
    start_agent(&mut f, &args);
    connects(&f, "t0/a", 400, "10.20.0.1:80");
    connects(&f, "t0/a", 10, "10.30.0.1:80");
    f.wait_event("a spool-full loss record", |e| {
        tg(e)["kind"] == "loss" && tg(e)["stage"] == "spool-full"
    });
    c.restart();
    // Everything the agent numbered either reached the collector or is
    // named in a loss record.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mine = f.events();
        let all: BTreeSet<u64> = mine
            .iter()
            .map(|e| tg(e)["seq"].as_u64().unwrap())
            .collect();
        let got = lines(&collected);
        // The collector's own gap records have no seq; the gaps they report
        // are the seqs the loss records name.
        let gaps: Vec<(u64, u64)> = got
            .iter()
            .filter(|e| tg(e)["kind"] == "gap")
            .map(|e| {
                (
                    tg(e)["from_seq"].as_u64().unwrap(),
                    tg(e)["to_seq"].as_u64().unwrap(),
                )
            })
            .collect();
        let got: Vec<Value> = got.into_iter().filter(|e| tg(e)["kind"] != "gap").collect();
        let mut covered: BTreeSet<u64> =
            got.iter().map(|e| tg(e)["seq"].as_u64().unwrap()).collect();
        let delivered = covered.clone();
        for e in got
            .iter()
            .chain(mine.iter())
            .filter(|e| tg(e)["kind"] == "loss")
        {
            for run in tg(e)["seq_range"]["seqs"].as_array().into_iter().flatten() {
                let (a, b) = (run[0].as_u64().unwrap(), run[1].as_u64().unwrap());
                covered.extend(a..=b);
            }
        }
        let missing: Vec<_> = all.difference(&covered).collect();
        if missing.is_empty() {
            for (a, b) in &gaps {
                assert!(
                    (*a..=*b).all(|s| covered.contains(&s) && !delivered.contains(&s)),
                    "gap {a}..={b} not explained by a loss record"
                );
            }
            // Denies survived: the spool gives up allowed events first.
            let denies = got.iter().filter(|e| tg(e)["verdict"] == "deny").count();
            assert_eq!(denies, 10, "denies were given up");
            let lost: u64 = mine
                .iter()
                .filter(|e| tg(e)["kind"] == "loss" && tg(e)["stage"] == "spool-full")
                .map(|e| tg(e)["count"].as_u64().unwrap())
                .sum();
            assert!(lost > 0);
            let delivered_conn =
                got.iter().filter(|e| tg(e)["kind"] == "connection").count() as u64;
            assert_eq!(delivered_conn + lost, 410, "delivered + lost != produced");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} seqs neither delivered nor reported lost: {:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn corrupt_spool_file_is_set_aside_reported_and_the_agent_runs_on() {
    let mut f = Fixture::new("dlvcorrupt");
    let pki = Pki::new();
    let c = Collector::start(&f.dir, pki.collector(), vec!["stdout".into()]);
    let port = c.port;
    drop(c); // nobody listens: records stay in the spool
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let spool = f.dir.join("spool");
    let mut args = agent_args(
        &Collector {
            child: None,
            port,
            admin: 0,
            files: files.clone(),
            sinks: vec![],
            extra: vec![],
            log: f.dir.join("x"),
        },
        &files,
        &spool,
    );
    args.extend(["--spool-max-bytes".into(), "1048576".into()]);
    start_agent(&mut f, &args);
    connects(&f, "t0/a", 40, "10.30.0.1:80");
    std::thread::sleep(Duration::from_millis(700));
    f.agent.as_mut().unwrap().kill();
    let seg = std::fs::read_dir(spool.join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max()
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xa5;
    }
    std::fs::write(&seg, bytes).unwrap();
    start_agent(&mut f, &args);
    let e = f.wait_event("spool-corrupt loss record", |e| {
        tg(e)["kind"] == "loss" && tg(e)["stage"] == "spool-corrupt"
    });
    assert!(tg(&e)["count"].as_u64().unwrap() > 0);
    assert!(
        std::fs::read_dir(spool.join("corrupt")).unwrap().count() >= 1,
        "damaged file not set aside"
    );
    // The agent runs on and enforces.
    assert_eq!(f.tcp("t0/a", "10.30.0.1:80"), "EPERM");
}

#[test]
fn syslog_sink_delivers_to_a_real_rsyslog_over_tls() {
    let mut f = Fixture::new("dlvsyslog");
    let pki = Pki::new();
    let rs_files = pki
        .dir
        .write("rsyslog", &pki.ca.pem(), &pki.ca.issue(Leaf::collector()));
    let rdir = f.dir.join("rsyslog");
    std::fs::create_dir_all(&rdir).unwrap();
    let rs =
        tiergate_tests::rsyslog::Rsyslog::start(&rdir, &rs_files.ca, &rs_files.cert, &rs_files.key);
    let sink = format!(
        "syslog+tls://127.0.0.1:{}?ca={}",
        rs.port(),
        rs_files.ca.display()
    );
    let c = Collector::start(&f.dir, pki.collector(), vec![sink]);
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let spool = f.dir.join("spool");
    start_agent(&mut f, &agent_args(&c, &files, &spool));
    connects(&f, "t0/a", 3, "10.30.0.1:80");
    f.wait_event("3 denies", |_| {
        f.events()
            .iter()
            .filter(|e| tg(e)["verdict"] == "deny")
            .count()
            >= 3
    });
    let want = f.events();
    let got = rs.wait_for(want.len(), Duration::from_secs(20));
    let got_uids: BTreeSet<String> = got
        .iter()
        .filter_map(|r| r.json["metadata"]["uid"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        got_uids,
        uids(&want),
        "rsyslog did not receive every record"
    );
    let deny = got
        .iter()
        .find(|r| r.json["unmapped"]["tiergate"]["verdict"] == "deny")
        .unwrap();
    assert_eq!(deny.msgid, "connection");
    assert_eq!(deny.hostname, "test-node");
    assert_eq!(deny.pri, 16 * 8 + 4, "denies are warnings");
}
