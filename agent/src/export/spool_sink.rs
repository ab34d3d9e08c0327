//! The writer's side of the spool: encodes each record as a protocol
//! `Event` (once: the sender sends these bytes as they are) and appends it;
//! counts what the spool had to give up.

use std::sync::{Arc, Mutex};

use tiergate_proto::wire::{EventFields, encode_event};
use tokio::sync::Notify;

use super::spool::{Appended, DropReason, Record, Spool};
use crate::events::sinks::{RecordMeta, Sink, SinkLoss, add_runs, in_runs, push_run, runs_len};
use crate::metrics::Metrics;

/// Inclusive runs of seqs.
type Runs = Vec<(u64, u64)>;

/// Records given up for one reason since the last report.
#[derive(Default)]
struct Lost {
    runs: Runs,
    /// Of them, those an earlier (itself lost) loss record named already.
    renamed: u64,
}

impl Lost {
    /// (count, first reported, seq runs) since the last report.
    fn take(&mut self) -> Option<(u64, u64, Runs)> {
        if self.runs.is_empty() {
            return None;
        }
        let count = runs_len(&self.runs);
        let renamed = std::mem::take(&mut self.renamed);
        Some((
            count,
            count.saturating_sub(renamed),
            std::mem::take(&mut self.runs),
        ))
    }
}

/// Appends records to the spool and wakes the sender after each batch.
pub struct SpoolSink {
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    metrics: Arc<Metrics>,
    name: String,
    full: Lost,
    full_priority: u64,
    /// `full_priority` of the last report, for a report that is lost.
    reported_priority: u64,
    write_errors: Lost,
    last_write_error: Option<String>,
    /// The last append was given up for a write error.
    failing: bool,
    buf: Vec<u8>,
}

impl SpoolSink {
    pub fn new(
        spool: Arc<Mutex<Spool>>,
        notify: Arc<Notify>,
        metrics: Arc<Metrics>,
        dir: &std::path::Path,
    ) -> Self {
        Self {
            spool,
            notify,
            metrics,
            name: format!("spool:{}", dir.display()),
            full: Lost::default(),
            full_priority: 0,
            reported_priority: 0,
            write_errors: Lost::default(),
            last_write_error: None,
            failing: false,
            buf: Vec::with_capacity(1024),
        }
    }
}

impl Sink for SpoolSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, meta: &RecordMeta<'_>, line: &[u8]) {
        self.buf.clear();
        encode_event(
            &mut self.buf,
            &EventFields {
                seq: meta.seq,
                uid: meta.uid,
                kind: meta.kind,
                priority: meta.priority,
                time_ms: meta.time_ms,
                ocsf_json: line,
            },
        );
        let rec = Record {
            seq: meta.seq,
            priority: meta.priority,
            payload: std::mem::take(&mut self.buf),
        };
        let result = self.spool.lock().expect("spool lock").append(&rec);
        self.buf = rec.payload;
        match result {
            Ok(Appended::Stored) => self.failing = false,
            Ok(Appended::Dropped {
                reason: DropReason::Full,
            }) => {
                push_run(&mut self.full.runs, meta.seq);
                if meta.priority {
                    self.full_priority += 1;
                }
            }
            Ok(Appended::Dropped {
                reason: DropReason::WriteError(e),
            }) => {
                push_run(&mut self.write_errors.runs, meta.seq);
                // One line when the spool starts failing, not one per record.
                if !self.failing {
                    tracing::error!(spool = %self.name, error = %e,
                        "cannot write to the spool; records are given up and named in loss records until a write succeeds");
                    self.failing = true;
                }
                self.last_write_error = Some(e);
            }
            // Only a caller bug (non-increasing seq) gets here.
            Err(e) => {
                tracing::error!(spool = %self.name, error = %e, "spool refused a record");
                push_run(&mut self.write_errors.runs, meta.seq);
            }
        }
    }

    fn flush(&mut self) {
        let mut spool = self.spool.lock().expect("spool lock");
        if let Err(e) = spool.flush() {
            tracing::debug!(spool = %self.name, error = %e, "cannot flush the spool");
        }
        self.metrics
            .spool_write_failing
            .set(i64::from(spool.write_failing()));
        drop(spool);
        self.notify.notify_one();
    }

    fn take_losses(&mut self) -> Vec<SinkLoss> {
        let mut out = Vec::new();
        if let Some((count, first_reported, seq_ranges)) = self.full.take() {
            let prio = std::mem::take(&mut self.full_priority);
            self.reported_priority = prio;
            out.push(SinkLoss {
                stage: "spool-full".into(),
                count,
                first_reported,
                what: format!(
                    "the spool was full ({} of them denies, metadata accesses or agent records; \
                     allowed-connection events are given up first)",
                    prio
                ),
                seq_ranges,
            });
        }
        if let Some((count, first_reported, seq_ranges)) = self.write_errors.take() {
            out.push(SinkLoss {
                stage: "spool-write-error".into(),
                count,
                first_reported,
                what: format!(
                    "the spool could not be written ({})",
                    self.last_write_error.clone().unwrap_or_default()
                ),
                seq_ranges,
            });
        }
        out
    }

    fn loss_carried(&mut self, seq: u64, loss: &SinkLoss) {
        if !in_runs(&self.full.runs, seq) && !in_runs(&self.write_errors.runs, seq) {
            return; // stored: the collector gets it
        }
        let lost = if loss.stage == "spool-full" {
            self.full_priority += self.reported_priority;
            &mut self.full
        } else {
            &mut self.write_errors
        };
        lost.renamed += loss.count;
        add_runs(&mut lost.runs, &loss.seq_ranges);
    }
}

#[cfg(test)]
mod tests {
    use super::super::spool::SpoolConfig;
    use super::*;

    fn meta(seq: u64, kind: &str) -> RecordMeta<'_> {
        RecordMeta {
            seq,
            uid: "test",
            kind,
            priority: kind == "loss",
            time_ms: 0,
        }
    }

    /// A loss record the failing spool drops too: the next report names its
    /// records again, and the metric's share counts each record once.
    #[test]
    fn a_dropped_loss_record_has_its_records_named_again() {
        let dir = std::env::temp_dir().join(format!("tiergate-spool-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut spool, _) = Spool::open(SpoolConfig {
            dir: dir.clone(),
            max_bytes: 1 << 20,
            segment_bytes: 64 << 10,
        })
        .expect("open");
        spool.inject_write_failures(true);
        let spool = Arc::new(Mutex::new(spool));
        let metrics = Arc::new(Metrics::new());
        let mut sink = SpoolSink::new(spool.clone(), Arc::new(Notify::new()), metrics, &dir);
        sink.write(&meta(1, "connection"), b"{}");
        sink.flush(); // fails: the spool now gives up records
        sink.write(&meta(2, "connection"), b"{}");
        let first = sink.take_losses();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].stage, "spool-write-error");
        assert_eq!((first[0].count, first[0].first_reported), (1, 1));
        // Seq 3 reports seq 2, and is dropped as well.
        sink.write(&meta(3, "loss"), b"{}");
        sink.loss_carried(3, &first[0]);
        let second = sink.take_losses();
        assert_eq!((second[0].count, second[0].first_reported), (2, 1));
        assert_eq!(second[0].seq_ranges, vec![(2, 3)]);
        // Writes work again: the next loss record is stored, nothing more to name.
        spool.lock().unwrap().inject_write_failures(false);
        std::thread::sleep(std::time::Duration::from_millis(300));
        sink.write(&meta(4, "loss"), b"{}");
        sink.loss_carried(4, &second[0]);
        assert!(sink.take_losses().is_empty());
        sink.flush();
        let stored: Vec<u64> = spool
            .lock()
            .unwrap()
            .read_after(0, usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(stored, vec![1, 4]);
        drop(sink);
        drop(spool);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
