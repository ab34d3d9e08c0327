//! Which rule allowed an attempt, by a stable id.
//!
//! The kernel's trie holds, per destination prefix, the union of every rule
//! of the tier that covers it, so the verdict does not say which rule
//! decided. User space knows the policy of each generation and the rules'
//! order, so it names the rule exactly as `policy explain` does: the first
//! rule of the tier, in file order, that admits the destination, port and
//! protocol (for an address a DNS answer opened: the first rule with a name
//! pattern matching that name and admitting the port and protocol).
//!
//! A rule's id is `r-` and 12 hex digits of SHA-256 over the tier name and
//! the rule's canonical form (normalised networks, patterns, ports,
//! protocols). It stays the same when rules move or other rules change, and
//! changes when the rule's own content does: "last use of this rule" is then
//! about exactly this grant.

use std::net::IpAddr;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::explain::Proto;
use super::fqdn::normalize;
use super::model::{EgressRule, Policy, normalize_addr};

/// A rule of a policy, by tier, position and id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub tier: String,
    pub index: usize,
    pub uid: String,
}

/// The stable id of `rule` in the tier named `tier`.
pub fn rule_uid(tier: &str, rule: &EgressRule) -> String {
    let canonical = serde_json::to_vec(rule).expect("a rule always serializes");
    let mut h = Sha256::new();
    h.update(tier.as_bytes());
    h.update([0]);
    h.update(&canonical);
    let d = h.finalize();
    let mut s = String::with_capacity(14);
    s.push_str("r-");
    for b in &d[..6] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl EgressRule {
    /// Whether the port and protocol are admitted (the destination aside).
    pub fn admits_port(&self, port: u16, proto: Proto) -> bool {
        let proto_ok = match proto {
            Proto::Tcp => self.protocols.tcp,
            Proto::Udp => self.protocols.udp,
        };
        proto_ok
            && self
                .ports
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|&(lo, hi)| lo <= port && port <= hi))
    }
}

impl Policy {
    /// Every rule of every tier with its id, in file order.
    pub fn rule_refs(&self) -> Vec<RuleRef> {
        self.tiers
            .iter()
            .flat_map(|t| {
                t.egress.iter().enumerate().map(|(index, r)| RuleRef {
                    tier: t.name.clone(),
                    index,
                    uid: rule_uid(&t.name, r),
                })
            })
            .collect()
    }

    /// The first address rule of tier `tier` admitting `dst:port/proto`.
    pub fn rule_for_addr(
        &self,
        tier: usize,
        dst: IpAddr,
        port: u16,
        proto: Proto,
    ) -> Option<usize> {
        let dst = normalize_addr(dst);
        self.tiers
            .get(tier)?
            .egress
            .iter()
            .position(|r| r.admits(dst, port, proto))
    }

    /// The first name rule of tier `tier` whose patterns match `name` and
    /// that admits `port/proto`.
    pub fn rule_for_name(&self, tier: usize, name: &str, port: u16, proto: Proto) -> Option<usize> {
        let name = normalize(name).ok()?;
        self.tiers
            .get(tier)?
            .egress
            .iter()
            .position(|r| r.admits_port(port, proto) && r.fqdns.iter().any(|p| p.matches(&name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::with_spec;

    const SPEC: &str = r#"
spec:
  defaultTier: web
  dns:
    resolvers: ["10.0.0.53"]
  tiers:
    - name: web
      egress:
        - cidrs: ["10.0.0.0/8"]
          ports: ["443"]
          protocols: [tcp]
        - cidrs: ["10.1.0.0/16"]
        - fqdns: ["*.example.com"]
          ports: ["443"]
        - fqdns: ["**.example.com"]
    - name: other
      egress:
        - cidrs: ["10.0.0.0/8"]
          ports: ["443"]
          protocols: [tcp]
"#;

    #[test]
    fn first_admitting_rule_in_file_order() {
        let p = with_spec(SPEC);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(p.rule_for_addr(0, ip("10.1.2.3"), 443, Proto::Tcp), Some(0));
        assert_eq!(p.rule_for_addr(0, ip("10.1.2.3"), 443, Proto::Udp), Some(1));
        assert_eq!(
            p.rule_for_addr(0, ip("::ffff:10.1.2.3"), 80, Proto::Tcp),
            Some(1)
        );
        assert_eq!(p.rule_for_addr(0, ip("10.2.0.1"), 80, Proto::Tcp), None);
        assert_eq!(p.rule_for_addr(7, ip("10.1.2.3"), 443, Proto::Tcp), None);
        assert_eq!(
            p.rule_for_name(0, "API.example.com.", 443, Proto::Tcp),
            Some(2)
        );
        assert_eq!(
            p.rule_for_name(0, "a.b.example.com", 443, Proto::Tcp),
            Some(3)
        );
        assert_eq!(
            p.rule_for_name(0, "api.example.com", 80, Proto::Udp),
            Some(3)
        );
        assert_eq!(p.rule_for_name(0, "example.com", 443, Proto::Tcp), None);
        assert_eq!(p.rule_for_name(1, "api.example.com", 443, Proto::Tcp), None);
    }

    #[test]
    fn ids_are_stable_per_content_and_tier() {
        let p = with_spec(SPEC);
        let refs = p.rule_refs();
        assert_eq!(refs.len(), 5);
        assert!(
            refs.iter()
                .all(|r| r.uid.len() == 14 && r.uid.starts_with("r-"))
        );
        // The same rule in two tiers: two ids.
        assert_ne!(refs[0].uid, refs[4].uid);
        // Moving a rule keeps its id; editing it changes it.
        let moved = with_spec(&SPEC.replace(
            "        - cidrs: [\"10.0.0.0/8\"]\n          ports: [\"443\"]\n          protocols: [tcp]\n        - cidrs: [\"10.1.0.0/16\"]\n",
            "        - cidrs: [\"10.1.0.0/16\"]\n        - cidrs: [\"10.0.0.0/8\"]\n          ports: [\"443\"]\n          protocols: [tcp]\n",
        ));
        let m = moved.rule_refs();
        assert_eq!(m[1].uid, refs[0].uid);
        assert_eq!(m[0].uid, refs[1].uid);
        let edited = with_spec(&SPEC.replacen("10.1.0.0/16", "10.1.0.0/17", 1));
        assert_ne!(edited.rule_refs()[1].uid, refs[1].uid);
        // Pinned: the id of a rule never changes between releases.
        assert_eq!(refs[1].uid, "r-a9a691ca1c80");
    }
}
