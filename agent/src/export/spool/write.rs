//! Getting records to disk: the append buffer, segment rollover, `flush`, the write-failure state.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::Spool;
use super::error::{SpoolError, io_err};
use super::files::sync_dir;
use super::segment::{Segment, segment_file_name};

/// The append buffer is written to the segment once it holds this much.
pub(super) const WRITE_THRESHOLD: usize = 64 * 1024;
/// Written bytes of the open segment kept in memory for the sender, which
/// reads what was just appended: between this and twice this much.
pub(super) const RECENT_KEEP: usize = 2 << 20;
/// While writes fail, `append` retries the write at most this often
/// (`flush` always retries).
pub(super) const WRITE_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// The segment appends go to (always the last one of the index).
#[derive(Debug)]
pub(super) struct Active {
    pub(super) file: File,
    /// Bytes in the file; the buffer goes at this offset.
    pub(super) written: u64,
    pub(super) buf: Vec<u8>,
    /// A failed write may have left part of a record past `written` and
    /// cutting it off failed too: retried before the next write or sync.
    pub(super) tail_dirty: bool,
    /// The newest written bytes, served without reading the file back.
    pub(super) recent: Recent,
}

impl Active {
    pub(super) fn new(file: File, written: u64) -> Active {
        Active {
            file,
            written,
            buf: Vec::new(),
            tail_dirty: false,
            recent: Recent {
                start: written,
                bytes: Vec::new(),
            },
        }
    }
}

/// A copy of the segment file from `start` to `Active::written`: whole
/// records, appended as each buffer write succeeds, trimmed from the front.
/// `start` need not be a record boundary; readers only enter at one.
#[derive(Debug)]
pub(super) struct Recent {
    pub(super) start: u64,
    pub(super) bytes: Vec<u8>,
}

impl Recent {
    fn push(&mut self, written: &[u8]) {
        self.bytes.extend_from_slice(written);
        if self.bytes.len() > 2 * RECENT_KEEP {
            let cut = self.bytes.len() - RECENT_KEEP;
            self.bytes.drain(..cut);
            self.start += cut as u64;
        }
    }
}

#[derive(Debug)]
pub(super) struct WriteFailure {
    pub(super) message: String,
    pub(super) last_attempt: Instant,
}

impl Spool {
    /// Writes the buffer and fdatasyncs the open segment: everything stored
    /// so far survives any crash once this returns `Ok`. On `Err` the
    /// unwritten records stay buffered and the next `flush` retries.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        // Only a write proves the disk takes records again: a flush with
        // nothing to write leaves a failure to the next append (creating a
        // segment may be what fails).
        let writes = self.active.as_ref().is_some_and(|a| !a.buf.is_empty());
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
        if writes && self.write_failure.is_some() {
            self.recovered();
        }
        Ok(())
    }

    /// Enters (or stays in) the write-failure state; returns the message.
    pub(super) fn failed(&mut self, e: &SpoolError) -> String {
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

    pub(super) fn recovered(&mut self) {
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
    pub(super) fn write_buffer(&mut self) -> Result<(), SpoolError> {
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
                active.recent.push(&active.buf);
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
    pub(super) fn ensure_segment(&mut self, seq: u64, len: u64) -> Result<(), SpoolError> {
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
        let path = self.segments_dir.join(segment_file_name(seq));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create spool segment", &path))?;
        self.segments.push(Segment::new(path, seq));
        let mut active = Active::new(file, 0);
        active.buf.reserve(WRITE_THRESHOLD + 4096);
        self.active = Some(active);
        self.dir_dirty = true;
        Ok(())
    }
}
