//! The disk spool: every event the collector has not acknowledged yet, kept
//! across collector outages and agent restarts (kill -9 included).
//!
//! ```text
//! DIR/agent-id                  16 hex digits, created on first open, never changed
//! DIR/cursor                    highest acknowledged seq: "TGC1", u64 LE, crc32 LE of the 12 bytes before
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
//! Bounds: appends that would take the segment files past `max_bytes` are
//! dropped unless they are priority records, which may use a reserve of
//! another `max_bytes / 8`. Drops are returned and counted, never silent;
//! the caller turns them into loss records. Acks free whole segments.
//!
//! Write errors (disk full, quota, I/O): a failed write is cut back off the
//! segment, so the file stays a run of whole records, and its records stay
//! in the buffer (they were `Stored`; `flush` returns the error and retries).
//! Until a write succeeds again, appends are dropped as `WriteError` and the
//! write is retried at most every 250 ms, or at each `flush`.
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

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes of `len` + `crc`.
const PREFIX_LEN: usize = 8;
/// Bytes of `seq` + `flags`, the covered part of a record before the payload.
const BODY_HEADER_LEN: usize = 9;
/// Bytes a record takes besides its payload.
pub const RECORD_OVERHEAD: usize = PREFIX_LEN + BODY_HEADER_LEN;
/// Largest payload whose record length still fits the u32 `len` field.
pub const MAX_PAYLOAD: usize = u32::MAX as usize - BODY_HEADER_LEN;
const FLAG_PRIORITY: u8 = 0x01;
/// The append buffer is written to the segment once it holds this much.
const WRITE_THRESHOLD: usize = 64 * 1024;
/// One index mark per this many segment bytes: `read_after` starts reading
/// at most this far before the first record it returns.
const MARK_INTERVAL: u64 = 64 * 1024;
/// While writes fail, `append` retries the write at most this often
/// (`flush` always retries).
const WRITE_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// A damaged end of the newest segment with no intact record after it is
/// taken for a torn write up to this size; a larger one is set aside.
const TORN_TAIL_MAX: u64 = 2 * WRITE_THRESHOLD as u64;
const CURSOR_MAGIC: [u8; 4] = *b"TGC1";
const CURSOR_LEN: usize = 16;
const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_DIGITS: usize = 20;
const AGENT_ID_LEN: usize = 16;

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

/// What `open` set aside from one damaged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where the damaged file was found.
    pub from: PathBuf,
    /// Where it is now (a whole copy of the original, under `corrupt/`).
    pub path: PathBuf,
    /// Bytes of the original that are no longer served.
    pub bytes: u64,
    /// Records in those bytes: every intact one found there, plus one for the
    /// damaged record the damage starts in (0 for an unreadable file).
    pub records: u64,
    /// The set-aside records come after this kept seq (None: before every
    /// kept record, or position unknown for a file with a foreign name).
    pub after_seq: Option<u64>,
    /// ... and before this kept seq (None: after every kept record).
    pub before_seq: Option<u64>,
    /// What was wrong, for the log.
    pub reason: String,
}

/// What `open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The directory held no spool: a new agent id was made.
    pub created: bool,
    /// Records waiting for an acknowledgement (seq above `acked`).
    pub records: u64,
    /// See [`Spool::last_seq`].
    pub last_seq: Option<u64>,
    /// The acknowledged seq read from the cursor.
    pub acked: u64,
    /// Where the damaged files are now (under `corrupt/`), one per file.
    pub set_aside: Vec<PathBuf>,
    /// Bytes no longer served because they were set aside.
    pub set_aside_bytes: u64,
    /// Records no longer served because they were set aside.
    pub set_aside_records: u64,
    /// The same files with what was lost from each and between which kept
    /// seqs (for loss records), in the order of `set_aside`.
    pub set_aside_detail: Vec<SetAside>,
    /// Bytes of torn records cut from the end of the newest segment.
    pub truncated_bytes: u64,
    /// The cursor was garbled or missing: everything on disk will be resent.
    pub cursor_reset: bool,
    /// The agent id file was garbled and set aside: a new id was made.
    pub agent_id_reset: bool,
}

impl OpenReport {
    fn push_set_aside(&mut self, entry: SetAside) {
        self.set_aside.push(entry.path.clone());
        self.set_aside_bytes += entry.bytes;
        self.set_aside_records += entry.records;
        self.set_aside_detail.push(entry);
    }
}

/// Errors of the spool. Drops are not errors; these are caller bugs and
/// failures to open, acknowledge or read.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("invalid spool configuration for {dir}: {reason}")]
    Config { dir: PathBuf, reason: String },
    #[error(
        "spool directory {dir} is in use by another process (it holds {dir}/lock); stop the other agent or give this one its own --spool"
    )]
    Locked { dir: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "spool seq {seq} rejected: seqs start at 1 and must exceed the last one given to the spool ({last})"
    )]
    NonIncreasingSeq { seq: u64, last: u64 },
    #[error("spool record {seq} rejected: its payload of {len} bytes exceeds the record format's limit of {max}", max = MAX_PAYLOAD)]
    RecordTooLarge { seq: u64, len: usize },
    #[error("acknowledgement of seq {seq} rejected: the spool has seen no seq beyond {last}")]
    AckBeyondLast { seq: u64, last: u64 },
    #[error(
        "spool segment {path} is damaged at byte {offset}: {detail}; a restart of the agent sets it aside"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io {
        action,
        path,
        source,
    }
}

/// A place in a segment `read_after` can start reading from.
#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
    offset: u64,
    /// Records before this one in the segment.
    ordinal: u64,
}

/// What the spool knows about one segment file.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first_seq: u64,
    last_seq: u64,
    records: u64,
    /// Bytes of whole records, the unwritten buffer included for the open segment.
    bytes: u64,
    marks: Vec<Mark>,
}

impl Segment {
    fn new(path: PathBuf, first_seq: u64) -> Self {
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
    fn note(&mut self, offset: u64, seq: u64, len: u64) {
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
    fn mark_for(&self, seq: u64) -> Mark {
        let i = self.marks.partition_point(|m| m.seq <= seq);
        self.marks[i.saturating_sub(1)]
    }
}

/// The segment appends go to (always the last one of the index).
#[derive(Debug)]
struct Active {
    file: File,
    /// Bytes in the file; the buffer goes at this offset.
    written: u64,
    buf: Vec<u8>,
    /// A failed write may have left part of a record past `written` and
    /// cutting it off failed too: retried before the next write or sync.
    tail_dirty: bool,
}

#[derive(Debug)]
struct WriteFailure {
    message: String,
    last_attempt: Instant,
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
                Ok(file) => Some(Active {
                    file,
                    written: seg.bytes,
                    buf: Vec::new(),
                    tail_dirty: false,
                }),
                Err(e) => {
                    // Readable but not writable: serve it, append to a new segment.
                    tracing::warn!(path = %seg.path.display(), error = %e,
                        "cannot reopen the newest spool segment for appending; starting a new one");
                    None
                }
            },
        };
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

    /// Stores one record, or drops it (returned and counted) when the spool
    /// is full or cannot write. `Err` only for a seq that does not increase
    /// or a payload beyond the format's limit.
    pub fn append(&mut self, rec: &Record) -> Result<Appended, SpoolError> {
        let last = self.last_seq.unwrap_or(0);
        if rec.seq <= last {
            return Err(SpoolError::NonIncreasingSeq { seq: rec.seq, last });
        }
        if rec.payload.len() > MAX_PAYLOAD {
            return Err(SpoolError::RecordTooLarge {
                seq: rec.seq,
                len: rec.payload.len(),
            });
        }
        self.last_seq = Some(rec.seq);
        let len = (RECORD_OVERHEAD + rec.payload.len()) as u64;

        if let Some(failure) = &self.write_failure {
            if failure.last_attempt.elapsed() < WRITE_RETRY_INTERVAL {
                let reason = DropReason::WriteError(failure.message.clone());
                return Ok(self.dropped(rec.priority, reason));
            }
            if let Err(e) = self.write_buffer() {
                let reason = DropReason::WriteError(self.failed(&e));
                return Ok(self.dropped(rec.priority, reason));
            }
            // Cleared once this record is stored: creating a segment may still fail.
        }

        let limit = if rec.priority {
            self.max_bytes.saturating_add(self.max_bytes / 8)
        } else {
            self.max_bytes
        };
        if self.used.saturating_add(len) > limit {
            return Ok(self.dropped(rec.priority, DropReason::Full));
        }
        if let Err(e) = self.ensure_segment(rec.seq, len) {
            let reason = DropReason::WriteError(self.failed(&e));
            return Ok(self.dropped(rec.priority, reason));
        }

        let (Some(active), Some(seg)) = (self.active.as_mut(), self.segments.last_mut()) else {
            unreachable!("ensure_segment leaves an open segment");
        };
        let offset = active.written + active.buf.len() as u64;
        encode(&mut active.buf, rec.seq, rec.priority, &rec.payload);
        seg.note(offset, rec.seq, len);
        self.used += len;
        self.pending += 1;
        if active.buf.len() >= WRITE_THRESHOLD
            && let Err(e) = self.write_buffer()
        {
            // The record stays buffered (Stored); the next flush retries it.
            self.failed(&e);
        } else if self.write_failure.is_some() {
            self.recovered();
        }
        Ok(Appended::Stored)
    }

    /// Writes the buffer and fdatasyncs the open segment: everything stored
    /// so far survives any crash once this returns `Ok`. On `Err` the
    /// unwritten records stay buffered and the next `flush` retries.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if let Err(e) = self.write_buffer() {
            self.failed(&e);
            return Err(e);
        }
        if let (Some(active), Some(seg)) = (&self.active, self.segments.last())
            && let Err(e) = active.file.sync_data()
        {
            let e = io_err("fdatasync spool segment", &seg.path)(e);
            self.failed(&e);
            return Err(e);
        }
        if self.dir_dirty {
            sync_dir(&self.segments_dir)?;
            self.dir_dirty = false;
        }
        if self.write_failure.is_some() {
            self.recovered();
        }
        Ok(())
    }

    /// Records with seq above `seq`, in order: at most `max_records`, and no
    /// more payload bytes than `max_bytes` unless the first record alone is
    /// larger (it is returned by itself then).
    pub fn read_after(
        &self,
        seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, SpoolError> {
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        let first = self.segments.partition_point(|s| s.last_seq <= seq);
        for idx in first..self.segments.len() {
            let mut limit_reached = false;
            let seg = &self.segments[idx];
            let from = if seg.first_seq > seq {
                0
            } else {
                seg.mark_for(seq).offset
            };
            self.scan_segment(idx, from, |s, priority, payload| {
                if s <= seq {
                    return true;
                }
                if out.len() >= max_records
                    || (!out.is_empty() && bytes + payload.len() > max_bytes)
                {
                    limit_reached = true;
                    return false;
                }
                bytes += payload.len();
                out.push(Record {
                    seq: s,
                    priority,
                    payload: payload.to_vec(),
                });
                true
            })?;
            if limit_reached || out.len() >= max_records {
                break;
            }
        }
        Ok(out)
    }

    /// Records that the collector has everything up to `seq`: persists the
    /// cursor, then deletes the segments whose records are all at or below it.
    /// An ack at or below the current one is ignored.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.acked {
            return Ok(());
        }
        let last = self.last_seq.unwrap_or(0);
        if seq > last {
            return Err(SpoolError::AckBeyondLast { seq, last });
        }
        write_cursor(&self.dir, seq)?;
        self.acked = seq;

        let done = self.segments.partition_point(|s| s.last_seq <= seq);
        let mut removed = 0;
        for (idx, seg) in self.segments[..done].iter().enumerate() {
            if idx + 1 == self.segments.len() && self.active.is_some() {
                // Everything in it, the buffer too, is acknowledged.
                self.active = None;
                if self.write_failure.take().is_some() {
                    tracing::info!("spool write failure cleared: its records were acknowledged");
                }
            }
            match fs::remove_file(&seg.path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => removed += 1,
                Err(e) => {
                    // Kept in the index (and in used_bytes); retried at the next ack.
                    tracing::warn!(path = %seg.path.display(), error = %e,
                        "cannot remove an acknowledged spool segment");
                    break;
                }
            }
        }
        self.segments.drain(..removed);
        self.used = self.segments.iter().map(|s| s.bytes).sum();
        self.pending = match self.count_pending() {
            Ok(n) => n,
            Err(e) => {
                // Only the gauge suffers: counts every record still on disk.
                tracing::warn!(error = %e, "cannot count pending spool records");
                self.segments.iter().map(|s| s.records).sum()
            }
        };
        Ok(())
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

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn dropped(&mut self, priority: bool, reason: DropReason) -> Appended {
        if priority {
            self.dropped_priority += 1;
        } else {
            self.dropped_normal += 1;
        }
        if matches!(reason, DropReason::WriteError(_)) {
            self.dropped_write_errors += 1;
        }
        Appended::Dropped { reason }
    }

    /// Enters (or stays in) the write-failure state; returns the message.
    fn failed(&mut self, e: &SpoolError) -> String {
        let message = e.to_string();
        if self.write_failure.is_none() {
            tracing::error!(error = %message,
                "spool writes fail; new events are dropped and counted until a write succeeds");
        }
        self.write_failure = Some(WriteFailure {
            message: message.clone(),
            last_attempt: Instant::now(),
        });
        message
    }

    fn recovered(&mut self) {
        if let Some(f) = self.write_failure.take() {
            tracing::info!(previous_error = %f.message, "spool writes succeed again");
        }
    }

    fn injected_write_fault(&self) -> bool {
        #[cfg(test)]
        {
            self.fail_writes
        }
        #[cfg(not(test))]
        {
            false
        }
    }

    /// Writes the append buffer at the end of the open segment. A failed
    /// write is cut back off, so the file stays a sequence of whole records
    /// and the buffer is kept for the next attempt.
    fn write_buffer(&mut self) -> Result<(), SpoolError> {
        let fault = self.injected_write_fault();
        let (Some(active), Some(seg)) = (self.active.as_mut(), self.segments.last()) else {
            return Ok(());
        };
        if active.tail_dirty {
            active
                .file
                .set_len(active.written)
                .map_err(io_err("cut a failed write off spool segment", &seg.path))?;
            active.tail_dirty = false;
        }
        if active.buf.is_empty() {
            return Ok(());
        }
        let result = if fault {
            // As a full disk does: part of the buffer lands, then ENOSPC.
            let half = active.buf.len() / 2;
            active
                .file
                .write_all_at(&active.buf[..half], active.written)
                .and(Err(io::Error::from_raw_os_error(28)))
        } else {
            active.file.write_all_at(&active.buf, active.written)
        };
        match result {
            Ok(()) => {
                active.written += active.buf.len() as u64;
                active.buf.clear();
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = active.file.set_len(active.written) {
                    tracing::warn!(path = %seg.path.display(), error = %cut,
                        "cannot cut a failed write off a spool segment; retrying before the next write");
                    active.tail_dirty = true;
                }
                Err(io_err("write to spool segment", &seg.path)(e))
            }
        }
    }

    /// Makes sure the open segment can take a record of `len` bytes:
    /// closes a full one (written and fdatasynced first) and creates the next.
    fn ensure_segment(&mut self, seq: u64, len: u64) -> Result<(), SpoolError> {
        if let (Some(_), Some(seg)) = (&self.active, self.segments.last()) {
            if seg.bytes == 0 || seg.bytes + len <= self.segment_bytes {
                return Ok(());
            }
            self.write_buffer()?;
            if let (Some(active), Some(seg)) = (&self.active, self.segments.last()) {
                active
                    .file
                    .sync_data()
                    .map_err(io_err("fdatasync spool segment", &seg.path))?;
            }
            self.active = None;
        }
        let path = self
            .segments_dir
            .join(format!("{seq:0SEGMENT_DIGITS$}{SEGMENT_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create spool segment", &path))?;
        self.segments.push(Segment::new(path, seq));
        self.active = Some(Active {
            file,
            written: 0,
            buf: Vec::with_capacity(WRITE_THRESHOLD + 4096),
            tail_dirty: false,
        });
        self.dir_dirty = true;
        Ok(())
    }

    /// Stored records above the acknowledged seq. Only the first segment can
    /// hold acknowledged records (the others start above its last seq).
    fn count_pending(&self) -> Result<u64, SpoolError> {
        let total: u64 = self.segments.iter().map(|s| s.records).sum();
        let Some(first) = self.segments.first() else {
            return Ok(0);
        };
        let acked_here = if first.last_seq <= self.acked {
            first.records
        } else if first.first_seq > self.acked {
            0
        } else {
            let mark = first.mark_for(self.acked);
            let mut n = mark.ordinal;
            self.scan_segment(0, mark.offset, |s, _, _| {
                if s <= self.acked {
                    n += 1;
                    true
                } else {
                    false
                }
            })?;
            n
        };
        Ok(total - acked_here)
    }

    /// Calls `f(seq, priority, payload)` for each record of segment `idx`
    /// from byte `from` (a record boundary) until it returns false.
    fn scan_segment(
        &self,
        idx: usize,
        from: u64,
        mut f: impl FnMut(u64, bool, &[u8]) -> bool,
    ) -> Result<(), SpoolError> {
        let seg = &self.segments[idx];
        let (file_end, buffered): (u64, &[u8]) = match &self.active {
            Some(a) if idx + 1 == self.segments.len() => (a.written, &a.buf),
            _ => (seg.bytes, &[]),
        };
        let corrupt = |offset: u64, detail: String| SpoolError::Corrupt {
            path: seg.path.clone(),
            offset,
            detail,
        };
        let mut offset = from;
        if offset < file_end {
            let file = File::open(&seg.path).map_err(io_err("open spool segment", &seg.path))?;
            let mut reader = BufReader::with_capacity(WRITE_THRESHOLD, file);
            reader
                .seek(SeekFrom::Start(offset))
                .map_err(io_err("read spool segment", &seg.path))?;
            let mut body = Vec::new();
            let read_err = |offset: u64, e: io::Error| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    corrupt(offset, "the file ends inside a record".into())
                } else {
                    io_err("read spool segment", &seg.path)(e)
                }
            };
            while offset < file_end {
                let mut prefix = [0u8; PREFIX_LEN];
                reader
                    .read_exact(&mut prefix)
                    .map_err(|e| read_err(offset, e))?;
                let (body_len, crc) = split_prefix(&prefix);
                let end = offset + (PREFIX_LEN as u64) + u64::from(body_len);
                if (body_len as usize) < BODY_HEADER_LEN || end > file_end {
                    return Err(corrupt(offset, FrameError::Length(body_len).to_string()));
                }
                body.resize(body_len as usize, 0);
                reader
                    .read_exact(&mut body)
                    .map_err(|e| read_err(offset, e))?;
                let (seq, priority) =
                    check_body(&body, crc).map_err(|e| corrupt(offset, e.to_string()))?;
                offset = end;
                if !f(seq, priority, &body[BODY_HEADER_LEN..]) {
                    return Ok(());
                }
            }
        }
        let mut pos = (offset - file_end) as usize;
        while pos < buffered.len() {
            let frame = parse_frame(&buffered[pos..])
                .map_err(|e| corrupt(file_end + pos as u64, e.to_string()))?;
            pos += frame.len;
            if !f(frame.seq, frame.priority, frame.payload) {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for Spool {
    /// Hands the buffer to the kernel (no fdatasync): a clean shutdown
    /// without `flush` loses nothing unless the machine goes down too.
    fn drop(&mut self) {
        if let Err(e) = self.write_buffer() {
            tracing::warn!(error = %e, "spool buffer not written at close");
        }
    }
}

fn encode(buf: &mut Vec<u8>, seq: u64, priority: bool, payload: &[u8]) {
    let body_len = (BODY_HEADER_LEN + payload.len()) as u32;
    let mut head = [0u8; BODY_HEADER_LEN];
    head[..8].copy_from_slice(&seq.to_le_bytes());
    head[8] = if priority { FLAG_PRIORITY } else { 0 };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.update(payload);
    buf.reserve(RECORD_OVERHEAD + payload.len());
    buf.extend_from_slice(&body_len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&head);
    buf.extend_from_slice(payload);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameError {
    ShortHeader(usize),
    Length(u32),
    PastEnd { len: u64, left: u64 },
    Crc,
    Flags(u8),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ShortHeader(n) => write!(f, "only {n} bytes of a record header"),
            FrameError::Length(n) => write!(f, "impossible record length {n}"),
            FrameError::PastEnd { len, left } => {
                write!(
                    f,
                    "a record of {len} bytes with only {left} bytes left in the file"
                )
            }
            FrameError::Crc => write!(f, "CRC mismatch"),
            FrameError::Flags(b) => write!(f, "unknown flag bits {b:#04x}"),
        }
    }
}

struct Frame<'a> {
    seq: u64,
    priority: bool,
    payload: &'a [u8],
    /// Bytes of the whole record.
    len: usize,
}

fn split_prefix(prefix: &[u8; PREFIX_LEN]) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = *prefix;
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

/// Checks a record body (seq, flags, payload) against its crc.
fn check_body(body: &[u8], crc: u32) -> Result<(u64, bool), FrameError> {
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Crc);
    }
    let flags = body[8];
    if flags & !FLAG_PRIORITY != 0 {
        return Err(FrameError::Flags(flags));
    }
    let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    Ok((seq, flags & FLAG_PRIORITY != 0))
}

/// Parses and checks the record at the start of `data`.
fn parse_frame(data: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some(prefix) = data.first_chunk::<PREFIX_LEN>() else {
        return Err(FrameError::ShortHeader(data.len()));
    };
    let (body_len, crc) = split_prefix(prefix);
    if (body_len as usize) < BODY_HEADER_LEN {
        return Err(FrameError::Length(body_len));
    }
    let left = (data.len() - PREFIX_LEN) as u64;
    if u64::from(body_len) > left {
        return Err(FrameError::PastEnd {
            len: u64::from(body_len) + PREFIX_LEN as u64,
            left: data.len() as u64,
        });
    }
    let body = &data[PREFIX_LEN..PREFIX_LEN + body_len as usize];
    let (seq, priority) = check_body(body, crc)?;
    Ok(Frame {
        seq,
        priority,
        payload: &body[BODY_HEADER_LEN..],
        len: PREFIX_LEN + body_len as usize,
    })
}

/// Intact records in `data` from the damaged record at `bad` on: skips the
/// damaged one by its own length when that lands on an intact record, else
/// searches byte by byte. Returns the count and their highest seq.
fn intact_after(data: &[u8], bad: usize) -> (u64, Option<u64>) {
    let mut pos = bad + 1;
    if let Some(prefix) = data[bad..].first_chunk::<PREFIX_LEN>() {
        let body_len = split_prefix(prefix).0 as usize;
        let end = bad + PREFIX_LEN + body_len;
        let lands = end == data.len() || (end < data.len() && parse_frame(&data[end..]).is_ok());
        if body_len >= BODY_HEADER_LEN && lands {
            pos = end;
        }
    }
    count_intact(data, pos)
}

/// Intact records in `data[pos..]`, resynchronising byte by byte past damage.
fn count_intact(data: &[u8], mut pos: usize) -> (u64, Option<u64>) {
    let mut count = 0;
    let mut max_seq = None;
    while pos < data.len() {
        match parse_frame(&data[pos..]) {
            Ok(frame) => {
                count += 1;
                max_seq = max_seq.max(Some(frame.seq));
                pos += frame.len;
            }
            Err(_) => pos += 1,
        }
    }
    (count, max_seq)
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&s| s > 0)
}

fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open the spool lock", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(SpoolError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Replaces `dir/name` with `data`: tmp file, fsync, rename, fsync dir.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), SpoolError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
    sync_dir(dir)
}

fn write_cursor(dir: &Path, seq: u64) -> Result<(), SpoolError> {
    let mut data = [0u8; CURSOR_LEN];
    data[..4].copy_from_slice(&CURSOR_MAGIC);
    data[4..12].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&data[..12]);
    data[12..].copy_from_slice(&crc.to_le_bytes());
    write_atomic(dir, "cursor", &data)
}

fn parse_cursor(data: &[u8]) -> Option<u64> {
    let data: &[u8; CURSOR_LEN] = data.try_into().ok()?;
    let crc = u32::from_le_bytes(data[12..].try_into().ok()?);
    if data[..4] != CURSOR_MAGIC || crc32fast::hash(&data[..12]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(data[4..12].try_into().ok()?))
}

fn valid_agent_id(id: &str) -> bool {
    id.len() == AGENT_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn new_agent_id() -> Result<String, SpoolError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; AGENT_ID_LEN / 2];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("read", path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a small file; `Ok(None)` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, SpoolError> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A free name `corrupt/<name>.<unix-time>[.<n>]`.
fn corrupt_name(corrupt_dir: &Path, name: &str) -> PathBuf {
    let base = format!("{name}.{}", unix_now());
    let mut path = corrupt_dir.join(&base);
    let mut n = 1;
    while path.symlink_metadata().is_ok() {
        path = corrupt_dir.join(format!("{base}.{n}"));
        n += 1;
    }
    path
}

/// Moves `from` into `corrupt/`.
fn move_aside(from: &Path, corrupt_dir: &Path, name: &str) -> Result<PathBuf, SpoolError> {
    let to = corrupt_name(corrupt_dir, name);
    fs::rename(from, &to).map_err(io_err("move a damaged spool file to", &to))?;
    sync_dir(corrupt_dir)?;
    if let Some(parent) = from.parent() {
        sync_dir(parent)?;
    }
    Ok(to)
}

/// Copies `data` (a damaged file's whole content) into `corrupt/`, durably.
fn copy_aside(data: &[u8], corrupt_dir: &Path, name: &str) -> Result<PathBuf, SpoolError> {
    let to = corrupt_name(corrupt_dir, name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&to)
        .map_err(io_err("create", &to))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &to))?;
    sync_dir(corrupt_dir)?;
    Ok(to)
}

/// Cuts `path` to `len` bytes, durably.
fn truncate_file(path: &Path, len: u64) -> Result<(), SpoolError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(len)?;
            f.sync_all()
        })
        .map_err(io_err("truncate damaged spool segment", path))
}

/// Reads the agent id and the cursor, creating or resetting what is missing
/// or garbled. The cursor is written before a new agent id, so an agent id on
/// disk means the cursor was written too.
fn load_identity(
    dir: &Path,
    corrupt_dir: &Path,
    report: &mut OpenReport,
) -> Result<(String, u64), SpoolError> {
    let id_path = dir.join("agent-id");
    let id = match read_optional(&id_path)? {
        None => None,
        Some(data) => match std::str::from_utf8(&data).map(str::trim_end) {
            Ok(id) if valid_agent_id(id) => Some(id.to_string()),
            _ => {
                let to = move_aside(&id_path, corrupt_dir, "agent-id")?;
                tracing::warn!(path = %id_path.display(), moved_to = %to.display(),
                    "garbled spool agent id set aside; a new id is made");
                report.agent_id_reset = true;
                None
            }
        },
    };
    let had_spool = id.is_some() || report.agent_id_reset;

    let cursor_path = dir.join("cursor");
    let acked = match read_optional(&cursor_path)? {
        Some(data) => match parse_cursor(&data) {
            Some(seq) => seq,
            None => {
                let to = move_aside(&cursor_path, corrupt_dir, "cursor")?;
                tracing::warn!(path = %cursor_path.display(), moved_to = %to.display(),
                    "garbled spool cursor set aside; every spooled record will be sent again");
                report.cursor_reset = true;
                write_cursor(dir, 0)?;
                0
            }
        },
        None => {
            if had_spool {
                tracing::warn!(path = %cursor_path.display(),
                    "spool cursor missing; every spooled record will be sent again");
                report.cursor_reset = true;
            }
            write_cursor(dir, 0)?;
            0
        }
    };

    let id = match id {
        Some(id) => id,
        None => {
            report.created = !had_spool;
            let id = new_agent_id()?;
            write_atomic(dir, "agent-id", format!("{id}\n").as_bytes())?;
            id
        }
    };
    Ok((id, acked))
}

/// Scans the segment files in seq order, repairing and setting aside as the
/// module documentation says. Returns the kept segments and the highest seq
/// found intact in what was set aside.
fn recover_segments(
    segments_dir: &Path,
    corrupt_dir: &Path,
    acked: u64,
    report: &mut OpenReport,
) -> Result<(Vec<Segment>, Option<u64>), SpoolError> {
    let mut seen_seq: Option<u64> = None;
    let mut named: Vec<(u64, PathBuf, String)> = Vec::new();
    let entries = fs::read_dir(segments_dir).map_err(io_err("list", segments_dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", segments_dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry
            .file_type()
            .map_err(io_err("inspect", &path))?
            .is_file();
        match parse_segment_name(&name) {
            Some(seq) if is_file => named.push((seq, path, name)),
            _ => {
                let (bytes, records, max_seq) = if is_file {
                    match fs::read(&path) {
                        Ok(data) => {
                            let (n, max) = count_intact(&data, 0);
                            (data.len() as u64, n, max)
                        }
                        Err(_) => (0, 0, None),
                    }
                } else {
                    (0, 0, None)
                };
                seen_seq = seen_seq.max(max_seq);
                let to = move_aside(&path, corrupt_dir, &name)?;
                let reason = if is_file {
                    "not a segment file name"
                } else {
                    "not a regular file"
                };
                tracing::warn!(path = %path.display(), moved_to = %to.display(), bytes, records,
                    reason, "foreign file in the spool's segment directory set aside");
                report.push_set_aside(SetAside {
                    from: path,
                    path: to,
                    bytes,
                    records,
                    after_seq: None,
                    before_seq: None,
                    reason: reason.into(),
                });
            }
        }
    }
    named.sort_by_key(|(seq, ..)| *seq);

    let mut kept: Vec<Segment> = Vec::new();
    // For each set-aside entry with a position: (its index, kept.len() once its file was done).
    let mut positioned: Vec<(usize, usize)> = Vec::new();
    let mut prev: Option<u64> = None;
    let mut data = Vec::new();
    for (i, (name_seq, path, name)) in named.iter().enumerate() {
        let is_last = i + 1 == named.len();
        // Wholly acknowledged (an ack removed the segments before it, or was
        // cut short by a crash): the next segment starts at or below acked + 1.
        if let Some((next, ..)) = named.get(i + 1)
            && *next <= acked.saturating_add(1)
        {
            match fs::remove_file(path) {
                Ok(()) => continue,
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "cannot remove an acknowledged spool segment"),
            }
        }
        data.clear();
        if let Err(e) = File::open(path).and_then(|mut f| f.read_to_end(&mut data)) {
            let bytes = fs::metadata(path).map_or(0, |m| m.len());
            let to = move_aside(path, corrupt_dir, name)?;
            let reason = format!("unreadable: {e}");
            tracing::warn!(path = %path.display(), moved_to = %to.display(), bytes, %reason,
                "spool segment set aside");
            positioned.push((report.set_aside_detail.len(), kept.len()));
            report.push_set_aside(SetAside {
                from: path.clone(),
                path: to,
                bytes,
                records: 0,
                after_seq: prev,
                before_seq: None,
                reason,
            });
            continue;
        }

        let mut seg = Segment::new(path.clone(), *name_seq);
        let mut pos = 0usize;
        // What is wrong, and whether a torn write could have caused it (an
        // intact record in the wrong place cannot be torn).
        let mut damage: Option<(String, bool)> = None;
        while pos < data.len() {
            let frame = match parse_frame(&data[pos..]) {
                Ok(frame) => frame,
                Err(e) => {
                    damage = Some((e.to_string(), true));
                    break;
                }
            };
            if pos == 0 && frame.seq != *name_seq {
                damage = Some((
                    format!(
                        "first record has seq {} but the file is named for {name_seq}",
                        frame.seq
                    ),
                    false,
                ));
                break;
            }
            if let Some(p) = prev
                && frame.seq <= p
            {
                damage = Some((
                    format!("seq {} does not exceed the previous seq {p}", frame.seq),
                    false,
                ));
                break;
            }
            seg.note(pos as u64, frame.seq, frame.len as u64);
            prev = Some(frame.seq);
            pos += frame.len;
        }

        let mut set_aside_entry = None;
        if let Some((detail, torn_possible)) = damage {
            let lost = (data.len() - pos) as u64;
            let (intact, max_seq) = intact_after(&data, pos);
            if torn_possible && is_last && intact == 0 && lost <= TORN_TAIL_MAX {
                // A write that a crash cut short.
                truncate_file(path, pos as u64)?;
                tracing::warn!(path = %path.display(), offset = pos, bytes = lost, %detail,
                    "torn end of the newest spool segment cut off");
                report.truncated_bytes += lost;
            } else {
                let to = copy_aside(&data, corrupt_dir, name)?;
                truncate_file(path, pos as u64)?;
                let reason = format!("damaged at byte {pos}: {detail}");
                tracing::warn!(path = %path.display(), copy = %to.display(), bytes = lost,
                    records = intact + 1, after_seq = ?prev, %reason,
                    "damaged spool segment set aside; its records from the damage on are not sent");
                seen_seq = seen_seq.max(max_seq);
                set_aside_entry = Some(report.set_aside_detail.len());
                report.push_set_aside(SetAside {
                    from: path.clone(),
                    path: to,
                    bytes: lost,
                    records: intact + 1,
                    after_seq: prev,
                    before_seq: None,
                    reason,
                });
            }
        }

        if seg.records == 0 || seg.last_seq <= acked {
            // Empty (created just before a crash, or nothing left before the
            // damage) or wholly acknowledged.
            fs::remove_file(path).map_err(io_err("remove spool segment", path))?;
        } else {
            kept.push(seg);
        }
        if let Some(entry) = set_aside_entry {
            positioned.push((entry, kept.len()));
        }
    }
    for (entry, next_kept) in positioned {
        report.set_aside_detail[entry].before_seq = kept.get(next_kept).map(|s| s.first_seq);
    }
    Ok((kept, seen_seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed afterwards
    /// (kept with TIERGATE_KEEP_TEST_DIRS=1).
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> Self {
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

        fn spool(&self) -> PathBuf {
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

    const PAYLOAD: usize = 600;
    const FRAME: u64 = (RECORD_OVERHEAD + PAYLOAD) as u64;

    fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
        }
    }

    fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> (Spool, OpenReport) {
        Spool::open(config(dir, max_bytes, segment_bytes))
            .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
    }

    /// A record whose payload depends on its seq, so a mix-up shows.
    fn rec(seq: u64, priority: bool, len: usize) -> Record {
        Record {
            seq,
            priority,
            payload: (0..len)
                .map(|i| (seq as usize * 31 + i * 7) as u8)
                .collect(),
        }
    }

    fn store(spool: &mut Spool, r: &Record) {
        match spool.append(r) {
            Ok(Appended::Stored) => {}
            other => panic!("append of seq {} gave {other:?}, expected Stored", r.seq),
        }
    }

    /// Appends seqs `range` of 600-byte payloads (every third one priority).
    fn store_range(spool: &mut Spool, range: std::ops::RangeInclusive<u64>) -> Vec<Record> {
        range
            .map(|seq| {
                let r = rec(seq, seq % 3 == 0, PAYLOAD);
                store(spool, &r);
                r
            })
            .collect()
    }

    fn all_after(spool: &Spool, seq: u64) -> Vec<Record> {
        spool
            .read_after(seq, usize::MAX, usize::MAX)
            .expect("read_after")
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    /// Segment file names and sizes, in order.
    fn segment_files(spool_dir: &Path) -> Vec<(String, u64)> {
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

    fn corrupt_files(spool_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(spool_dir.join("corrupt"))
            .expect("list corrupt")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn segment_path(spool_dir: &Path, first_seq: u64) -> PathBuf {
        spool_dir
            .join("segments")
            .join(format!("{first_seq:020}.seg"))
    }

    fn assert_clean(report: &OpenReport) {
        assert!(
            report.set_aside.is_empty(),
            "set aside: {:?}",
            report.set_aside
        );
        assert_eq!(report.truncated_bytes, 0, "truncated bytes");
        assert!(!report.cursor_reset, "cursor reset");
    }

    /// Three flushed segments of ten 600-byte records: 1-10, 11-20, 21-30.
    fn three_segments(spool_dir: &Path) -> Vec<Record> {
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

    const KILL9_ENV: &str = "TIERGATE_SPOOL_KILL9_DIR";
    const KILL9_READY: &str = "TIERGATE-SPOOL-KILL9-READY";

    /// The child of `kill9_loses_only_the_unwritten_buffer`; does nothing
    /// when run on its own.
    #[test]
    fn kill9_child() {
        let Some(dir) = std::env::var_os(KILL9_ENV) else {
            return;
        };
        let (mut s, _) = open(Path::new(&dir), 64 << 20, 16 << 20);
        store_range(&mut s, 1..=100);
        s.flush().expect("flush");
        store_range(&mut s, 101..=250);
        println!("{KILL9_READY}");
        io::stdout().flush().expect("stdout");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    #[test]
    fn kill9_loses_only_the_unwritten_buffer() {
        let t = TestDir::new("kill9");
        let module = module_path!();
        let test_name = format!(
            "{}::kill9_child",
            module.split_once("::").map_or(module, |(_, rest)| rest)
        );
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                test_name.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL9_ENV, t.spool())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child test");
        let stdout = child.stdout.take().expect("stdout");
        let ready = io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains(KILL9_READY));
        assert!(
            ready,
            "the child test {test_name} ended before it was ready"
        );
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "child status {status}");

        let (s, report) = open(&t.spool(), 64 << 20, 16 << 20);
        assert_clean(&report);
        // 1-100 were flushed; of 101-250 the buffer was written each time it
        // passed 64 KiB, and what was still in it died with the process.
        let per_write = WRITE_THRESHOLD.div_ceil(FRAME as usize) as u64;
        let survivors = 100 + (150 / per_write) * per_write;
        assert!(survivors > 100 && survivors < 250);
        assert_eq!(seqs(&all_after(&s, 0)), (1..=survivors).collect::<Vec<_>>());
        assert_eq!(report.last_seq, Some(survivors));
        assert_eq!(s.used_bytes(), survivors * FRAME);
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
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open segment");
        f.write_all(&torn[..30]).expect("write");
        drop(f);
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
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open segment");
        f.write_all(&[0u8; 4096]).expect("write");
        drop(f);
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
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open segment");
        f.write_all(&garbage).expect("write");
        drop(f);
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
        let mut f = OpenOptions::new().append(true).open(&seg3).expect("open");
        f.write_all(&extra).expect("write");
        drop(f);
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

        // A bit flip in the stored seq is caught by the cursor's CRC.
        let (mut s, _) = open(&t.spool(), 1 << 20, 10 * FRAME);
        s.ack(12).expect("ack");
        drop(s);
        let mut cursor = fs::read(t.spool().join("cursor")).expect("read");
        cursor[4] ^= 0x40;
        fs::write(t.spool().join("cursor"), &cursor).expect("write");
        let (_, report) = open(&t.spool(), 1 << 20, 10 * FRAME);
        assert!(report.cursor_reset);
        assert_eq!(report.acked, 0);

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

    fn store_range_plain(spool: &mut Spool, range: std::ops::RangeInclusive<u64>, priority: bool) {
        for seq in range {
            store(spool, &rec(seq, priority, PAYLOAD));
        }
    }

    #[test]
    fn write_errors_drop_and_count_and_the_spool_recovers() {
        let t = TestDir::new("writeerr");
        let (mut s, _) = open(&t.spool(), 64 << 20, 16 << 20);
        let mut stored = seqs(&store_range(&mut s, 1..=10));
        s.flush().expect("flush");
        let seg = segment_path(&t.spool(), 1);

        s.fail_writes = true;
        let mut seq = 10;
        let mut dropped = Vec::new();
        // Appends fill the buffer; the write at 64 KiB fails half-way and is
        // cut off, that record stays buffered, and later ones are dropped.
        while dropped.len() < 5 {
            seq += 1;
            match s.append(&rec(seq, seq % 2 == 0, PAYLOAD)).expect("append") {
                Appended::Stored => stored.push(seq),
                Appended::Dropped {
                    reason: DropReason::WriteError(msg),
                } => {
                    assert!(msg.contains(&seg.display().to_string()), "{msg}");
                    assert!(msg.contains("No space left on device"), "{msg}");
                    dropped.push(seq);
                }
                other => panic!("seq {seq}: {other:?}"),
            }
            assert!(seq < 1000, "no write error surfaced");
        }
        assert_eq!(
            fs::metadata(&seg).expect("metadata").len(),
            10 * FRAME,
            "partial write cut off"
        );
        let err = s.flush().expect_err("flush with failing writes");
        assert!(matches!(err, SpoolError::Io { .. }), "{err}");
        assert_eq!(fs::metadata(&seg).expect("metadata").len(), 10 * FRAME);
        assert_eq!(s.dropped_write_errors(), 5);
        assert_eq!(s.dropped_normal() + s.dropped_priority(), 5);

        // Writes work again: flush writes the kept buffer.
        s.fail_writes = false;
        s.flush().expect("flush after recovery");
        seq += 1;
        store(&mut s, &rec(seq, false, PAYLOAD));
        stored.push(seq);

        // And append retries by itself after the retry interval.
        s.fail_writes = true;
        let mut failed = false;
        while !failed {
            seq += 1;
            match s.append(&rec(seq, false, PAYLOAD)).expect("append") {
                Appended::Stored => stored.push(seq),
                Appended::Dropped { .. } => failed = true,
            }
        }
        s.fail_writes = false;
        std::thread::sleep(WRITE_RETRY_INTERVAL + Duration::from_millis(50));
        seq += 1;
        store(&mut s, &rec(seq, true, PAYLOAD));
        stored.push(seq);
        s.flush().expect("flush");
        assert_eq!(seqs(&all_after(&s, 0)), stored);
        drop(s);

        let (s, report) = open(&t.spool(), 64 << 20, 16 << 20);
        assert_clean(&report);
        assert_eq!(
            seqs(&all_after(&s, 0)),
            stored,
            "exactly the stored records, no holes"
        );
    }

    /// Unmounts on drop (lazily, so a failed test cannot leave it busy).
    struct Mount(PathBuf);

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    #[test]
    fn disk_full_on_a_real_file_system() {
        let t = TestDir::new("enospc");
        let mnt = t.0.join("mnt");
        fs::create_dir(&mnt).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tiergate-spool-test"])
            .arg(&mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("disk_full_on_a_real_file_system skipped: cannot mount a tmpfs (needs root)");
            return;
        }
        let _mount = Mount(mnt.clone());
        let (mut s, _) = open(&mnt.join("spool"), 64 << 20, 16 << 20);
        // Fill the file system, then leave 100 KiB free.
        let filler_path = mnt.join("filler");
        let mut filler = File::create(&filler_path).expect("create filler");
        while filler.write_all(&[0xa5; 4096]).is_ok() {}
        let len = filler.metadata().expect("metadata").len();
        filler.set_len(len - 100 * 1024).expect("shrink filler");
        drop(filler);

        let mut stored = Vec::new();
        let mut write_errors = 0;
        let mut seq = 0;
        while write_errors < 20 {
            seq += 1;
            assert!(seq < 100_000, "the file system never filled up");
            match s.append(&rec(seq, false, PAYLOAD)).expect("append") {
                Appended::Stored => stored.push(seq),
                Appended::Dropped {
                    reason: DropReason::WriteError(msg),
                } => {
                    assert!(msg.contains("No space left on device"), "{msg}");
                    write_errors += 1;
                }
                other => panic!("seq {seq}: {other:?}"),
            }
            if seq % 20 == 0 {
                let _ = s.flush();
            }
        }
        assert!(stored.len() > 100, "only {} records stored", stored.len());
        // Whole records only on disk, whatever the kernel managed to write.
        let on_disk: u64 = segment_files(&mnt.join("spool")).iter().map(|f| f.1).sum();
        assert_eq!(on_disk % FRAME, 0, "segment bytes {on_disk}");

        fs::remove_file(&filler_path).expect("remove filler");
        s.flush().expect("flush once space is back");
        for _ in 0..20 {
            seq += 1;
            store(&mut s, &rec(seq, false, PAYLOAD));
            stored.push(seq);
        }
        s.flush().expect("flush");
        assert_eq!(s.dropped_write_errors(), 20);
        drop(s);
        let (s, report) = open(&mnt.join("spool"), 64 << 20, 16 << 20);
        assert_clean(&report);
        assert_eq!(seqs(&all_after(&s, 0)), stored);
    }

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
}
