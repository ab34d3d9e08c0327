//! The event path's start: the kernel's ring buffer and counters, the sinks
//! (`--events`, and the spool with `--collector`), the writer and the
//! ring-buffer reader.

use std::sync::Arc;

use agent_common::map_names;
use anyhow::Context as _;
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Shared;
use super::export::export_setup;
use crate::cli::AgentArgs;
use crate::dns::record::DnsRecord;
use crate::events::pipeline::accounting::RingPositions;
use crate::events::pipeline::{
    self, AgentRecord, DnsLink, KernelCounters, QueueLosses, Queues, Writer, WriterConfig,
    WriterInputs, WriterIo,
};
use crate::events::sinks::{LineSink, Sink};
use crate::identity::cgroupfs::CgroupFs;
use crate::metadata::record::MetadataRecord;

/// The running event path.
pub(super) struct EventPath {
    pub reader: JoinHandle<()>,
    /// Tells the reader to take what the ring holds and finish.
    pub stop_reader: tokio::sync::oneshot::Sender<()>,
    pub writer: JoinHandle<()>,
    /// Tells the writer to finish.
    pub stop_writer: tokio::sync::oneshot::Sender<()>,
    /// The agent's own records (policy applied or rejected) into the writer.
    pub records: mpsc::UnboundedSender<AgentRecord>,
    /// The aggregation drainer, and what tells it to send its last window.
    pub aggregator: JoinHandle<()>,
    pub stop_aggregator: tokio::sync::oneshot::Sender<()>,
}

/// Takes the event maps, opens the sinks and starts the writer and the
/// reader.
pub(super) async fn start(
    args: &AgentArgs,
    ebpf: &mut aya::Ebpf,
    hostname: &str,
    cgroups: (CgroupFs, std::path::PathBuf),
    shared: &Shared,
    dns: (
        DnsLink,
        mpsc::Receiver<DnsRecord>,
        mpsc::Receiver<MetadataRecord>,
    ),
) -> anyhow::Result<EventPath> {
    let (ring, counters) = kernel_maps(ebpf)?;
    let agg_maps = crate::events::aggregate::Maps::take(ebpf)?;
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(target) = &args.events {
        sinks.push(Box::new(
            LineSink::open(target).with_context(|| format!("cannot open --events {target}"))?,
        ));
    }
    let losses = Arc::new(QueueLosses::default());
    let (ptx, prx) = mpsc::channel(pipeline::QUEUE_CAPACITY);
    let (ntx, nrx) = mpsc::channel(pipeline::QUEUE_CAPACITY);
    let (atx, arx) = mpsc::unbounded_channel();
    // Delivery to the collector: spool first (it fixes the agent id and
    // where numbering resumes), then the sender.
    let mut instance = instance_id();
    let mut start_seq = 0;
    let mut startup_records = Vec::new();
    let spool = args.collector.is_some();
    if let Some(url) = &args.collector {
        let export = export_setup(args, url, hostname, shared.metrics.clone()).await?;
        instance = export.agent_id;
        start_seq = export.last_seq;
        startup_records = export.records;
        sinks.push(export.sink);
    }
    let writer = Writer::new(
        WriterConfig {
            hostname: hostname.to_string(),
            instance,
            start_seq,
            cgroups,
            probing: crate::events::probing::Config {
                window: args.probe_window,
                hosts: args.probe_hosts,
                ports: args.probe_ports,
            },
        },
        WriterIo {
            state: shared.state.clone(),
            metrics: shared.metrics.clone(),
            sinks,
            kernel: counters,
            losses: losses.clone(),
        },
        ring_positions(&ring),
        spool,
    )
    .with_dns(dns.0);
    for rec in startup_records {
        let _ = atx.send(rec);
    }
    let (stop_writer, stop) = tokio::sync::oneshot::channel();
    let (wtx, wrx) = mpsc::channel(4);
    let (stop_aggregator, agg_stop) = tokio::sync::oneshot::channel();
    let aggregator = tokio::spawn(crate::events::aggregate::run(
        agg_maps,
        args.aggregate_allowed,
        spool.then_some(start_seq),
        wtx,
        agg_stop,
    ));
    let writer = tokio::spawn(writer.run(WriterInputs {
        aggregated: wrx,
        stop,
        priority: prx,
        normal: nrx,
        agent: arx,
        dns: dns.1,
        metadata: dns.2,
    }));
    let reader_metrics = shared.metrics.clone();
    let (stop_reader, stop) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let q = Queues {
            priority: ptx,
            normal: ntx,
            losses,
        };
        if let Err(e) = pipeline::run_reader(ring, q, reader_metrics, stop).await {
            tracing::error!(error = %e, "ring-buffer reader stopped");
        }
    });
    Ok(EventPath {
        reader,
        stop_reader,
        writer,
        stop_writer,
        records: atx,
        aggregator,
        stop_aggregator,
    })
}

/// The ring buffer and the verdict/loss counters, out of the loaded object.
fn kernel_maps(ebpf: &mut aya::Ebpf) -> anyhow::Result<(RingBuf<MapData>, KernelCounters)> {
    let mut take = |name: &'static str| {
        ebpf.take_map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))
    };
    let ring = RingBuf::try_from(take(map_names::EVENTS)?)?;
    let counters = KernelCounters {
        counters: PerCpuArray::try_from(take(map_names::COUNTERS)?)?,
        reported: Array::try_from(take(map_names::REPORTED)?)?,
        folded: PerCpuArray::try_from(take(map_names::AGG_FOLDED)?)?,
    };
    Ok((ring, counters))
}

/// The ring's positions for the killed-agent ledger; without them (an
/// mmap refused) records a killed agent never wrote go unreported.
fn ring_positions(ring: &RingBuf<MapData>) -> Option<RingPositions> {
    RingPositions::map(ring)
        .inspect_err(|e| {
            tracing::warn!(error = %e, "cannot map the ring's positions: records lost by a killed agent will not be counted")
        })
        .ok()
}

/// Random id of this agent run (for `metadata.uid`).
fn instance_id() -> String {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        b = (std::process::id() as u64 ^ pipeline::now_epoch_ms()).to_le_bytes();
    }
    hex::encode(b)
}
