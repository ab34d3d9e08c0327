//! The proposed policy: each tier allows what its identities used in the
//! window, and nothing its current rules did not already allow.
//!
//! Per rule of the current policy:
//! - used: narrowed to what it decided. Address rules keep the addresses
//!   seen, as /32 (/128), or their /24 (/64) when at least
//!   [`PREFIX_MIN_ADDRS`] addresses of it were seen and the rule covers the
//!   whole prefix (never anything wider than the rule: no RFC 1918 widening).
//!   Name rules keep the names seen (a wildcard that matched more than
//!   [`MAX_LISTED_NAMES`] names stays the wildcard). Ports become the ports
//!   seen (more than [`MAX_LISTED_PORTS`]: the rule's own), protocols the
//!   protocols seen. The comment above it says on what it is based.
//! - unused (judged): left out, listed in the tier's comment with its last
//!   use.
//! - new (not judged): kept as it is, with a comment saying why.
//!
//! A used rule becomes one rule whose addresses, ports and protocols are
//! each the set seen, so it may admit a pairing not seen itself (address A
//! on a port only B used); it never admits anything the old rule did not.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tiergate_collector::store::ObservationRow;

use super::analyze::{Analysis, Status};
use super::when;
use crate::policy::fqdn::{Depth, NamePattern};
use crate::policy::model::{EgressRule, Mode, Policy, Protocols, normalize_addr};
use crate::policy::render::{Comments, rule_yaml};

/// Addresses of one /24 (/64) seen before the proposal names the prefix.
pub const PREFIX_MIN_ADDRS: usize = 4;
/// Names a wildcard may have matched and still be replaced by them.
pub const MAX_LISTED_NAMES: usize = 5;
/// Ports listed one by one at most.
pub const MAX_LISTED_PORTS: usize = 16;
/// At most this many attempts: the comment marks the path as rare (kept).
pub const RARE: u64 = 3;

/// The proposal and its comments.
pub struct Proposal {
    pub policy: Policy,
    pub comments: Comments,
}

#[derive(Default)]
struct Used {
    addrs: BTreeSet<IpAddr>,
    names: BTreeSet<String>,
    ports: BTreeSet<u16>,
    tcp: bool,
    udp: bool,
    count: u64,
    first: u64,
    last: u64,
    identities: BTreeSet<String>,
}

/// Builds the proposal from the current policy, the analysis and the rows.
/// `audit`: tiers whose rules changed are written in audit mode (staging).
pub fn propose(policy: &Policy, a: &Analysis, rows: &[ObservationRow], audit: bool) -> Proposal {
    let mut out = policy.clone();
    let mut comments = Comments::default();
    for (ti, tier) in policy.tiers.iter().enumerate() {
        let Some(report) = a.tiers.iter().find(|t| t.tier == tier.name) else {
            continue;
        };
        let mut used: BTreeMap<&str, Used> = BTreeMap::new();
        for o in rows.iter().filter(|o| {
            o.key.tier == tier.name
                && o.key.verdict == "allow"
                && !o.key.rule_uid.is_empty()
                && o.seen.last_ms >= a.window.start_ms
        }) {
            let u = used.entry(o.key.rule_uid.as_str()).or_default();
            match o.key.destination.parse::<IpAddr>() {
                Ok(ip) => u.addrs.insert(normalize_addr(ip)),
                Err(_) => u.names.insert(o.key.destination.to_ascii_lowercase()),
            };
            u.ports.insert(o.key.port);
            u.tcp |= o.key.protocol == "tcp";
            u.udp |= o.key.protocol == "udp";
            u.first = if u.count == 0 {
                o.seen.first_ms
            } else {
                u.first.min(o.seen.first_ms)
            };
            u.last = u.last.max(o.seen.last_ms);
            u.count += o.seen.count;
            u.identities.insert(o.key.identity.clone());
        }
        let mut egress = Vec::new();
        let mut removed = Vec::new();
        let mut changed = false;
        for r in &report.rules {
            let rule = &tier.egress[r.index];
            let new_index = (ti, Some(egress.len()));
            match (r.status, used.get(r.uid.as_str())) {
                (Status::Used, Some(u)) => {
                    let narrowed = narrow(rule, u);
                    changed |= narrowed != *rule;
                    let mut c = vec![format!(
                        "{} allowed attempts by {} identit{}, {} to {}; from egress[{}] ({})",
                        u.count,
                        u.identities.len(),
                        if u.identities.len() == 1 { "y" } else { "ies" },
                        when(u.first),
                        when(u.last),
                        r.index,
                        r.uid
                    )];
                    if u.count <= RARE {
                        c.push("rare path: kept, check it is still wanted".into());
                    }
                    if narrowed != *rule {
                        c.push(format!("was: {}", one_line(rule)));
                    }
                    comments.at.insert(new_index, c);
                    egress.push(narrowed);
                }
                (Status::New, _) | (Status::Used, None) => {
                    comments.at.insert(
                        new_index,
                        vec![format!(
                            "kept as is: egress[{}] ({}) is too new to judge ({})",
                            r.index,
                            r.uid,
                            match r.in_force_since_ms {
                                Some(s) => format!("in force since {}", when(s)),
                                None => "no record of it in force".into(),
                            }
                        )],
                    );
                    egress.push(rule.clone());
                }
                (Status::Unused, _) => {
                    changed = true;
                    removed.push(format!(
                        "removed egress[{}] ({}), unused in the window, last used {}: {}",
                        r.index,
                        r.uid,
                        r.last_used_ms.map_or("never".into(), when),
                        one_line(rule)
                    ));
                }
            }
        }
        if !removed.is_empty() {
            comments.at.insert((ti, None), removed);
        }
        let t = &mut out.tiers[ti];
        t.egress = egress;
        if changed && audit && t.effective_mode(policy.mode) == Mode::Enforce {
            t.mode = Some(Mode::Audit);
        }
    }
    Proposal {
        policy: out,
        comments,
    }
}

fn one_line(r: &EgressRule) -> String {
    rule_yaml(r)
        .lines()
        .map(|l| l.trim().trim_start_matches("- "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The rule narrowed to what `u` saw it decide.
fn narrow(rule: &EgressRule, u: &Used) -> EgressRule {
    let mut r = rule.clone();
    if !rule.fqdns.is_empty() {
        if !u.names.is_empty() {
            let mut kept: Vec<NamePattern> = Vec::new();
            for p in &rule.fqdns {
                let matched: Vec<&String> = u.names.iter().filter(|n| p.matches(n)).collect();
                if matched.is_empty() {
                    continue;
                }
                if p.depth == Depth::Exact || matched.len() > MAX_LISTED_NAMES {
                    kept.push(p.clone());
                } else {
                    kept.extend(matched.iter().filter_map(|n| NamePattern::parse(n).ok()));
                }
            }
            kept.sort();
            kept.dedup();
            if !kept.is_empty() {
                r.fqdns = kept;
            }
        }
    } else if !u.addrs.is_empty() {
        r.cidrs = prefixes(&rule.cidrs, &u.addrs);
    }
    if u.ports.len() <= MAX_LISTED_PORTS {
        r.ports = Some(u.ports.iter().map(|&p| (p, p)).collect());
    }
    if u.tcp || u.udp {
        r.protocols = Protocols {
            tcp: u.tcp,
            udp: u.udp,
        };
    }
    r
}

/// The seen addresses as prefixes inside `granted`.
fn prefixes(granted: &[IpNet], addrs: &BTreeSet<IpAddr>) -> Vec<IpNet> {
    let mut groups: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
    for &a in addrs {
        let group = match a {
            IpAddr::V4(_) => IpNet::new(a, 24),
            IpAddr::V6(_) => IpNet::new(a, 64),
        }
        .expect("valid prefix")
        .trunc();
        groups.entry(group).or_default().push(a);
    }
    let mut out = Vec::new();
    for (group, members) in groups {
        if members.len() >= PREFIX_MIN_ADDRS && granted.iter().any(|g| g.contains(&group)) {
            out.push(group);
        } else {
            out.extend(members.into_iter().map(IpNet::from));
        }
    }
    out
}
