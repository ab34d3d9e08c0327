//! `spec.dns`: the resolvers whose answers count and the bounds on how long
//! a learned address lives; and the rule that `fqdns` rules need it.

use std::net::IpAddr;

use saphyr::Scalar;

use super::walker::{KeyPath, Walker};
use crate::duration::Span;
use crate::policy::model::{DnsScope, DnsSettings, normalize_addr};
use crate::policy::yaml::{Data, Node};

const DNS_KEYS: &[&str] = &["resolvers", "minTTL", "maxTTL", "scope"];
const PATH: KeyPath<'static> = KeyPath::At("spec.dns");

impl Walker<'_> {
    pub(super) fn dns(&mut self, node: &Node<'_>) -> Option<DnsSettings> {
        let f = self.mapping(node, PATH, DNS_KEYS, &["resolvers"])?;
        let resolvers = f.get("resolvers").and_then(|n| {
            let p = PATH.key("resolvers");
            let items = self.non_empty_list(n, p, "")?;
            self.each(items, p, Self::resolver)
        });
        let min_ttl = match f.get("minTTL") {
            None => Some(Span::default()),
            Some(n) => self.duration(n, PATH.key("minTTL")),
        };
        let max_ttl = match f.get("maxTTL") {
            None => Some(None),
            Some(n) => self.duration(n, PATH.key("maxTTL")).map(Some),
        };
        if let (Some(min), Some(Some(max)), Some(n)) = (min_ttl, max_ttl, f.get("maxTTL"))
            && max < min
        {
            self.fail(
                n,
                PATH.key("maxTTL"),
                &format!("{max} is shorter than minTTL ({min}); raise maxTTL or lower minTTL"),
            );
            return None;
        }
        let scope = match f.get("scope") {
            None => Some(DnsScope::Workload),
            Some(n) => self.scope(n),
        };
        Some(DnsSettings {
            resolvers: resolvers?,
            min_ttl: min_ttl?,
            max_ttl: max_ttl?,
            scope: scope?,
        })
    }

    /// `workload`, `pod` or `tier`.
    fn scope(&mut self, node: &Node<'_>) -> Option<DnsScope> {
        let p = PATH.key("scope");
        let s = self.string(node, p)?;
        match s {
            "workload" => Some(DnsScope::Workload),
            "pod" => Some(DnsScope::Pod),
            "tier" => Some(DnsScope::Tier),
            other => {
                self.fail(
                    node,
                    p,
                    &format!(
                        "{other:?} is not a scope: write workload (the asking cgroup, the default), pod (its pod's workloads of the same tier) or tier (every workload of its tier)"
                    ),
                );
                None
            }
        }
    }

    /// A resolver: one unicast address (IPv4-mapped IPv6 unmapped).
    fn resolver(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<IpAddr> {
        let s = self.string(node, path)?;
        let Ok(addr) = s.parse::<IpAddr>() else {
            self.fail(
                node,
                path,
                &format!("{s:?} is not an IP address (write the resolver's address, e.g. 10.96.0.10, without a port)"),
            );
            return None;
        };
        let addr = normalize_addr(addr);
        if addr.is_unspecified() || addr.is_multicast() {
            self.fail(
                node,
                path,
                &format!("{s} cannot answer queries: name a unicast address"),
            );
            return None;
        }
        Some(addr)
    }

    /// A duration in the product's syntax (`500ms`, `5s`, `15m`, `1h`, `30d`).
    pub(super) fn duration(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<Span> {
        match &node.data {
            Data::Value(Scalar::String(s)) => match s.parse::<Span>() {
                Ok(d) => Some(d),
                Err(e) => {
                    self.fail(node, path, &e);
                    None
                }
            },
            _ => {
                self.type_error(node, path, "a duration string such as \"5s\"");
                None
            }
        }
    }
}

/// The first `fqdns` key under `spec.tiers[*].egress[*]`, to point at when
/// `spec.dns` is missing.
pub(super) fn first_fqdns_key<'a, 'y>(tiers: &'a Node<'y>) -> Option<&'a Node<'y>> {
    let key = |n: &'a Node<'y>, name: &str| -> Option<&'a Node<'y>> {
        let Data::Mapping(m) = &n.data else {
            return None;
        };
        m.iter().find_map(|(k, v)| {
            matches!(&k.data, Data::Value(Scalar::String(s)) if s == name).then_some(v)
        })
    };
    let Data::Sequence(tiers) = &tiers.data else {
        return None;
    };
    tiers.iter().find_map(|t| {
        let Data::Sequence(rules) = &key(t, "egress")?.data else {
            return None;
        };
        rules.iter().find_map(|r| {
            let Data::Mapping(m) = &r.data else {
                return None;
            };
            m.iter().find_map(|(k, _)| {
                matches!(&k.data, Data::Value(Scalar::String(s)) if s == "fqdns").then_some(k)
            })
        })
    })
}
