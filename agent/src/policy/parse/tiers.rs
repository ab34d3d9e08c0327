//! `spec.tiers`: each tier's keys and name, the tier-name table, and references to a tier by name.

use std::collections::HashMap;

use super::walker::{KeyPath, Walker};
use crate::policy::model::{HOST_TIER_NAME, MetadataAccess, Tier};
use crate::policy::yaml::Node;

const TIER_KEYS: &[&str] = &["name", "description", "mode", "metadata", "egress"];

/// Where a tier name was defined, to resolve references and report duplicates.
#[derive(Default)]
pub(super) struct TierNames {
    by_name: HashMap<String, (usize, usize)>,
    in_order: Vec<String>,
}

impl TierNames {
    fn known(&self) -> String {
        if self.in_order.is_empty() {
            "none are defined".to_owned()
        } else {
            format!("known tiers: {}", self.in_order.join(", "))
        }
    }
}

fn is_tier_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

impl Walker<'_> {
    pub(super) fn tiers(&mut self, node: &Node<'_>, names: &mut TierNames) -> Option<Vec<Tier>> {
        let items = self.list(node, KeyPath::At("spec.tiers"))?;
        if items.is_empty() {
            self.fail(
                node,
                KeyPath::At("spec.tiers"),
                "must list at least one tier",
            );
            return None;
        }
        let max = agent_common::MAX_TIERS as usize;
        if items.len() > max {
            self.fail(
                node,
                KeyPath::At("spec.tiers"),
                &format!("{} tiers, more than the limit of {max}", items.len()),
            );
        }
        // `each` reads the items in order, so counting its calls gives each
        // tier its index.
        let mut index = 0;
        let tiers = self.each(items, KeyPath::At("spec.tiers"), |w, item, path| {
            let tier = w.tier(item, path, index, names);
            index += 1;
            tier
        });
        tiers.filter(|_| items.len() <= max)
    }

    fn tier(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        index: usize,
        names: &mut TierNames,
    ) -> Option<Tier> {
        let f = self.mapping(node, path, TIER_KEYS, &["name"])?;
        let name = f.get("name").and_then(|n| {
            let p = path.key("name");
            let s = self.string(n, p)?;
            // Record even a malformed name, so references to it are not also
            // reported as unknown (one mistake, one message).
            if let Some((_, line)) = names.by_name.get(s) {
                let line = *line;
                self.fail(
                    n,
                    p,
                    &format!("duplicate tier name {s:?} (first defined at line {line}); tier names must be unique"),
                );
                return None;
            }
            names.by_name.insert(s.to_owned(), (index, n.start.line()));
            names.in_order.push(s.to_owned());
            if !is_tier_name(s) {
                self.fail(
                    n,
                    p,
                    &format!("{s:?} is not a valid tier name (1-63 characters: lowercase letters, digits and '-')"),
                );
                return None;
            }
            if s == HOST_TIER_NAME {
                self.fail(
                    n,
                    p,
                    "\"host\" is reserved (events use it for cgroups that are not enforced); choose another name",
                );
                return None;
            }
            Some(s.to_owned())
        });
        let description = match f.get("description") {
            None => Some(None),
            Some(n) => self
                .string(n, path.key("description"))
                .map(|s| Some(s.to_owned())),
        };
        let mode = match f.get("mode") {
            None => Some(None),
            Some(n) => self.mode(n, path.key("mode")).map(Some),
        };
        let metadata = match f.get("metadata") {
            None => Some(MetadataAccess::Deny),
            Some(n) => self.tier_metadata(n, path.key("metadata")),
        };
        let egress = match f.get("egress") {
            None => Some(Vec::new()),
            Some(n) => self.egress(n, path.key("egress")),
        };
        Some(Tier {
            name: name?,
            description: description?,
            mode: mode?,
            metadata: metadata?,
            egress: egress?,
        })
    }

    /// A reference to a tier by name (`spec.defaultTier`, a binding's
    /// `tier`): the tier's index.
    pub(super) fn tier_ref(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        names: &TierNames,
    ) -> Option<usize> {
        let s = self.string(node, path)?;
        let found = names.by_name.get(s).map(|(i, _)| *i);
        if found.is_none() {
            self.fail(
                node,
                path,
                &format!("unknown tier {s:?} ({})", names.known()),
            );
        }
        found
    }
}
