//! Pod changes: a pod's metadata arriving, changing or going re-evaluates
//! exactly that pod's cgroups.

use std::path::PathBuf;

use super::Control;
use crate::identity::pods::PodChange;

impl Control {
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
        self.refresh_grants();
    }
}
