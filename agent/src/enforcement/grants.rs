//! `TG_GRANTS`: the elevations in force, as the kernel reads them.
//!
//! One entry per elevated cgroup: the granted tier's id in each generation
//! and the boot-clock time at which the grant ends. The programs compare
//! that time themselves, so a grant ends on time while no agent runs; user
//! space removes entries after the fact (and reports the end). The granted
//! tier is kept by *name* here: a policy swap writes its id under the new
//! policy into the generation being prepared, before the flip (see
//! `MapSync::swap`), so a reload that renumbers tiers never elevates to the
//! wrong one, and a reload that drops the tier grants nothing in it.
//!
//! `CONFIG_F_GRANTS` tells the programs to look: set while there is an
//! entry, cleared when the last one goes, so nodes without elevations pay
//! one bit test per connection.

use std::collections::HashMap as StdHashMap;

use agent_common::{GENERATIONS, GRANT_NO_TIER, Grant, map_names};
use aya::maps::{HashMap, MapData, MapError};

use super::sync::{SyncError, map_err};

/// What user space wants in force for one cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantEntry {
    pub id: u64,
    /// The granted tier, by name.
    pub tier: String,
    /// `CLOCK_BOOTTIME` nanoseconds at which it ends.
    pub expires_ns: u64,
}

/// The writer of `TG_GRANTS`.
pub struct GrantMap {
    map: HashMap<MapData, u64, Grant>,
    /// cgroup id → what was written.
    wanted: StdHashMap<u64, (GrantEntry, Grant)>,
}

impl GrantMap {
    pub fn new(map: HashMap<MapData, u64, Grant>) -> Self {
        Self {
            map,
            wanted: StdHashMap::new(),
        }
    }

    /// Entries an earlier agent left (cgroup id, value), for re-adoption.
    pub fn pinned(&self) -> Vec<(u64, Grant)> {
        self.map.iter().flatten().collect()
    }

    /// Whether any entry is wanted (the `CONFIG_F_GRANTS` bit).
    pub fn any(&self) -> bool {
        !self.wanted.is_empty()
    }

    /// Writes `e` for `cgroup`; `tier_id` names a tier under the policy in
    /// force (both generations get it: the inactive one is rewritten by the
    /// next swap before it is read).
    pub fn put(
        &mut self,
        cgroup: u64,
        e: GrantEntry,
        tier_id: impl Fn(&str) -> Option<u32>,
    ) -> Result<(), SyncError> {
        let id = tier_id(&e.tier).unwrap_or(GRANT_NO_TIER);
        let v = Grant {
            tier: [id; GENERATIONS],
            expires_ns: e.expires_ns,
            id: e.id,
        };
        if self.wanted.get(&cgroup).is_some_and(|(_, w)| *w == v) {
            return Ok(());
        }
        self.map
            .insert(cgroup, v, 0)
            .map_err(map_err(map_names::GRANTS))?;
        self.wanted.insert(cgroup, (e, v));
        Ok(())
    }

    /// Removes `cgroup`'s entry (gone already is fine).
    pub fn remove(&mut self, cgroup: u64) -> Result<(), SyncError> {
        self.wanted.remove(&cgroup);
        match self.map.remove(&cgroup) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map_names::GRANTS)(e)),
        }
    }

    /// Rewrites generation `generation` of every entry under a new policy
    /// (`tier_id`), before that generation becomes the active one.
    pub fn prepare(
        &mut self,
        generation: u32,
        tier_id: impl Fn(&str) -> Option<u32>,
    ) -> Result<(), SyncError> {
        let g = (generation & 1) as usize;
        for (cgroup, (e, v)) in &mut self.wanted {
            let id = tier_id(&e.tier).unwrap_or(GRANT_NO_TIER);
            if v.tier[g] != id {
                v.tier[g] = id;
                self.map
                    .insert(*cgroup, *v, 0)
                    .map_err(map_err(map_names::GRANTS))?;
            }
        }
        Ok(())
    }

    /// Removes entries nobody wants (left by an earlier agent).
    pub fn retain_wanted(&mut self) -> Result<usize, SyncError> {
        let stale: Vec<u64> = self
            .map
            .keys()
            .flatten()
            .filter(|k| !self.wanted.contains_key(k))
            .collect();
        for k in &stale {
            self.remove(*k)?;
        }
        Ok(stale.len())
    }
}
