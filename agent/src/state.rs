//! What the control loop knows and the event writer reads: cgroup paths by
//! id and the policy of each kernel generation (events name the generation
//! that judged them, so a record is labelled with the policy that decided it,
//! even across a swap).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use agent_common::{GENERATIONS, TIER_HOST};

use crate::policy::Policy;

/// Shared, read-mostly node state.
#[derive(Default)]
pub struct NodeState {
    cgroups: RwLock<HashMap<u64, Arc<str>>>,
    generations: RwLock<[Option<Arc<Policy>>; GENERATIONS]>,
    active: AtomicU32,
}

impl NodeState {
    pub fn set_cgroup(&self, id: u64, path: &str) {
        self.cgroups
            .write()
            .expect("lock")
            .insert(id, Arc::from(path));
    }

    pub fn remove_cgroup(&self, id: u64) {
        self.cgroups.write().expect("lock").remove(&id);
    }

    pub fn cgroup_path(&self, id: u64) -> Option<Arc<str>> {
        self.cgroups.read().expect("lock").get(&id).cloned()
    }

    pub fn cgroup_ids(&self) -> Vec<u64> {
        self.cgroups.read().expect("lock").keys().copied().collect()
    }

    /// Records the policy written to `generation` and that it is now active.
    pub fn activate(&self, generation: u32, policy: Arc<Policy>) {
        self.generations.write().expect("lock")[(generation & 1) as usize] = Some(policy);
        self.active.store(generation & 1, Ordering::Release);
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
        return "host".to_string();
    }
    policy
        .and_then(|p| p.tiers.get(tier as usize))
        .map(|t| t.name.clone())
        .unwrap_or_else(|| format!("tier-{tier}"))
}
