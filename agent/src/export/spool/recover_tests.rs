//! Tests of recovery at open: torn tails, damaged, misordered and foreign files, garbled cursor and agent id.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::identity::valid_agent_id;
use super::record::encode;
use super::test_support::*;
use super::*;

/// Appends `data` to the file at `path`, as damage or a crash would leave it.
fn append_to(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open segment");
    f.write_all(data).expect("write");
}

#[test]
fn torn_tail_of_the_newest_segment_is_cut_off() {
    let t = TestDir::new("torn");
    let (mut s, _) = open(&t.spool(), 1 << 20, 1 << 20);
    let records = store_range(&mut s, 1..=20);
    s.flush().expect("flush");
    drop(s);
    let seg = segment_path(&t.spool(), 1);
    let good_len = fs::metadata(&seg).expect("metadata").len();
    assert_eq!(good_len, 20 * FRAME);

    // The first 30 bytes of the next record, as a crash mid-write leaves them.
    let mut torn = Vec::new();
    encode(&mut torn, 21, false, &rec(21, false, PAYLOAD).payload);
    append_to(&seg, &torn[..30]);
    let (mut s, report) = open(&t.spool(), 1 << 20, 1 << 20);
    assert!(report.set_aside.is_empty(), "{:?}", report.set_aside);
    assert_eq!(report.truncated_bytes, 30);
    assert_eq!(report.records, 20);
    assert_eq!(fs::metadata(&seg).expect("metadata").len(), good_len);
    assert_eq!(all_after(&s, 0), records);

    // Appending goes on after the cut, and the next open is clean.
    store(&mut s, &rec(21, false, PAYLOAD));
    s.flush().expect("flush");
    drop(s);
    // A zero-filled end (size extended, data never written).
    append_to(&seg, &[0u8; 4096]);
    let (s, report) = open(&t.spool(), 1 << 20, 1 << 20);
    assert!(report.set_aside.is_empty(), "{:?}", report.set_aside);
    assert_eq!(report.truncated_bytes, 4096);
    assert_eq!(seqs(&all_after(&s, 0)), (1..=21).collect::<Vec<_>>());
    drop(s);
    let (_, report) = open(&t.spool(), 1 << 20, 1 << 20);
    assert_clean(&report);
    assert!(corrupt_files(&t.spool()).is_empty());

    // More garbage than a crash can leave behind is set aside, not cut.
    let garbage = vec![0x5a; 200 * 1024];
    append_to(&seg, &garbage);
    let (s, report) = open(&t.spool(), 1 << 20, 1 << 20);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        set_aside_summary(&report),
        [(
            "00000000000000000001.seg".to_string(),
            garbage.len() as u64,
            1,
            Some(21),
            None
        )]
    );
    assert_eq!(seqs(&all_after(&s, 0)), (1..=21).collect::<Vec<_>>());
}

#[test]
fn crc_damage_inside_a_segment_sets_the_rest_of_it_aside() {
    let t = TestDir::new("crc");
    three_segments(&t.spool());
    let seg2 = segment_path(&t.spool(), 11);
    let original = fs::read(&seg2).expect("read");
    // One flipped payload bit in record 14 (the fourth of segment 2).
    let mut damaged = original.clone();
    damaged[3 * FRAME as usize + RECORD_OVERHEAD + 5] ^= 0x10;
    fs::write(&seg2, &damaged).expect("write");

    let (s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.set_aside.len(), 1, "{:?}", report.set_aside);
    let entry = &report.set_aside_detail[0];
    assert_eq!(entry.from, seg2);
    assert_eq!(report.set_aside, std::slice::from_ref(&entry.path));
    assert_eq!(
        (entry.bytes, entry.records),
        (7 * FRAME, 7),
        "records 14-20"
    );
    assert_eq!((entry.after_seq, entry.before_seq), (Some(13), Some(21)));
    assert!(entry.reason.contains("CRC mismatch"), "{}", entry.reason);
    assert_eq!(
        (report.set_aside_bytes, report.set_aside_records),
        (7 * FRAME, 7)
    );
    assert!(entry.path.starts_with(t.spool().join("corrupt")));
    assert!(
        entry
            .path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .starts_with("00000000000000000011.seg.")
    );
    assert_eq!(
        fs::read(&entry.path).expect("read copy"),
        damaged,
        "whole file kept"
    );
    assert_eq!(fs::metadata(&seg2).expect("metadata").len(), 3 * FRAME);
    let want: Vec<u64> = (1..=13).chain(21..=30).collect();
    assert_eq!(seqs(&all_after(&s, 0)), want, "later segments still served");
    assert_eq!((report.records, report.last_seq), (23, Some(30)));
    drop(s);

    let (_, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_clean(&report);
    assert_eq!(corrupt_files(&t.spool()).len(), 1);
}

#[test]
fn damage_inside_the_newest_segment_with_records_after_it_is_set_aside() {
    let t = TestDir::new("crclast");
    three_segments(&t.spool());
    let seg3 = segment_path(&t.spool(), 21);
    let mut data = fs::read(&seg3).expect("read");
    // A garbled length field in record 24.
    data[3 * FRAME as usize] ^= 0xff;
    fs::write(&seg3, &data).expect("write");

    let (mut s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.set_aside.len(), 1, "{:?}", report.set_aside);
    let entry = &report.set_aside_detail[0];
    assert_eq!((entry.bytes, entry.records), (7 * FRAME, 7));
    assert_eq!((entry.after_seq, entry.before_seq), (Some(23), None));
    let want: Vec<u64> = (1..=23).collect();
    assert_eq!(seqs(&all_after(&s, 0)), want);
    // Seqs found intact in the set-aside part are not handed out again.
    assert_eq!(s.last_seq(), Some(30));
    assert!(s.append(&rec(30, false, 1)).is_err());
    store(&mut s, &rec(31, false, PAYLOAD));
}

/// One set-aside entry: original file name, bytes, records, after_seq, before_seq.
type SetAsideSummary = (String, u64, u64, Option<u64>, Option<u64>);

fn set_aside_summary(report: &OpenReport) -> Vec<SetAsideSummary> {
    let mut summary: Vec<_> = report
        .set_aside_detail
        .iter()
        .map(|e| {
            (
                e.from
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
                e.bytes,
                e.records,
                e.after_seq,
                e.before_seq,
            )
        })
        .collect();
    summary.sort();
    summary
}

#[test]
fn records_out_of_order_are_set_aside_not_cut_off() {
    let t = TestDir::new("order");
    three_segments(&t.spool());
    // The newest segment gains an intact record 5 at its end: not a torn write.
    let seg3 = segment_path(&t.spool(), 21);
    let mut extra = Vec::new();
    encode(&mut extra, 5, true, b"stale");
    append_to(&seg3, &extra);
    let (s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        set_aside_summary(&report),
        [(
            "00000000000000000021.seg".to_string(),
            extra.len() as u64,
            1,
            Some(30),
            None
        )]
    );
    assert!(
        report.set_aside_detail[0]
            .reason
            .contains("seq 5 does not exceed the previous seq 30")
    );
    assert_eq!(seqs(&all_after(&s, 0)), (1..=30).collect::<Vec<_>>());
    drop(s);

    // Segment 11's records under a name that puts them after segment 21.
    fs::rename(segment_path(&t.spool(), 11), segment_path(&t.spool(), 40)).expect("rename");
    let (s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        set_aside_summary(&report),
        [(
            "00000000000000000040.seg".to_string(),
            10 * FRAME,
            10,
            Some(30),
            None
        )]
    );
    assert!(report.set_aside_detail[0].reason.contains("named for 40"));
    let want: Vec<u64> = (1..=10).chain(21..=30).collect();
    assert_eq!(seqs(&all_after(&s, 0)), want);
}

#[test]
fn a_damaged_record_is_skipped_by_its_length_for_exact_counts() {
    let t = TestDir::new("embedded");
    let (mut s, _) = open(&t.spool(), 1 << 20, 1 << 20);
    // Record 2's payload happens to hold a whole valid record.
    let mut inner = Vec::new();
    encode(&mut inner, 999, false, b"inner");
    store(&mut s, &rec(1, false, 50));
    store(
        &mut s,
        &Record {
            seq: 2,
            priority: false,
            payload: inner,
        },
    );
    store_range(&mut s, 3..=6);
    s.flush().expect("flush");
    drop(s);
    let seg = segment_path(&t.spool(), 1);
    let mut data = fs::read(&seg).expect("read");
    let second = RECORD_OVERHEAD + 50;
    data[second + 8] ^= 0x01; // record 2's seq field: CRC mismatch, length intact
    fs::write(&seg, &data).expect("write");

    let (s, report) = open(&t.spool(), 1 << 20, 1 << 20);
    assert_eq!(report.set_aside.len(), 1, "{:?}", report.set_aside);
    // Record 2 and records 3-6: the frame inside record 2 is not counted.
    assert_eq!(report.set_aside_detail[0].records, 5);
    assert_eq!(
        report.set_aside_detail[0].bytes,
        (data.len() - second) as u64
    );
    assert_eq!(s.last_seq(), Some(6));
    assert_eq!(seqs(&all_after(&s, 0)), [1]);
}

#[test]
fn segments_acknowledged_before_a_crash_are_removed_unread() {
    let t = TestDir::new("ackcrash");
    three_segments(&t.spool());
    let seg1 = segment_path(&t.spool(), 1);
    let copy = fs::read(&seg1).expect("read");
    let (mut s, _) = open(&t.spool(), 1 << 20, 10 * FRAME);
    s.ack(12).expect("ack");
    drop(s);
    // As if the crash came between the cursor and the removal, and the
    // left-over file was damaged too: it is acknowledged, nothing is lost.
    let mut damaged = copy;
    damaged[100] ^= 0xff;
    fs::write(&seg1, &damaged).expect("write");
    let (s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_clean(&report);
    assert!(!seg1.exists());
    assert_eq!((report.acked, report.records), (12, 18));
    assert_eq!(
        seqs(&all_after(&s, s.acked())),
        (13..=30).collect::<Vec<_>>()
    );
    assert!(corrupt_files(&t.spool()).is_empty());
}

#[test]
fn foreign_and_garbled_segment_files_are_set_aside() {
    let t = TestDir::new("garbage");
    three_segments(&t.spool());
    let segments = t.spool().join("segments");
    fs::write(segments.join("notes.txt"), b"hello").expect("write");
    fs::write(segments.join("123.seg"), b"").expect("write");
    fs::create_dir(segments.join("junk.d")).expect("mkdir");
    // A copy of segment 1 under a foreign name: its records are counted.
    fs::copy(segment_path(&t.spool(), 1), segments.join("copy.seg")).expect("copy");
    // Segment 11 replaced by pseudo-random garbage.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..5000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(segment_path(&t.spool(), 11), &garbage).expect("write");

    let (s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        set_aside_summary(&report),
        [
            (
                "00000000000000000011.seg".to_string(),
                5000,
                1,
                Some(10),
                Some(21)
            ),
            ("123.seg".to_string(), 0, 0, None, None),
            ("copy.seg".to_string(), 10 * FRAME, 10, None, None),
            ("junk.d".to_string(), 0, 0, None, None),
            ("notes.txt".to_string(), 5, 0, None, None),
        ]
    );
    assert_eq!(corrupt_files(&t.spool()).len(), 5);
    assert!(
        !segment_path(&t.spool(), 11).exists(),
        "nothing left of it to serve"
    );
    let want: Vec<u64> = (1..=10).chain(21..=30).collect();
    assert_eq!(seqs(&all_after(&s, 0)), want);
    assert_eq!(report.records, 20);
}

#[test]
fn garbled_or_missing_cursor_resends_everything() {
    let t = TestDir::new("cursor");
    three_segments(&t.spool());
    let (mut s, _) = open(&t.spool(), 1 << 20, 10 * FRAME);
    s.ack(15).expect("ack");
    drop(s);
    fs::write(t.spool().join("cursor"), b"TGC1 not a cursor").expect("write");

    let (s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert!(report.cursor_reset);
    assert_eq!((report.acked, report.records), (0, 20));
    assert_eq!(
        seqs(&all_after(&s, s.acked())),
        (11..=30).collect::<Vec<_>>()
    );
    assert!(corrupt_files(&t.spool())[0].starts_with("cursor."));
    drop(s);
    let (_, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_clean(&report);

    // A bit flip in the newest slot is caught by its CRC: the other slot
    // (the ack before) counts, and the records after it are sent again.
    let (mut s, _) = open(&t.spool(), 1 << 20, 10 * FRAME);
    s.ack(12).expect("ack");
    s.sync_cursor().expect("cursor");
    s.ack(14).expect("ack");
    drop(s);
    let mut cursor = fs::read(t.spool().join("cursor")).expect("read");
    assert_eq!(cursor.len(), 32);
    let newest = if cursor[4..12] == 14u64.to_le_bytes() {
        0
    } else {
        16
    };
    cursor[newest + 4] ^= 0x40;
    fs::write(t.spool().join("cursor"), &cursor).expect("write");
    let (_, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert!(!report.cursor_reset);
    assert_eq!(report.acked, 12);
    // Both slots flipped: the cursor is garbled, everything is sent again.
    let mut cursor = fs::read(t.spool().join("cursor")).expect("read");
    cursor[12] = cursor[12].wrapping_add(1);
    cursor[28] = cursor[28].wrapping_add(1);
    fs::write(t.spool().join("cursor"), &cursor).expect("write");
    let (_, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert!(report.cursor_reset);
    assert_eq!(report.acked, 0);

    // The one-slot cursor of earlier agents is read, and acks go on from it.
    let mut old = b"TGC1".to_vec();
    old.extend_from_slice(&13u64.to_le_bytes());
    let crc = crc32fast::hash(&old);
    old.extend_from_slice(&crc.to_le_bytes());
    fs::write(t.spool().join("cursor"), &old).expect("write");
    let (mut s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_clean(&report);
    assert_eq!(report.acked, 13);
    s.ack(16).expect("ack");
    drop(s);
    let (_, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert_eq!(report.acked, 16);

    fs::remove_file(t.spool().join("cursor")).expect("remove");
    let (_, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert!(
        report.cursor_reset,
        "a missing cursor of an existing spool is reported"
    );
}

#[test]
fn garbled_agent_id_is_set_aside_and_replaced() {
    let t = TestDir::new("agentid");
    three_segments(&t.spool());
    fs::write(t.spool().join("agent-id"), b"not-hex-at-all!!\n").expect("write");
    let (s, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
    assert!(report.agent_id_reset && !report.created);
    assert!(valid_agent_id(s.agent_id()));
    assert_eq!(report.records, 30);
    assert!(corrupt_files(&t.spool())[0].starts_with("agent-id."));
}
