//! Compilation of a policy to kernel map entries (`TG_TIERS`, `TG_RULES`).
//!
//! `TG_RULES` is an LPM trie keyed by (generation, tier, IPv6-form address)
//! that returns only the most specific prefix. So the value stored for a
//! prefix P must already be the union of every rule of the same tier whose
//! CIDR contains P; otherwise a narrow rule (`10.1.0.0/16` port 22) would hide
//! a wide one (`10.0.0.0/8` port 443) for addresses in the narrow one.
//!
//! Prefixes are visited shortest first; each looks up its nearest ancestor
//! (one hash lookup per prefix length present in the tier, O(n · 129), never
//! O(n²)) and merges that ancestor's finished union, which already holds
//! every further ancestor. Duplicate CIDRs of a tier share one entry.
//!
//! IPv4 lives in the IPv4-mapped range `::ffff:0:0/96` of the trie. IPv6
//! prefixes shorter than /96 (`::/0`, `::ffff:0:0/95`) contain that range in
//! the trie, but in the policy an IPv6 CIDR never covers IPv4 destinations.
//! A tier with such a prefix therefore gets a deny-everything entry at
//! `::ffff:0:0/96` (unless it has `0.0.0.0/0`, which sits there anyway), and
//! IPv4 prefixes only take the union over IPv4 ancestors.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use agent_common::{
    MAX_PORT_RANGES, PROTO_TCP, PROTO_UDP, PortRange, PortSet, TIER_F_AUDIT, TIER_F_DNS,
    TIER_F_METADATA_ALLOW, TIER_F_METADATA_FILTER, TIER_F_VALID,
};
use ipnet::{IpNet, Ipv4Net};
use thiserror::Error;

use super::model::{MetadataAccess, Mode, Policy, normalize_net};

/// Most `TG_RULES` entries one policy may produce (the map's capacity per
/// generation).
pub const MAX_RULES: usize = 131_072;

/// A policy as kernel map entries for one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// Per tier (index = tier id): `TIER_F_VALID`, plus `TIER_F_AUDIT` when
    /// the effective mode is audit and `TIER_F_METADATA_ALLOW` when
    /// `metadata: allow`.
    pub tier_flags: Vec<u32>,
    /// `TG_RULES` entries, sorted by (tier, address, prefix length).
    pub rules: Vec<CompiledRule>,
    /// Tier id of `spec.defaultTier`.
    pub default_tier: u32,
    /// `TG_FQDN_PORTS` entries: what each name pattern of each tier admits.
    pub names: Vec<super::names::CompiledName>,
}

/// One `TG_RULES` entry (the generation is added by the loader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    /// Tier id.
    pub tier: u32,
    /// Prefix length of `addr` in the IPv6 form, 0..=128 (IPv4: 96 + length).
    pub prefix_len: u32,
    /// Network address, IPv6 form, network order (IPv4 as `::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// Union of the ports/protocols of every rule of the tier containing it.
    pub ports: PortSet,
}

/// Why a valid policy cannot be loaded into the kernel maps.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CompileError {
    /// A destination carries more distinct port ranges than a `PortSet` holds.
    #[error(
        "tier {tier:?}, destination {cidr}: {count} port ranges after merging (including \
         ranges inherited from wider CIDRs of the tier), more than the kernel limit of \
         {limit}; use wider ranges or allow all ports"
    )]
    TooManyPortRanges {
        /// Tier name.
        tier: String,
        /// The destination CIDR, normalised.
        cidr: String,
        /// Ranges after merging.
        count: usize,
        /// `MAX_PORT_RANGES`.
        limit: usize,
    },
    /// The policy produces more trie entries than the map holds.
    #[error(
        "the policy needs {count} destination prefixes (distinct CIDRs per tier), more than \
         the kernel limit of {limit}; merge CIDRs"
    )]
    TooManyRules {
        /// Entries needed.
        count: usize,
        /// `MAX_RULES`.
        limit: usize,
    },
}

/// `::ffff:0:0`, the base of the IPv4-mapped range.
const MAPPED_BASE: u128 = 0xffff_0000_0000;

fn mask(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

fn is_v4_key(addr: u128, len: u8) -> bool {
    len >= 96 && mask(addr, 96) == MAPPED_BASE
}

/// The trie key of a CIDR: (address as u128, prefix length in IPv6 form).
fn key_of(net: IpNet) -> (u128, u8) {
    match normalize_net(net) {
        IpNet::V4(n) => (
            MAPPED_BASE | u128::from(u32::from(n.network())),
            96 + n.prefix_len(),
        ),
        IpNet::V6(n) => (u128::from(n.network()), n.prefix_len()),
    }
}

/// What the rules of one prefix (or one name pattern) admit, before
/// conversion to a `PortSet`.
#[derive(Clone, Debug, Default)]
pub(super) struct Acc {
    /// `PROTO_*` bits admitted on every port.
    any: u32,
    tcp: Vec<(u16, u16)>,
    udp: Vec<(u16, u16)>,
}

impl Acc {
    /// Adds what `rule` admits.
    pub(super) fn add_rule(&mut self, rule: &super::model::EgressRule) {
        let mut bits = 0;
        if rule.protocols.tcp {
            bits |= PROTO_TCP;
        }
        if rule.protocols.udp {
            bits |= PROTO_UDP;
        }
        match &rule.ports {
            None => self.any |= bits,
            Some(ranges) => {
                if rule.protocols.tcp {
                    self.tcp.extend_from_slice(ranges);
                }
                if rule.protocols.udp {
                    self.udp.extend_from_slice(ranges);
                }
            }
        }
    }

    fn merge(&mut self, other: &Acc) {
        self.any |= other.any;
        self.tcp.extend_from_slice(&other.tcp);
        self.udp.extend_from_slice(&other.udp);
    }

    /// Sorted, merged lists without ranges a protocol already admits on
    /// every port. Unions only add, so dropping those ranges early is safe.
    pub(super) fn normalize(&mut self) {
        if self.any & PROTO_TCP != 0 {
            self.tcp.clear();
        }
        if self.any & PROTO_UDP != 0 {
            self.udp.clear();
        }
        coalesce(&mut self.tcp);
        coalesce(&mut self.udp);
    }

    /// A normalised `Acc` as a `PortSet`; `Err(count)` when too many entries.
    pub(super) fn port_set(&self) -> Result<PortSet, usize> {
        // Both lists are sorted and disjoint; walk them together so that an
        // identical range for both protocols takes one entry.
        let mut entries: Vec<PortRange> = Vec::with_capacity(self.tcp.len() + self.udp.len());
        let (mut i, mut j) = (0, 0);
        while i < self.tcp.len() || j < self.udp.len() {
            let (range, protocols) = match (self.tcp.get(i), self.udp.get(j)) {
                (Some(t), Some(u)) if t == u => {
                    i += 1;
                    j += 1;
                    (*t, PROTO_TCP | PROTO_UDP)
                }
                (Some(t), Some(u)) if t < u => {
                    i += 1;
                    (*t, PROTO_TCP)
                }
                (Some(t), None) => {
                    i += 1;
                    (*t, PROTO_TCP)
                }
                (_, Some(u)) => {
                    j += 1;
                    (*u, PROTO_UDP)
                }
                (None, None) => break,
            };
            entries.push(PortRange {
                lo: range.0,
                hi: range.1,
                protocols,
            });
        }
        if entries.len() > MAX_PORT_RANGES {
            return Err(entries.len());
        }
        let mut set = PortSet {
            any_port: self.any,
            len: entries.len() as u32,
            ..PortSet::default()
        };
        set.ranges[..entries.len()].copy_from_slice(&entries);
        Ok(set)
    }
}

/// Sorts and merges overlapping or adjacent inclusive ranges.
fn coalesce(v: &mut Vec<(u16, u16)>) {
    if v.len() < 2 {
        return;
    }
    v.sort_unstable();
    let mut out = 0;
    for k in 1..v.len() {
        let (lo, hi) = v[k];
        if u32::from(lo) <= u32::from(v[out].1) + 1 {
            v[out].1 = v[out].1.max(hi);
        } else {
            out += 1;
            v[out] = (lo, hi);
        }
    }
    v.truncate(out + 1);
}

/// A cheap hasher for (address, length) keys; the fmix64 finaliser spreads
/// the mostly-zero low bits of network addresses over the whole hash.
#[derive(Default)]
struct PrefixHasher(u64);

impl PrefixHasher {
    fn mix(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.mix(u64::from(b));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.mix(u64::from(v));
    }
    fn write_u128(&mut self, v: u128) {
        self.mix(v as u64);
        self.mix((v >> 64) as u64);
    }
}

type PrefixMap = HashMap<(u128, u8), usize, BuildHasherDefault<PrefixHasher>>;

/// One distinct prefix of a tier.
struct Prefix {
    addr: u128,
    len: u8,
    net: IpNet,
    acc: Acc,
}

impl Policy {
    /// The kernel map entries of this policy.
    pub fn compile(&self) -> Result<Compiled, CompileError> {
        let tier_flags = self
            .tiers
            .iter()
            .map(|t| {
                let mut f = TIER_F_VALID;
                if t.effective_mode(self.mode) == Mode::Audit {
                    f |= TIER_F_AUDIT;
                }
                match t.metadata {
                    MetadataAccess::Deny => {}
                    MetadataAccess::Allow => f |= TIER_F_METADATA_ALLOW,
                    MetadataAccess::Filter(_) => f |= TIER_F_METADATA_FILTER,
                }
                if t.has_fqdns() {
                    f |= TIER_F_DNS;
                }
                f
            })
            .collect();

        let mut rules = Vec::new();
        for (tier_id, tier) in self.tiers.iter().enumerate() {
            let mut index = PrefixMap::default();
            let mut prefixes: Vec<Prefix> = Vec::new();
            let mut lens = [false; 129];

            for rule in &tier.egress {
                for &cidr in &rule.cidrs {
                    let (addr, len) = key_of(cidr);
                    let k = *index.entry((addr, len)).or_insert_with(|| {
                        prefixes.push(Prefix {
                            addr,
                            len,
                            net: normalize_net(cidr),
                            acc: Acc::default(),
                        });
                        prefixes.len() - 1
                    });
                    lens[usize::from(len)] = true;
                    prefixes[k].acc.add_rule(rule);
                }
            }

            // Keep IPv6 prefixes that contain the mapped range from
            // answering IPv4 lookups (see the module docs).
            let shadows_v4 = prefixes
                .iter()
                .any(|p| p.len < 96 && mask(MAPPED_BASE, p.len) == p.addr);
            if shadows_v4 && !index.contains_key(&(MAPPED_BASE, 96)) {
                index.insert((MAPPED_BASE, 96), prefixes.len());
                prefixes.push(Prefix {
                    addr: MAPPED_BASE,
                    len: 96,
                    net: IpNet::V4(Ipv4Net::default()),
                    acc: Acc::default(),
                });
                lens[96] = true;
            }

            // Shorter prefixes first: when P is reached, the union of its
            // nearest present ancestor is final and already holds every
            // further ancestor, so P merges one list instead of all of them.
            let present: Vec<u8> = (0..=128u8).filter(|l| lens[usize::from(*l)]).collect();
            let mut order: Vec<usize> = (0..prefixes.len()).collect();
            order.sort_unstable_by_key(|&k| prefixes[k].len);
            for k in order {
                let (addr, len) = (prefixes[k].addr, prefixes[k].len);
                // IPv4 prefixes inherit only from IPv4 ancestors (>= /96).
                let floor = if is_v4_key(addr, len) { 96 } else { 0 };
                let nearest = present
                    .iter()
                    .rev()
                    .filter(|&&l| l >= floor && l < len)
                    .find_map(|&l| index.get(&(mask(addr, l), l)).copied());
                let mut acc = std::mem::take(&mut prefixes[k].acc);
                if let Some(a) = nearest {
                    acc.merge(&prefixes[a].acc);
                }
                acc.normalize();
                let ports = acc
                    .port_set()
                    .map_err(|count| CompileError::TooManyPortRanges {
                        tier: tier.name.clone(),
                        cidr: prefixes[k].net.to_string(),
                        count,
                        limit: MAX_PORT_RANGES,
                    })?;
                prefixes[k].acc = acc;
                rules.push(CompiledRule {
                    tier: tier_id as u32,
                    prefix_len: u32::from(len),
                    addr: addr.to_be_bytes(),
                    ports,
                });
            }
            if rules.len() > MAX_RULES {
                break;
            }
        }
        if rules.len() > MAX_RULES {
            return Err(CompileError::TooManyRules {
                count: rules.len(),
                limit: MAX_RULES,
            });
        }
        rules.sort_unstable_by_key(|r| (r.tier, r.addr, r.prefix_len));
        Ok(Compiled {
            tier_flags,
            rules,
            default_tier: self.default_tier as u32,
            names: self.compile_names()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::policy::TierRef;
    use crate::policy::explain::{Proto, Verdict};
    use crate::policy::model::{EgressRule, Protocols, Tier};
    use crate::policy::testing::with_spec as policy;

    /// A policy from its `tiers:` items, defaulting to tier `a`.
    fn with_tiers(tiers: &str) -> Policy {
        policy(&format!("spec:\n  defaultTier: a\n  tiers:\n{tiers}"))
    }

    fn key(s: &str) -> ([u8; 16], u32) {
        let (a, l) = key_of(s.parse().expect("cidr"));
        (a.to_be_bytes(), u32::from(l))
    }

    fn entry<'c>(c: &'c Compiled, tier: u32, cidr: &str) -> &'c CompiledRule {
        let (addr, len) = key(cidr);
        c.rules
            .iter()
            .find(|r| r.tier == tier && r.addr == addr && r.prefix_len == len)
            .unwrap_or_else(|| panic!("no entry for {cidr} in tier {tier}: {:?}", c.rules))
    }

    fn ranges(s: &PortSet) -> Vec<(u16, u16, u32)> {
        s.ranges[..s.len as usize]
            .iter()
            .map(|r| (r.lo, r.hi, r.protocols))
            .collect()
    }

    const T: u32 = PROTO_TCP;
    const U: u32 = PROTO_UDP;

    #[test]
    fn tier_flags_and_default() {
        let p = policy(
            "spec:\n  mode: audit\n  defaultTier: c\n  tiers:\n  - {name: a}\n  - {name: b, mode: enforce, metadata: allow}\n  - {name: c}\n",
        );
        let c = p.compile().expect("compiles");
        assert_eq!(
            c.tier_flags,
            vec![
                TIER_F_VALID | TIER_F_AUDIT,
                TIER_F_VALID | TIER_F_METADATA_ALLOW,
                TIER_F_VALID | TIER_F_AUDIT
            ]
        );
        assert_eq!(c.default_tier, 2);
        assert!(c.rules.is_empty());
    }

    #[test]
    fn nested_prefixes_carry_the_union() {
        let c = with_tiers(
            r#"  - name: a
    egress:
    - {cidrs: ["10.0.0.0/8"], ports: ["443"], protocols: [tcp]}
    - {cidrs: ["10.1.0.0/16"], ports: ["22"], protocols: [tcp]}
    - {cidrs: ["10.1.2.0/24"], protocols: [udp]}
    - {cidrs: ["10.1.0.0/16"], ports: ["444"], protocols: [tcp]}
  - name: b
    egress:
    - {cidrs: ["10.1.0.0/16"], ports: ["80"]}
"#,
        )
        .compile()
        .expect("compiles");
        assert_eq!(c.rules.len(), 4);
        let wide = entry(&c, 0, "10.0.0.0/8");
        assert_eq!(
            (wide.ports.any_port, ranges(&wide.ports)),
            (0, vec![(443, 443, T)])
        );
        // Duplicate CIDR merged; 443 and 444 coalesce; 22 stays.
        let mid = entry(&c, 0, "10.1.0.0/16");
        assert_eq!(ranges(&mid.ports), vec![(22, 22, T), (443, 444, T)]);
        let narrow = entry(&c, 0, "10.1.2.0/24");
        assert_eq!(narrow.ports.any_port, U);
        assert_eq!(ranges(&narrow.ports), vec![(22, 22, T), (443, 444, T)]);
        // Another tier's rules never leak in.
        let other = entry(&c, 1, "10.1.0.0/16");
        assert_eq!(ranges(&other.ports), vec![(80, 80, T | U)]);
    }

    #[test]
    fn port_merging() {
        let c = with_tiers(
            r#"  - name: a
    egress:
    - {cidrs: ["192.0.2.0/24"], ports: ["100-200", "150-250", "251", "300-310"], protocols: [tcp]}
    - {cidrs: ["192.0.2.0/24"], ports: ["300-310", "1000"], protocols: [udp]}
    - {cidrs: ["192.0.2.0/24"], ports: ["5-6"]}
    - {cidrs: ["198.51.100.0/24"], ports: ["53"]}
    - {cidrs: ["198.51.100.0/24"], protocols: [tcp]}
    - {cidrs: ["198.51.100.0/24"], ports: ["65535", "1-1"], protocols: [tcp]}
"#,
        )
        .compile()
        .expect("compiles");
        let a = entry(&c, 0, "192.0.2.0/24");
        assert_eq!(a.ports.any_port, 0);
        assert_eq!(
            ranges(&a.ports),
            vec![
                (5, 6, T | U),
                (100, 251, T),
                (300, 310, T | U),
                (1000, 1000, U)
            ]
        );
        // Any-port tcp drops tcp ranges; udp 53 stays.
        let b = entry(&c, 0, "198.51.100.0/24");
        assert_eq!(b.ports.any_port, T);
        assert_eq!(ranges(&b.ports), vec![(53, 53, U)]);
    }

    #[test]
    fn v4_and_v6_stay_apart() {
        let c = with_tiers(
            r#"  - name: a
    egress:
    - {cidrs: ["::/0"], ports: ["443"]}
    - {cidrs: ["10.0.0.0/8"], ports: ["80"]}
    - {cidrs: ["::ffff:192.0.2.0/120"], ports: ["8080"]}
  - name: b
    egress:
    - {cidrs: ["0.0.0.0/0"], ports: ["53"]}
    - {cidrs: ["2001:db8::/32"], ports: ["22"]}
"#,
        )
        .compile()
        .expect("compiles");
        // ::/0 must not give 443 to IPv4: a barrier at ::ffff:0:0/96.
        let barrier = entry(&c, 0, "0.0.0.0/0");
        assert_eq!((barrier.ports.any_port, barrier.ports.len), (0, 0));
        assert_eq!(
            ranges(&entry(&c, 0, "10.0.0.0/8").ports),
            vec![(80, 80, T | U)]
        );
        // Mapped CIDR stored as IPv4.
        let mapped = entry(&c, 0, "192.0.2.0/24");
        assert_eq!(mapped.prefix_len, 120);
        assert_eq!(ranges(&mapped.ports), vec![(8080, 8080, T | U)]);
        // 0.0.0.0/0 does not cover IPv6.
        assert_eq!(
            ranges(&entry(&c, 1, "2001:db8::/32").ports),
            vec![(22, 22, T | U)]
        );
        assert_eq!(entry(&c, 1, "0.0.0.0/0").prefix_len, 96);
        assert_eq!(c.rules.len(), 3 + 1 + 2);
        // Key layout: ::ffff:10.0.0.0, network order.
        let (addr, len) = key("10.0.0.0/8");
        assert_eq!(
            addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 0]
        );
        assert_eq!(len, 104);
    }

    #[test]
    fn too_many_port_ranges_names_tier_and_cidr() {
        let ports: Vec<String> = (0..MAX_PORT_RANGES + 1)
            .map(|i| format!("\"{}\"", 1000 + 2 * i))
            .collect();
        // One tcp rule for 10.0.0.0/8 with these ports.
        let with_ports = |ports: &[String]| {
            with_tiers(&format!(
                "  - name: a\n    egress:\n    - {{cidrs: [\"10.0.0.0/8\"], ports: [{}], protocols: [tcp]}}\n",
                ports.join(", ")
            ))
        };
        let e = with_ports(&ports).compile().expect_err("too many");
        assert_eq!(
            e,
            CompileError::TooManyPortRanges {
                tier: "a".into(),
                cidr: "10.0.0.0/8".into(),
                count: MAX_PORT_RANGES + 1,
                limit: MAX_PORT_RANGES
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("tier \"a\", destination 10.0.0.0/8") && msg.contains("limit of 16"),
            "{msg}"
        );
        // Exactly at the limit is fine; adjacent ports coalesce.
        let ok: Vec<String> = (0..40).map(|i| format!("\"{}\"", 1000 + i)).collect();
        assert!(with_ports(&ok).compile().is_ok());
    }

    /// Tier `t<t>` of a generated policy: metadata denied, these rules.
    fn numbered_tier(t: usize, egress: Vec<EgressRule>) -> Tier {
        Tier {
            name: format!("t{t}"),
            description: None,
            mode: None,
            metadata: MetadataAccess::Deny,
            egress,
        }
    }

    fn big_policy(rules_per_tier: usize, tiers: usize) -> Policy {
        let mut p = Policy {
            name: "big".into(),
            trust_domain: "cluster.local".into(),
            mode: Mode::Enforce,
            default_tier: 0,
            tiers: Vec::new(),
            bindings: Vec::new(),
            dns: None,
            elevation: Vec::new(),
            version: String::new(),
        };
        for t in 0..tiers {
            let egress = (0..rules_per_tier)
                .map(|i| {
                    let i = i as u32;
                    let v4 = Ipv4Addr::from(0x0a00_0000 | (i << 8));
                    EgressRule {
                        cidrs: vec![IpNet::V4(Ipv4Net::new(v4, 24).expect("len"))],
                        fqdns: Vec::new(),
                        allow_private: false,
                        ports: Some(vec![(443, 443), (8000 + (i % 50) as u16, 8100)]),
                        protocols: Protocols::default(),
                    }
                })
                .chain(std::iter::once(EgressRule {
                    cidrs: vec!["10.0.0.0/8".parse().expect("net")],
                    fqdns: Vec::new(),
                    allow_private: false,
                    ports: Some(vec![(53, 53)]),
                    protocols: Protocols {
                        tcp: false,
                        udp: true,
                    },
                }))
                .collect();
            p.tiers.push(numbered_tier(t, egress));
        }
        p
    }

    #[test]
    fn ten_thousand_rules_compile_fast() {
        let p = big_policy(2_500, 4);
        let start = Instant::now();
        let c = p.compile().expect("compiles");
        let took = start.elapsed();
        assert_eq!(c.rules.len(), 4 * 2_501);
        assert!(took < Duration::from_secs(1), "took {took:?}");
        // Every /24 inherits the /8's udp 53.
        let r = entry(&c, 0, "10.0.5.0/24");
        assert!(ranges(&r.ports).contains(&(53, 53, U)));
    }

    #[test]
    fn rule_limit() {
        let p = big_policy(MAX_RULES / 2, 2);
        assert_eq!(
            p.compile().expect_err("too many"),
            CompileError::TooManyRules {
                count: MAX_RULES + 2,
                limit: MAX_RULES
            }
        );
    }

    /// Deterministic xorshift64* generator (no extra dependency).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// A random address inside `net` (random host bits).
    fn random_in(rng: &mut Rng, net: IpNet) -> IpAddr {
        match net {
            IpNet::V4(n) => {
                let host = (rng.next() as u32) & u32::from(n.hostmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let r = u128::from(rng.next()) << 64 | u128::from(rng.next());
                let host = r & u128::from(n.hostmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }

    fn random_net(rng: &mut Rng) -> IpNet {
        // Small pools of bases and lengths so prefixes nest and repeat.
        let v4_bases = [0x0a00_0000u32, 0x0a01_0000, 0x0a01_0200, 0xc000_0200, 0];
        let v6_bases: [u128; 4] = [
            0x2001_0db8 << 96,
            (0x2001_0db8 << 96) | (1 << 80),
            0,
            0xffff_0000_0000, // ::ffff:0:0, for /95-ish IPv6 prefixes over the mapped range
        ];
        if rng.chance(65) {
            let len = [0u8, 8, 16, 20, 24, 28, 32][rng.below(7) as usize];
            let base = v4_bases[rng.below(5) as usize] | (rng.next() as u32 & 0x0003_0f0f);
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base), len).expect("len")).trunc()
        } else {
            let len = [0u8, 32, 48, 64, 80, 95, 127, 128][rng.below(8) as usize];
            let base = v6_bases[rng.below(4) as usize] | u128::from(rng.next() & 0xf00f);
            normalize_net(
                IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(base), len).expect("len")).trunc(),
            )
        }
    }

    fn random_policy(rng: &mut Rng) -> Policy {
        let tiers = 1 + rng.below(3) as usize;
        let mut p = big_policy(0, 0);
        for t in 0..tiers {
            let mut egress = Vec::new();
            for _ in 0..rng.below(12) {
                let cidrs = (0..1 + rng.below(3)).map(|_| random_net(rng)).collect();
                let ports = rng.chance(60).then(|| {
                    (0..1 + rng.below(3))
                        .map(|_| {
                            let lo = 1 + rng.below(40) as u16;
                            (lo, lo + rng.below(6) as u16)
                        })
                        .collect()
                });
                let protocols = match rng.below(3) {
                    0 => Protocols {
                        tcp: true,
                        udp: false,
                    },
                    1 => Protocols {
                        tcp: false,
                        udp: true,
                    },
                    _ => Protocols::default(),
                };
                egress.push(EgressRule {
                    cidrs,
                    fqdns: Vec::new(),
                    allow_private: false,
                    ports,
                    protocols,
                });
            }
            p.tiers.push(numbered_tier(t, egress));
        }
        p
    }

    /// The kernel's view: most specific prefix of the tier, then its PortSet.
    fn kernel_allows(c: &Compiled, tier: u32, dst: IpAddr, port: u16, proto: Proto) -> bool {
        let key: u128 = match dst {
            IpAddr::V4(a) => MAPPED_BASE | u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let best = c
            .rules
            .iter()
            .filter(|r| {
                r.tier == tier && mask(key, r.prefix_len as u8) == u128::from_be_bytes(r.addr)
            })
            .max_by_key(|r| r.prefix_len);
        let Some(best) = best else { return false };
        let bit = match proto {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        };
        best.ports.any_port & bit != 0
            || best.ports.ranges[..best.ports.len as usize]
                .iter()
                .any(|r| r.protocols & bit != 0 && r.lo <= port && port <= r.hi)
    }

    #[test]
    fn compiled_trie_agrees_with_evaluate() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for _ in 0..300 {
            let p = random_policy(&mut rng);
            let c = p.compile().expect("random policies stay within limits");
            // Every entry of a tier is unique.
            let mut keys: Vec<_> = c
                .rules
                .iter()
                .map(|r| (r.tier, r.addr, r.prefix_len))
                .collect();
            keys.dedup();
            assert_eq!(keys.len(), c.rules.len());
            for _ in 0..200 {
                let tier = rng.below(p.tiers.len() as u64) as usize;
                let all: Vec<IpNet> = p
                    .tiers
                    .iter()
                    .flat_map(|t| t.egress.iter().flat_map(|r| r.cidrs.clone()))
                    .collect();
                let mut dst = if !all.is_empty() && rng.chance(80) {
                    let net = all[rng.below(all.len() as u64) as usize];
                    random_in(&mut rng, net)
                } else if rng.chance(50) {
                    IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
                } else {
                    IpAddr::V6(Ipv6Addr::from(
                        u128::from(rng.next()) << 64 | u128::from(rng.next()),
                    ))
                };
                // The kernel sees mapped destinations in the same key space.
                if let IpAddr::V4(a) = dst
                    && rng.chance(20)
                {
                    dst = IpAddr::V6(a.to_ipv6_mapped());
                }
                let plain = crate::policy::model::normalize_addr(dst);
                if crate::policy::explain::is_loopback(plain)
                    || crate::policy::explain::is_metadata_endpoint(plain)
                {
                    continue;
                }
                let port = 1 + rng.below(50) as u16;
                let proto = if rng.chance(50) {
                    Proto::Tcp
                } else {
                    Proto::Udp
                };
                let want =
                    p.evaluate(TierRef::Tier(tier), dst, port, proto).verdict == Verdict::Allow;
                let got = kernel_allows(&c, tier as u32, dst, port, proto);
                assert_eq!(
                    got, want,
                    "tier {tier} dst {dst} port {port} {proto:?}\npolicy: {:#?}",
                    p.tiers[tier].egress
                );
                checked += 1;
            }
        }
        assert!(checked > 50_000, "only {checked} checks");
    }
}
