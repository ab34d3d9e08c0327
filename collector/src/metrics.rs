//! The collector's Prometheus metrics, under `tiergate_collector_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels naming a sink.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

/// Labels naming why a client was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct CollectorMetrics {
    pub registry: Registry,
    pub streams: Counter,
    pub batches: Counter,
    pub sink_writes: Counter,
    pub records: Counter,
    pub duplicates: Counter,
    pub gaps: Counter,
    pub missing: Counter,
    pub rejected: Family<ReasonLabels, Counter>,
    pub sink_errors: Family<SinkLabels, Counter>,
    pub store_records: Counter,
    pub store_dropped: Counter,
    pub store_evicted: Counter,
    pub store_errors: Counter,
}

impl CollectorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tiergate_collector");
        let streams = Counter::default();
        registry.register("streams", "Agent event streams opened", streams.clone());
        let batches = Counter::default();
        registry.register(
            "batches",
            "Batches written to every sink and acknowledged",
            batches.clone(),
        );
        let sink_writes = Counter::default();
        registry.register(
            "sink_writes",
            "Writes to the sinks, each one write and one sync per sink (batches of several agents that wait together share one)",
            sink_writes.clone(),
        );
        let records = Counter::default();
        registry.register(
            "records",
            "Records written to every sink (gap records included)",
            records.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "duplicates",
            "Records received again after a resend (same seq), not written again",
            duplicates.clone(),
        );
        let gaps = Counter::default();
        registry.register("gaps", "Sequence gaps detected", gaps.clone());
        let missing = Counter::default();
        registry.register(
            "missing",
            "Sequence numbers skipped by gaps",
            missing.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected",
            "TLS clients refused, by reason",
            rejected.clone(),
        );
        let sink_errors = Family::<SinkLabels, Counter>::default();
        registry.register(
            "sink_errors",
            "Failed sink writes (batch not acknowledged)",
            sink_errors.clone(),
        );
        let store_records = Counter::default();
        registry.register(
            "store_records",
            "Records written to the observation store (as aggregates)",
            store_records.clone(),
        );
        let store_dropped = Counter::default();
        registry.register(
            "store_dropped",
            "Records delivered to the sinks but lost to the observation store (queue full, unreadable, store failing too long)",
            store_dropped.clone(),
        );
        let store_evicted = Counter::default();
        registry.register(
            "store_evicted",
            "Observation rows evicted (least recently seen) to stay within --store-max-rows",
            store_evicted.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Failed observation store writes (the aggregate is kept and written again)",
            store_errors.clone(),
        );
        Self {
            registry,
            streams,
            batches,
            sink_writes,
            records,
            duplicates,
            gaps,
            missing,
            rejected,
            sink_errors,
            store_records,
            store_dropped,
            store_evicted,
            store_errors,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}
