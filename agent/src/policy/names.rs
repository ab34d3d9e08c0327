//! The name side of a compiled policy: each tier's `fqdns` patterns with a
//! stable id, what each admits (`TG_FQDN_PORTS`), and the per-tier index
//! the DNS proxy matches queried names against.
//!
//! A learned address carries the ids of the patterns that taught it, not
//! ports: the kernel looks the ports up in the active generation, so a
//! reload that drops a name or narrows its ports takes effect with the
//! generation flip, for addresses learned before it too. The id covers the
//! pattern and its `allowPrivate`, so an address learned under
//! `allowPrivate: true` stops opening when a reload takes that away.

use std::collections::BTreeMap;

use agent_common::{MAX_PORT_RANGES, PortSet};
use sha2::{Digest, Sha256};

use super::compile::{Acc, CompileError};
use super::fqdn::{NameIndex, NamePattern};
use super::model::Policy;

/// One `TG_FQDN_PORTS` entry (the generation is added by the loader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompiledName {
    /// Tier id.
    pub tier: u32,
    /// [`pattern_id`] of the pattern.
    pub pattern: u64,
    /// Union of the ports/protocols of the tier's rules naming the pattern.
    pub ports: PortSet,
}

/// The stable, non-zero id of (pattern, allowPrivate): the first 8 bytes of
/// a SHA-256 of its text, so it is the same in every agent and every
/// generation, and 0 (an unused slot in the kernel) never occurs.
pub fn pattern_id(pattern: &NamePattern, allow_private: bool) -> u64 {
    let mut h = Sha256::new();
    h.update(pattern.to_string().as_bytes());
    h.update(if allow_private { b"\x01" } else { b"\x00" });
    let d = h.finalize();
    let id = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    id.max(1)
}

/// A pattern of a tier as the proxy uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameRule {
    /// The pattern.
    pub pattern: NamePattern,
    /// Whether answers in private ranges may be learned under it.
    pub allow_private: bool,
    /// [`pattern_id`].
    pub id: u64,
}

/// The names one tier allows, indexed for lookup by queried name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierNames {
    /// Distinct (pattern, allowPrivate) of the tier; the index refers here.
    pub rules: Vec<NameRule>,
    /// Which of `rules` a name matches.
    pub index: NameIndex,
}

impl TierNames {
    /// The rules a (normalised) name matches.
    pub fn matching(&self, name: &str) -> Vec<&NameRule> {
        self.index
            .matching_rules(name)
            .into_iter()
            .map(|i| &self.rules[i])
            .collect()
    }
}

impl Policy {
    /// Per tier (index = tier id), the names it allows.
    pub fn tier_names(&self) -> Vec<TierNames> {
        self.tiers
            .iter()
            .map(|tier| {
                let mut out = TierNames::default();
                let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
                for rule in &tier.egress {
                    for p in &rule.fqdns {
                        let id = pattern_id(p, rule.allow_private);
                        let i = *seen.entry(id).or_insert_with(|| {
                            out.rules.push(NameRule {
                                pattern: p.clone(),
                                allow_private: rule.allow_private,
                                id,
                            });
                            out.rules.len() - 1
                        });
                        out.index.insert(p, i);
                    }
                }
                out
            })
            .collect()
    }

    /// The `TG_FQDN_PORTS` entries, sorted by (tier, pattern id).
    pub(super) fn compile_names(&self) -> Result<Vec<CompiledName>, CompileError> {
        let mut out = Vec::new();
        for (tier_id, tier) in self.tiers.iter().enumerate() {
            let mut accs: BTreeMap<u64, (String, Acc)> = BTreeMap::new();
            for rule in &tier.egress {
                for p in &rule.fqdns {
                    let (_, acc) = accs
                        .entry(pattern_id(p, rule.allow_private))
                        .or_insert_with(|| (p.to_string(), Acc::default()));
                    acc.add_rule(rule);
                }
            }
            for (pattern, (text, mut acc)) in accs {
                acc.normalize();
                let ports = acc
                    .port_set()
                    .map_err(|count| CompileError::TooManyPortRanges {
                        tier: tier.name.clone(),
                        cidr: text,
                        count,
                        limit: MAX_PORT_RANGES,
                    })?;
                out.push(CompiledName {
                    tier: tier_id as u32,
                    pattern,
                    ports,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{PROTO_TCP, PROTO_UDP, TIER_F_DNS};

    use super::*;
    use crate::policy::testing::with_spec;

    const SPEC: &str = r#"spec:
  dns: {resolvers: [10.0.0.53]}
  defaultTier: names
  tiers:
    - name: names
      egress:
        - fqdns: ["api.github.com", "*.s3.amazonaws.com"]
          ports: ["443"]
          protocols: [tcp]
        - fqdns: ["api.github.com"]
          ports: ["22"]
        - fqdns: ["vault.svc.test"]
          allowPrivate: true
        - cidrs: ["10.0.0.0/8"]
    - name: plain
      egress:
        - cidrs: ["10.0.0.0/8"]
"#;

    fn policy() -> Policy {
        with_spec(SPEC)
    }

    fn pat(s: &str) -> NamePattern {
        NamePattern::parse(s).expect("pattern")
    }

    #[test]
    fn ids_are_stable_distinct_and_never_zero() {
        let a = pattern_id(&pat("api.github.com"), false);
        assert_eq!(a, pattern_id(&pat("API.GitHub.com."), false));
        assert_ne!(a, pattern_id(&pat("api.github.com"), true));
        assert_ne!(a, pattern_id(&pat("*.api.github.com"), false));
        assert_ne!(a, 0);
    }

    #[test]
    fn ports_of_a_pattern_are_the_union_of_its_rules() {
        let p = policy();
        let c = p.compile().expect("compile");
        assert_eq!(c.tier_flags[0] & TIER_F_DNS, TIER_F_DNS);
        assert_eq!(c.tier_flags[1] & TIER_F_DNS, 0);
        let get = |s: &str, private: bool| {
            let id = pattern_id(&pat(s), private);
            c.names.iter().find(|n| n.pattern == id).copied().expect(s)
        };
        let gh = get("api.github.com", false);
        assert_eq!(gh.tier, 0);
        assert_eq!(gh.ports.any_port, 0);
        let ranges: Vec<(u16, u16, u32)> = gh.ports.ranges[..gh.ports.len as usize]
            .iter()
            .map(|r| (r.lo, r.hi, r.protocols))
            .collect();
        assert_eq!(
            ranges,
            [(22, 22, PROTO_TCP | PROTO_UDP), (443, 443, PROTO_TCP)]
        );
        let s3 = get("*.s3.amazonaws.com", false);
        assert_eq!(s3.ports.len, 1);
        let vault = get("vault.svc.test", true);
        assert_eq!(vault.ports.any_port, PROTO_TCP | PROTO_UDP);
        assert_eq!(c.names.len(), 3);
        assert!(
            c.names
                .windows(2)
                .all(|w| (w[0].tier, w[0].pattern) < (w[1].tier, w[1].pattern))
        );
    }

    #[test]
    fn the_proxy_index_names_each_pattern_once() {
        let names = policy().tier_names();
        assert_eq!(names.len(), 2);
        assert!(names[1].rules.is_empty() && names[1].index.is_empty());
        let t = &names[0];
        assert_eq!(t.rules.len(), 3);
        let m = t.matching("api.github.com");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].id, pattern_id(&pat("api.github.com"), false));
        let m = t.matching("bucket.s3.amazonaws.com");
        assert_eq!(m.len(), 1);
        assert!(t.matching("evils3.amazonaws.com").is_empty());
        let m = t.matching("vault.svc.test");
        assert!(m[0].allow_private);
    }
}
