//! The spool's error type: caller bugs and failures to open, acknowledge or read.

use std::io;
use std::path::{Path, PathBuf};

use super::record::MAX_PAYLOAD;

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

pub(super) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io {
        action,
        path,
        source,
    }
}
