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

/// A cgroup's identity and kernel entry under `policy`, and its pod's
/// cgroup uid (for indexing).
pub fn describe(
    policy: &Policy,
    pods: &PodStore,
    path: &str,
) -> (WorkloadInfo, CgroupVerdicts, Option<String>) {
    let res = crate::identity::pods::resolve(pods, path);
    let pod = res.identity();
    let a = policy.assign(&Workload {
        cgroup_path: path,
        pod,
    });
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
        }
    }
}
