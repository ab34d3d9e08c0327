//! The control task: the one owner of the policy maps. Everything that
//! changes what the kernel enforces — a policy reload, a cgroup appearing or
//! going, a pod's metadata arriving — is a call here, so map writes never
//! interleave and every cgroup's entry is computed from one view.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::admin::metrics::{Metrics, PolicyLabels};
use crate::enforcement::sync::{CgroupVerdicts, MapSync, SyncError};
use crate::events::pipeline::AgentRecord;
use crate::identity::cgroupfs::{self, CgroupFs};
use crate::identity::pods::{self, PodInfo, PodResolution, PodStore};
use crate::identity::watch::CgroupChange;
use crate::policy::{self, Policy, Workload};
use crate::state::{NodeState, PodState, WorkloadInfo};

/// A change reported by the Kubernetes pod watch.
#[derive(Debug)]
pub enum PodChange {
    Upsert(PodInfo),
    /// By metadata uid.
    Delete(String),
    /// A full relist: the pods of this node now.
    Replace(Vec<PodInfo>),
}

/// A cgroup's identity and kernel entry under `policy`, and its pod's
/// cgroup uid (for indexing).
pub fn describe(
    policy: &Policy,
    pods: &PodStore,
    path: &str,
) -> (WorkloadInfo, CgroupVerdicts, Option<String>) {
    let res = pods::resolve(pods, path);
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

/// Hands the heap pages freed after a reload (the YAML tree and the
/// previous policy: megabytes for a large file) back to the kernel; glibc
/// would keep them, and they would count as the agent's RSS from then on.
/// Called once reloads have been quiet for a while ([`TRIM_AFTER`]): the
/// next reload pays ~6 ms (10,000 rules) to fault the pages in again, which
/// a burst of edits should not pay each time.
pub fn release_freed_memory() {
    tracing::debug!("returning freed heap pages to the kernel");
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Quiet time after a reload before freed memory goes back to the kernel.
pub const TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

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
        }
    }

    /// Learns (or re-evaluates) one cgroup directory.
    fn add(&mut self, dir: PathBuf) {
        let (Ok(id), Ok(path)) = (cgroupfs::cgroup_id(&dir), self.cgfs.path_of(&dir)) else {
            return; // gone again
        };
        let (info, v, pod_uid) = describe(&self.policy, &self.pods, &path);
        if info.pod_state == PodState::Malformed {
            tracing::warn!(cgroup = %path, "pod cgroup path not understood; the workload is in defaultTier");
        }
        self.state.set_workload(id, info);
        if let Err(e) = self.sync.upsert_cgroup(id, v) {
            tracing::error!(cgroup = %path, error = %e, "cannot write cgroup entry");
        }
        if let Some(uid) = pod_uid {
            self.by_pod.entry(uid).or_default().insert(dir.clone());
        }
        self.known.insert(dir, id);
        self.metrics
            .cgroups_known
            .set(self.sync.cgroup_count() as i64);
    }

    fn remove(&mut self, dir: &Path) {
        if let Some(id) = self.known.remove(dir) {
            self.state.remove_workload(id);
            if let Err(e) = self.sync.remove_cgroup(id) {
                tracing::error!(cgroup_id = id, error = %e, "cannot remove cgroup entry");
            }
        }
        self.by_pod.retain(|_, dirs| {
            dirs.remove(dir);
            !dirs.is_empty()
        });
        self.metrics
            .cgroups_known
            .set(self.sync.cgroup_count() as i64);
    }

    pub fn cgroup_change(&mut self, change: CgroupChange) {
        match change {
            CgroupChange::Created(dir) => self.add(dir),
            CgroupChange::Removed(dir) => {
                // Children go first in the kernel, but be tolerant.
                let gone: Vec<PathBuf> = self
                    .known
                    .keys()
                    .filter(|d| d.starts_with(&dir))
                    .cloned()
                    .collect();
                for d in gone {
                    self.remove(&d);
                }
            }
            CgroupChange::Rescan => self.scan(),
        }
    }

    /// Applies a pod watch change: the pod's cgroups get their new tier on
    /// their next connect.
    pub fn pod_change(&mut self, change: PodChange) {
        let changed: Vec<String> = match change {
            PodChange::Upsert(p) => vec![self.pods.upsert(p)],
            PodChange::Delete(uid) => self.pods.remove(&uid).into_iter().collect(),
            PodChange::Replace(all) => self.pods.replace(all),
        };
        self.metrics.pods_known.set(self.pods.len() as i64);
        for uid in changed {
            let dirs: Vec<PathBuf> = self
                .by_pod
                .get(&uid)
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default();
            for d in dirs {
                self.add(d);
            }
        }
    }

    /// Full walk: adds what is new, drops what is gone (also entries an
    /// earlier agent left in the pinned map).
    pub fn scan(&mut self) {
        let dirs = cgroupfs::walk(&self.root);
        let live: HashSet<&PathBuf> = dirs.iter().collect();
        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|d| !live.contains(d))
            .cloned()
            .collect();
        for d in gone {
            self.remove(&d);
        }
        for d in &dirs {
            if !self.known.contains_key(d) {
                self.add(d.clone());
            }
        }
        let ids: HashSet<u64> = self.known.values().copied().collect();
        match self.sync.retain_cgroups(&|id| ids.contains(&id)) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "dropped stale cgroup entries"),
            Err(e) => tracing::error!(error = %e, "cannot prune cgroup entries"),
        }
        self.metrics
            .cgroups_known
            .set(self.sync.cgroup_count() as i64);
    }

    /// Writes a compiled policy and every known cgroup's tier under it.
    /// `prepared` is how long reading, parsing and compiling took (logged).
    pub fn install(
        &mut self,
        policy: Arc<Policy>,
        compiled: &policy::Compiled,
        prepared: std::time::Duration,
    ) -> Result<(), SyncError> {
        let describing = Instant::now();
        let described: Vec<(u64, WorkloadInfo, CgroupVerdicts)> = self
            .known
            .iter()
            .filter_map(|(dir, id)| {
                let path = self.cgfs.path_of(dir).ok()?;
                let (info, v, _) = describe(&policy, &self.pods, &path);
                Some((*id, info, v))
            })
            .collect();
        let entries: Vec<(u64, CgroupVerdicts)> =
            described.iter().map(|(id, _, v)| (*id, *v)).collect();
        let describe_us = describing.elapsed().as_micros() as u64;
        let started = Instant::now();
        let stats = self.sync.swap(compiled, &entries)?;
        let swap_us = started.elapsed().as_micros() as u64;
        let old = std::mem::replace(&mut self.policy, policy.clone());
        self.state.activate(stats.generation, policy.clone());
        for (id, info, _) in described {
            self.state.set_workload(id, info);
        }
        self.metrics.policy_info.clear();
        self.metrics
            .policy_info
            .get_or_create(&PolicyLabels {
                name: policy.name.clone(),
                version: policy.version.clone(),
            })
            .set(1);
        self.metrics.policy_rules.set(stats.rules as i64);
        self.metrics.reload("applied");
        tracing::info!(
            policy = %policy.name,
            version = %policy.version,
            previous = %old.version,
            generation = stats.generation,
            rules = stats.rules,
            cgroups = stats.cgroups,
            prepare_us = prepared.as_micros() as u64,
            describe_us,
            swap_us,
            rules_written = stats.rules_written,
            "policy in force"
        );
        let _ = self.records.send(AgentRecord {
            message: format!("policy {} {} in force", policy.name, policy.version),
            failure: false,
            detail: serde_json::json!({
                "kind": "policy",
                "action": "applied",
                "file": self.policy_path.display().to_string(),
                "previous_version": old.version,
            }),
        });
        Ok(())
    }

    /// Re-reads the policy file; a bad file changes nothing in the kernel.
    pub fn reload(&mut self) {
        let started = Instant::now();
        let file = self.policy_path.display().to_string();
        let src = policy::parse::read(&self.policy_path);
        // The YAML tree is freed when this function returns, after the swap.
        let (parsed, _tree) = match &src {
            Ok(src) => policy::parse::parse_keeping_tree(src, &file),
            Err(e) => (Err(e.clone()), Vec::new()),
        };
        let result = parsed.map_err(|e| e.to_string()).and_then(|p| {
            p.compile()
                .map(|c| (p, c))
                .map_err(|e| format!("{}: {e}", self.policy_path.display()))
        });
        match result {
            Ok((p, _)) if p.version == self.policy.version => {
                self.last_rejected = None;
                self.metrics.reload("unchanged");
            }
            Ok((p, compiled)) => {
                self.last_rejected = None;
                if let Err(e) = self.install(Arc::new(p), &compiled, started.elapsed()) {
                    tracing::error!(error = %e, "cannot write the new policy; the previous one stays in force");
                    self.metrics.reload("failed");
                }
            }
            Err(errors) => {
                if self.last_rejected.as_deref() == Some(errors.as_str()) {
                    return;
                }
                self.metrics.reload("rejected");
                tracing::error!(
                    file = %self.policy_path.display(),
                    in_force = %self.policy.version,
                    "policy rejected; the last good policy stays in force:\n{errors}"
                );
                let _ = self.records.send(AgentRecord {
                    message: format!(
                        "policy {} rejected; {} stays in force",
                        self.policy_path.display(),
                        self.policy.version
                    ),
                    failure: true,
                    detail: serde_json::json!({
                        "kind": "policy",
                        "action": "rejected",
                        "file": self.policy_path.display().to_string(),
                        "errors": errors.lines().collect::<Vec<_>>(),
                    }),
                });
                self.last_rejected = Some(errors);
            }
        }
    }
}
