//! Writes policy and workload identity into the kernel maps.
//!
//! Maps and who writes them (only this module, from one task):
//! - `TG_CONFIG[0]`: active generation + "policy loaded" flag; flipped last in
//!   a swap, so a program sees the old or the new policy, never a mix.
//! - `TG_TIERS[gen*MAX_TIERS+tier]`: tier flags (audit, metadata allow).
//! - `TG_RULES` (LPM trie): (gen, tier, destination prefix) → port set.
//! - `TG_CGROUPS`: cgroup id → tier and child tier, one slot per generation;
//!   updated on policy swaps, on cgroup creation and removed on deletion.
//!
//! A swap writes the inactive generation completely, then flips
//! `active_gen`. The old generation's rules are deleted just before that
//! generation is written again (the next swap), never under a running reader.

use std::collections::HashMap as StdHashMap;

use agent_common::{
    CONFIG_F_POLICY_LOADED, CgroupTier, Config, GENERATIONS, MAX_TIERS, PortSet,
    RULE_KEY_FIXED_BITS, RuleKey, TIER_HOST, TierConfig, map_names, tier_slot,
};
use aya::Ebpf;
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError};

use crate::policy::{Compiled, TierRef};

/// Errors writing the maps.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> SyncError {
    move |source| SyncError::Map { map, source }
}

/// What a workload cgroup resolves to under one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupVerdicts {
    pub tier: TierRef,
    pub child_tier: TierRef,
}

fn tier_id(t: TierRef) -> u32 {
    match t {
        TierRef::Host => TIER_HOST,
        TierRef::Tier(i) => i as u32,
    }
}

/// Owner of the policy maps.
pub struct MapSync {
    config: Array<MapData, Config>,
    cgroups: HashMap<MapData, u64, CgroupTier>,
    tiers: Array<MapData, TierConfig>,
    rules: LpmTrie<MapData, RuleKey, PortSet>,
    active_gen: u32,
    /// Last value written per cgroup (so a swap keeps the live slot intact).
    written: StdHashMap<u64, CgroupTier>,
    /// Rule keys this process wrote, per generation; `None` until known
    /// (maps re-adopted from an earlier agent: found by iterating once).
    rule_keys: [Option<Vec<Key<RuleKey>>>; GENERATIONS],
    /// A generation whose rules are stale since the last flip, deleted by
    /// `cleanup()` shortly after (off the reload's critical path) or, at
    /// the latest, before that generation is written again.
    stale: Option<u32>,
}

/// Figures of one policy swap, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct SwapStats {
    pub generation: u32,
    pub rules: usize,
    pub cgroups: usize,
}

impl MapSync {
    /// Takes the policy maps out of the loaded object.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, SyncError> {
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, SyncError> {
            let m = ebpf.take_map(name).ok_or(SyncError::MissingMap(name))?;
            T::try_from(m).map_err(map_err(name))
        }
        let config: Array<MapData, Config> = take(ebpf, map_names::CONFIG)?;
        let cgroups = take(ebpf, map_names::CGROUPS)?;
        let tiers = take(ebpf, map_names::TIERS)?;
        let rules = take(ebpf, map_names::RULES)?;
        // A re-adopted map set carries the previous agent's generation.
        let current = config.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        let mut me = Self {
            config,
            cgroups,
            tiers,
            rules,
            active_gen: current.active_gen & 1,
            written: StdHashMap::new(),
            rule_keys: [None, None],
            stale: None,
        };
        for (id, entry) in me.cgroups.iter().flatten() {
            me.written.insert(id, entry);
        }
        Ok(me)
    }

    /// Whether an earlier agent left a policy in force.
    pub fn policy_in_force(&self) -> bool {
        self.config
            .get(&0, 0)
            .map(|c| c.flags & CONFIG_F_POLICY_LOADED != 0)
            .unwrap_or(false)
    }

    /// Generation the kernel reads now.
    pub fn active_generation(&self) -> u32 {
        self.active_gen
    }

    /// Installs a compiled policy and the cgroups' tiers under it atomically.
    /// `cgroups` gives every known cgroup's verdicts under the new policy.
    pub fn swap(
        &mut self,
        compiled: &Compiled,
        cgroups: &[(u64, CgroupVerdicts)],
    ) -> Result<SwapStats, SyncError> {
        let next = 1 - self.active_gen;
        let n = next as usize;
        self.clear_rules(next)?;
        let mut keys = Vec::with_capacity(compiled.rules.len());
        for rule in &compiled.rules {
            let key = Key::new(
                RULE_KEY_FIXED_BITS + rule.prefix_len,
                RuleKey {
                    generation: next,
                    tier: rule.tier,
                    addr: rule.addr,
                },
            );
            self.rules
                .insert(&key, rule.ports, 0)
                .map_err(map_err(map_names::RULES))?;
            keys.push(key);
        }
        self.rule_keys[n] = Some(keys);
        for t in 0..MAX_TIERS {
            let flags = compiled.tier_flags.get(t as usize).copied().unwrap_or(0);
            self.tiers
                .set(tier_slot(next, t), TierConfig { flags, _pad: 0 }, 0)
                .map_err(map_err(map_names::TIERS))?;
        }
        for (id, v) in cgroups {
            let mut entry = self.written.get(id).copied().unwrap_or_else(|| {
                // New to the maps: the live slot gets the same answer, so the
                // entry is right whichever generation a reader uses.
                let mut e = CgroupTier::default();
                for g in 0..GENERATIONS {
                    e.tier[g] = tier_id(v.tier);
                    e.child_tier[g] = tier_id(v.child_tier);
                }
                e
            });
            entry.tier[n] = tier_id(v.tier);
            entry.child_tier[n] = tier_id(v.child_tier);
            self.write_cgroup(*id, entry)?;
        }
        let mut cfg = self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        cfg.default_tier[n] = compiled.default_tier;
        cfg.active_gen = next;
        cfg.flags |= CONFIG_F_POLICY_LOADED;
        // The flip: from here on programs read generation `next`.
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(map_names::CONFIG))?;
        // The generation just left is deleted shortly (`cleanup`), not now:
        // a program that read the old generation a moment ago may still be
        // looking it up.
        self.stale = Some(self.active_gen);
        self.active_gen = next;
        Ok(SwapStats {
            generation: next,
            rules: compiled.rules.len(),
            cgroups: cgroups.len(),
        })
    }

    /// Adds or updates one cgroup under the policy in force.
    pub fn upsert_cgroup(&mut self, id: u64, v: CgroupVerdicts) -> Result<(), SyncError> {
        let mut entry = self.written.get(&id).copied().unwrap_or_default();
        // Both slots: the inactive one is rewritten by the next swap anyway.
        for g in 0..GENERATIONS {
            entry.tier[g] = tier_id(v.tier);
            entry.child_tier[g] = tier_id(v.child_tier);
        }
        if self.written.get(&id) == Some(&entry) {
            return Ok(());
        }
        self.write_cgroup(id, entry)
    }

    fn write_cgroup(&mut self, id: u64, entry: CgroupTier) -> Result<(), SyncError> {
        self.cgroups
            .insert(id, entry, 0)
            .map_err(map_err(map_names::CGROUPS))?;
        self.written.insert(id, entry);
        Ok(())
    }

    /// Forgets a deleted cgroup (its id is never reused).
    pub fn remove_cgroup(&mut self, id: u64) -> Result<(), SyncError> {
        if self.written.remove(&id).is_some() {
            match self.cgroups.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(map_names::CGROUPS)(e)),
            }
        }
        Ok(())
    }

    /// Removes every cgroup entry whose id is not in `live`.
    pub fn retain_cgroups(&mut self, live: &impl Fn(u64) -> bool) -> Result<usize, SyncError> {
        let stale: Vec<u64> = self
            .written
            .keys()
            .copied()
            .filter(|id| !live(*id))
            .collect();
        for id in &stale {
            self.remove_cgroup(*id)?;
        }
        Ok(stale.len())
    }

    /// Number of cgroup entries in the kernel map.
    pub fn cgroup_count(&self) -> usize {
        self.written.len()
    }

    /// Deletes the rules of the generation the last swap left behind.
    /// Called a moment after a swap, when no program still reads it.
    pub fn cleanup(&mut self) -> Result<(), SyncError> {
        match self.stale.take() {
            Some(g) => self.clear_rules(g),
            None => Ok(()),
        }
    }

    /// Whether `cleanup` has work to do.
    pub fn has_stale(&self) -> bool {
        self.stale.is_some()
    }

    fn clear_rules(&mut self, generation: u32) -> Result<(), SyncError> {
        if self.stale == Some(generation) {
            self.stale = None;
        }
        let stale: Vec<Key<RuleKey>> = match self.rule_keys[generation as usize].take() {
            Some(keys) => keys,
            // Written by an earlier agent: find them.
            None => self
                .rules
                .keys()
                .flatten()
                .filter(|k| {
                    let data = k.data();
                    data.generation == generation
                })
                .collect(),
        };
        for k in stale {
            match self.rules.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(map_names::RULES)(e)),
            }
        }
        self.rule_keys[generation as usize] = Some(Vec::new());
        Ok(())
    }
}
