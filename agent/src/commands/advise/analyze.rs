//! Granted vs used, per identity class and tier: which rules of the current
//! policy were used in the window, which were not, and which cannot be
//! judged yet.
//!
//! A rule is *used* by an identity when an allowed attempt of that identity
//! in that tier names the rule (`unmapped.tiergate.rule.uid`, a content id:
//! the same rule under an older policy version counts). Denied and
//! audit-denied attempts never count as use. A rule is *judged* only when it
//! was in force for the whole window (a policy record listed it at or before
//! the window's start) and the identity was seen at or before the window's
//! start (AWS's last-accessed rule); otherwise it is *new* and counts
//! neither way. The over-privilege index is the share of judged rules that
//! went unused: 0 = every rule used, 1 = none.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use tiergate_collector::store::{IdentityRow, ObservationRow, RuleRow};

use crate::policy::{Policy, RuleRef};

/// The evidence advise reads: the store's rows, or the same rows built from
/// event files.
#[derive(Default)]
pub struct Evidence {
    pub observations: Vec<ObservationRow>,
    pub rules: Vec<RuleRow>,
    pub identities: Vec<IdentityRow>,
}

/// The window: `[start_ms, now_ms]`; identities unseen for `stale_ms` are
/// reported as stale.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Window {
    pub start_ms: u64,
    pub now_ms: u64,
    pub stale_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Used,
    Unused,
    /// In force, or the identity seen, only since inside the window.
    New,
}

/// One rule of the current policy, for one identity or a whole tier.
#[derive(Clone, Debug, Serialize)]
pub struct RuleUse {
    pub index: usize,
    pub uid: String,
    pub status: Status,
    /// Allowed attempts this rule decided (rows last seen in the window).
    pub count: u64,
    /// The last allowed attempt it decided, at any time (None: never seen).
    pub last_used_ms: Option<u64>,
    /// The first policy record that listed it (None: no record of it).
    pub in_force_since_ms: Option<u64>,
}

/// Attempts seen, by verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Observed {
    pub allowed: u64,
    pub denied: u64,
    pub audit_denied: u64,
    /// Distinct (destination, port, protocol) allowed.
    pub destinations: usize,
}

/// A destination with its counts.
#[derive(Clone, Debug, Serialize)]
pub struct Dest {
    pub destination: String,
    pub port: u16,
    pub protocol: String,
    pub verdict: String,
    pub count: u64,
    pub last_ms: u64,
}

/// One identity class in one tier.
#[derive(Clone, Debug, Serialize)]
pub struct IdentityReport {
    pub identity: String,
    pub tier: String,
    pub owner: Option<String>,
    pub nodes: Vec<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub stale: bool,
    /// None when no rule could be judged.
    pub over_privilege_index: Option<f64>,
    pub judged_rules: usize,
    pub rules: Vec<RuleUse>,
    pub observed: Observed,
    /// Denied and audit-denied destinations, most frequent first (≤ 20).
    pub denied: Vec<Dest>,
}

impl IdentityReport {
    pub fn unused(&self) -> impl Iterator<Item = &RuleUse> {
        self.rules.iter().filter(|r| r.status == Status::Unused)
    }
}

/// One tier over all its identities: what the proposal keeps and removes.
#[derive(Clone, Debug, Serialize)]
pub struct TierReport {
    pub tier: String,
    pub identities: usize,
    pub over_privilege_index: Option<f64>,
    pub judged_rules: usize,
    pub rules: Vec<RuleUse>,
    /// Allowed in the window by rules the current policy no longer has.
    pub outside_current_grant: Vec<Dest>,
}

/// The whole analysis.
#[derive(Debug, Serialize)]
pub struct Analysis {
    pub window: Window,
    pub identities: Vec<IdentityReport>,
    pub tiers: Vec<TierReport>,
}

fn index_of(judged: usize, unused: usize) -> Option<f64> {
    (judged > 0).then(|| unused as f64 / judged as f64)
}

struct IdentityInfo {
    owner: Option<String>,
    nodes: BTreeSet<String>,
    first: u64,
    last: u64,
}

/// Granted vs used for `policy` (the current one) over `ev` in `w`.
pub fn analyze(policy: &Policy, ev: &Evidence, w: Window) -> Analysis {
    let refs = policy.rule_refs();
    let mut since: HashMap<&str, u64> = HashMap::new();
    for r in &ev.rules {
        let e = since.entry(r.uid.as_str()).or_insert(r.first_seen_ms);
        *e = (*e).min(r.first_seen_ms);
    }
    let mut who: BTreeMap<&str, IdentityInfo> = BTreeMap::new();
    let mut pairs: BTreeSet<(&str, &str)> = BTreeSet::new();
    for row in &ev.identities {
        let i = who.entry(&row.identity).or_insert(IdentityInfo {
            owner: None,
            nodes: BTreeSet::new(),
            first: row.first_seen_ms,
            last: row.last_seen_ms,
        });
        i.owner = i.owner.take().or(row.owner.clone());
        i.nodes.insert(row.node.clone());
        i.first = i.first.min(row.first_seen_ms);
        i.last = i.last.max(row.last_seen_ms);
        for t in &row.tiers {
            pairs.insert((&row.identity, t));
        }
    }
    for o in &ev.observations {
        pairs.insert((&o.key.identity, &o.key.tier));
        let i = who.entry(&o.key.identity).or_insert(IdentityInfo {
            owner: None,
            nodes: BTreeSet::new(),
            first: o.seen.first_ms,
            last: o.seen.last_ms,
        });
        i.first = i.first.min(o.seen.first_ms);
        i.last = i.last.max(o.seen.last_ms);
    }
    let in_window = |o: &ObservationRow| o.seen.last_ms >= w.start_ms;
    let mut identities = Vec::new();
    for (identity, tier) in pairs {
        let Some(ti) = policy.tier_index(tier) else {
            continue; // host, or a tier the current policy no longer has
        };
        let info = &who[identity];
        let rows: Vec<&ObservationRow> = ev
            .observations
            .iter()
            .filter(|o| o.key.identity == identity && o.key.tier == tier)
            .collect();
        let seen_whole_window = info.first <= w.start_ms;
        let rules = rule_uses(&refs, ti, policy, &rows, &since, w, seen_whole_window);
        let judged = rules.iter().filter(|r| r.status != Status::New).count();
        let unused = rules.iter().filter(|r| r.status == Status::Unused).count();
        identities.push(IdentityReport {
            identity: identity.to_string(),
            tier: tier.to_string(),
            owner: info.owner.clone(),
            nodes: info.nodes.iter().cloned().collect(),
            first_seen_ms: info.first,
            last_seen_ms: info.last,
            stale: w.now_ms.saturating_sub(info.last) > w.stale_ms,
            over_privilege_index: index_of(judged, unused),
            judged_rules: judged,
            rules,
            observed: observed(rows.iter().copied().filter(|o| in_window(o))),
            denied: denied(rows.iter().copied().filter(|o| in_window(o))),
        });
    }
    let tiers = policy
        .tiers
        .iter()
        .enumerate()
        .map(|(ti, t)| tier_report(policy, ti, &refs, ev, &identities, &since, w, &t.name))
        .collect();
    Analysis {
        window: w,
        identities,
        tiers,
    }
}

#[allow(clippy::too_many_arguments)]
fn tier_report(
    policy: &Policy,
    ti: usize,
    refs: &[RuleRef],
    ev: &Evidence,
    identities: &[IdentityReport],
    since: &HashMap<&str, u64>,
    w: Window,
    name: &str,
) -> TierReport {
    let members: Vec<&IdentityReport> = identities.iter().filter(|i| i.tier == name).collect();
    let rows: Vec<&ObservationRow> = ev
        .observations
        .iter()
        .filter(|o| o.key.tier == name)
        .collect();
    // Judged for the tier when some member was seen the whole window.
    let any_old_member = members.iter().any(|m| m.first_seen_ms <= w.start_ms);
    let rules = rule_uses(refs, ti, policy, &rows, since, w, any_old_member);
    let judged = rules.iter().filter(|r| r.status != Status::New).count();
    let unused = rules.iter().filter(|r| r.status == Status::Unused).count();
    let current: BTreeSet<&str> = rules.iter().map(|r| r.uid.as_str()).collect();
    let mut outside: Vec<Dest> = rows
        .iter()
        .filter(|o| {
            o.key.verdict == "allow"
                && !o.key.rule_uid.is_empty()
                && !current.contains(o.key.rule_uid.as_str())
                && o.seen.last_ms >= w.start_ms
        })
        .map(|o| dest(o))
        .collect();
    outside.sort_by_key(|d| std::cmp::Reverse(d.count));
    TierReport {
        tier: name.to_string(),
        identities: members.len(),
        over_privilege_index: index_of(judged, unused),
        judged_rules: judged,
        rules,
        outside_current_grant: outside,
    }
}

/// The uses of tier `ti`'s rules among `rows` (one identity's, or a tier's).
fn rule_uses(
    refs: &[RuleRef],
    ti: usize,
    policy: &Policy,
    rows: &[&ObservationRow],
    since: &HashMap<&str, u64>,
    w: Window,
    seen_whole_window: bool,
) -> Vec<RuleUse> {
    let tier = &policy.tiers[ti].name;
    refs.iter()
        .filter(|r| &r.tier == tier)
        .map(|r| {
            let mut count = 0;
            let mut last: Option<u64> = None;
            let mut used = false;
            for o in rows
                .iter()
                .filter(|o| o.key.verdict == "allow" && o.key.rule_uid == r.uid)
            {
                last = Some(last.map_or(o.seen.last_ms, |l| l.max(o.seen.last_ms)));
                if o.seen.last_ms >= w.start_ms {
                    used = true;
                    count += o.seen.count;
                }
            }
            let in_force = since.get(r.uid.as_str()).copied();
            let status = if used {
                Status::Used
            } else if seen_whole_window && in_force.is_some_and(|s| s <= w.start_ms) {
                Status::Unused
            } else {
                Status::New
            };
            RuleUse {
                index: r.index,
                uid: r.uid.clone(),
                status,
                count,
                last_used_ms: last,
                in_force_since_ms: in_force,
            }
        })
        .collect()
}

fn dest(o: &ObservationRow) -> Dest {
    Dest {
        destination: o.key.destination.clone(),
        port: o.key.port,
        protocol: o.key.protocol.clone(),
        verdict: o.key.verdict.clone(),
        count: o.seen.count,
        last_ms: o.seen.last_ms,
    }
}

fn observed<'a>(rows: impl Iterator<Item = &'a ObservationRow>) -> Observed {
    let mut out = Observed::default();
    let mut dests = BTreeSet::new();
    for o in rows.filter(|o| o.key.protocol != "dns") {
        match o.key.verdict.as_str() {
            "allow" => {
                out.allowed += o.seen.count;
                dests.insert((&o.key.destination, o.key.port, &o.key.protocol));
            }
            "audit-deny" => out.audit_denied += o.seen.count,
            _ => out.denied += o.seen.count,
        }
    }
    out.destinations = dests.len();
    out
}

fn denied<'a>(rows: impl Iterator<Item = &'a ObservationRow>) -> Vec<Dest> {
    let mut v: Vec<Dest> = rows
        .filter(|o| o.key.verdict != "allow")
        .map(dest)
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_ms.cmp(&a.last_ms)));
    v.truncate(20);
    v
}
