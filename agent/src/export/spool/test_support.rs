//! Shared fixtures of the spool's tests: temp directories, records, file listings.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Appended, OpenReport, RECORD_OVERHEAD, Record, Spool, SpoolConfig};

/// A fresh directory under the system temp dir, removed afterwards
/// (kept with TIERGATE_KEEP_TEST_DIRS=1).
pub(super) struct TestDir(pub(super) PathBuf);

impl TestDir {
    pub(super) fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tiergate-spool-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create test dir");
        Self(path)
    }

    pub(super) fn spool(&self) -> PathBuf {
        self.0.join("spool")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("TIERGATE_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

pub(super) const PAYLOAD: usize = 600;

pub(super) const FRAME: u64 = (RECORD_OVERHEAD + PAYLOAD) as u64;

pub(super) fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes,
        segment_bytes,
    }
}

pub(super) fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> (Spool, OpenReport) {
    Spool::open(config(dir, max_bytes, segment_bytes))
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

/// A record whose payload depends on its seq, so a mix-up shows.
pub(super) fn rec(seq: u64, priority: bool, len: usize) -> Record {
    Record {
        seq,
        priority,
        payload: (0..len)
            .map(|i| (seq as usize * 31 + i * 7) as u8)
            .collect(),
    }
}

pub(super) fn store(spool: &mut Spool, r: &Record) {
    match spool.append(r) {
        Ok(Appended::Stored) => {}
        other => panic!("append of seq {} gave {other:?}, expected Stored", r.seq),
    }
}

/// Appends seqs `range` of 600-byte payloads (every third one priority).
pub(super) fn store_range(spool: &mut Spool, range: std::ops::RangeInclusive<u64>) -> Vec<Record> {
    range
        .map(|seq| {
            let r = rec(seq, seq % 3 == 0, PAYLOAD);
            store(spool, &r);
            r
        })
        .collect()
}

pub(super) fn store_range_plain(
    spool: &mut Spool,
    range: std::ops::RangeInclusive<u64>,
    priority: bool,
) {
    for seq in range {
        store(spool, &rec(seq, priority, PAYLOAD));
    }
}

pub(super) fn all_after(spool: &Spool, seq: u64) -> Vec<Record> {
    spool
        .read_after(seq, usize::MAX, usize::MAX)
        .expect("read_after")
}

pub(super) fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

/// Segment file names and sizes, in order.
pub(super) fn segment_files(spool_dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = fs::read_dir(spool_dir.join("segments"))
        .expect("list segments")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("metadata").len(),
            )
        })
        .collect();
    files.sort();
    files
}

pub(super) fn corrupt_files(spool_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(spool_dir.join("corrupt"))
        .expect("list corrupt")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub(super) fn segment_path(spool_dir: &Path, first_seq: u64) -> PathBuf {
    spool_dir
        .join("segments")
        .join(format!("{first_seq:020}.seg"))
}

pub(super) fn assert_clean(report: &OpenReport) {
    assert!(
        report.set_aside.is_empty(),
        "set aside: {:?}",
        report.set_aside
    );
    assert_eq!(report.truncated_bytes, 0, "truncated bytes");
    assert!(!report.cursor_reset, "cursor reset");
}

/// Three flushed segments of ten 600-byte records: 1-10, 11-20, 21-30.
pub(super) fn three_segments(spool_dir: &Path) -> Vec<Record> {
    let (mut s, report) = open(spool_dir, 1 << 20, 10 * FRAME);
    assert!(report.created);
    let records = store_range(&mut s, 1..=30);
    s.flush().expect("flush");
    let names: Vec<String> = segment_files(spool_dir).into_iter().map(|f| f.0).collect();
    assert_eq!(
        names,
        [1, 11, 21].map(|n| format!("{n:020}.seg")),
        "segment layout the test relies on"
    );
    records
}
