//! Tests of the spool's API as a whole: round trips, reads, acks, restarts, configuration.

use std::time::Instant;

use super::identity::valid_agent_id;
use super::test_support::*;
use super::*;

#[test]
fn round_trip_before_and_after_flush_and_restart() {
    let t = TestDir::new("roundtrip");
    let (mut s, report) = open(&t.spool(), 1 << 20, 256 << 10);
    assert!(report.created);
    assert_clean(&report);
    assert_eq!(report.last_seq, None);
    assert!(valid_agent_id(s.agent_id()), "agent id {:?}", s.agent_id());
    let records: Vec<Record> = [
        (1, false, 0),
        (2, true, 1),
        (3, false, 600),
        (7, true, 70_000),
        (8, false, 5),
    ]
    .into_iter()
    .map(|(seq, p, len)| rec(seq, p, len))
    .collect();
    for r in &records {
        store(&mut s, r);
    }
    let bytes: u64 = records
        .iter()
        .map(|r| (RECORD_OVERHEAD + r.payload.len()) as u64)
        .sum();
    assert_eq!(s.used_bytes(), bytes);
    assert_eq!(s.pending_records(), 5);
    assert_eq!(all_after(&s, 0), records, "served before flush");
    s.flush().expect("flush");
    assert_eq!(all_after(&s, 0), records, "served after flush");
    assert_eq!(
        segment_files(&t.spool()),
        [("00000000000000000001.seg".to_string(), bytes)]
    );
    let id = s.agent_id().to_string();
    drop(s);

    let (s, report) = open(&t.spool(), 1 << 20, 256 << 10);
    assert_clean(&report);
    assert!(!report.created);
    assert_eq!(report.records, 5);
    assert_eq!(report.last_seq, Some(8));
    assert_eq!(s.agent_id(), id);
    assert_eq!(all_after(&s, 0), records, "served after restart");
}

#[test]
fn read_after_starts_anywhere_and_honours_limits() {
    let t = TestDir::new("readafter");
    // 3 MB in 1 MiB segments: several index marks per segment.
    let (mut s, _) = open(&t.spool(), 64 << 20, 1 << 20);
    let n = 5000;
    let records = store_range(&mut s, 1..=n);
    s.flush().expect("flush");
    // Records still in the append buffer are served too.
    let tail: Vec<Record> = (n + 1..=n + 20)
        .map(|seq| rec(seq * 2, false, 100))
        .collect();
    for r in &tail {
        store(&mut s, r);
    }
    let expected: Vec<Record> = records.iter().chain(&tail).cloned().collect();
    assert!(segment_files(&t.spool()).len() >= 3);
    for start in (0..expected.len())
        .step_by(7)
        .chain(expected.len() - 25..expected.len())
    {
        let after = if start == 0 {
            0
        } else {
            expected[start - 1].seq
        };
        let got = s.read_after(after, 10, usize::MAX).expect("read_after");
        let want: Vec<Record> = expected[start..].iter().take(10).cloned().collect();
        assert_eq!(seqs(&got), seqs(&want), "read_after({after})");
        assert_eq!(got, want, "read_after({after}) payloads");
    }
    // A seq between stored ones (the tail's seqs are even).
    let odd = tail[3].seq - 1;
    assert_eq!(
        seqs(&s.read_after(odd, 2, usize::MAX).expect("read")),
        [tail[3].seq, tail[4].seq]
    );
    assert!(all_after(&s, tail.last().expect("tail").seq).is_empty());
    assert!(s.read_after(0, 0, usize::MAX).expect("read").is_empty());
    // Byte limits count payload bytes; one record always comes through.
    assert_eq!(s.read_after(0, 100, 1199).expect("read").len(), 1);
    assert_eq!(s.read_after(0, 100, 1200).expect("read").len(), 2);
    assert_eq!(s.read_after(0, 100, 10).expect("read").len(), 1);
    assert_eq!(all_after(&s, 0).len(), expected.len());
}

/// What was just written is served from memory (the sender reads it right
/// after the append), older bytes of the same segment from the file. Shown
/// by damaging the whole file on disk: the newest records still read
/// intact, the older ones report the damage, and a reopened spool sees it.
#[test]
fn the_newest_written_records_are_served_from_memory() {
    use super::write::RECENT_KEEP;
    let t = TestDir::new("recent");
    let (mut s, _) = open(&t.spool(), 256 << 20, 64 << 20);
    // Past twice the copy's size, so it has been trimmed at least once.
    let n = (3 * RECENT_KEEP as u64) / FRAME;
    let records = store_range(&mut s, 1..=n);
    s.flush().expect("flush");
    assert_eq!(all_after(&s, 0), records, "everything, file and memory");
    let path = segment_path(&t.spool(), 1);
    let len = fs::metadata(&path).expect("segment").len();
    fs::write(&path, vec![0xa5; len as usize]).expect("damage the file");
    // The last RECENT_KEEP bytes at least are in memory; a read enters at
    // the index mark before its seq (up to 64 KiB earlier).
    let tail = n - (RECENT_KEEP as u64 - (128 << 10)) / FRAME;
    assert_eq!(all_after(&s, tail), records[tail as usize..], "the newest");
    match s.read_after(0, usize::MAX, usize::MAX) {
        Err(SpoolError::Corrupt { offset: 0, .. }) => {}
        other => panic!("the oldest come from the damaged file: {other:?}"),
    }
    // Records appended after the damage are written and served as before.
    let more = store_range(&mut s, n + 1..=n + 10);
    s.flush().expect("flush");
    assert_eq!(all_after(&s, n), more);
    drop(s);
    let (s, report) = open(&t.spool(), 256 << 20, 64 << 20);
    assert!(
        !report.set_aside.is_empty(),
        "a reopened spool reads the file: {report:?}"
    );
    drop(s);
}

#[test]
fn ack_removes_only_wholly_acknowledged_segments() {
    let t = TestDir::new("ack");
    three_segments(&t.spool());
    let (mut s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_eq!(report.records, 30);

    s.ack(5).expect("ack 5");
    assert_eq!(
        segment_files(&t.spool()).len(),
        3,
        "segment 1-10 still holds 6-10"
    );
    assert_eq!(
        (s.acked(), s.pending_records(), s.used_bytes()),
        (5, 25, 30 * FRAME)
    );
    assert_eq!(
        seqs(&all_after(&s, s.acked())),
        (6..=30).collect::<Vec<_>>()
    );

    s.ack(10).expect("ack 10");
    let names: Vec<String> = segment_files(&t.spool()).into_iter().map(|f| f.0).collect();
    assert_eq!(names, [11, 21].map(|n| format!("{n:020}.seg")));
    assert_eq!((s.pending_records(), s.used_bytes()), (20, 20 * FRAME));

    s.ack(15).expect("ack 15");
    assert_eq!(segment_files(&t.spool()).len(), 2);
    assert_eq!(s.pending_records(), 15);
    s.ack(3).expect("a stale ack is ignored");
    assert_eq!(s.acked(), 15);
    assert!(matches!(
        s.ack(31),
        Err(SpoolError::AckBeyondLast { seq: 31, last: 30 })
    ));
    drop(s);

    let (mut s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_clean(&report);
    assert_eq!(
        (report.acked, report.records, report.last_seq),
        (15, 15, Some(30))
    );
    assert_eq!(
        seqs(&all_after(&s, s.acked())),
        (16..=30).collect::<Vec<_>>()
    );

    // Acknowledging everything removes the open segment too.
    s.ack(30).expect("ack 30");
    assert!(segment_files(&t.spool()).is_empty());
    assert_eq!((s.used_bytes(), s.pending_records()), (0, 0));
    store(&mut s, &rec(31, false, PAYLOAD));
    s.flush().expect("flush");
    assert_eq!(
        segment_files(&t.spool()),
        [(format!("{:020}.seg", 31), FRAME)]
    );
    drop(s);
    let (_, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_eq!(
        (report.acked, report.records, report.last_seq),
        (30, 1, Some(31))
    );
}

#[test]
fn restart_keeps_pending_records_agent_id_and_numbering() {
    let t = TestDir::new("restart");
    let (mut s, _) = open(&t.spool(), 1 << 20, 8 * FRAME);
    let records = store_range(&mut s, 1..=50);
    s.flush().expect("flush");
    s.ack(20).expect("ack");
    let id = s.agent_id().to_string();
    // Not flushed: a clean drop still hands the buffer to the kernel.
    let more = store_range(&mut s, 51..=55);
    drop(s);

    let (mut s, report) = open(&t.spool(), 1 << 20, 8 * FRAME);
    assert_clean(&report);
    assert!(!report.created);
    assert_eq!(s.agent_id(), id);
    assert_eq!(
        fs::read_to_string(t.spool().join("agent-id")).expect("read id"),
        format!("{id}\n")
    );
    assert_eq!(
        (report.acked, report.records, report.last_seq),
        (20, 35, Some(55))
    );
    assert_eq!(
        (s.acked(), s.pending_records(), s.last_seq()),
        (20, 35, Some(55))
    );
    let want: Vec<Record> = records[20..].iter().chain(&more).cloned().collect();
    assert_eq!(all_after(&s, s.acked()), want);
    assert!(matches!(
        s.append(&rec(55, false, 10)),
        Err(SpoolError::NonIncreasingSeq { seq: 55, last: 55 })
    ));
    store(&mut s, &rec(56, false, 10));
    assert_eq!(s.last_seq(), Some(56));
}

#[test]
fn bad_configuration_and_a_second_opener_are_refused() {
    let t = TestDir::new("config");
    let err = Spool::open(config(&t.spool(), 0, 1)).expect_err("max_bytes 0");
    assert!(matches!(err, SpoolError::Config { .. }), "{err}");
    assert!(
        err.to_string().contains(&t.spool().display().to_string()),
        "{err}"
    );
    assert!(matches!(
        Spool::open(config(&t.spool(), 1, 0)),
        Err(SpoolError::Config { .. })
    ));
    // segment_bytes above max_bytes is capped, so a reserve record goes
    // to a second segment and acking the first frees max_bytes.
    let (mut s, _) = open(&t.spool(), 8 * FRAME, 1 << 30);
    store_range_plain(&mut s, 1..=8, false);
    store(&mut s, &rec(9, true, PAYLOAD));
    assert_eq!(segment_files(&t.spool()).len(), 2);
    s.ack(8).expect("ack");
    assert_eq!(s.used_bytes(), FRAME);
    store(&mut s, &rec(10, false, PAYLOAD));
    drop(s);
    let (first, _) = open(&t.spool(), 1 << 20, 1 << 20);
    let err = Spool::open(config(&t.spool(), 1 << 20, 1 << 20)).expect_err("locked");
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains(&t.spool().display().to_string()),
        "{err}"
    );
    drop(first);
    open(&t.spool(), 1 << 20, 1 << 20);
}

/// Measures; asserts only correctness. `cargo test --release append_rate -- --nocapture`.
#[test]
fn append_rate() {
    let t = TestDir::new("rate");
    let n: u64 = if cfg!(debug_assertions) {
        50_000
    } else {
        300_000
    };
    let (mut s, _) = open(&t.spool(), 1 << 30, 64 << 20);
    let mut r = rec(1, false, PAYLOAD);
    let start = Instant::now();
    for seq in 1..=n {
        r.seq = seq;
        store(&mut s, &r);
    }
    s.flush().expect("flush");
    let plain = n as f64 / start.elapsed().as_secs_f64();

    // The agent's pattern: a flush (fdatasync) after every batch of 1,000.
    let start = Instant::now();
    for seq in n + 1..=2 * n {
        r.seq = seq;
        store(&mut s, &r);
        if seq % 1000 == 0 {
            s.flush().expect("flush");
        }
    }
    s.flush().expect("flush");
    let batched = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "spool append rate, {PAYLOAD}-byte payloads ({} build, {}): {plain:.0}/s without flush, {batched:.0}/s with a flush every 1,000",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::env::temp_dir().display(),
    );
    assert_eq!(s.pending_records(), 2 * n);
    assert_eq!(s.used_bytes(), 2 * n * FRAME);
    let start = Instant::now();
    let got = s.read_after(n, 1000, usize::MAX).expect("read");
    println!(
        "read_after of 1,000 records from the middle: {:?}",
        start.elapsed()
    );
    assert_eq!(got.first().map(|r| r.seq), Some(n + 1));
}
