//! Lines the shape says read the same do read the same (serde_json says
//! so), and records folded in by shape are folded in as one by one.

use serde_json::json;

use super::super::Aggregate;
use super::super::observe::observe;
use super::super::observe::tests::connection;
use super::super::record::Rec;
use super::super::scan::read_shaped;
use super::*;

/// The bench's record: every field the store skips is there to change.
fn record(seq: u64, time: u64) -> String {
    let mut v = connection("deny", "10.30.0.1", 80);
    v["time"] = json!(time);
    v["metadata"]["uid"] = json!(format!("6f1c2b7a-{seq}"));
    v["unmapped"]["tiergate"]["seq"] = json!(seq);
    v["actor"]["process"]["pid"] = json!(4000 + seq % 7);
    v["unmapped"]["tiergate"]["workload"]["pod"] = json!("é-pod");
    v["message"] = json!("a \"quoted\" word");
    v["ratio"] = json!(-1);
    // serde_json writes floats its own way: as agents may not.
    v.to_string().replace("\"ratio\":-1", "\"ratio\":-1.25e-3")
}

fn shape_of(line: &str) -> Shape {
    let mut shape = Shape::default();
    read_shaped(line.as_bytes(), &mut shape).expect("the scanner reads it");
    assert!(shape.valid);
    shape
}

#[test]
fn the_same_record_with_another_seq_uid_pid_and_time_has_the_shape() {
    let first = record(17, 1_700_000_000_123);
    let shape = shape_of(&first);
    let next = record(18, 1_700_000_000_999);
    assert_eq!(first.len(), next.len());
    assert_eq!(
        shape.matches(first.as_bytes(), next.as_bytes()),
        Some(Values {
            time: Some(1_700_000_000_999),
            count: None
        })
    );
    // Another length, another destination, another key: read anew.
    for other in [
        record(100, 1_700_000_000_123),
        first.replace("10.30.0.1", "10.30.0.2"),
        first.replace("\"seq\"", "\"sep\""),
        first.replace("\"deny\"", "\"DENY\""),
        first.replace(":4001,", ":4002,"),
    ] {
        assert!(
            shape.matches(first.as_bytes(), other.as_bytes()).is_none(),
            "{other}"
        );
    }
}

#[test]
fn what_would_read_otherwise_never_matches() {
    let first = record(17, 1_700_000_000_123);
    let shape = shape_of(&first);
    let cases = [
        ("6f1c2b7a-17", "6f1c2b7a\"17"),    // a quote in a string
        ("6f1c2b7a-17", "6f1c2b7a\\17"),    // a backslash
        ("6f1c2b7a-17", "6f1c2b7a\n17"),    // a control character
        ("\"seq\":17", "\"seq\":07"),       // a leading zero
        ("1700000000123", "0700000000123"), // the same in `time`
        ("\\\"quoted", "\\xquoted"),        // an escape
        ("e-3", "x-3"),                     // a number's exponent
        ("-1.25", "+1.25"),                 // its sign
    ];
    for (from, to) in cases {
        assert_eq!(from.len(), to.len());
        let other = first.replacen(from, to, 1);
        assert_ne!(other, first, "{from}");
        assert!(
            shape.matches(first.as_bytes(), other.as_bytes()).is_none(),
            "{to}"
        );
    }
    // Non-ASCII bytes stay (so the line stays UTF-8).
    let other = first.replace("é-pod", "ab-pod");
    assert_eq!(other.len(), first.len());
    assert!(shape.matches(first.as_bytes(), other.as_bytes()).is_none());
}

/// Random bytes changed: whatever the shape matches, serde_json reads as
/// the first line but for `time` and `count`, which the shape gives.
#[test]
fn lines_the_shape_matches_read_the_same() {
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    const BYTES: &[u8] = b"0123456789az\"\\:,{}[] .-e\x01\xc3\x7f";
    let mut counted = connection("allow", "10.0.0.1", 443);
    counted["count"] = json!(12);
    let bases = [record(17, 1_700_000_000_123), counted.to_string()];
    let mut matched = 0;
    for base in &bases {
        let shape = shape_of(base);
        let want = Rec::read_serde(base.as_bytes()).unwrap();
        for _ in 0..20_000 {
            let mut line = base.clone().into_bytes();
            for _ in 0..=next(4) {
                let at = next(line.len());
                line[at] = BYTES[next(BYTES.len())];
            }
            let Some(v) = shape.matches(base.as_bytes(), &line) else {
                continue;
            };
            matched += 1;
            let got = Rec::read_serde(&line).unwrap_or_else(|e| {
                panic!(
                    "matched but not JSON ({e}): {}",
                    String::from_utf8_lossy(&line)
                )
            });
            assert_eq!((got.time, got.count), (v.time, v.count));
            let mut same = Rec::read_serde(base.as_bytes()).unwrap();
            same.time = got.time;
            same.count = got.count;
            assert_eq!(got, same, "{}", String::from_utf8_lossy(&line));
            assert_eq!(same.unmapped, want.unmapped);
        }
    }
    assert!(matched > 1_000, "only {matched} matched");
}

/// A batch folds in as its records one by one do: runs of one shape,
/// broken by other records, other shapes, unreadable lines.
#[test]
fn a_batch_folds_in_as_its_records_one_by_one() {
    let mut dns = connection("allow", "10.0.0.53", 53);
    dns["class_uid"] = json!(4003);
    dns["unmapped"]["tiergate"]["kind"] = json!("dns");
    dns["query"] = json!({"hostname": "api.example.com"});
    let policy = json!({"class_uid": 0, "time": 1, "unmapped": {"tiergate": {
        "kind": "policy", "action": "applied", "policy": {"name": "p", "version": "sha256:ab"}}}});
    let mut lines: Vec<String> = Vec::new();
    for i in 0..5u64 {
        lines.push(record(10 + i, 1_700_000_000_100 + 7 * (i % 3)));
    }
    lines.push(policy.to_string());
    for (i, count) in [3u64, 0, 5].into_iter().enumerate() {
        let mut v = connection("allow", "10.0.0.9", 443);
        v["time"] = json!(1_700_000_000_500 - i as u64 * 100);
        v["count"] = json!(count);
        lines.push(v.to_string());
    }
    for t in [900u64, 800, 700] {
        let mut v = dns.clone();
        v["time"] = json!(t);
        lines.push(v.to_string());
    }
    lines.push("not json".into());
    lines.push(record(15, 1_700_000_000_300));
    lines.push(record(16, 1_700_000_000_050));
    // Two shapes in turn (more than one template), one workload whose
    // owner differs between them: the last record's owner is kept.
    for i in 0..6u64 {
        let mut v = connection(
            "allow",
            if i % 2 == 0 { "10.0.1.1" } else { "10.0.1.2" },
            443,
        );
        v["time"] = json!(1_700_000_001_000 + i);
        v["unmapped"]["tiergate"]["workload"]["owner"] = json!(if i % 2 == 0 { "a" } else { "b" });
        lines.push(v.to_string());
    }
    lines.pop();
    let mut batch = Aggregate::default();
    let mut errors = 0;
    batch.add_records(&lines, |_| errors += 1);
    let mut one_by_one = Aggregate::default();
    for line in &lines {
        if let Ok(Some(u)) = observe(line.as_bytes()) {
            one_by_one.add(u);
        }
    }
    assert_eq!(errors, 1);
    assert_eq!(batch.updates, one_by_one.updates);
    assert_eq!(batch.updates, 19);
    assert_eq!(batch.observations(0), one_by_one.observations(0));
    assert_eq!(batch.identities(), one_by_one.identities());
    assert_eq!(batch.policy_versions(), one_by_one.policy_versions());
    let seen: Vec<u64> = batch.observations(0).iter().map(|r| r.seen.count).collect();
    assert_eq!(seen, vec![8, 3, 2, 7, 3], "{:?}", batch.observations(0));
    let owners: Vec<_> = batch.identities().into_iter().map(|i| i.owner).collect();
    assert_eq!(owners, vec![Some("a".to_string())]);
}
