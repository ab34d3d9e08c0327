//! Kernel ring buffer → bounded queues → enrichment → JSON lines.
//!
//! The reader never blocks: it drains the ring on a short timer and when epoll
//! says it is readable (the kernel wakes it only past a fill mark)
//! and hands records to one of two bounded queues (denies, audit-denies and
//! metadata accesses on the priority queue, allowed connections on the other).
//! A full queue drops the record and counts it. The writer drains the
//! priority queue first, assigns the per-agent sequence number, renders OCSF
//! and writes to the sinks, and turns every counted loss (kernel ring full,
//! allowed events shed by the kernel under pressure, queue full, undecodable,
//! records a killed agent had taken and not written: `accounting.rs`) into a
//! loss record of its own (`losses.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agent_common::{
    CONNECT_F_ELEVATED, CONNECT_F_INHERITED, CONNECT_F_LEARNED, CONNECT_F_METADATA, ConnectEvent,
    REASON_DNS_UNSERVED, REASON_EGRESS_RULE, REASON_FQDN, REASON_METADATA_UNFILTERED, SocketEvent,
    VERDICT_ALLOW,
};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::decode::{self, KernelEvent};
use super::names::{hook_str, reason_str, verdict_str};
use super::ocsf::{self, Envelope, ProcessInfo, SocketInfo, Verdict, Workload};
use super::sinks::{RecordMeta, Sink};
use crate::identity::cgroupfs;
use crate::identity::pods::PodFields;
use crate::metrics::{EventLabels, Metrics};
use crate::policy::Proto;
use crate::state::{NodeState, PodState, tier_name};

pub mod accounting;
mod agent_records;
mod aggregated;
mod attribution;
mod elevation_records;
mod findings;
mod losses;
pub mod proxy_records;

/// Capacity of each user-space queue (records).
pub const QUEUE_CAPACITY: usize = 65_536;

/// Records lost between the reader and the writer, and what the reader took.
#[derive(Default)]
pub struct QueueLosses {
    pub priority: AtomicU64,
    pub normal: AtomicU64,
    /// Records that could not be decoded.
    pub undecodable: AtomicU64,
    /// Every record this agent took from the ring (counted before the ring's
    /// consumer position moves past it; see accounting.rs).
    pub taken: AtomicU64,
}

/// Agent-level records (policy loads, rejections) for the writer.
#[derive(Debug)]
pub struct AgentRecord {
    pub message: String,
    pub failure: bool,
    /// Becomes `unmapped.tiergate`; must contain `kind`.
    pub detail: serde_json::Value,
}

/// Senders the reader uses.
pub struct Queues {
    pub priority: mpsc::Sender<KernelEvent>,
    pub normal: mpsc::Sender<KernelEvent>,
    pub losses: Arc<QueueLosses>,
}

/// Reads the ring buffer until `stop` fires, then takes what the ring holds
/// and returns.
pub async fn run_reader(
    ring: RingBuf<MapData>,
    queues: Queues,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for
    // as long as it lives, which is as long as the AsyncFd that owns it.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| std::io::Error::other(format!("cannot poll the ring buffer: {e}")))?;
    let mut tick = tokio::time::interval(READER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The kernel wakes us only when the ring passes 1/16 full (see
        // `wakeup_flags` in agent-ebpf); below that the tick drains it.
        let stopping = tokio::select! {
            guard = fd.readable_mut() => {
                guard?.clear_ready();
                false
            }
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        // In batches: a ring refilled as fast as it drains must not keep
        // this worker from the other tasks (writer, admin endpoint).
        while drain(fd.get_mut(), &queues, &metrics, DRAIN_BATCH) == DRAIN_BATCH {
            tokio::task::yield_now().await;
        }
        if stopping {
            return Ok(());
        }
    }
}

/// Records the reader takes from the ring before it yields.
const DRAIN_BATCH: usize = 4096;

/// How often the reader drains the ring without a kernel wakeup: the most an
/// event waits in the ring while the ring is below its wakeup mark.
pub const READER_TICK: Duration = Duration::from_millis(10);

/// Takes up to `max` records from the ring; returns how many it took.
fn drain(ring: &mut RingBuf<MapData>, queues: &Queues, metrics: &Metrics, max: usize) -> usize {
    let mut n = 0;
    while n < max
        && let Some(item) = ring.next()
    {
        n += 1;
        queues.losses.taken.fetch_add(1, Ordering::SeqCst);
        match decode::decode(&item) {
            Ok(ev) => {
                let (tx, lost) = if ev.is_priority() {
                    (&queues.priority, &queues.losses.priority)
                } else {
                    (&queues.normal, &queues.losses.normal)
                };
                if tx.try_send(ev).is_err() {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                metrics.decode_errors.inc();
                queues.losses.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "undecodable ring-buffer record");
            }
        }
    }
    n
}

/// Kernel counters the writer turns into loss records.
pub struct KernelCounters {
    pub counters: PerCpuArray<MapData, u64>,
    pub reported: Array<MapData, u64>,
    /// Allowed attempts folded into the aggregation maps instead of a ring
    /// record (`TG_AGG_FOLDED`).
    pub folded: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    pub(super) fn total(&self, slot: u32) -> u64 {
        self.counters
            .get(&slot, 0)
            .map(|v| v.iter().copied().sum())
            .unwrap_or(0)
    }

    /// Attempts folded so far (they have no ring record).
    pub(super) fn folded(&self) -> u64 {
        self.folded
            .get(&0, 0)
            .map(|v| v.iter().copied().sum())
            .unwrap_or(0)
    }
}

/// What the writer reads from and writes to.
pub struct WriterIo {
    /// Identities and the policy of each generation, for enrichment.
    pub state: Arc<NodeState>,
    pub metrics: Arc<Metrics>,
    pub sinks: Vec<Box<dyn Sink>>,
    /// Verdict and loss counters of the kernel.
    pub kernel: KernelCounters,
    /// Losses between the ring reader and the writer.
    pub losses: Arc<QueueLosses>,
}

/// The writer's fixed context.
pub struct WriterConfig {
    pub hostname: String,
    /// Prefix of `metadata.uid`: the spool's agent id (stable across
    /// restarts) or, without a spool, a random id of this run.
    pub instance: String,
    /// The last sequence number already used (the spool's, after a restart).
    pub start_seq: u64,
    /// The cgroup hierarchy and the watched root, to name a cgroup the
    /// control loop has not reported yet.
    pub cgroups: (cgroupfs::CgroupFs, std::path::PathBuf),
    /// Probing detection's window and thresholds.
    pub probing: super::probing::Config,
}

/// The writer: enrichment, sequence numbers, rendering, loss records.
pub struct Writer {
    /// The DNS proxy, when the agent runs one.
    dns: Option<DnsLink>,
    loss_log: super::loss_log::LossLog,
    cfg: WriterConfig,
    io: WriterIo,
    seq: u64,
    boot_to_epoch_ns: i128,
    buf: Vec<u8>,
    acct: accounting::Accounting,
    /// Which rule allowed a connection.
    rules: attribution::Attribution,
    probing: findings::Probing,
}

/// Writer inputs.
/// What the writer shares with the DNS proxy: the names that opened
/// addresses (for connection events), and where to ask for a namespace to
/// be served (a query refused because none was).
#[derive(Clone)]
pub struct DnsLink {
    pub learner: Arc<dyn crate::dns::origins::Origins>,
    pub serve: mpsc::UnboundedSender<u32>,
    /// Records the proxy could not queue.
    pub lost: Arc<AtomicU64>,
    /// Records the metadata proxy could not queue.
    pub metadata_lost: Arc<AtomicU64>,
}

pub struct WriterInputs {
    /// Fired at shutdown: the writer writes what is queued and returns.
    pub stop: tokio::sync::oneshot::Receiver<()>,
    /// Records of the DNS proxy (one per query).
    pub dns: mpsc::Receiver<crate::dns::record::DnsRecord>,
    /// Records of the metadata proxy (one per request).
    pub metadata: mpsc::Receiver<crate::metadata::record::MetadataRecord>,
    pub priority: mpsc::Receiver<KernelEvent>,
    pub normal: mpsc::Receiver<KernelEvent>,
    pub agent: mpsc::UnboundedReceiver<AgentRecord>,
    /// Windows of aggregated allowed attempts.
    pub aggregated: mpsc::Receiver<super::aggregate::Window>,
}

const BATCH: usize = 4096;

impl Writer {
    /// `ring`: the ring's positions, for the killed-agent ledger; `spool`:
    /// whether the start seq is a spool's (it settles a kill mid-flush).
    pub fn new(
        cfg: WriterConfig,
        io: WriterIo,
        ring: Option<accounting::RingPositions>,
        spool: bool,
    ) -> Self {
        let acct = accounting::Accounting::start(&io.kernel, ring, spool.then_some(cfg.start_seq));
        Self {
            acct,
            probing: findings::Probing::new(&cfg),
            dns: None,
            loss_log: Default::default(),
            seq: cfg.start_seq,
            cfg,
            io,
            boot_to_epoch_ns: boot_to_epoch_offset_ns(),
            buf: Vec::with_capacity(1024),
            rules: Default::default(),
        }
    }

    /// Links the writer to the DNS proxy.
    pub fn with_dns(mut self, link: DnsLink) -> Self {
        self.dns = Some(link);
        self
    }

    /// Runs until every input is closed.
    pub async fn run(mut self, mut inputs: WriterInputs) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Losses from before this run (e.g. the ring filled while no agent
        // read it) are reported first.
        self.report_losses();
        loop {
            tokio::select! {
                biased;
                Some(ev) = inputs.priority.recv() => self.kernel_event(ev),
                Some(rec) = inputs.agent.recv() => {
                    self.agent_record(rec);
                }
                Some(rec) = inputs.dns.recv() => self.dns_record(&rec),
                Some(rec) = inputs.metadata.recv() => self.metadata_record(&rec),
                Some(w) = inputs.aggregated.recv() => self.window(w),
                Some(ev) = inputs.normal.recv() => self.kernel_event(ev),
                _ = &mut inputs.stop => break,
                _ = tick.tick() => {
                    self.probe_tick();
                    self.report_losses();
                    self.flush();
                    continue;
                }
            }
            self.drain(&mut inputs, BATCH);
            self.flush();
        }
        // Stopping: what is queued is written, losses reported, sinks flushed.
        while self.drain(&mut inputs, BATCH) == BATCH {}
        self.probe_stop();
        self.report_losses();
        self.flush();
    }

    /// Writes up to `max` records already queued, priority first; returns
    /// how many.
    fn drain(&mut self, inputs: &mut WriterInputs, max: usize) -> usize {
        for n in 0..max {
            if let Ok(ev) = inputs.priority.try_recv() {
                self.kernel_event(ev);
            } else if let Ok(rec) = inputs.agent.try_recv() {
                self.agent_record(rec);
            } else if let Ok(rec) = inputs.dns.try_recv() {
                self.dns_record(&rec);
            } else if let Ok(rec) = inputs.metadata.try_recv() {
                self.metadata_record(&rec);
            } else if let Ok(ev) = inputs.normal.try_recv() {
                self.kernel_event(ev);
            } else {
                return n;
            }
        }
        max
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn epoch_ms(&self, boot_ns: u64) -> u64 {
        ((boot_ns as i128 + self.boot_to_epoch_ns) / 1_000_000).max(0) as u64
    }

    fn kernel_event(&mut self, ev: KernelEvent) {
        self.acct.handled += 1;
        match ev {
            KernelEvent::Connect(c) => self.connect(&c),
            KernelEvent::Socket(s) => self.socket(&s),
        }
    }

    pub(super) fn workload(&self, cgroup_id: u64, pid: u32) -> Workload {
        if let Some(w) = self.io.state.workload(cgroup_id) {
            return Workload {
                cgroup_id,
                cgroup_path: Some(w.path.to_string()),
                systemd_unit: cgroupfs::systemd_unit(&w.path).map(str::to_string),
                pod: PodFields::of(w.pod.as_ref()),
                spiffe_id: w.spiffe_id.clone(),
                pod_state: (w.pod_state != PodState::None).then_some(w.pod_state),
            };
        }
        // Not reported by the watcher yet: ask /proc, and if the process is
        // gone too, look for the directory with that inode.
        let path = cgroupfs::path_of_pid(pid).ok().or_else(|| {
            let (fs, root) = &self.cfg.cgroups;
            cgroupfs::walk(root)
                .into_iter()
                .find(|d| cgroupfs::cgroup_id(d).ok() == Some(cgroup_id))
                .and_then(|d| fs.path_of(&d).ok())
        });
        let systemd_unit = path
            .as_deref()
            .and_then(cgroupfs::systemd_unit)
            .map(str::to_string);
        Workload {
            cgroup_id,
            cgroup_path: path,
            systemd_unit,
            ..Default::default()
        }
    }

    fn connect(&mut self, c: &ConnectEvent) {
        let judged = Judged {
            header: &c.header,
            generation: c.generation,
            tier: c.tier,
            verdict: c.verdict,
            reason: c.reason,
            hook: hook_str(c.hook),
            flags: c.flags,
            protocol: c.protocol,
        };
        let dst = decode::destination(c.addr);
        let mut fqdn = None;
        if let Some(link) = &self.dns {
            match c.reason {
                // A query from a namespace the proxy does not serve yet:
                // serve it now (the query itself failed closed).
                // A query or a filtered metadata connection from a namespace
                // the proxies do not serve yet: serve it now (the attempt
                // itself failed closed).
                REASON_DNS_UNSERVED | REASON_METADATA_UNFILTERED => {
                    let _ = link.serve.send((c.header.pid_tgid >> 32) as u32);
                }
                // Allowed by a learned address, or denied to one (its port
                // or protocol is not the name's: a resolver's sort probe,
                // or a use the policy does not allow): the name says which
                // answer gave it.
                _ if c.reason == REASON_FQDN || c.flags & CONNECT_F_LEARNED != 0 => {
                    fqdn = link.learner.origin(c.header.cgroup_id, dst).map(|o| o.name);
                }
                _ => {}
            }
        }
        self.network_record(&judged, Some((dst, c.port)), None, fqdn.as_deref(), None);
    }

    fn socket(&mut self, s: &SocketEvent) {
        let judged = Judged {
            header: &s.header,
            generation: s.generation,
            tier: s.tier,
            verdict: s.verdict,
            reason: s.reason,
            hook: "socket_create",
            flags: 0,
            protocol: match s.protocol {
                6 | 17 => s.protocol as u8,
                _ => 0,
            },
        };
        let info = SocketInfo {
            family: s.family,
            sock_type: s.sock_type,
            protocol: s.protocol,
        };
        self.network_record(&judged, None, Some(info), None, None);
    }

    /// Enriches, counts and writes one judged connection or socket.
    fn network_record(
        &mut self,
        j: &Judged<'_>,
        dst: Option<(std::net::IpAddr, u16)>,
        socket: Option<SocketInfo>,
        fqdn: Option<&str>,
        span: Option<ocsf::Span>,
    ) {
        let h = j.header;
        let policy = self.io.state.policy(j.generation);
        let tier = tier_name(policy.as_deref(), j.tier);
        let process = process_info(h);
        let workload = self.workload(h.cgroup_id, process.pid);
        let rule = match (&policy, dst) {
            (Some(p), Some((ip, port)))
                if j.verdict == VERDICT_ALLOW
                    && matches!(j.reason, REASON_EGRESS_RULE | REASON_FQDN) =>
            {
                let proto = if j.protocol == 6 {
                    Proto::Tcp
                } else {
                    Proto::Udp
                };
                self.rules
                    .rule(p, j.generation, j.tier, (ip, port, proto), fqdn)
            }
            _ => None,
        };
        // The grant the kernel judged it under.
        let elevation = (j.flags & CONNECT_F_ELEVATED != 0)
            .then(|| self.io.state.elevation(h.cgroup_id))
            .flatten();
        let verdict = Verdict {
            verdict: verdict_str(j.verdict),
            reason: reason_str(j.reason),
            tier: &tier,
            hook: j.hook,
            metadata_service: j.flags & CONNECT_F_METADATA != 0,
            inherited: j.flags & CONNECT_F_INHERITED != 0,
            fqdn,
            rule: rule.as_ref().map(|r| (&*r.uid, r.index)),
            elevation: elevation.as_deref(),
            span,
        };
        let attempts = span.map_or(1, |s| s.count);
        self.io
            .metrics
            .events
            .get_or_create(&EventLabels {
                kind: if socket.is_some() {
                    "socket"
                } else {
                    "connection"
                }
                .into(),
                verdict: verdict.verdict.into(),
                reason: verdict.reason.into(),
                tier: tier.clone(),
            })
            .inc_by(attempts);
        let seq = self.next_seq();
        let uid = format!("{}-{seq}", self.cfg.instance);
        let env = Envelope {
            time: span.map_or_else(|| self.epoch_ms(h.boot_ns), |s| s.end_ms),
            seq,
            uid: &uid,
            hostname: &self.cfg.hostname,
            policy_name: policy.as_deref().map(|p| p.name.as_str()),
            policy_version: policy.as_deref().map(|p| p.version.as_str()),
        };
        self.io
            .state
            .count_attempts(h.cgroup_id, j.verdict, env.time, attempts);
        self.buf.clear();
        ocsf::network_activity(
            &env,
            &verdict,
            j.protocol,
            dst,
            socket,
            &process,
            &workload,
            &mut self.buf,
        );
        let meta = RecordMeta {
            seq,
            uid: &uid,
            kind: if socket.is_some() {
                "socket"
            } else {
                "connection"
            },
            priority: j.verdict != VERDICT_ALLOW || verdict.metadata_service || socket.is_some(),
            time_ms: env.time,
        };
        Self::emit(&mut self.io.sinks, &meta, &self.buf);
        if let Some(dst) = dst {
            self.probe(j, dst, &tier, &workload);
        }
    }

    /// Hands one rendered record to every sink; a sink that cannot take it
    /// counts the loss itself and reports it through `Sink::take_losses`.
    pub(super) fn emit(sinks: &mut [Box<dyn Sink>], meta: &RecordMeta<'_>, line: &[u8]) {
        for sink in sinks {
            sink.write(meta, line);
        }
    }

    fn flush(&mut self) {
        self.acct.before_flush(&mut self.io.kernel, self.seq);
        for sink in &mut self.io.sinks {
            sink.flush();
        }
        self.acct.after_flush(&mut self.io.kernel);
    }
}

/// The fields connection and socket records share.
struct Judged<'a> {
    header: &'a agent_common::EventHeader,
    generation: u32,
    tier: u32,
    verdict: u8,
    reason: u8,
    hook: &'static str,
    flags: u32,
    protocol: u8,
}

fn process_info(h: &agent_common::EventHeader) -> ProcessInfo {
    ProcessInfo {
        pid: (h.pid_tgid >> 32) as u32,
        tid: h.pid_tgid as u32,
        uid: h.uid_gid as u32,
        name: decode::comm(&h.comm),
    }
}

/// A clock's reading in nanoseconds.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> i128 {
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(clock, &mut ts);
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    }
}

/// realtime − boottime: adds to a `bpf_ktime_get_boot_ns` stamp to get epoch ns.
fn boot_to_epoch_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)
}

pub fn now_epoch_ms() -> u64 {
    (clock_ns(libc::CLOCK_REALTIME) / 1_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_offset_gives_now() {
        let now_boot = clock_ns(libc::CLOCK_BOOTTIME);
        let epoch = now_boot + boot_to_epoch_offset_ns();
        let real = clock_ns(libc::CLOCK_REALTIME);
        assert!(
            (real - epoch).abs() < 1_000_000_000,
            "offset off by more than 1 s"
        );
    }
}
