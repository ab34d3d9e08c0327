//! Cgroup changes: learning, re-evaluating and forgetting cgroup
//! directories, one at a time (the inotify watch) or all at once (a scan).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{Control, describe};
use crate::identity::cgroupfs;
use crate::identity::watch::CgroupChange;
use crate::state::PodState;

impl Control {
    /// Learns (or re-evaluates) one cgroup directory.
    pub(super) fn add(&mut self, dir: PathBuf) {
        let (Ok(id), Ok(path)) = (cgroupfs::cgroup_id(&dir), self.cgfs.path_of(&dir)) else {
            return; // gone again
        };
        let exempt = self.exempt.ids().contains(&id);
        let (info, v, pod_uid) = describe(&self.policy, &self.pods, &path, exempt);
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
        self.count_cgroups();
    }

    /// Describes again the cgroups that stopped or started being exempt
    /// (`TG_GUARD` names another proxy process): within a tick of a proxy's
    /// start, its cgroup is host.
    pub fn check_exempt(&mut self) {
        let changed = self.exempt.changed();
        if changed.is_empty() {
            return;
        }
        let dirs: Vec<PathBuf> = self
            .known
            .iter()
            .filter(|(_, id)| changed.contains(id))
            .map(|(d, _)| d.clone())
            .collect();
        for d in dirs {
            tracing::info!(cgroup = %d.display(), "the cgroup serving the proxies changed; describing it again");
            self.add(d);
        }
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
        self.count_cgroups();
    }

    fn count_cgroups(&self) {
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
        self.refresh_grants();
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
        self.count_cgroups();
        self.refresh_grants();
    }
}
