//! `tiergate proxy`: the DNS and metadata proxies in a process of their own,
//! so that DNS outlives the agent (a crash, `kill -9`, an upgrade): the
//! kernel keeps redirecting the tiers' queries to the sockets this process
//! holds, and this process keeps answering them, learning new names into
//! the pinned map, by the last view the agent published.
//!
//! It takes the maps from their pins, its node state from the view
//! (`view.rs`, re-read when it changes), writes `TG_GUARD` with its own
//! cgroup (only it may bind the proxy ports from then on), and hands its
//! records to the agent (`uplink.rs`). Until it has read a view it serves
//! nothing: the kernel answers the tiers' DNS with EPERM (never a bypass).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use inotify::{Inotify, WatchMask};
use tokio::signal::unix::{SignalKind, signal};

use super::uplink::{SOCKET_FILE, Uplink};
use super::view::{Reader, VIEW_FILE, make_private_dir};
use super::{ProxyMaps, setup, start};
use crate::admin::{self, Readiness};
use crate::cli::ProxyArgs;
use crate::identity::cgroupfs::CgroupFs;
use crate::metrics::Metrics;
use crate::state::NodeState;

/// A view is looked at this often even without an inotify event.
const VIEW_POLL: Duration = Duration::from_secs(1);
/// At a stop, the longest wait for the agent to acknowledge the last records.
const DRAIN_RECORDS: Duration = Duration::from_secs(2);

/// Runs until SIGTERM/SIGINT (after `app::prepare`: privileges, the node's
/// cgroup namespace).
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let cgfs = CgroupFs::discover().context("no cgroup v2")?;
    make_private_dir(&args.proxy_dir)
        .with_context(|| format!("cannot create --proxy-dir {}", args.proxy_dir.display()))?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(Readiness::default());
    let state = Arc::new(NodeState::default());
    let learner = admin::learned::LearnerSlot::default();
    let _admin = admin::serve(
        args.admin_addr,
        metrics.clone(),
        ready.clone(),
        Arc::new(admin::inventory::Inventory {
            node: crate::app::hostname(),
            state: state.clone(),
        }),
        learner.clone(),
    )
    .await
    .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;

    // The view first: serving needs to know whose queries arrive.
    let view = args.proxy_dir.join(VIEW_FILE);
    let mut reader = Reader::default();
    let mut watch = ViewWatch::new(&args.proxy_dir)?;
    let mut waiting_logged = false;
    // Parsing a policy blocks: off the runtime's other tasks.
    let apply = |reader: &mut Reader| tokio::task::block_in_place(|| reader.apply(&view, &state));
    while let Err(e) = apply(&mut reader) {
        if !waiting_logged {
            tracing::warn!(error = %e, "waiting for the agent's view (serving nothing until then)");
            waiting_logged = true;
        }
        watch.next().await;
    }
    tracing::info!(view = %view.display(), "serving by the agent's view");

    let maps = ProxyMaps::pinned(&args.bpffs)?;
    let mut path = setup(&args.proxy, maps, state.clone())?;
    // setup wrote TG_GUARD with this cgroup: an agent describes it as host
    // from now on; until one does (none may be running), the entry says so.
    host_self(&args.bpffs)?;
    let _ = learner.set(path.link.learner.clone());
    let (dns, metadata) = path.take_records();
    let connected = Arc::new(AtomicBool::new(false));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut uplink = tokio::spawn(
        Uplink {
            socket: args.proxy_dir.join(SOCKET_FILE),
            dns,
            metadata,
            dns_lost: path.link.lost.clone(),
            metadata_lost: path.link.metadata_lost.clone(),
            serve: path.link.serve.clone(),
            connected: connected.clone(),
            stop: stop_rx,
        }
        .run(),
    );
    let tasks = start(&mut path, state.clone(), cgfs, metrics.clone());
    ready.programs_attached.store(true, Ordering::Release);
    ready.policy_in_force.store(true, Ordering::Release);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = watch.next() => {
                if let Err(e) = apply(&mut reader) {
                    tracing::error!(error = %e, "the agent's new view is not taken; the last one stays");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        metrics
            .proxy_connections
            .set(i64::from(connected.load(Ordering::Acquire)));
    }
    // A clean stop (an upgrade, a restart) answers what it took: new
    // queries fail at once from here on, those in flight are answered,
    // and their records reach the agent, each within a bound.
    super::drain(&tasks, Some(&path.registry)).await;
    let _ = stop.send(true);
    if tokio::time::timeout(DRAIN_RECORDS, &mut uplink)
        .await
        .is_err()
    {
        uplink.abort();
        tracing::error!(
            "stopping before the agent acknowledged every record: the unacknowledged ones are lost"
        );
    }
    Ok(())
}

/// Makes this process's cgroup host in `TG_CGROUPS` (keeping what an agent
/// wrote for its descendants), so the proxy's own upstream queries are
/// never sent to a proxy nor judged by a tier, also while no agent runs.
fn host_self(bpffs: &Path) -> anyhow::Result<()> {
    use agent_common::{CgroupTier, GENERATIONS, TIER_HOST, map_names};
    let path = crate::enforcement::bpffs::PinLayout::new(bpffs)
        .maps
        .join(map_names::CGROUPS);
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut map: aya::maps::HashMap<_, u64, CgroupTier> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))?;
    let me = super::own_cgroup()?;
    let entry = match map.get(&me, 0) {
        Ok(e) => CgroupTier {
            tier: [TIER_HOST; GENERATIONS],
            ..e
        },
        Err(_) => CgroupTier {
            tier: [TIER_HOST; GENERATIONS],
            child_tier: [TIER_HOST; GENERATIONS],
        },
    };
    map.insert(me, entry, 0)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Wakes when the view may have changed: an inotify event in the directory
/// (the agent renames a new view into place), or every [`VIEW_POLL`].
struct ViewWatch {
    events: inotify::EventStream<Vec<u8>>,
    tick: tokio::time::Interval,
}

impl ViewWatch {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let ino = Inotify::init().context("inotify")?;
        ino.watches()
            .add(dir, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        let events = ino.into_event_stream(vec![0u8; 4096])?;
        let mut tick = tokio::time::interval(VIEW_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self { events, tick })
    }

    async fn next(&mut self) {
        loop {
            tokio::select! {
                ev = self.events.next() => match ev {
                    Some(Ok(e)) if e.name.as_deref().is_some_and(|n| n == VIEW_FILE) => return,
                    Some(Ok(_)) => continue,
                    _ => {
                        // The stream ended: polling alone from now on.
                        self.tick.tick().await;
                        return;
                    }
                },
                _ = self.tick.tick() => return,
            }
        }
    }
}
