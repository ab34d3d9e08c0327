//! The acknowledged cursor file, and `ack`, which persists it and frees acknowledged segments.

use std::fs;
use std::io;
use std::path::Path;

use super::Spool;
use super::error::SpoolError;
use super::files::write_atomic;

const CURSOR_MAGIC: [u8; 4] = *b"TGC1";
const CURSOR_LEN: usize = 16;

impl Spool {
    /// Records that the collector has everything up to `seq`: persists the
    /// cursor, then deletes the segments whose records are all at or below it.
    /// An ack at or below the current one is ignored.
    ///
    /// A cursor that cannot be written (disk full, read-only) does not stop
    /// the ack: the collector has the records, so they are not sent again
    /// while this process runs, and their segments are still deleted, which
    /// gives a full disk back the room the cursor needs. Until a cursor
    /// write succeeds (retried at every ack) a restart resends from the last
    /// cursor on disk: duplicates, never a loss.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.acked {
            return Ok(());
        }
        let last = self.last_seq.unwrap_or(0);
        if seq > last {
            return Err(SpoolError::AckBeyondLast { seq, last });
        }
        match write_cursor(&self.dir, seq) {
            Ok(()) => {
                if let Some(previous) = self.cursor_failure.take() {
                    tracing::info!(previous_error = %previous, "spool cursor written again");
                }
            }
            Err(e) => {
                let message = e.to_string();
                if self.cursor_failure.is_none() {
                    tracing::error!(error = %message, acked = seq,
                        "cannot persist the spool cursor; acknowledged records are not resent \
                         unless the agent restarts before a cursor write succeeds");
                }
                self.cursor_failure = Some(message);
            }
        }
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
}

pub(super) fn write_cursor(dir: &Path, seq: u64) -> Result<(), SpoolError> {
    let mut data = [0u8; CURSOR_LEN];
    data[..4].copy_from_slice(&CURSOR_MAGIC);
    data[4..12].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&data[..12]);
    data[12..].copy_from_slice(&crc.to_le_bytes());
    write_atomic(dir, "cursor", &data)
}

pub(super) fn parse_cursor(data: &[u8]) -> Option<u64> {
    let data: &[u8; CURSOR_LEN] = data.try_into().ok()?;
    let crc = u32::from_le_bytes(data[12..].try_into().ok()?);
    if data[..4] != CURSOR_MAGIC || crc32fast::hash(&data[..12]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(data[4..12].try_into().ok()?))
}
