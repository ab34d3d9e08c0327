//! The agent's Prometheus metrics, all under the `tiergate_` prefix: every
//! stage counts here; the admin endpoint only serves them.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of written events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub kind: String,
    pub verdict: String,
    pub reason: String,
    pub tier: String,
}

/// Labels of probing findings: `sweep` or `scan`; `create`, `update` or
/// `close`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub kind: String,
    pub activity: String,
}

/// Labels naming a pipeline stage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

/// Labels of kernel verdict counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: String,
}

/// Labels naming a DNS cap.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapLabels {
    pub cap: String,
}

/// Labels of policy reloads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Labels of the policy in force.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub name: String,
    pub version: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    pub registry: Registry,
    pub events: Family<EventLabels, Counter>,
    pub events_lost: Family<StageLabels, Counter>,
    /// Probing findings written (Detection Finding records).
    pub findings: Family<FindingLabels, Counter>,
    /// Denied UDP connects to addresses the workload's own DNS answers
    /// taught it (resolvers' RFC 6724 sort probes): written, not counted
    /// by the probing detector.
    pub probing_sort_probes: Counter,
    pub kernel_verdicts: Family<VerdictLabels, Gauge<u64, AtomicU64>>,
    pub policy_reloads: Family<ResultLabels, Counter>,
    pub policy_info: Family<PolicyLabels, Gauge>,
    pub policy_rules: Gauge,
    pub cgroups_known: Gauge,
    /// Elevation grants in force on this node.
    pub elevations_active: Gauge,
    /// Connections closed when the grant they were opened under ended.
    pub elevation_sockets_closed: Counter,
    pub decode_errors: Counter,
    pub programs_attached: Gauge,
    /// 1 when every program is attached and a policy is in force (what
    /// `/readyz` answers), set at each scrape.
    pub ready: Gauge,
    pub pods_known: Gauge,
    pub pod_watch_errors: Counter,
    pub elevation_watch_errors: Counter,
    pub pod_watch_relists: Counter,
    pub export_connected: Gauge,
    pub export_errors: Family<StageLabels, Counter>,
    pub export_sent: Counter,
    pub export_acked: Counter,
    pub spool_bytes: Gauge,
    pub spool_pending: Gauge,
    /// 1 while the spool cannot write (segments or cursor): disk full,
    /// read-only or failing.
    pub spool_write_failing: Gauge,
    /// DNS proxy: network namespaces served, queries answered SERVFAIL for
    /// want of room, learned addresses in the kernel.
    pub dns_namespaces: Gauge,
    /// `--proxies separate`: `tiergate proxy` processes connected to the
    /// agent; in `tiergate proxy`: 1 while an agent takes its records.
    pub proxy_connections: Gauge,
    pub dns_overloaded: Gauge<u64, AtomicU64>,
    pub dns_learned: Gauge,
    pub dns_evicted: Family<CapLabels, Gauge<u64, AtomicU64>>,
    /// Metadata proxy: requests decided, by verdict; connections closed at
    /// once for want of room.
    pub metadata_requests: Family<VerdictLabels, Gauge<u64, AtomicU64>>,
    pub metadata_overloaded: Gauge<u64, AtomicU64>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tiergate");
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Events written, by kind, verdict, reason and tier",
            events.clone(),
        );
        let events_lost = Family::<StageLabels, Counter>::default();
        registry.register(
            "events_lost",
            "Events lost, by pipeline stage (each loss is also reported as a loss event)",
            events_lost.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "findings",
            "Probing finding records written, by kind (sweep, scan) and activity (create, update, close)",
            findings.clone(),
        );
        let probing_sort_probes = Counter::default();
        registry.register(
            "probing_sort_probes",
            "Denied UDP connects to addresses the workload's own DNS answers taught it (resolvers' RFC 6724 sort probes): written as deny records, not counted by the probing detector",
            probing_sort_probes.clone(),
        );
        let kernel_verdicts = Family::<VerdictLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "kernel_verdicts",
            "Verdicts on enforced workloads (and host metadata accesses) and drops, counted in the kernel since the maps were created (all CPUs)",
            kernel_verdicts.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy loads by result (applied, rejected, unchanged)",
            policy_reloads.clone(),
        );
        let policy_info = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "policy_info",
            "The policy in force (value 1)",
            policy_info.clone(),
        );
        let policy_rules = Gauge::default();
        registry.register(
            "policy_rules",
            "Destination-prefix entries of the policy in force",
            policy_rules.clone(),
        );
        let cgroups_known = Gauge::default();
        registry.register(
            "cgroups_known",
            "Cgroups in the kernel's cgroup → tier map",
            cgroups_known.clone(),
        );
        let elevations_active = Gauge::default();
        registry.register(
            "elevations_active",
            "Elevation grants in force on this node",
            elevations_active.clone(),
        );
        let elevation_sockets_closed = Counter::default();
        registry.register(
            "elevation_sockets_closed",
            "Connections closed when the elevation grant they were opened under ended",
            elevation_sockets_closed.clone(),
        );
        let decode_errors = Counter::default();
        registry.register(
            "decode_errors",
            "Ring-buffer records that could not be decoded",
            decode_errors.clone(),
        );
        let programs_attached = Gauge::default();
        registry.register(
            "programs_attached",
            "eBPF programs attached and pinned",
            programs_attached.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when every program is attached and a policy is in force (as /readyz), else 0",
            ready.clone(),
        );
        let pods_known = Gauge::default();
        registry.register(
            "pods_known",
            "Pods of this node known from the Kubernetes watch",
            pods_known.clone(),
        );
        let pod_watch_errors = Counter::default();
        registry.register(
            "pod_watch_errors",
            "Errors of the Kubernetes pod watch (each retried with backoff)",
            pod_watch_errors.clone(),
        );
        let elevation_watch_errors = Counter::default();
        registry.register(
            "elevation_watch_errors",
            "Errors of the Kubernetes TierElevation watch (each retried with backoff)",
            elevation_watch_errors.clone(),
        );
        let pod_watch_relists = Counter::default();
        registry.register(
            "pod_watch_relists",
            "Complete relists of this node's pods",
            pod_watch_relists.clone(),
        );
        let export_connected = Gauge::default();
        registry.register(
            "export_connected",
            "1 while an event stream to the collector is open",
            export_connected.clone(),
        );
        let export_errors = Family::<StageLabels, Counter>::default();
        registry.register(
            "export_errors",
            "Event streams to the collector that ended with an error, by kind",
            export_errors.clone(),
        );
        let export_sent = Counter::default();
        registry.register(
            "export_sent",
            "Records sent to the collector (resends included)",
            export_sent.clone(),
        );
        let export_acked = Counter::default();
        registry.register(
            "export_acked",
            "Records the collector acknowledged as durably written",
            export_acked.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register("spool_bytes", "Bytes in the spool", spool_bytes.clone());
        let spool_pending = Gauge::default();
        registry.register(
            "spool_pending",
            "Records in the spool not yet acknowledged",
            spool_pending.clone(),
        );
        let spool_write_failing = Gauge::default();
        registry.register(
            "spool_write_failing",
            "1 while the spool cannot be written (disk full, read-only, I/O error): new records are given up and reported in loss records",
            spool_write_failing.clone(),
        );
        let dns_namespaces = Gauge::default();
        registry.register(
            "dns_namespaces",
            "Network namespaces the DNS proxy serves",
            dns_namespaces.clone(),
        );
        let proxy_connections = Gauge::default();
        registry.register(
            "proxy_connections",
            "Agent: tiergate proxy processes handing it their records; proxy: 1 while an agent takes them",
            proxy_connections.clone(),
        );
        let dns_overloaded = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "dns_overloaded",
            "DNS queries answered SERVFAIL at once because too many were in flight",
            dns_overloaded.clone(),
        );
        let dns_learned = Gauge::default();
        registry.register(
            "dns_learned",
            "Addresses learned from DNS answers, in the kernel map",
            dns_learned.clone(),
        );
        let dns_evicted = Family::<CapLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "dns_evicted",
            "Learned addresses closed to keep a workload (or one of its names) within its cap",
            dns_evicted.clone(),
        );
        let metadata_requests = Family::<VerdictLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "metadata_requests",
            "Requests the metadata proxy decided, by verdict (since the agent started)",
            metadata_requests.clone(),
        );
        let metadata_overloaded = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "metadata_overloaded",
            "Connections to the metadata proxy closed at once because too many were open",
            metadata_overloaded.clone(),
        );
        Self {
            registry,
            metadata_requests,
            metadata_overloaded,
            dns_evicted,
            dns_namespaces,
            proxy_connections,
            dns_overloaded,
            dns_learned,
            export_connected,
            export_errors,
            export_sent,
            export_acked,
            spool_bytes,
            spool_pending,
            spool_write_failing,
            pods_known,
            pod_watch_errors,
            elevation_watch_errors,
            pod_watch_relists,
            events,
            events_lost,
            findings,
            probing_sort_probes,
            kernel_verdicts,
            policy_reloads,
            policy_info,
            policy_rules,
            cgroups_known,
            elevations_active,
            elevation_sockets_closed,
            decode_errors,
            programs_attached,
            ready,
        }
    }

    pub fn lost(&self, stage: &str, n: u64) {
        self.events_lost
            .get_or_create(&StageLabels {
                stage: stage.to_string(),
            })
            .inc_by(n);
    }

    pub fn reload(&self, result: &str) {
        self.policy_reloads
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Text exposition for /metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
