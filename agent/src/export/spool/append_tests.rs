//! Tests of `append`: seq order, and dropping beyond the bound and its reserve.

use super::test_support::*;
use super::*;

#[test]
fn seqs_must_start_at_one_and_increase() {
    let t = TestDir::new("seq");
    let (mut s, _) = open(&t.spool(), 1 << 20, 1 << 20);
    assert!(matches!(
        s.append(&rec(0, false, 1)),
        Err(SpoolError::NonIncreasingSeq { seq: 0, last: 0 })
    ));
    store(&mut s, &rec(5, false, 1));
    for bad in [5, 4, 1] {
        let err = s.append(&rec(bad, true, 1)).expect_err("must be rejected");
        assert!(
            matches!(err, SpoolError::NonIncreasingSeq { last: 5, .. }),
            "{err}"
        );
    }
    store(&mut s, &rec(9, false, 1));
    assert_eq!(seqs(&all_after(&s, 0)), [5, 9]);
    assert_eq!((s.dropped_normal(), s.dropped_priority()), (0, 0));
}

#[test]
fn a_full_spool_drops_normal_records_first_then_priority_ones_beyond_the_reserve() {
    let t = TestDir::new("full");
    // 16 records fit; the reserve (max/8) holds 2 more priority records.
    let max = 16 * FRAME;
    let (mut s, _) = open(&t.spool(), max, 5 * FRAME);
    store_range_plain(&mut s, 1..=16, false);
    let full = Appended::Dropped {
        reason: DropReason::Full,
    };
    assert_eq!(s.append(&rec(17, false, PAYLOAD)).expect("append"), full);
    assert_eq!(s.append(&rec(18, false, PAYLOAD)).expect("append"), full);
    store(&mut s, &rec(19, true, PAYLOAD));
    store(&mut s, &rec(20, true, PAYLOAD));
    assert_eq!(s.used_bytes(), max + max / 8);
    assert_eq!(s.append(&rec(21, true, PAYLOAD)).expect("append"), full);
    assert_eq!(s.append(&rec(22, false, PAYLOAD)).expect("append"), full);
    assert_eq!((s.dropped_normal(), s.dropped_priority()), (3, 1));
    assert_eq!(s.dropped_write_errors(), 0);
    // The reserve is used up to the byte: not even an empty record fits.
    assert_eq!(s.append(&rec(23, true, 0)).expect("append"), full);
    assert_eq!(
        s.last_seq(),
        Some(23),
        "dropped seqs are not handed out again"
    );
    let want: Vec<u64> = (1..=16).chain([19, 20]).collect();
    assert_eq!(seqs(&all_after(&s, 0)), want);

    // An ack that frees a segment makes room again, for normal records too.
    s.ack(5).expect("ack");
    assert_eq!(s.used_bytes(), 13 * FRAME);
    store_range_plain(&mut s, 24..=26, false);
    assert_eq!(s.append(&rec(27, false, PAYLOAD)).expect("append"), full);
    s.ack(26).expect("ack");
    assert_eq!((s.used_bytes(), s.pending_records()), (0, 0));
    store_range_plain(&mut s, 28..=43, false);
    assert_eq!((s.dropped_normal(), s.dropped_priority()), (4, 2));
    s.flush().expect("flush");
    drop(s);
    let (s, report) = open(&t.spool(), max, 5 * FRAME);
    assert_clean(&report);
    assert_eq!(
        seqs(&all_after(&s, s.acked())),
        (28..=43).collect::<Vec<_>>()
    );
    assert_eq!(
        (s.dropped_normal(), s.dropped_priority()),
        (0, 0),
        "counted since open"
    );
}
