//! The collector's handling of a `Batch` from an authenticated but hostile
//! agent: any protobuf bytes as the batch; never panics; the sinks get one
//! record per gap, then one per event not seen before, in order, and each
//! record is exactly one line of a JSON-lines file (nothing an agent sends
//! can forge another line, i.e. another event); the same batch again, once
//! written, writes nothing.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tiergate_collector::metrics::CollectorMetrics;
use tiergate_collector::service::{SeqTracker, batch_records};
use tiergate_collector::sinks::{Record, parse_sink};
use tiergate_proto::events::v1::Batch;

fn metrics() -> &'static CollectorMetrics {
    static M: OnceLock<CollectorMetrics> = OnceLock::new();
    M.get_or_init(CollectorMetrics::new)
}

fn sink_file() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("tiergate-fuzz-batch-{}.jsonl", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = Batch::decode(data) else {
        return;
    };
    if batch.events.is_empty() {
        return;
    }
    let mut seqs = SeqTracker::default();
    let batch_seqs: Vec<u64> = batch.events.iter().map(|e| e.seq).collect();
    let plan = seqs.plan(&batch.agent_id, &batch_seqs);
    let fresh: Vec<_> = batch
        .events
        .iter()
        .zip(&plan.dup)
        .filter(|(_, dup)| !**dup)
        .map(|(e, _)| e.clone())
        .collect();
    let records = batch_records(
        batch.clone(),
        &plan,
        metrics(),
        "collector",
        "spiffe://fuzz/agent",
    );
    assert_eq!(records.len(), plan.gaps.len() + fresh.len());
    let gaps = plan.gaps.len();
    for (i, r) in records.iter().enumerate() {
        assert!(
            !r.json.contains(&b'\n') && !r.json.contains(&b'\r'),
            "record {i} spans lines: {:?}",
            String::from_utf8_lossy(&r.json)
        );
        if i < gaps {
            assert_eq!(r.kind, "gap");
            let v: serde_json::Value = serde_json::from_slice(&r.json).expect("gap record JSON");
            assert!(v.is_object());
        } else {
            let e = &fresh[i - gaps];
            assert_eq!(r.kind, e.kind);
            assert_eq!(r.time_ms, e.time_ms);
            assert_eq!(*r.agent, *batch.node);
        }
    }
    // Written and sent again: every event is a duplicate, nothing is written.
    seqs.commit(&batch.agent_id, plan.last);
    let again_plan = seqs.plan(&batch.agent_id, &batch_seqs);
    let again = batch_records(batch.clone(), &again_plan, metrics(), "collector", "");
    assert!(
        again.is_empty(),
        "a resent batch wrote {} records",
        again.len()
    );

    // Through the real JSON-lines sink: one line per record.
    let path = sink_file();
    let _ = std::fs::remove_file(&path);
    let mut sink = parse_sink(&format!("file:{}?max-bytes=0", path.display())).expect("file sink");
    let view: Vec<Record<'_>> = records.iter().map(|r| r.as_record()).collect();
    sink.write_batch(&view).expect("write");
    drop(sink);
    let written = std::fs::read(&path).expect("read back");
    let lines = written.split(|b| *b == b'\n').count() - 1;
    assert_eq!(
        lines,
        records.len(),
        "{} records became {lines} lines",
        records.len()
    );
    let _ = std::fs::remove_file(&path);
});
