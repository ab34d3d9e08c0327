//! What the control loop knows and the event writer and the inventory read:
//! each cgroup's workload identity, and the policy of each kernel generation
//! (events name the generation that judged them, so a record is labelled
//! with the policy that decided it, even across a swap); and what the event
//! writer counts per workload for the inventory (`attempts.rs`).

mod attempts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use agent_common::{GENERATIONS, TIER_HOST, dns_slot};
use serde::{Deserialize, Serialize};

use crate::policy::{PodIdentity, Policy};
pub use attempts::{Attempts, Usage};

/// Pod resolution state of a workload, for the inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodState {
    /// Not a pod cgroup.
    None,
    /// A pod whose metadata the agent has.
    Resolved,
    /// A pod cgroup the Kubernetes watch has not described (yet).
    Unresolved,
    /// A kubepods path kubelet would not create.
    Malformed,
}

/// One cgroup's identity and standing under the policy in force.
#[derive(Clone, Debug)]
pub struct WorkloadInfo {
    pub path: Arc<str>,
    pub pod: Option<PodIdentity>,
    pub pod_state: PodState,
    pub spiffe_id: Option<String>,
    /// Tier name under the policy in force (`host` when not enforced).
    pub tier: String,
    /// Index of the binding that placed it, if any.
    pub binding: Option<usize>,
}

impl WorkloadInfo {
    pub fn enforced(&self) -> bool {
        self.tier != crate::policy::HOST_TIER_NAME
    }
}

/// A workload and its attempt counters, which outlive re-evaluations of
/// the workload (a policy reload) and go with its cgroup.
struct Entry {
    info: Arc<WorkloadInfo>,
    counters: attempts::Counters,
}

/// Shared, read-mostly node state.
#[derive(Default)]
pub struct NodeState {
    workloads: RwLock<HashMap<u64, Entry>>,
    /// DNS proxy slot → cgroup ids with that slot (see `agent_common::dns_slot`).
    slots: RwLock<HashMap<u32, Vec<u64>>>,
    generations: RwLock<[Option<Arc<Policy>>; GENERATIONS]>,
    active: AtomicU32,
    /// Elevation grants in force, per cgroup (what records made under one
    /// carry).
    elevations: RwLock<HashMap<u64, Arc<crate::events::ocsf_access::ElevationTag>>>,
    /// Woken at every change (what `tiergate proxy` is told is republished).
    changed: tokio::sync::Notify,
}

impl NodeState {
    pub fn set_workload(&self, id: u64, w: WorkloadInfo) {
        let new = match self.workloads.write().expect("lock").entry(id) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.get_mut().info = Arc::new(w);
                false
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Entry {
                    info: Arc::new(w),
                    counters: Default::default(),
                });
                true
            }
        };
        if new {
            let mut slots = self.slots.write().expect("lock");
            slots.entry(dns_slot(id)).or_default().push(id);
        }
        self.changed.notify_one();
    }

    pub fn remove_workload(&self, id: u64) {
        if self.workloads.write().expect("lock").remove(&id).is_some() {
            let mut slots = self.slots.write().expect("lock");
            if let Some(ids) = slots.get_mut(&dns_slot(id)) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    slots.remove(&dns_slot(id));
                }
            }
            self.changed.notify_one();
        }
    }

    /// The one enforced workload whose DNS slot is `slot`: `None` when
    /// none is, or when several are (16M cgroup ids apart: the proxy then
    /// refuses rather than guess whose query it is).
    pub fn workload_by_slot(&self, slot: u32) -> Option<(u64, Arc<WorkloadInfo>)> {
        let ids = self.slots.read().expect("lock").get(&slot).cloned()?;
        let mut found = ids
            .into_iter()
            .filter_map(|id| self.workload(id).map(|w| (id, w)))
            .filter(|(_, w)| w.enforced());
        let one = found.next()?;
        found.next().is_none().then_some(one)
    }

    /// [`Self::workload_by_slot`], giving a cgroup created a moment ago
    /// (the kernel already judges it by its parent's tier; the cgroup watch
    /// has not reported it yet) up to `wait` to appear.
    pub async fn workload_by_slot_within(
        &self,
        slot: u32,
        wait: std::time::Duration,
    ) -> Option<(u64, Arc<WorkloadInfo>)> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(w) = self.workload_by_slot(slot) {
                return Some(w);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Whom an answer to `cgroup` opens its addresses for under `scope`:
    /// itself, and with `pod` its pod's enforced workloads of the same tier,
    /// with `tier` every enforced workload of its tier (itself first).
    pub fn scope_members(&self, cgroup: u64, scope: crate::policy::model::DnsScope) -> Vec<u64> {
        use crate::policy::model::DnsScope;
        let mut members = vec![cgroup];
        let Some(me) = self.workload(cgroup) else {
            return members;
        };
        let pod_uid = me.pod.as_ref().map(|p| p.pod_uid.as_str());
        let same = |w: &WorkloadInfo| match scope {
            DnsScope::Workload => false,
            DnsScope::Pod => {
                pod_uid.is_some() && w.pod.as_ref().map(|p| p.pod_uid.as_str()) == pod_uid
            }
            DnsScope::Tier => true,
        };
        if scope == DnsScope::Workload || (scope == DnsScope::Pod && pod_uid.is_none()) {
            return members;
        }
        let map = self.workloads.read().expect("lock");
        members.extend(
            map.iter()
                .filter(|(id, e)| {
                    **id != cgroup && e.info.enforced() && e.info.tier == me.tier && same(&e.info)
                })
                .map(|(id, _)| *id),
        );
        members
    }

    pub fn workload(&self, id: u64) -> Option<Arc<WorkloadInfo>> {
        self.workloads
            .read()
            .expect("lock")
            .get(&id)
            .map(|e| e.info.clone())
    }

    /// Counts a reported attempt of cgroup `id` judged `verdict`
    /// (`VERDICT_*`) at `time_ms` (the record's time); one of a cgroup the
    /// agent has not learned (yet) is not counted.
    pub fn count_attempt(&self, id: u64, verdict: u8, time_ms: u64) {
        self.count_attempts(id, verdict, time_ms, 1);
    }

    /// `n` attempts with one verdict, the last at `time_ms` (an aggregated
    /// record).
    pub fn count_attempts(&self, id: u64, verdict: u8, time_ms: u64, n: u64) {
        if let Some(e) = self.workloads.read().expect("lock").get(&id) {
            e.counters.record(verdict, time_ms, n);
        }
    }

    /// Every workload, sorted by cgroup path.
    pub fn workloads(&self) -> Vec<(u64, Arc<WorkloadInfo>)> {
        self.workloads_with_usage()
            .into_iter()
            .map(|(id, w, _)| (id, w))
            .collect()
    }

    /// Every workload with its reported attempts, sorted by cgroup path.
    pub fn workloads_with_usage(&self) -> Vec<(u64, Arc<WorkloadInfo>, Usage)> {
        let mut v: Vec<_> = self
            .workloads
            .read()
            .expect("lock")
            .iter()
            .map(|(k, e)| (*k, e.info.clone(), e.counters.usage()))
            .collect();
        v.sort_by(|a, b| a.1.path.cmp(&b.1.path));
        v
    }

    /// Replaces the grants in force per cgroup.
    pub fn set_elevations(&self, m: HashMap<u64, Arc<crate::events::ocsf_access::ElevationTag>>) {
        *self.elevations.write().expect("lock") = m;
        self.changed.notify_one();
    }

    /// Every grant in force, by cgroup.
    pub fn elevations(&self) -> Vec<(u64, Arc<crate::events::ocsf_access::ElevationTag>)> {
        let m = self.elevations.read().expect("lock");
        m.iter().map(|(c, t)| (*c, t.clone())).collect()
    }

    /// Returns after the next change (set, removed, activated, elevated)
    /// since the last return; changes meanwhile wake it once.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The tier a proxy judges `cgroup` (whose own tier is `own`) by at
    /// `now_ms`, and the grant it is under, if any: the granted tier while a
    /// grant is in force, as the kernel judges its connections (the kernel
    /// compares the expiry itself).
    pub fn judged_tier(
        &self,
        cgroup: u64,
        own: &str,
        now_ms: u64,
    ) -> (
        String,
        Option<Arc<crate::events::ocsf_access::ElevationTag>>,
    ) {
        match self.elevation(cgroup).filter(|t| t.expires > now_ms) {
            Some(g) => (g.tier.clone(), Some(g)),
            None => (own.to_string(), None),
        }
    }

    /// The grant `cgroup` is elevated by, if any.
    pub fn elevation(&self, cgroup: u64) -> Option<Arc<crate::events::ocsf_access::ElevationTag>> {
        self.elevations.read().expect("lock").get(&cgroup).cloned()
    }

    /// Records the policy written to `generation` and that it is now active.
    pub fn activate(&self, generation: u32, policy: Arc<Policy>) {
        self.generations.write().expect("lock")[(generation & 1) as usize] = Some(policy);
        self.active.store(generation & 1, Ordering::Release);
        self.changed.notify_one();
    }

    /// Replaces both generations' policies and the active one at once (what
    /// `tiergate proxy` reads from the agent's view).
    pub fn set_generations(&self, policies: [Option<Arc<Policy>>; GENERATIONS], active: u32) {
        let mut g = self.generations.write().expect("lock");
        *g = policies;
        self.active.store(active & 1, Ordering::Release);
        drop(g);
        self.changed.notify_one();
    }

    /// The generation the kernel enforces now.
    pub fn active_generation(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// The policy the kernel enforces now.
    pub fn active_policy(&self) -> Option<Arc<Policy>> {
        self.policy(self.active.load(Ordering::Acquire))
    }

    pub fn policy(&self, generation: u32) -> Option<Arc<Policy>> {
        self.generations.read().expect("lock")[(generation & 1) as usize].clone()
    }
}

/// The name of a kernel tier id under a policy.
pub fn tier_name(policy: Option<&Policy>, tier: u32) -> String {
    if tier == TIER_HOST {
        return crate::policy::HOST_TIER_NAME.to_string();
    }
    policy
        .and_then(|p| p.tiers.get(tier as usize))
        .map(|t| t.name.clone())
        .unwrap_or_else(|| format!("tier-{tier}"))
}

#[cfg(test)]
mod tests {
    use agent_common::{VERDICT_ALLOW, VERDICT_DENY};

    use super::*;

    fn info(path: &str, tier: &str) -> WorkloadInfo {
        WorkloadInfo {
            path: path.into(),
            pod: None,
            pod_state: PodState::None,
            spiffe_id: None,
            tier: tier.into(),
            binding: None,
        }
    }

    fn usage(s: &NodeState, id: u64) -> Option<Usage> {
        s.workloads_with_usage()
            .into_iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, _, u)| u)
    }

    #[test]
    fn attempts_are_kept_per_workload_across_reevaluation_and_go_with_it() {
        let s = NodeState::default();
        s.set_workload(7, info("/a", "t0"));
        s.set_workload(8, info("/b", "host"));
        s.count_attempt(7, VERDICT_ALLOW, 1_000);
        s.count_attempt(7, VERDICT_DENY, 2_000);
        s.count_attempt(8, VERDICT_ALLOW, 3_000);
        // A cgroup the agent has not learned: not counted, not created.
        s.count_attempt(9, VERDICT_DENY, 4_000);
        assert!(usage(&s, 9).is_none());
        // A policy reload re-evaluates the workload: its counts stay.
        s.set_workload(7, info("/a", "t1"));
        let a = usage(&s, 7).unwrap();
        assert_eq!((a.attempts.allowed, a.attempts.denied), (1, 1));
        assert_eq!(a.last_attempt_ms, Some(2_000));
        assert_eq!(s.workload(7).unwrap().tier, "t1");
        assert_eq!(usage(&s, 8).unwrap().attempts.allowed, 1);
        // The cgroup goes, and its counts with it; a new one starts at 0.
        s.remove_workload(7);
        assert!(usage(&s, 7).is_none());
        s.set_workload(7, info("/a", "t0"));
        assert_eq!(usage(&s, 7).unwrap(), Usage::default());
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;
    use crate::policy::model::DnsScope;

    fn w(tier: &str, pod: Option<&str>) -> WorkloadInfo {
        WorkloadInfo {
            path: Arc::from("/x"),
            pod: pod.map(|u| PodIdentity {
                pod_uid: u.into(),
                ..Default::default()
            }),
            pod_state: PodState::None,
            spiffe_id: None,
            tier: tier.into(),
            binding: None,
        }
    }

    #[test]
    fn scope_members_by_pod_and_by_tier() {
        let s = NodeState::default();
        s.set_workload(1, w("t0", Some("p1")));
        s.set_workload(2, w("t0", Some("p1")));
        s.set_workload(3, w("t1", Some("p1")));
        s.set_workload(4, w("t0", Some("p2")));
        s.set_workload(5, w("host", None));
        s.set_workload(6, w("t0", None));
        let sorted = |mut v: Vec<u64>| {
            v[1..].sort();
            v
        };
        assert_eq!(s.scope_members(1, DnsScope::Workload), [1]);
        // The same pod and tier only (3 is another tier of the pod).
        assert_eq!(sorted(s.scope_members(1, DnsScope::Pod)), [1, 2]);
        // Not a pod: itself.
        assert_eq!(s.scope_members(6, DnsScope::Pod), [6]);
        // The tier's enforced workloads, the asker first.
        assert_eq!(sorted(s.scope_members(4, DnsScope::Tier)), [4, 1, 2, 6]);
        assert_eq!(s.scope_members(99, DnsScope::Tier), [99]);
    }
}
