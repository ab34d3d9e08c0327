//! The gRPC service: takes batches from authenticated agents, writes them to
//! every sink (on one writer thread), and acknowledges a batch only after
//! every sink has durably taken it. Sequence gaps per agent are reported as
//! records of their own.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use tiergate_proto::events::v1::event_collector_server::EventCollector;
use tiergate_proto::events::v1::{Ack, Batch};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::metrics::CollectorMetrics;
use super::sinks::Severity;
use super::tls_conn::PeerInfo;
pub use super::writer::{OwnedRecord, WriteJob};

/// Per-agent sequence tracking: gaps are reported, records already written
/// (a resend after a lost acknowledgement) are not written again.
#[derive(Default)]
pub struct SeqTracker {
    last: HashMap<String, u64>,
    /// One lock per agent: a batch is planned, written and committed while
    /// it is held, so two streams of one agent (the old one of a killed agent
    /// still draining) cannot both write the same records.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// What a batch revealed about an agent's sequence.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
}

/// What to do with a batch: the gaps before its records, which records were
/// written before (`dup[i]`), and the agent's last seq once it is written.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub gaps: Vec<Gap>,
    pub dup: Vec<bool>,
    pub last: u64,
}

impl SeqTracker {
    /// Starts from seqs known to be written (the file sinks' records).
    pub fn seeded(last: HashMap<String, u64>) -> Self {
        Self {
            last,
            locks: HashMap::new(),
        }
    }

    pub fn lock(&mut self, agent: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.entry(agent.to_string()).or_default().clone()
    }

    /// Plans a batch (seqs in order) without changing anything.
    pub fn plan(&self, agent: &str, seqs: &[u64]) -> Plan {
        let mut gaps = Vec::new();
        let mut last = self.last.get(agent).copied();
        let dup = seqs
            .iter()
            .map(|&s| match last {
                // First sight of this agent: the baseline, not a gap.
                None => {
                    last = Some(s);
                    false
                }
                Some(l) if s <= l => true,
                Some(l) => {
                    if s > l + 1 {
                        gaps.push(Gap {
                            from: l + 1,
                            to: s - 1,
                        });
                    }
                    last = Some(s);
                    false
                }
            })
            .collect();
        Plan {
            gaps,
            dup,
            last: last.unwrap_or(0),
        }
    }

    /// Records that the agent's records up to `last` are written.
    pub fn commit(&mut self, agent: &str, last: u64) {
        let e = self.last.entry(agent.to_string()).or_insert(last);
        *e = (*e).max(last);
    }
}

/// The service.
pub struct Collector {
    pub writer: mpsc::Sender<WriteJob>,
    pub seqs: Arc<Mutex<SeqTracker>>,
    pub metrics: Arc<CollectorMetrics>,
    pub hostname: String,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl EventCollector for Collector {
    type StreamStream = AckStream;

    async fn stream(&self, req: Request<Streaming<Batch>>) -> Result<Response<AckStream>, Status> {
        let peer = req.extensions().get::<PeerInfo>().cloned();
        let spiffe = peer
            .as_ref()
            .and_then(|p| p.spiffe_id.clone())
            .unwrap_or_default();
        let addr = peer
            .as_ref()
            .map(|p| p.addr.to_string())
            .unwrap_or_default();
        let serial = peer
            .as_ref()
            .and_then(|p| p.serial.clone())
            .unwrap_or_default();
        tracing::info!(peer = %addr, spiffe_id = %spiffe, serial = %serial, "agent stream opened");
        self.metrics.streams.inc();
        let mut batches = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<Ack, Status>>(16);
        let writer = self.writer.clone();
        let seqs = self.seqs.clone();
        let metrics = self.metrics.clone();
        let hostname = self.hostname.clone();
        tokio::spawn(async move {
            loop {
                let batch = match batches.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(peer = %addr, error = %e, "agent stream ended");
                        break;
                    }
                };
                let Some(acked_seq) = batch.events.iter().map(|e| e.seq).max() else {
                    let _ = tx
                        .send(Ok(Ack {
                            batch_id: batch.batch_id,
                            acked_seq: 0,
                        }))
                        .await;
                    continue;
                };
                let lock = seqs.lock().expect("seq lock").lock(&batch.agent_id);
                let _held = lock.lock().await;
                let batch_seqs: Vec<u64> = batch.events.iter().map(|e| e.seq).collect();
                let plan = seqs
                    .lock()
                    .expect("seq lock")
                    .plan(&batch.agent_id, &batch_seqs);
                let agent_id = batch.agent_id.clone();
                let batch_id = batch.batch_id;
                let records = batch_records(batch, &plan, &metrics, &hostname, &spiffe);
                let n = records.len() as u64;
                let (done_tx, done_rx) = oneshot::channel();
                if writer
                    .send(WriteJob {
                        records,
                        done: done_tx,
                    })
                    .await
                    .is_err()
                {
                    let _ = tx
                        .send(Err(Status::unavailable("collector is shutting down")))
                        .await;
                    break;
                }
                match done_rx.await {
                    Ok(Ok(())) => {
                        seqs.lock().expect("seq lock").commit(&agent_id, plan.last);
                        metrics.records.inc_by(n);
                        metrics.batches.inc();
                        if tx
                            .send(Ok(Ack {
                                batch_id,
                                acked_seq,
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(Status::unavailable(e))).await;
                        break;
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// What the sinks get for one non-empty batch of an authenticated agent,
/// as `plan` judged it: a gap record for each run of seqs the agent skipped
/// since its last written batch, then its events that were not written
/// before, in order. Counts duplicates and gaps.
pub fn batch_records(
    batch: Batch,
    plan: &Plan,
    metrics: &CollectorMetrics,
    hostname: &str,
    spiffe: &str,
) -> Vec<OwnedRecord> {
    let dups = plan.dup.iter().filter(|d| **d).count() as u64;
    metrics.duplicates.inc_by(dups);
    let mut records: Vec<OwnedRecord> = Vec::with_capacity(batch.events.len() + plan.gaps.len());
    let node: Arc<str> = Arc::from(batch.node.as_str());
    for g in &plan.gaps {
        metrics.gaps.inc();
        metrics.missing.inc_by(g.to - g.from + 1);
        tracing::warn!(agent = %batch.agent_id, node = %batch.node, from = g.from, to = g.to, "sequence gap");
        records.push(gap_record(hostname, &batch, &node, spiffe, g));
    }
    // The events move into the records: each record's JSON stays where the
    // decoder left it.
    for (e, dup) in batch.events.into_iter().zip(&plan.dup) {
        if *dup {
            continue;
        }
        records.push(OwnedRecord {
            severity: match e.kind.as_str() {
                "loss" => Severity::Error,
                _ if e.priority => Severity::Warning,
                _ => Severity::Info,
            },
            json: one_line(e.ocsf_json),
            time_ms: e.time_ms,
            kind: e.kind,
            agent: node.clone(),
        });
    }
    records
}

/// A record as one line of the JSON-lines sinks (file, stdout). Agents write
/// compact JSON, which holds no line break; a record that does (a hostile
/// or broken agent) would become several lines, each read as an event of
/// its own, so it is written again on one line: as compact JSON when it is
/// JSON, else as a JSON string of its text.
pub fn one_line(json: Bytes) -> Bytes {
    if memchr::memchr2(b'\n', b'\r', &json).is_none() {
        return json;
    }
    match serde_json::from_slice::<serde_json::Value>(&json) {
        Ok(v) => serde_json::to_vec(&v),
        Err(_) => serde_json::to_vec(&String::from_utf8_lossy(&json)),
    }
    .expect("serializing to a Vec")
    .into()
}

/// An OCSF Base Event reporting a sequence gap (`unmapped.tiergate.kind: "gap"`).
fn gap_record(
    hostname: &str,
    batch: &Batch,
    node: &Arc<str>,
    spiffe: &str,
    g: &Gap,
) -> OwnedRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let json = serde_json::json!({
        "class_uid": 0, "class_name": "Base Event", "category_uid": 0, "category_name": "Uncategorized",
        "activity_id": 99, "activity_name": "Other", "type_uid": 99, "severity_id": 4, "status_id": 2,
        "time": now,
        "message": format!("agent {} ({}) skipped seq {}..={}: {} records never arrived", batch.node, batch.agent_id, g.from, g.to, g.to - g.from + 1),
        "device": {"hostname": hostname, "type_id": 0},
        "metadata": {"uid": format!("gap-{}-{}-{}", batch.agent_id, g.from, g.to), "version": "1.3.0",
                     "product": {"name": "tiergate", "vendor_name": "tiergate", "version": env!("CARGO_PKG_VERSION")}},
        "unmapped": {"tiergate": {"kind": "gap", "agent_id": batch.agent_id, "node": batch.node,
                                   "spiffe_id": spiffe, "from_seq": g.from, "to_seq": g.to,
                                   "count": g.to - g.from + 1}},
    });
    OwnedRecord {
        json: serde_json::to_vec(&json)
            .expect("serializing to a Vec")
            .into(),
        time_ms: now,
        severity: Severity::Error,
        kind: "gap".into(),
        agent: node.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(t: &mut SeqTracker, agent: &str, seqs: &[u64]) -> (Vec<Gap>, usize) {
        let plan = t.plan(agent, seqs);
        t.commit(agent, plan.last);
        (plan.gaps, plan.dup.iter().filter(|d| **d).count())
    }

    #[test]
    fn gaps_and_duplicates_per_agent() {
        let mut t = SeqTracker::default();
        assert_eq!(observe(&mut t, "a", &[5, 6, 7]), (vec![], 0));
        assert_eq!(observe(&mut t, "a", &[6, 7, 8]), (vec![], 2));
        assert_eq!(
            observe(&mut t, "a", &[9, 12, 13, 20]),
            (vec![Gap { from: 10, to: 11 }, Gap { from: 14, to: 19 }], 0)
        );
        // Agents are independent.
        assert_eq!(
            observe(&mut t, "b", &[1, 3]),
            (vec![Gap { from: 2, to: 2 }], 0)
        );
    }

    #[test]
    fn a_batch_that_failed_to_write_is_not_a_duplicate_when_resent() {
        let mut t = SeqTracker::default();
        assert_eq!(observe(&mut t, "a", &[1, 2]), (vec![], 0));
        // Planned, the sink failed: nothing committed.
        let plan = t.plan("a", &[3, 4]);
        assert_eq!(plan.dup, vec![false, false]);
        let resent = t.plan("a", &[3, 4, 5]);
        assert_eq!(
            resent,
            Plan {
                gaps: vec![],
                dup: vec![false; 3],
                last: 5
            }
        );
    }

    #[test]
    fn seq_zero_is_a_seq_like_any_other() {
        let mut t = SeqTracker::default();
        let plan = t.plan("z", &[0, 0]);
        assert_eq!(plan.dup, vec![false, true]);
        t.commit("z", plan.last);
        assert_eq!(t.plan("z", &[0]).dup, vec![true]);
    }

    #[test]
    fn seeded_from_the_files_the_resend_after_a_restart_is_dropped() {
        let mut t = SeqTracker::seeded(HashMap::from([("a".to_string(), 10)]));
        let plan = t.plan("a", &[9, 10, 11]);
        assert_eq!(plan.dup, vec![true, true, false]);
        assert!(plan.gaps.is_empty());
        t.commit("a", plan.last);
        assert_eq!(t.plan("a", &[13]).gaps, vec![Gap { from: 12, to: 12 }]);
    }

    /// Found by the `collector_batch` fuzz target: an agent could write
    /// line breaks into a record and so forge whole lines (events) in the
    /// JSON-lines sinks.
    #[test]
    fn a_record_is_one_line_whatever_the_agent_sends() {
        use tiergate_proto::events::v1::Event;
        let forged = "{\"class_uid\":4001,\n\"message\":\"a\\nb\"}\n{\"forged\":true}";
        let pretty = "{\n  \"class_uid\": 4001,\r\n  \"seq\": 2\n}";
        let event = |seq, json: &str| Event {
            seq,
            kind: "connection".into(),
            ocsf_json: Bytes::copy_from_slice(json.as_bytes()),
            ..Event::default()
        };
        let batch = Batch {
            agent_id: "a".into(),
            node: "n".into(),
            batch_id: 1,
            events: vec![event(1, forged), event(2, pretty), event(3, "{\"ok\":1}")],
        };
        let plan = SeqTracker::default().plan("a", &[1, 2, 3]);
        let records = batch_records(batch, &plan, &CollectorMetrics::new(), "c", "");
        let json: Vec<&[u8]> = records.iter().map(|r| &r.json[..]).collect();
        for j in &json {
            assert!(
                !j.contains(&b'\n') && !j.contains(&b'\r'),
                "{}",
                String::from_utf8_lossy(j)
            );
        }
        // Not JSON: its text, as a JSON string.
        let text: String = serde_json::from_slice(json[0]).expect("a JSON string");
        assert_eq!(text, forged);
        // JSON: the same value, compact.
        let v: serde_json::Value = serde_json::from_slice(json[1]).expect("JSON");
        assert_eq!(v, serde_json::json!({"class_uid": 4001, "seq": 2}));
        // One line already: untouched.
        assert_eq!(json[2], b"{\"ok\":1}");
    }
}
