//! The DNS and metadata proxies' start: their maps, the engines, the
//! namespace registry, and the two ways a namespace comes to be served: at
//! once when the hook refused a query from an unserved one (the writer
//! passes the pid on), and by a sweep over the processes of tiers with name
//! rules (which also lets go of namespaces no such process is in any more).
//!
//! Whoever serves them: the agent itself (`--proxies agent`), or `tiergate
//! proxy` (`process.rs`), which takes the maps from their pins, its node
//! state from the view the agent publishes (`view.rs`) and hands its
//! records to the agent over a socket (`uplink.rs`, `link.rs`, `wire.rs`).

pub mod link;
pub mod process;
pub mod uplink;
pub mod view;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use agent_common::map_names;
use agent_common::{Learned, LearnedKey, ProxyGuard, ProxyNetns};
use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cli::ProxyOptions;
use crate::dns::learn::Learner;
use crate::dns::proxy::Engine;
use crate::dns::record::DnsRecord;
use crate::dns::serve::{MetadataServing, Registry, Shared};
use crate::events::pipeline::DnsLink;
use crate::identity::cgroupfs::{self, CgroupFs};
use crate::metadata::proxy::Proxy;
use crate::metadata::record::MetadataRecord;
use crate::metadata::server::Server as MetadataServer;
use crate::metrics::{CapLabels, Metrics, VerdictLabels};
use crate::state::NodeState;

/// At a stop, the longest wait for the queries in flight (a resolver's
/// answer, or its timeout, [`crate::dns::proxy::UPSTREAM_TIMEOUT`], per
/// resolver tried).
const DRAIN_QUERIES: std::time::Duration = std::time::Duration::from_secs(3);

/// A clean stop (SIGTERM) of what serves or feeds the proxies: `tasks`
/// end; with the proxies served here (`registry`), their namespaces are
/// withdrawn (new lookups fail at once, closed) and the queries already
/// taken are answered, within [`DRAIN_QUERIES`].
pub async fn drain(tasks: &[JoinHandle<()>], registry: Option<&Registry>) {
    for t in tasks {
        t.abort();
    }
    let Some(registry) = registry else {
        return;
    };
    tracing::info!("stopping: the tiers' DNS gets EPERM until a proxy serves it again");
    let unanswered = registry.withdraw(DRAIN_QUERIES).await;
    if unanswered > 0 {
        tracing::warn!(
            unanswered,
            "stopping with queries still waiting for their resolver"
        );
    }
}

/// Records the proxy may queue for the writer before it counts losses.
const RECORD_QUEUE: usize = 65_536;
/// How often the processes of name tiers are swept for their namespaces.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The maps the proxies write.
pub struct ProxyMaps {
    learned: BpfHashMap<MapData, LearnedKey, Learned>,
    netns: BpfHashMap<MapData, u64, ProxyNetns>,
    guard: Array<MapData, ProxyGuard>,
}

impl ProxyMaps {
    /// From the agent's loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        Ok(Self {
            learned: BpfHashMap::try_from(take(map_names::LEARNED)?)?,
            netns: BpfHashMap::try_from(take(map_names::DNS_NETNS)?)?,
            guard: Array::try_from(take(map_names::GUARD)?)?,
        })
    }

    /// From the pins an agent made under `bpffs` (`tiergate proxy`).
    pub fn pinned(bpffs: &std::path::Path) -> anyhow::Result<Self> {
        let dir = crate::enforcement::bpffs::PinLayout::new(bpffs).maps;
        let open = |name: &'static str| -> anyhow::Result<Map> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).with_context(|| {
                format!(
                    "cannot open {} (is an agent running with --bpffs {}?)",
                    path.display(),
                    bpffs.display()
                )
            })?;
            Map::from_map_data(data).with_context(|| format!("{} is not a map", path.display()))
        };
        Ok(Self {
            learned: BpfHashMap::try_from(open(map_names::LEARNED)?)?,
            netns: BpfHashMap::try_from(open(map_names::DNS_NETNS)?)?,
            guard: Array::try_from(open(map_names::GUARD)?)?,
        })
    }
}

/// The running proxies (DNS and metadata: they serve the same namespaces).
pub struct DnsPath {
    /// For the writer: the learner and the serve requests.
    pub link: DnsLink,
    /// The proxies' records, for the writer.
    records: Option<(mpsc::Receiver<DnsRecord>, mpsc::Receiver<MetadataRecord>)>,
    pub metadata: Arc<MetadataServer>,
    pub registry: Arc<Registry>,
    pub shared: Arc<Shared>,
    serve_rx: Option<mpsc::UnboundedReceiver<u32>>,
}

/// Builds the proxies on their maps (nothing is served yet).
pub fn setup(
    args: &ProxyOptions,
    maps: ProxyMaps,
    state: Arc<NodeState>,
) -> anyhow::Result<DnsPath> {
    if args.dns_proxy_port == args.metadata_proxy_port {
        anyhow::bail!(
            "--dns-proxy-port and --metadata-proxy-port are both {}: give each proxy its own port",
            args.dns_proxy_port
        );
    }
    let ProxyMaps {
        learned,
        mut netns,
        mut guard,
    } = maps;
    // Before any listener exists: from now on only this process's cgroup
    // may bind the proxies' ports, also after it dies.
    guard
        .set(
            0,
            ProxyGuard {
                agent_cgroup: own_cgroup()?,
                ports: [args.dns_proxy_port, args.metadata_proxy_port],
                _pad: 0,
            },
            0,
        )
        .context("cannot write TG_GUARD")?;
    // An earlier server's namespaces: their sockets died with it. Until
    // this process serves them again their queries fail at once (EPERM), rather
    // than going to a port nobody holds.
    let stale: Vec<u64> = netns.keys().flatten().collect();
    for k in stale {
        let _ = netns.remove(&k);
    }
    let learner = Arc::new(Learner::new(learned, args.limits()));
    let (tx, records) = mpsc::channel(RECORD_QUEUE);
    let engine = Arc::new(Engine::new(state.clone(), learner.clone(), tx));
    let lost = engine.lost_records.clone();
    let shared = Shared::new(engine);
    let (mtx, mrecords) = mpsc::channel(RECORD_QUEUE);
    let proxy = Arc::new(Proxy::new(state, args.metadata_upstream, mtx));
    let metadata_lost = proxy.lost_records.clone();
    let metadata = MetadataServer::new(proxy);
    let registry = Registry::new(
        shared.clone(),
        args.dns_proxy_port,
        MetadataServing {
            port: args.metadata_proxy_port,
            server: metadata.clone(),
        },
        netns,
    );
    let (serve, serve_rx) = mpsc::unbounded_channel();
    Ok(DnsPath {
        link: DnsLink {
            learner,
            serve,
            lost,
            metadata_lost,
        },
        records: Some((records, mrecords)),
        metadata,
        registry,
        shared,
        serve_rx: Some(serve_rx),
    })
}

impl DnsPath {
    /// The proxies' records, handed to their consumer once.
    pub fn take_records(&mut self) -> (mpsc::Receiver<DnsRecord>, mpsc::Receiver<MetadataRecord>) {
        self.records.take().expect("taken once")
    }
}

/// Starts serving: requests from the writer, and the periodic sweep.
pub fn start(
    path: &mut DnsPath,
    state: Arc<NodeState>,
    cgfs: CgroupFs,
    metrics: Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    let mut serve_rx = path.serve_rx.take().expect("started once");
    let registry = path.registry.clone();
    let on_request = tokio::spawn(async move {
        while let Some(pid) = serve_rx.recv().await {
            if let Err(e) = registry.serve_pid(pid).await {
                tracing::debug!(pid, error = %e, "cannot serve the namespace of a refused query");
            }
        }
    });
    let registry = path.registry.clone();
    let shared = path.shared.clone();
    let metadata = path.metadata.clone();
    let sweep = tokio::spawn(async move {
        let mut sweeps = 0u64;
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (st, cgfs) = (state.clone(), cgfs.clone());
            let pids = tokio::task::spawn_blocking(move || proxied_tier_pids(&st, &cgfs))
                .await
                .unwrap_or_default();
            registry.sweep(pids).await;
            metrics.dns_namespaces.set(registry.count().await as i64);
            metrics
                .dns_overloaded
                .set(shared.overloaded.load(std::sync::atomic::Ordering::Relaxed));
            let learner = shared.engine.learner().clone();
            metrics
                .dns_evicted
                .get_or_create(&CapLabels {
                    cap: "workload".into(),
                })
                .set(
                    learner
                        .evicted_workload
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
            metrics
                .dns_evicted
                .get_or_create(&CapLabels { cap: "name".into() })
                .set(
                    learner
                        .evicted_name
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
            let live = state.clone();
            learner.retain_cgroups(move |c| live.workload(c).is_some());
            let live = state.clone();
            metadata
                .proxy
                .tokens
                .retain_cgroups(move |c| live.workload(c).is_some());
            metrics.metadata_overloaded.set(
                metadata
                    .overloaded
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            for (i, verdict) in ["allow", "deny", "audit-deny"].into_iter().enumerate() {
                metrics
                    .metadata_requests
                    .get_or_create(&VerdictLabels {
                        verdict: verdict.into(),
                    })
                    .set(metadata.proxy.requests[i].load(std::sync::atomic::Ordering::Relaxed));
            }
            // A walk of the map (a syscall per entry): every 10 s is enough.
            if sweeps.is_multiple_of(10) {
                let learner = shared.engine.learner().clone();
                let learned = tokio::task::spawn_blocking(move || learner.kernel_entries())
                    .await
                    .unwrap_or(0);
                metrics.dns_learned.set(learned as i64);
            }
            sweeps += 1;
        }
    });
    vec![on_request, sweep]
}

/// The processes of every cgroup whose tier has name rules or filters its
/// metadata requests: the namespaces the proxies must serve.
fn proxied_tier_pids(state: &NodeState, cgfs: &CgroupFs) -> Vec<u32> {
    let Some(policy) = state.active_policy() else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for (_, w) in state.workloads() {
        let names = policy
            .tier_index(&w.tier)
            .is_some_and(|i| policy.tiers[i].has_fqdns() || policy.tiers[i].filters_metadata());
        if !names {
            continue;
        }
        let Some(dir) = cgfs.dir_of(&w.path) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    pids
}

/// The cgroup id of this process (the one allowed to bind the proxies'
/// ports).
pub fn own_cgroup() -> anyhow::Result<u64> {
    let path = cgroupfs::path_of_pid(std::process::id())
        .context("cannot read this process's own cgroup")?;
    let cgfs = CgroupFs::discover().context("cannot find cgroup v2")?;
    let dir = cgfs.dir_of(&path).with_context(|| {
        format!("this process's cgroup {path} is not under the cgroup v2 mount")
    })?;
    cgroupfs::cgroup_id(&dir).context("cannot read this process's cgroup id")
}
