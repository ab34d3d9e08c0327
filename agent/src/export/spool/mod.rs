//! The disk spool: every event the collector has not acknowledged yet, kept
//! across collector outages and agent restarts (kill -9 included).
//!
//! ```text
//! DIR/agent-id                  16 hex digits, created on first open, never changed
//! DIR/cursor                    highest acknowledged seq, two slots of 16 bytes written in turn
//!                               (each "TGC1", u64 LE, crc32 LE of the 12 bytes before; the highest
//!                               valid slot counts), persisted by a thread of its own: see cursor.rs
//! DIR/lock                      flock held while a spool is open: one agent per directory
//! DIR/segments/<seq>.seg        append-only record files, named by their first seq (20 digits)
//! DIR/corrupt/<name>.<unix-s>   damaged files set aside at open; the agent never deletes them
//! ```
//!
//! A record is `[u32 len][u32 crc][u64 seq][u8 flags][payload]`, little
//! endian. `len` counts the bytes after the crc field (9 + payload) and `crc`
//! (CRC-32, IEEE) covers exactly those bytes. Flag bit 0 marks a priority
//! record (deny, metadata access, loss record); the other bits are zero.
//! Seqs are assigned by the caller, start at 1 and strictly increase.
//!
//! Durability: `append` copies the record into a memory buffer, written to
//! the segment once it passes 64 KiB; `flush` writes the buffer and
//! fdatasyncs the segment. After a successful `flush` nothing appended before
//! it is lost, whatever happens. A kill -9 loses only the records still in
//! the buffer (under 64 KiB appended since the last flush or buffer write); a
//! power loss loses at most what was appended since the last successful
//! `flush`. A full segment is fdatasynced before its successor is created, so
//! only the newest segment can end in a torn record. Dropping a `Spool`
//! writes the buffer without syncing it.
//!
//! Reads: the sender reads what was just appended, so the newest written
//! bytes of the open segment (2 to 4 MiB) are also kept in memory and served
//! from there without reading the file back or checking CRCs again; older
//! records, and any segment after a restart, are read from the file and
//! CRC-checked.
//!
//! Bounds: appends that would take the segment files past `max_bytes` are
//! dropped unless they are priority records, which may use a reserve of
//! another `max_bytes / 8`. Drops are returned and counted, never silent;
//! the caller turns them into loss records. Acks free whole segments.
//!
//! Write errors (disk full, quota, I/O): a failed write is cut back off the
//! segment, so the file stays a run of whole records, and its records stay
//! in the buffer (they were `Stored`; `flush` returns the error and retries).
//! Until a write succeeds again, appends are dropped as `WriteError` and the
//! write is retried at most every 250 ms, or at each `flush`. A cursor
//! that cannot be written does not hold acknowledgements back (see `ack`).
//!
//! Recovery at `open`: every record's length, CRC, flags and seq order is
//! checked. A damaged end of the newest segment with no intact record after
//! it, at most 128 KiB long, is a torn write and is cut off
//! (`truncated_bytes`). Any other damage sets the file aside: a copy of the
//! whole file goes to `corrupt/`, the segment keeps the records before the
//! damage (records after it in that file are no longer sent), and the report
//! says how many bytes and records were set aside and between which kept seqs
//! they fell. Files in `segments/` that are not segments are moved to
//! `corrupt/`. A garbled or missing cursor counts as 0: everything is sent
//! again (duplicates share their uid; nothing is lost).

mod append;
mod cursor;
mod error;
mod files;
mod identity;
mod read;
mod record;
mod recover;
mod segment;
mod write;

#[cfg(test)]
mod append_tests;
#[cfg(test)]
mod recover_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub use error::SpoolError;
pub use record::{MAX_PAYLOAD, RECORD_OVERHEAD};
pub use recover::{OpenReport, SetAside};

use error::io_err;
use files::lock_dir;
use identity::load_identity;
use recover::recover_segments;
use segment::Segment;
use write::{Active, WriteFailure};

/// Where the spool lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The spool directory (`--spool`), created if missing.
    pub dir: PathBuf,
    /// Bound on the bytes of all segment files for ordinary records; priority
    /// records may use another `max_bytes / 8` beyond it.
    pub max_bytes: u64,
    /// A segment is closed once the next record would take it past this
    /// size (capped at `max_bytes`). Space is freed a whole segment at a
    /// time, so a sixteenth of `max_bytes` or less keeps acks effective.
    pub segment_bytes: u64,
}

/// One spooled event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Per-agent sequence number, from 1, strictly increasing.
    pub seq: u64,
    /// Deny, metadata access or loss record: kept before allowed connections.
    pub priority: bool,
    /// The encoded event; opaque to the spool.
    pub payload: Vec<u8>,
}

/// Why a record was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// `max_bytes` (or, for a priority record, the reserve above it) is used up.
    Full,
    /// The segment could not be written (disk full, quota, I/O error): what failed.
    WriteError(String),
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// In the spool: served by `read_after`, durable after the next successful `flush`.
    Stored,
    /// Not stored, and counted in `dropped_normal` or `dropped_priority`.
    Dropped { reason: DropReason },
}

/// The spool. One per directory (flock); not shared between threads.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    segments_dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    agent_id: String,
    segments: Vec<Segment>,
    active: Option<Active>,
    acked: u64,
    last_seq: Option<u64>,
    used: u64,
    pending: u64,
    dropped_normal: u64,
    dropped_priority: u64,
    dropped_write_errors: u64,
    write_failure: Option<WriteFailure>,
    /// A segment was created since the directory was last fsynced.
    dir_dirty: bool,
    /// Persists acks; dropped (its last write done) before the flock goes.
    cursor: cursor::CursorWriter,
    /// Held for the flock; released when the spool is dropped.
    _lock: File,
    #[cfg(test)]
    fail_writes: bool,
}

impl Spool {
    /// Opens (or creates) the spool in `cfg.dir`, repairing what a crash or
    /// damage left behind; see the module documentation.
    pub fn open(cfg: SpoolConfig) -> Result<(Spool, OpenReport), SpoolError> {
        let dir = cfg.dir;
        let config_error = |reason: String| SpoolError::Config {
            dir: dir.clone(),
            reason,
        };
        if cfg.max_bytes == 0 || cfg.segment_bytes == 0 {
            return Err(config_error(
                "max_bytes and segment_bytes must be above 0".into(),
            ));
        }
        fs::create_dir_all(&dir).map_err(io_err("create the spool directory", &dir))?;
        let lock = lock_dir(&dir)?;
        let segments_dir = dir.join("segments");
        let corrupt_dir = dir.join("corrupt");
        for d in [&segments_dir, &corrupt_dir] {
            fs::create_dir_all(d).map_err(io_err("create the spool directory", d))?;
        }
        for leftover in ["cursor.tmp", "agent-id.tmp"] {
            let p = dir.join(leftover);
            if let Err(e) = fs::remove_file(&p)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(io_err("remove", &p)(e));
            }
        }

        let mut report = OpenReport::default();
        let (agent_id, acked) = load_identity(&dir, &corrupt_dir, &mut report)?;
        let (segments, seen_seq) =
            recover_segments(&segments_dir, &corrupt_dir, acked, &mut report)?;

        let last_seq = [segments.last().map(|s| s.last_seq), seen_seq, Some(acked)]
            .into_iter()
            .flatten()
            .max()
            .filter(|&s| s > 0);
        let active = match segments.last() {
            None => None,
            Some(seg) => match OpenOptions::new().write(true).open(&seg.path) {
                Ok(file) => Some(Active::new(file, seg.bytes)),
                Err(e) => {
                    // Readable but not writable: serve it, append to a new segment.
                    tracing::warn!(path = %seg.path.display(), error = %e,
                        "cannot reopen the newest spool segment for appending; starting a new one");
                    None
                }
            },
        };
        let cursor = cursor::CursorWriter::start(&dir, acked)?;
        let mut spool = Spool {
            dir,
            segments_dir,
            max_bytes: cfg.max_bytes,
            segment_bytes: cfg.segment_bytes.min(cfg.max_bytes),
            agent_id,
            used: segments.iter().map(|s| s.bytes).sum(),
            segments,
            active,
            acked,
            last_seq,
            pending: 0,
            dropped_normal: 0,
            dropped_priority: 0,
            dropped_write_errors: 0,
            write_failure: None,
            cursor,
            dir_dirty: false,
            _lock: lock,
            #[cfg(test)]
            fail_writes: false,
        };
        spool.pending = spool.count_pending()?;
        report.records = spool.pending;
        report.last_seq = spool.last_seq;
        report.acked = acked;
        Ok((spool, report))
    }

    /// The highest seq stored, acknowledged, or given to `append` by this
    /// process (dropped records included), or found intact in a set-aside
    /// file: the caller continues numbering after it, so no seq is reused.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The highest acknowledged seq (0: none).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Bytes of all segments, unwritten buffer included.
    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    /// Stored records not acknowledged yet.
    pub fn pending_records(&self) -> u64 {
        self.pending
    }

    /// This spool's agent id (16 hex digits), stable across restarts.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Non-priority records dropped since open (full or write error).
    pub fn dropped_normal(&self) -> u64 {
        self.dropped_normal
    }

    /// Priority records dropped since open (reserve full or write error).
    pub fn dropped_priority(&self) -> u64 {
        self.dropped_priority
    }

    /// Of the drops above, those caused by a write error.
    pub fn dropped_write_errors(&self) -> u64 {
        self.dropped_write_errors
    }

    /// Whether the spool currently fails to write: segments (new records
    /// are dropped and counted) or the acknowledged cursor.
    pub fn write_failing(&self) -> bool {
        self.write_failure.is_some() || self.cursor.failure().is_some()
    }

    /// Makes every buffer write fail as a full disk does (tests elsewhere in
    /// the crate).
    #[cfg(test)]
    pub(crate) fn inject_write_failures(&mut self, on: bool) {
        self.fail_writes = on;
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Spool {
    /// Hands the buffer to the kernel (no fdatasync): a clean shutdown
    /// without `flush` loses nothing unless the machine goes down too.
    fn drop(&mut self) {
        if let Err(e) = self.write_buffer() {
            // A record starts with len (u32), crc (u32), seq (u64).
            let first_seq = self
                .active
                .as_ref()
                .and_then(|a| a.buf.get(8..16))
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes);
            let last_seq = self.segments.last().map(|s| s.last_seq);
            tracing::error!(error = %e, first_seq = ?first_seq, last_seq = ?last_seq,
                "spool buffer not written at close: these records are lost to the collector \
                 (the next run numbers on from the last stored record)");
        }
    }
}
