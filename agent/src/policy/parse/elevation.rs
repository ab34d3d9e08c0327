//! `spec.elevation`: which time-boxed tier elevations may be granted, each
//! naming two tiers of the policy and the longest grant.

use std::collections::HashMap;

use super::tiers::TierNames;
use super::walker::{KeyPath, Walker};
use crate::duration::Span;
use crate::policy::model::{Elevation, HOST_TIER_NAME, MAX_ELEVATION};
use crate::policy::yaml::Node;

const ELEVATION_KEYS: &[&str] = &["from", "to", "maxDuration"];
const PATH: KeyPath<'static> = KeyPath::At("spec.elevation");

impl Walker<'_> {
    /// The list; every item is checked even after a bad one, then
    /// duplicates (the same `from` and `to` twice) are reported at the later
    /// one, naming the line of the first.
    pub(super) fn elevation(
        &mut self,
        node: &Node<'_>,
        names: &TierNames,
    ) -> Option<Vec<Elevation>> {
        let items = self.list(node, PATH)?;
        let mut first_at: HashMap<(usize, usize), (usize, usize)> = HashMap::new();
        let mut index = 0;
        self.each(items, PATH, |w, item, path| {
            let i = index;
            index += 1;
            let e = w.one_elevation(item, path, names)?;
            if let Some(&(first, line)) = first_at.get(&(e.from, e.to)) {
                w.fail(
                    item,
                    path,
                    &format!(
                        "the same elevation as spec.elevation[{first}] (line {line}); list each from/to pair once"
                    ),
                );
                return None;
            }
            first_at.insert((e.from, e.to), (i, item.start.line()));
            Some(e)
        })
    }

    fn one_elevation(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        names: &TierNames,
    ) -> Option<Elevation> {
        let f = self.mapping(node, path, ELEVATION_KEYS, ELEVATION_KEYS)?;
        let from = f
            .get("from")
            .and_then(|n| self.elevation_tier(n, path.key("from"), names));
        let to = f
            .get("to")
            .and_then(|n| self.elevation_tier(n, path.key("to"), names));
        let max_duration = f
            .get("maxDuration")
            .and_then(|n| self.max_duration(n, path.key("maxDuration")));
        if let (Some(a), Some(b), Some(n)) = (from, to, f.get("to"))
            && a == b
        {
            self.fail(
                n,
                path.key("to"),
                "the same tier as `from`; an elevation moves a workload to another tier",
            );
            return None;
        }
        Some(Elevation {
            from: from?,
            to: to?,
            max_duration: max_duration?,
        })
    }

    /// A tier reference; `host` gets its own reason (it is no tier at all).
    fn elevation_tier(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        names: &TierNames,
    ) -> Option<usize> {
        if self.string(node, path)? == HOST_TIER_NAME {
            self.fail(
                node,
                path,
                "\"host\" is not a tier: host cgroups are not enforced, so there is nothing to elevate from or to",
            );
            return None;
        }
        self.tier_ref(node, path, names)
    }

    fn max_duration(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<Span> {
        let d = self.duration(node, path)?;
        if d == Span::default() {
            self.fail(node, path, "must be longer than 0s");
            return None;
        }
        if d > MAX_ELEVATION {
            self.fail(
                node,
                path,
                &format!(
                    "{d} is longer than {MAX_ELEVATION}: a break-glass grant longer than a week is a policy edit, not an elevation (bind the workload to the tier instead)"
                ),
            );
            return None;
        }
        Some(d)
    }
}
