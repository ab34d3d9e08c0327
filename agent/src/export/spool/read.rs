//! Serving records: `read_after` from any seq, and counting what is pending.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use super::error::{SpoolError, io_err};
use super::record::{BODY_HEADER_LEN, FrameError, PREFIX_LEN, check_body, own_frame, split_prefix};
use super::write::{Recent, WRITE_THRESHOLD};
use super::{Record, Spool};

impl Spool {
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
        self.visit_after(seq, max_records, max_bytes, |s, priority, payload| {
            out.push(Record {
                seq: s,
                priority,
                payload: payload.to_vec(),
            })
        })?;
        Ok(out)
    }

    /// `read_after` without copies: calls `f(seq, priority, payload)` for
    /// each of those records, in order; returns how many.
    pub fn visit_after(
        &self,
        seq: u64,
        max_records: usize,
        max_bytes: usize,
        mut f: impl FnMut(u64, bool, &[u8]),
    ) -> Result<usize, SpoolError> {
        let mut n = 0usize;
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
                if n >= max_records || (n > 0 && bytes + payload.len() > max_bytes) {
                    limit_reached = true;
                    return false;
                }
                bytes += payload.len();
                n += 1;
                f(s, priority, payload);
                true
            })?;
            if limit_reached || n >= max_records {
                break;
            }
        }
        Ok(n)
    }

    /// Stored records above the acknowledged seq. Only the first segment can
    /// hold acknowledged records (the others start above its last seq).
    pub(super) fn count_pending(&self) -> Result<u64, SpoolError> {
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
        let (file_end, recent, buffered): (u64, Option<&Recent>, &[u8]) = match &self.active {
            Some(a) if idx + 1 == self.segments.len() => (a.written, Some(&a.recent), &a.buf),
            _ => (seg.bytes, None, &[]),
        };
        let corrupt = |offset: u64, detail: String| SpoolError::Corrupt {
            path: seg.path.clone(),
            offset,
            detail,
        };
        let mut offset = from;
        if let Some(r) = recent.filter(|r| offset >= r.start && offset < file_end) {
            // Written by this process moments ago: served from the copy in
            // memory (checked when it was appended; no read, no CRC).
            let mut pos = (offset - r.start) as usize;
            while pos < r.bytes.len() {
                let frame = own_frame(&r.bytes[pos..])
                    .map_err(|e| corrupt(r.start + pos as u64, e.to_string()))?;
                pos += frame.len;
                if !f(frame.seq, frame.priority, frame.payload) {
                    return Ok(());
                }
            }
            offset = file_end;
        }
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
            let frame = own_frame(&buffered[pos..])
                .map_err(|e| corrupt(file_end + pos as u64, e.to_string()))?;
            pos += frame.len;
            if !f(frame.seq, frame.priority, frame.payload) {
                break;
            }
        }
        Ok(())
    }
}
