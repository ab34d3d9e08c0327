//! One segment file's index (seq range, size, read marks) and segment file names.

use std::path::PathBuf;

/// One index mark per this many segment bytes: `read_after` starts reading
/// at most this far before the first record it returns.
const MARK_INTERVAL: u64 = 64 * 1024;
const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_DIGITS: usize = 20;

/// A place in a segment `read_after` can start reading from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    seq: u64,
    pub(super) offset: u64,
    /// Records before this one in the segment.
    pub(super) ordinal: u64,
}

/// What the spool knows about one segment file.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
    pub(super) records: u64,
    /// Bytes of whole records, the unwritten buffer included for the open segment.
    pub(super) bytes: u64,
    marks: Vec<Mark>,
}

impl Segment {
    pub(super) fn new(path: PathBuf, first_seq: u64) -> Self {
        Self {
            path,
            first_seq,
            last_seq: first_seq,
            records: 0,
            bytes: 0,
            marks: Vec::new(),
        }
    }

    /// Adds the record at `offset` to the index.
    pub(super) fn note(&mut self, offset: u64, seq: u64, len: u64) {
        if self
            .marks
            .last()
            .is_none_or(|m| offset - m.offset >= MARK_INTERVAL)
        {
            self.marks.push(Mark {
                seq,
                offset,
                ordinal: self.records,
            });
        }
        self.last_seq = seq;
        self.records += 1;
        self.bytes = offset + len;
    }

    /// The last mark at or before the first record above `seq`.
    pub(super) fn mark_for(&self, seq: u64) -> Mark {
        let i = self.marks.partition_point(|m| m.seq <= seq);
        self.marks[i.saturating_sub(1)]
    }
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&s| s > 0)
}

/// The name of the segment file whose first record has `seq`.
pub(super) fn segment_file_name(seq: u64) -> String {
    format!("{seq:0SEGMENT_DIGITS$}{SEGMENT_SUFFIX}")
}
