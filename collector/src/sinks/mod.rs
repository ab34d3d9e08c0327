//! The collector's SIEM-facing sinks.
//!
//! The collector receives OCSF JSON records from agents and hands each batch
//! to every configured sink. It acknowledges the batch to the agent only after
//! every sink's [`Sink::write_batch`] returned `Ok`, so a sink either takes a
//! batch durably or fails: a failed batch is written again later, whole
//! (duplicates are fine, losses are not).
//!
//! Sinks are synchronous and run on a dedicated thread: no async runtime.
//!
//! | `--sink`                          | durable when                                   |
//! | --------------------------------- | ---------------------------------------------- |
//! | `stdout` (or `-`)                 | the lines are flushed to file descriptor 1     |
//! | `file:PATH[?max-bytes=N&keep=N]`  | the lines are written and `fdatasync`ed        |
//! | `syslog+tls://HOST[:PORT]?ca=...` | the frames are written and TCP-acknowledged    |
//!
//! See [`parse_sink`] for the syntax and each sink's details.

mod file;
mod spec;
mod stdout;
mod syslog;
mod syslog_conn;
mod syslog_frame;

#[cfg(test)]
mod tests;

use std::io;

pub use file::{DEFAULT_KEEP, DEFAULT_MAX_BYTES};
pub use spec::parse_sink;
pub use syslog::{DEFAULT_APP_NAME, DEFAULT_SYSLOG_TLS_PORT};
pub use syslog_frame::push_timestamp;

/// Where records go. Implementations are driven by one thread.
pub trait Sink: Send {
    /// The sink as the operator named it, without secrets (`stdout`,
    /// `file:/var/log/tiergate/events.jsonl`, `syslog+tls://siem:6514`).
    fn name(&self) -> &str;

    /// Writes a batch of records (each one OCSF JSON object, no newline)
    /// durably or fails; on `Err` nothing is acknowledged and the batch will
    /// be written again (duplicates are fine, losses are not).
    fn write_batch(&mut self, records: &[Record<'_>]) -> Result<(), SinkError>;

    /// A file whose records tell, after a restart, what was written before
    /// (see `resume.rs`); sinks that cannot be read back have none.
    fn written_file(&self) -> Option<&std::path::Path> {
        None
    }
}

/// One event record, as the collector hands it to the sinks.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The OCSF JSON object, without a trailing newline.
    pub json: &'a [u8],
    /// The event's time, milliseconds since the Unix epoch (OCSF `time`).
    pub time_ms: u64,
    pub severity: Severity,
    /// `connection`, `socket`, `policy`, `loss` or `gap`.
    pub kind: &'a str,
    /// The agent's node name.
    pub agent: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    /// The RFC 5424 severity code.
    pub fn syslog_code(self) -> u8 {
        match self {
            Severity::Info => 6,
            Severity::Warning => 4,
            Severity::Error => 3,
        }
    }
}

/// Every message starts with `--sink NAME:` and says what failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The `--sink` value is invalid, or a file it names (CA, certificate,
    /// key) cannot be used.
    #[error("--sink {spec}: {reason}")]
    Config { spec: String, reason: String },
    /// An I/O operation failed (open, write, fsync, rename, connect, send).
    #[error("--sink {sink}: {action}: {error}")]
    Io {
        sink: String,
        action: String,
        error: io::Error,
    },
    /// TLS failed: handshake (certificate verification, alerts) or protocol.
    #[error("--sink {sink}: {action}: {error}")]
    Tls {
        sink: String,
        action: String,
        error: rustls::Error,
    },
}

impl SinkError {
    pub(super) fn config(spec: &str, reason: impl Into<String>) -> SinkError {
        SinkError::Config {
            spec: spec.to_owned(),
            reason: reason.into(),
        }
    }

    /// An I/O error; one that carries a TLS error becomes [`SinkError::Tls`].
    pub(super) fn io(sink: &str, action: impl Into<String>, error: io::Error) -> SinkError {
        let sink = sink.to_owned();
        let action = action.into();
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            let inner = error.into_inner().expect("checked above");
            let tls = inner.downcast::<rustls::Error>().expect("checked above");
            return SinkError::Tls {
                sink,
                action,
                error: *tls,
            };
        }
        SinkError::Io {
            sink,
            action,
            error,
        }
    }
}
