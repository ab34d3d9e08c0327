//! The advise report: text for people, one JSON document for pipelines, and
//! the diff between the current policy and the proposal (both rendered the
//! same way, so only what changed shows).

use std::fmt::Write;
use std::path::Path;

use serde_json::json;

use super::analyze::{Analysis, IdentityReport, Status};
use super::when;
use crate::policy::Policy;

pub struct Report<'a> {
    pub policy: &'a Policy,
    pub analysis: &'a Analysis,
    pub proposed_version: &'a str,
    pub out: Option<&'a Path>,
    pub diff: &'a str,
}

/// Unified diff of two policy texts (`current` → `proposed`).
pub fn diff(current: &str, proposed: &str) -> String {
    similar::TextDiff::from_lines(current, proposed)
        .unified_diff()
        .context_radius(2)
        .header("current", "proposed")
        .to_string()
}

fn index(i: Option<f64>) -> String {
    i.map_or("n/a (no rule could be judged)".into(), |v| {
        format!("{v:.2}")
    })
}

fn last(ms: Option<u64>) -> String {
    ms.map_or("never".into(), when)
}

impl Report<'_> {
    fn unowned(&self) -> Vec<&IdentityReport> {
        self.analysis
            .identities
            .iter()
            .filter(|i| i.owner.is_none())
            .collect()
    }

    pub fn json(&self) -> String {
        let a = self.analysis;
        let identities: Vec<_> = a
            .identities
            .iter()
            .map(|i| {
                json!({
                    "identity": i.identity,
                    "tier": i.tier,
                    "owner": i.owner,
                    "nodes": i.nodes,
                    "first_seen_ms": i.first_seen_ms,
                    "last_seen_ms": i.last_seen_ms,
                    "stale": i.stale,
                    "over_privilege_index": i.over_privilege_index,
                    "judged_rules": i.judged_rules,
                    "unused_rules": i.unused().collect::<Vec<_>>(),
                    "rules": i.rules,
                    "observed": i.observed,
                    "denied": i.denied,
                })
            })
            .collect();
        json!({
            "policy": {"name": self.policy.name, "version": self.policy.version},
            "window": a.window,
            "identities": identities,
            "tiers": a.tiers,
            "unowned": self.unowned().iter().map(|i| &i.identity).collect::<Vec<_>>(),
            "stale": a.identities.iter().filter(|i| i.stale).map(|i| &i.identity).collect::<Vec<_>>(),
            "proposal": {
                "version": self.proposed_version,
                "file": self.out.map(|p| p.display().to_string()),
                "diff": self.diff,
            },
        })
        .to_string()
    }

    pub fn text(&self) -> String {
        let a = self.analysis;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "policy {} ({}); window {} to {}",
            self.policy.name,
            self.policy.version,
            when(a.window.start_ms),
            when(a.window.now_ms)
        );
        let _ = writeln!(o, "\nper tier (all identities):");
        for t in &a.tiers {
            let used = t.rules.iter().filter(|r| r.status == Status::Used).count();
            let unused = t
                .rules
                .iter()
                .filter(|r| r.status == Status::Unused)
                .count();
            let new = t.rules.len() - used - unused;
            let _ = writeln!(
                o,
                "  {:<20} identities {:<3} rules {:<3} used {:<3} unused {:<3} too new {:<3} over-privilege {}",
                t.tier,
                t.identities,
                t.rules.len(),
                used,
                unused,
                new,
                index(t.over_privilege_index)
            );
            for d in t.outside_current_grant.iter().take(5) {
                let _ = writeln!(
                    o,
                    "    allowed by a rule no longer in the policy: {}:{}/{} ×{}",
                    d.destination, d.port, d.protocol, d.count
                );
            }
        }
        let _ = writeln!(o, "\nper identity:");
        for i in &a.identities {
            let _ = writeln!(
                o,
                "  {} in {}{}{}",
                i.identity,
                i.tier,
                i.owner
                    .as_ref()
                    .map_or(" (no owner label)".to_string(), |w| format!(" (owner {w})")),
                if i.stale { " STALE" } else { "" }
            );
            let _ = writeln!(
                o,
                "    over-privilege {} of {} judged rules; allowed {} to {} destinations, denied {}, audit-denied {}; last seen {}",
                index(i.over_privilege_index),
                i.judged_rules,
                i.observed.allowed,
                i.observed.destinations,
                i.observed.denied,
                i.observed.audit_denied,
                when(i.last_seen_ms)
            );
            for r in i.unused() {
                let _ = writeln!(
                    o,
                    "    unused: egress[{}] {} (last used {})",
                    r.index,
                    r.uid,
                    last(r.last_used_ms)
                );
            }
            for d in i.denied.iter().take(5) {
                let _ = writeln!(
                    o,
                    "    {}: {}:{}/{} ×{} (last {})",
                    d.verdict,
                    d.destination,
                    d.port,
                    d.protocol,
                    d.count,
                    when(d.last_ms)
                );
            }
        }
        let unowned = self.unowned();
        if !unowned.is_empty() {
            let _ = writeln!(
                o,
                "\nidentities without an owner label (tiergate.io/owner):"
            );
            for i in unowned {
                let _ = writeln!(o, "  {}", i.identity);
            }
        }
        let stale: Vec<_> = a.identities.iter().filter(|i| i.stale).collect();
        if !stale.is_empty() {
            let _ = writeln!(o, "\nidentities not seen recently:");
            for i in stale {
                let _ = writeln!(o, "  {} (last seen {})", i.identity, when(i.last_seen_ms));
            }
        }
        let _ = writeln!(
            o,
            "\nproposed policy {}{}",
            self.proposed_version,
            self.out
                .map_or(" (not written: use --out FILE)".to_string(), |p| format!(
                    " written to {}",
                    p.display()
                ))
        );
        if self.diff.is_empty() {
            let _ = writeln!(o, "no change proposed");
        } else {
            o.push_str(self.diff);
        }
        o
    }
}
