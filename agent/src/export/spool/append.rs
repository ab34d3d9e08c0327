//! `append`: seq checks, the size bound with its priority reserve, and drop accounting.

use super::error::SpoolError;
use super::record::{MAX_PAYLOAD, RECORD_OVERHEAD, encode};
use super::write::{WRITE_RETRY_INTERVAL, WRITE_THRESHOLD};
use super::{Appended, DropReason, Record, Spool};

impl Spool {
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
}
