//! The writer's side of the spool: encodes each record as a protocol
//! `Event` and appends it; counts what the spool had to give up.

use std::sync::{Arc, Mutex};

use prost::Message;
use tiergate_proto::events::v1::Event;
use tokio::sync::Notify;

use super::spool::{Appended, DropReason, Record, Spool};
use crate::events::sinks::{RecordMeta, Sink, SinkLoss};

/// Runs of consecutive seqs, for loss records.
#[derive(Default)]
struct Runs(Vec<(u64, u64)>);

impl Runs {
    fn push(&mut self, seq: u64) {
        match self.0.last_mut() {
            Some((_, end)) if *end + 1 == seq => *end = seq,
            _ => self.0.push((seq, seq)),
        }
    }
}

/// Appends records to the spool and wakes the sender after each batch.
pub struct SpoolSink {
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    name: String,
    full: Runs,
    full_priority: u64,
    write_errors: Runs,
    last_write_error: Option<String>,
    buf: Vec<u8>,
}

impl SpoolSink {
    pub fn new(spool: Arc<Mutex<Spool>>, notify: Arc<Notify>, dir: &std::path::Path) -> Self {
        Self {
            spool,
            notify,
            name: format!("spool:{}", dir.display()),
            full: Runs::default(),
            full_priority: 0,
            write_errors: Runs::default(),
            last_write_error: None,
            buf: Vec::with_capacity(1024),
        }
    }
}

impl Sink for SpoolSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, meta: &RecordMeta<'_>, line: &[u8]) {
        let ev = Event {
            seq: meta.seq,
            uid: meta.uid.to_string(),
            kind: meta.kind.to_string(),
            priority: meta.priority,
            time_ms: meta.time_ms,
            ocsf_json: line.to_vec(),
        };
        self.buf.clear();
        ev.encode(&mut self.buf)
            .expect("encoding into a Vec cannot fail");
        let rec = Record {
            seq: meta.seq,
            priority: meta.priority,
            payload: std::mem::take(&mut self.buf),
        };
        let result = self.spool.lock().expect("spool lock").append(&rec);
        self.buf = rec.payload;
        match result {
            Ok(Appended::Stored) => {}
            Ok(Appended::Dropped {
                reason: DropReason::Full,
            }) => {
                self.full.push(meta.seq);
                if meta.priority {
                    self.full_priority += 1;
                }
            }
            Ok(Appended::Dropped {
                reason: DropReason::WriteError(e),
            }) => {
                self.write_errors.push(meta.seq);
                if self.last_write_error.as_deref() != Some(e.as_str()) {
                    tracing::error!(spool = %self.name, error = %e, "cannot write to the spool");
                    self.last_write_error = Some(e);
                }
            }
            // Only a caller bug (non-increasing seq) gets here.
            Err(e) => {
                tracing::error!(spool = %self.name, error = %e, "spool refused a record");
                self.write_errors.push(meta.seq);
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.spool.lock().expect("spool lock").flush() {
            tracing::error!(spool = %self.name, error = %e, "cannot flush the spool");
        }
        self.notify.notify_one();
    }

    fn take_losses(&mut self) -> Vec<SinkLoss> {
        let mut out = Vec::new();
        let full = std::mem::take(&mut self.full);
        if !full.0.is_empty() {
            let count: u64 = full.0.iter().map(|(a, b)| b - a + 1).sum();
            let prio = std::mem::take(&mut self.full_priority);
            out.push(SinkLoss {
                stage: "spool-full".into(),
                count,
                what: format!(
                    "the spool was full ({} of them denies, metadata accesses or agent records; \
                     allowed-connection events are given up first)",
                    prio
                ),
                seq_ranges: full.0,
            });
        }
        let errs = std::mem::take(&mut self.write_errors);
        if !errs.0.is_empty() {
            let count: u64 = errs.0.iter().map(|(a, b)| b - a + 1).sum();
            out.push(SinkLoss {
                stage: "spool-write-error".into(),
                count,
                what: format!(
                    "the spool could not be written ({})",
                    self.last_write_error.clone().unwrap_or_default()
                ),
                seq_ranges: errs.0,
            });
        }
        out
    }
}
