//! Writes policy and workload identity into the kernel maps.
//!
//! Maps and who writes them (only this module, from one task):
//! - `TG_CONFIG[0]`: active generation + "policy loaded" flag; flipped last in
//!   a swap, so a program sees the old or the new policy, never a mix.
//! - `TG_TIERS[gen*MAX_TIERS+tier]`: tier flags (audit, metadata allow).
//! - `TG_RULES` (LPM trie): (gen, tier, destination prefix) → port set.
//! - `TG_CGROUPS`: cgroup id → tier and child tier, one slot per generation;
//!   updated on policy swaps, on cgroup creation and removed on deletion.
//! - `TG_FQDN_PORTS`: (gen, tier, name pattern id) → port set; written with
//!   the rules (the DNS proxy's own maps are `dns/learn.rs`'s).
//!
//! A swap brings the inactive generation to the new policy, then flips
//! `active_gen`. The generation left behind keeps its rules: the next swap
//! writes only the entries that differ from them (and deletes the ones the
//! new policy lacks), so reloading a large policy with a small change costs
//! a few map writes, not one per rule. Nothing is written to the generation
//! programs are reading.

use std::collections::HashMap as StdHashMap;

use agent_common::{
    CONFIG_F_GRANTS, CONFIG_F_POLICY_LOADED, CgroupTier, Config, FqdnKey, GENERATIONS, MAX_TIERS,
    PortSet, RULE_KEY_FIXED_BITS, RuleKey, TIER_HOST, TierConfig, map_names, tier_slot,
};
use aya::Ebpf;
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError};
use std::os::fd::{AsFd, OwnedFd};

use super::batch;
use super::grants::GrantMap;

use crate::policy::names::CompiledName;
use crate::policy::{Compiled, CompiledRule, TierRef};

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

pub(super) fn map_err(map: &'static str) -> impl Fn(MapError) -> SyncError {
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
    rules_fd: OwnedFd,
    names: HashMap<MapData, FqdnKey, PortSet>,
    active_gen: u32,
    /// Last value written per cgroup (so a swap keeps the live slot intact).
    written: StdHashMap<u64, CgroupTier>,
    /// What each generation of `TG_RULES` holds; `None` when not known
    /// (maps re-adopted from an earlier agent, or a swap that failed half
    /// way): read back from the map before that generation is written.
    rules_in: [Option<RuleSet>; GENERATIONS],
    /// Tier flags each generation of `TG_TIERS` holds, when known.
    tiers_in: [Option<Vec<u32>>; GENERATIONS],
    /// `TG_GRANTS`: elevations in force.
    pub grants: GrantMap,
}

/// One generation's `TG_RULES`, sorted as the compiler sorts it.
type RuleSet = Vec<CompiledRule>;

/// The order of `Compiled::rules`.
fn order(r: &CompiledRule) -> (u32, [u8; 16], u32) {
    (r.tier, r.addr, r.prefix_len)
}

enum Change<'a> {
    Put(&'a CompiledRule),
    Delete(&'a CompiledRule),
}

/// The writes that turn `held` into `want` (both sorted by `order`): one
/// merge pass, no hashing — a 10,000-rule diff takes well under a
/// millisecond.
fn diff_rules<'a>(
    held: &'a [CompiledRule],
    want: &'a [CompiledRule],
    mut f: impl FnMut(Change<'a>),
) {
    let (mut i, mut j) = (0, 0);
    while i < held.len() || j < want.len() {
        match (held.get(i), want.get(j)) {
            (Some(h), Some(w)) => match order(h).cmp(&order(w)) {
                std::cmp::Ordering::Less => {
                    f(Change::Delete(h));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    f(Change::Put(w));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if h.ports != w.ports {
                        f(Change::Put(w));
                    }
                    i += 1;
                    j += 1;
                }
            },
            (Some(h), None) => {
                f(Change::Delete(h));
                i += 1;
            }
            (None, Some(w)) => {
                f(Change::Put(w));
                j += 1;
            }
            (None, None) => unreachable!(),
        }
    }
}

/// Figures of one policy swap, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct SwapStats {
    pub generation: u32,
    pub rules: usize,
    /// `TG_RULES` entries written or deleted (the difference to what the
    /// generation held).
    pub rules_written: usize,
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
        // A second handle on TG_RULES for batched writes (aya has none).
        let rules_fd = match ebpf.map(map_names::RULES) {
            Some(aya::maps::Map::LpmTrie(md)) => md
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| map_err(map_names::RULES)(MapError::from(e)))?,
            _ => return Err(SyncError::MissingMap(map_names::RULES)),
        };
        let rules = take(ebpf, map_names::RULES)?;
        let names = take(ebpf, map_names::FQDN_PORTS)?;
        let grants = GrantMap::new(take(ebpf, map_names::GRANTS)?);
        // A re-adopted map set carries the previous agent's generation.
        let current = config.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        let mut me = Self {
            config,
            cgroups,
            tiers,
            rules,
            rules_fd,
            names,
            active_gen: current.active_gen & 1,
            written: StdHashMap::new(),
            rules_in: [None, None],
            tiers_in: [None, None],
            grants,
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
    /// `tier_of` names the new policy's tiers (for elevation grants, kept
    /// by tier name).
    pub fn swap(
        &mut self,
        compiled: &Compiled,
        cgroups: &[(u64, CgroupVerdicts)],
        tier_of: impl Fn(&str) -> Option<u32>,
    ) -> Result<SwapStats, SyncError> {
        let next = 1 - self.active_gen;
        let n = next as usize;
        // Taken out while written: a failure half way leaves it unknown.
        let held = match self.rules_in[n].take() {
            Some(held) => held,
            None => self.read_rules(next),
        };
        let (mut put_keys, mut put_values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        diff_rules(&held, &compiled.rules, |change| match change {
            Change::Put(r) => {
                put_keys.push(rule_key(next, r));
                put_values.push(r.ports);
            }
            Change::Delete(r) => gone.push(rule_key(next, r)),
        });
        // Deletes first: the trie's capacity is shared by both generations.
        let io_err = |e: std::io::Error| map_err(map_names::RULES)(MapError::from(e));
        batch::delete(self.rules_fd.as_fd(), &gone).map_err(io_err)?;
        batch::update(self.rules_fd.as_fd(), &put_keys, &put_values).map_err(io_err)?;
        let written = gone.len() + put_keys.len();
        self.rules_in[n] = Some(compiled.rules.clone());
        let held_flags = self.tiers_in[n].take();
        let mut flags_now = Vec::with_capacity(MAX_TIERS as usize);
        for t in 0..MAX_TIERS {
            let flags = compiled.tier_flags.get(t as usize).copied().unwrap_or(0);
            flags_now.push(flags);
            if held_flags.as_ref().and_then(|h| h.get(t as usize)) != Some(&flags) {
                self.tiers
                    .set(tier_slot(next, t), TierConfig { flags, _pad: 0 }, 0)
                    .map_err(map_err(map_names::TIERS))?;
            }
        }
        self.tiers_in[n] = Some(flags_now);
        self.write_names(next, &compiled.names)?;
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
            if self.written.get(id) != Some(&entry) {
                self.write_cgroup(*id, entry)?;
            }
        }
        self.grants.prepare(next, tier_of)?;
        let mut cfg = self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        cfg.default_tier[n] = compiled.default_tier;
        cfg.active_gen = next;
        cfg.flags |= CONFIG_F_POLICY_LOADED;
        // The flip: from here on programs read generation `next`.
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(map_names::CONFIG))?;
        self.active_gen = next;
        Ok(SwapStats {
            generation: next,
            rules: compiled.rules.len(),
            rules_written: written,
            cgroups: cgroups.len(),
        })
    }

    /// Brings `TG_FQDN_PORTS` of `generation` to `want`. The map is small
    /// (one entry per name pattern per tier), so it is read back each time.
    fn write_names(&mut self, generation: u32, want: &[CompiledName]) -> Result<(), SyncError> {
        let key = |n: &CompiledName| FqdnKey {
            generation,
            tier: n.tier,
            pattern: n.pattern,
        };
        let held: StdHashMap<FqdnKey, PortSet> = self
            .names
            .iter()
            .flatten()
            .filter(|(k, _)| k.generation == generation)
            .collect();
        let wanted: StdHashMap<FqdnKey, PortSet> = want.iter().map(|n| (key(n), n.ports)).collect();
        for k in held.keys().filter(|k| !wanted.contains_key(k)) {
            match self.names.remove(k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(map_names::FQDN_PORTS)(e)),
            }
        }
        for (k, ports) in &wanted {
            if held.get(k) != Some(ports) {
                self.names
                    .insert(*k, *ports, 0)
                    .map_err(map_err(map_names::FQDN_PORTS))?;
            }
        }
        Ok(())
    }

    /// Sets `CONFIG_F_GRANTS` to whether any elevation is in force: set
    /// before an entry is first read, cleared after the last is removed.
    pub fn write_grants_flag(&mut self) -> Result<(), SyncError> {
        let mut cfg = self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        let want = if self.grants.any() {
            cfg.flags | CONFIG_F_GRANTS
        } else {
            cfg.flags & !CONFIG_F_GRANTS
        };
        if want != cfg.flags {
            cfg.flags = want;
            self.config
                .set(0, cfg, 0)
                .map_err(map_err(map_names::CONFIG))?;
        }
        Ok(())
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

    /// What generation `generation` of `TG_RULES` holds, read from the map
    /// (written by an earlier agent, or by a swap that failed half way).
    fn read_rules(&self, generation: u32) -> RuleSet {
        let mut held: RuleSet = self
            .rules
            .iter()
            .flatten()
            .filter(|(k, _)| k.data().generation == generation)
            .map(|(k, ports)| {
                let d = k.data();
                CompiledRule {
                    tier: d.tier,
                    prefix_len: k.prefix_len() - RULE_KEY_FIXED_BITS,
                    addr: d.addr,
                    ports,
                }
            })
            .collect();
        held.sort_unstable_by_key(order);
        held
    }
}

fn rule_key(generation: u32, r: &CompiledRule) -> Key<RuleKey> {
    Key::new(
        RULE_KEY_FIXED_BITS + r.prefix_len,
        RuleKey {
            generation,
            tier: r.tier,
            addr: r.addr,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::{Change, CompiledRule, diff_rules};
    use agent_common::PortSet;

    fn rule(tier: u32, last: u8, any_port: u32) -> CompiledRule {
        let mut addr = [0u8; 16];
        addr[15] = last;
        CompiledRule {
            tier,
            prefix_len: 128,
            addr,
            ports: PortSet {
                any_port,
                ..Default::default()
            },
        }
    }

    /// (tier, last address byte) of the rules put and deleted.
    type Written = (Vec<(u32, u8)>, Vec<(u32, u8)>);

    fn diff(held: &[CompiledRule], want: &[CompiledRule]) -> Written {
        let (mut put, mut del) = (Vec::new(), Vec::new());
        diff_rules(held, want, |c| match c {
            Change::Put(r) => put.push((r.tier, r.addr[15])),
            Change::Delete(r) => del.push((r.tier, r.addr[15])),
        });
        (put, del)
    }

    #[test]
    fn diff_writes_only_what_differs() {
        let held = [rule(0, 1, 1), rule(0, 2, 1), rule(0, 4, 1), rule(1, 1, 1)];
        let want = [
            rule(0, 2, 1),
            rule(0, 3, 1),
            rule(0, 4, 2),
            rule(1, 1, 1),
            rule(1, 9, 1),
        ];
        let (put, del) = diff(&held, &want);
        // 0/3 and 1/9 are new, 0/4 changed ports; 0/1 is gone.
        assert_eq!(put, vec![(0, 3), (0, 4), (1, 9)]);
        assert_eq!(del, vec![(0, 1)]);
        assert_eq!(diff(&want, &want), (vec![], vec![]));
        assert_eq!(diff(&[], &want).0.len(), want.len());
        assert_eq!(diff(&held, &[]).1.len(), held.len());
    }
}
