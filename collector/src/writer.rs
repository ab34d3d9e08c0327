//! The sink writer: one thread that writes the batches of every agent
//! stream to every sink, and answers each stream once its batch is durable.
//! Batches that queue up while a write is under way (several agents) are
//! written together: one write and one sync per sink for all of them.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::metrics::{CollectorMetrics, SinkLabels};
use super::sinks::{Record, Severity, Sink};
use super::store::feed::Feed;

/// At most this many batches, or about this many records, share a write.
const GROUP_MAX_BATCHES: usize = 64;
const GROUP_MAX_RECORDS: usize = 16_384;

/// One batch for the writer thread: owned records and where to answer.
pub struct WriteJob {
    pub records: Vec<OwnedRecord>,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// A record as the writer thread needs it.
pub struct OwnedRecord {
    /// A slice of the received message (no copy per record).
    pub json: Bytes,
    pub time_ms: u64,
    pub severity: Severity,
    pub kind: String,
    /// The agent's node name, shared by the records of a batch.
    pub agent: Arc<str>,
}

impl OwnedRecord {
    /// The record as the sinks take it.
    pub fn as_record(&self) -> Record<'_> {
        Record {
            json: &self.json,
            time_ms: self.time_ms,
            severity: self.severity,
            kind: &self.kind,
            agent: &self.agent,
        }
    }
}

/// Runs the sinks on a dedicated thread (they do blocking I/O and fsync).
/// Records every sink took are then offered to the observation store, if
/// any: after the duplicate check, so a resend is not counted twice.
pub fn spawn_writer(
    mut sinks: Vec<Box<dyn Sink>>,
    metrics: Arc<CollectorMetrics>,
    store: Option<Feed>,
) -> mpsc::Sender<WriteJob> {
    let (tx, mut rx) = mpsc::channel::<WriteJob>(64);
    std::thread::Builder::new()
        .name("tiergate-sinks".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let jobs = group(first, &mut rx);
                let result = write_group(&mut sinks, &jobs, &metrics);
                for job in jobs {
                    let _ = job.done.send(result.clone());
                    if result.is_ok()
                        && let Some(feed) = &store
                    {
                        feed.offer(job.records.into_iter().map(|r| (r.kind, r.json)));
                    }
                }
            }
        })
        .expect("spawn sink thread");
    tx
}

/// `first` and the batches already queued behind it, within the bounds.
/// Each agent has at most one batch queued (its stream waits for the
/// answer), so a group never holds two batches of one agent.
fn group(first: WriteJob, rx: &mut mpsc::Receiver<WriteJob>) -> Vec<WriteJob> {
    let mut records = first.records.len();
    let mut jobs = vec![first];
    while jobs.len() < GROUP_MAX_BATCHES && records < GROUP_MAX_RECORDS {
        match rx.try_recv() {
            Ok(job) => {
                records += job.records.len();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    jobs
}

/// Writes the records of `jobs`, in order, to every sink; a sink that fails
/// fails the whole group (each stream's agent sends its batch again).
fn write_group(
    sinks: &mut [Box<dyn Sink>],
    jobs: &[WriteJob],
    metrics: &CollectorMetrics,
) -> Result<(), String> {
    let records: Vec<Record<'_>> = jobs
        .iter()
        .flat_map(|job| &job.records)
        .map(OwnedRecord::as_record)
        .collect();
    metrics.sink_writes.inc();
    for sink in sinks.iter_mut() {
        if let Err(e) = sink.write_batch(&records) {
            metrics
                .sink_errors
                .get_or_create(&SinkLabels {
                    sink: sink.name().to_string(),
                })
                .inc();
            tracing::error!(sink = sink.name(), batches = jobs.len(), error = %e, "sink write failed; the batches are not acknowledged and will be sent again");
            return Err(format!("sink {} failed: {e}", sink.name()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc as std_mpsc;

    use super::super::sinks::SinkError;
    use super::*;

    /// Records what it is asked to write; its first write waits for the test
    /// (so that batches queue up behind it), and it fails when told to.
    struct Recording {
        writes: Arc<Mutex<Vec<Vec<String>>>>,
        hold_first: Option<(std_mpsc::Sender<()>, std_mpsc::Receiver<()>)>,
        fail: Arc<Mutex<bool>>,
    }

    impl Sink for Recording {
        fn name(&self) -> &str {
            "recording"
        }
        fn write_batch(&mut self, records: &[Record<'_>]) -> Result<(), SinkError> {
            if let Some((entered, hold)) = self.hold_first.take() {
                entered.send(()).expect("the test waits");
                hold.recv().expect("released");
            }
            if *self.fail.lock().unwrap() {
                return Err(SinkError::config("recording", "injected"));
            }
            self.writes.lock().unwrap().push(
                records
                    .iter()
                    .map(|r| String::from_utf8_lossy(r.json).into_owned())
                    .collect(),
            );
            Ok(())
        }
    }

    fn job(agent: &str, n: usize) -> (WriteJob, oneshot::Receiver<Result<(), String>>) {
        let (done, rx) = oneshot::channel();
        let agent: Arc<str> = Arc::from(agent);
        let records = (0..n)
            .map(|i| OwnedRecord {
                json: Bytes::from(format!("{agent}-{i}")),
                time_ms: 0,
                severity: Severity::Info,
                kind: "connection".into(),
                agent: agent.clone(),
            })
            .collect();
        (WriteJob { records, done }, rx)
    }

    #[test]
    fn batches_queued_behind_a_write_share_the_next_one() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(false));
        let (release, hold) = std_mpsc::channel();
        let (entered, in_write) = std_mpsc::channel();
        let metrics = Arc::new(CollectorMetrics::new());
        let tx = spawn_writer(
            vec![Box::new(Recording {
                writes: writes.clone(),
                hold_first: Some((entered, hold)),
                fail: fail.clone(),
            })],
            metrics.clone(),
            None,
        );
        let (a, a_done) = job("a", 2);
        tx.blocking_send(a).unwrap();
        in_write.recv().unwrap();
        // The writer is inside a's write; b, c and d queue behind it.
        let mut waits = Vec::new();
        for name in ["b", "c", "d"] {
            let (j, done) = job(name, 3);
            tx.blocking_send(j).unwrap();
            waits.push(done);
        }
        release.send(()).unwrap();
        assert_eq!(a_done.blocking_recv().unwrap(), Ok(()));
        for done in waits {
            assert_eq!(done.blocking_recv().unwrap(), Ok(()));
        }
        let writes = writes.lock().unwrap().clone();
        assert_eq!(
            writes,
            vec![
                vec!["a-0", "a-1"],
                vec![
                    "b-0", "b-1", "b-2", "c-0", "c-1", "c-2", "d-0", "d-1", "d-2"
                ],
            ],
            "one write for a, then one for the three queued batches, in order"
        );
        assert_eq!(metrics.sink_writes.get(), 2);

        // A failing sink fails every batch of the group.
        *fail.lock().unwrap() = true;
        let (e, e_done) = job("e", 1);
        tx.blocking_send(e).unwrap();
        assert!(
            e_done
                .blocking_recv()
                .unwrap()
                .unwrap_err()
                .contains("injected")
        );
    }
}
