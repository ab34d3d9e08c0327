//! The record format: encoding, CRC-checked parsing, and counting intact records in damaged bytes.

use std::fmt;

/// Bytes of `len` + `crc`.
pub(super) const PREFIX_LEN: usize = 8;
/// Bytes of `seq` + `flags`, the covered part of a record before the payload.
pub(super) const BODY_HEADER_LEN: usize = 9;
/// Bytes a record takes besides its payload.
pub const RECORD_OVERHEAD: usize = PREFIX_LEN + BODY_HEADER_LEN;
/// Largest payload whose record length still fits the u32 `len` field.
pub const MAX_PAYLOAD: usize = u32::MAX as usize - BODY_HEADER_LEN;
const FLAG_PRIORITY: u8 = 0x01;

pub(super) fn encode(buf: &mut Vec<u8>, seq: u64, priority: bool, payload: &[u8]) {
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
pub(super) enum FrameError {
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

pub(super) struct Frame<'a> {
    pub(super) seq: u64,
    pub(super) priority: bool,
    pub(super) payload: &'a [u8],
    /// Bytes of the whole record.
    pub(super) len: usize,
}

pub(super) fn split_prefix(prefix: &[u8; PREFIX_LEN]) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = *prefix;
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

/// Checks a record body (seq, flags, payload) against its crc.
pub(super) fn check_body(body: &[u8], crc: u32) -> Result<(u64, bool), FrameError> {
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Crc);
    }
    body_fields(body)
}

/// Seq and priority of a record body (at least `BODY_HEADER_LEN` bytes).
fn body_fields(body: &[u8]) -> Result<(u64, bool), FrameError> {
    let flags = body[8];
    if flags & !FLAG_PRIORITY != 0 {
        return Err(FrameError::Flags(flags));
    }
    let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    Ok((seq, flags & FLAG_PRIORITY != 0))
}

/// Parses and checks the record at the start of `data`.
pub(super) fn parse_frame(data: &[u8]) -> Result<Frame<'_>, FrameError> {
    frame(data, true)
}

/// Parses the record at the start of bytes this process encoded and still
/// holds in memory (never read back from a file): lengths and flags are
/// checked, the CRC is not.
pub(super) fn own_frame(data: &[u8]) -> Result<Frame<'_>, FrameError> {
    frame(data, false)
}

fn frame(data: &[u8], check_crc: bool) -> Result<Frame<'_>, FrameError> {
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
    let (seq, priority) = if check_crc {
        check_body(body, crc)?
    } else {
        body_fields(body)?
    };
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
pub(super) fn intact_after(data: &[u8], bad: usize) -> (u64, Option<u64>) {
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
pub(super) fn count_intact(data: &[u8], mut pos: usize) -> (u64, Option<u64>) {
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
