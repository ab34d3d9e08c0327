//! The control task: the one owner of the policy maps. Everything that
//! changes what the kernel enforces — a policy reload, a cgroup appearing or
//! going, a pod's metadata arriving — is a call here, so map writes never
//! interleave and every cgroup's entry is computed from one view.
//!
//! One file per input: `cgroups.rs` (the cgroup tree), `pods.rs` (the pod
//! watch), `reload.rs` (policy files).

mod cgroups;
pub mod elevation;
mod elevation_objects;
mod pods;
mod reload;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::enforcement::sync::{CgroupVerdicts, MapSync};
use crate::events::pipeline::AgentRecord;
use crate::identity::cgroupfs::CgroupFs;
use crate::identity::pods::{PodResolution, PodStore};
use crate::metrics::Metrics;
use crate::policy::{Policy, Workload};
use crate::state::{NodeState, PodState, WorkloadInfo};

pub use reload::{TRIM_AFTER, release_freed_memory};

/// Cgroups never enforced, whatever the bindings say: the agent's own, and
/// the one whose processes serve the DNS and metadata proxies (`TG_GUARD`:
/// the agent itself, or `tiergate proxy`). Enforcing them could only cut
/// the node's enforcement off from what it needs (the API server, the
/// collector), and a proxy whose own upstream queries were sent to a proxy
/// would answer nothing (the deadlock of cilium#40670).
#[derive(Default)]
pub struct Exempt {
    agent: u64,
    guard: Option<aya::maps::Array<aya::maps::MapData, agent_common::ProxyGuard>>,
    /// The ids at the last [`Exempt::changed`].
    last: [u64; 2],
}

impl Exempt {
    /// The agent's own cgroup, and `TG_GUARD` from its pin under `bpffs`
    /// (read at every look: a proxy may start or move at any time).
    pub fn open(bpffs: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let path = crate::enforcement::bpffs::PinLayout::new(bpffs)
            .maps
            .join(agent_common::map_names::GUARD);
        let map = aya::maps::MapData::from_pin(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut e = Self {
            agent: crate::proxies::own_cgroup()?,
            guard: Some(aya::maps::Array::try_from(aya::maps::Map::Array(map))?),
            last: [0; 2],
        };
        e.last = e.ids();
        Ok(e)
    }

    /// The ids that stopped or started being exempt since the last call
    /// (a proxy started, moved or left).
    pub fn changed(&mut self) -> Vec<u64> {
        let now = self.ids();
        if now == self.last {
            return Vec::new();
        }
        let changed = self
            .last
            .iter()
            .chain(now.iter())
            .copied()
            .filter(|&id| id != 0)
            .collect();
        self.last = now;
        changed
    }

    /// The exempt cgroup ids now (0: none).
    pub fn ids(&self) -> [u64; 2] {
        let proxy = self
            .guard
            .as_ref()
            .and_then(|g| g.get(&0, 0).ok())
            .map_or(0, |g| g.agent_cgroup);
        [self.agent, proxy]
    }
}

/// A cgroup's identity and kernel entry under `policy`, and its pod's
/// cgroup uid (for indexing). An `exempt` cgroup is host.
pub fn describe(
    policy: &Policy,
    pods: &PodStore,
    path: &str,
    exempt: bool,
) -> (WorkloadInfo, CgroupVerdicts, Option<String>) {
    let res = crate::identity::pods::resolve(pods, path);
    let pod = res.identity();
    let mut a = policy.assign(&Workload {
        cgroup_path: path,
        pod,
    });
    if exempt {
        a.tier = crate::policy::TierRef::Host;
        a.binding = None;
    }
    let pod_state = match &res {
        PodResolution::NotPod => PodState::None,
        PodResolution::Unresolved { .. } => PodState::Unresolved,
        PodResolution::Malformed(_) => PodState::Malformed,
        PodResolution::Resolved(_) => PodState::Resolved,
    };
    let info = WorkloadInfo {
        path: Arc::from(path),
        spiffe_id: pod.map(|p| policy.spiffe_id(&p.namespace, &p.service_account)),
        pod: pod.cloned(),
        pod_state,
        tier: policy.tier_name(a.tier).to_string(),
        binding: a.binding,
    };
    let v = CgroupVerdicts {
        tier: a.tier,
        child_tier: policy.child_tier(path),
    };
    (info, v, res.pod_uid().map(str::to_string))
}

/// The task that owns the maps.
pub struct Control {
    pub cgfs: CgroupFs,
    pub root: PathBuf,
    pub sync: MapSync,
    pub state: Arc<NodeState>,
    pub policy: Arc<Policy>,
    /// cgroup directory → id, for everything under `root`.
    pub known: HashMap<PathBuf, u64>,
    pub metrics: Arc<Metrics>,
    pub records: mpsc::UnboundedSender<AgentRecord>,
    pub policy_path: PathBuf,
    /// Version text of the last rejected file, so one bad edit is one record.
    pub last_rejected: Option<String>,
    pub pods: PodStore,
    /// Pod cgroup uid → its cgroup directories.
    pub by_pod: HashMap<String, HashSet<PathBuf>>,
    /// Elevation grants.
    pub elevation: elevation::Elevations,
    /// Cgroups that are host whatever the bindings say.
    pub exempt: Exempt,
}

impl Control {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cgfs: CgroupFs,
        root: PathBuf,
        sync: MapSync,
        state: Arc<NodeState>,
        policy: Arc<Policy>,
        metrics: Arc<Metrics>,
        records: mpsc::UnboundedSender<AgentRecord>,
        policy_path: PathBuf,
        grants_file: PathBuf,
    ) -> Self {
        Self {
            cgfs,
            root,
            sync,
            state,
            policy,
            known: HashMap::new(),
            metrics,
            records,
            policy_path,
            last_rejected: None,
            pods: PodStore::default(),
            by_pod: HashMap::new(),
            elevation: elevation::Elevations::new(grants_file),
            exempt: Exempt::default(),
        }
    }
}
