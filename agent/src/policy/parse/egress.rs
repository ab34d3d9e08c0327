//! A tier's `egress` list: each rule's keys (cidrs or fqdns, allowPrivate,
//! ports, protocols) and their checks.

use saphyr::Scalar;

use super::walker::{KeyPath, Walker, show};
use crate::policy::fqdn::NamePattern;
use crate::policy::model::{EgressRule, Protocols};
use crate::policy::yaml::{Data, Node};

const RULE_KEYS: &[&str] = &["cidrs", "fqdns", "allowPrivate", "ports", "protocols"];

impl Walker<'_> {
    pub(super) fn egress(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<Vec<EgressRule>> {
        let items = self.list(node, path)?;
        self.each(items, path, Self::rule)
    }

    fn rule(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<EgressRule> {
        let f = self.mapping(node, path, RULE_KEYS, &[])?;

        let (cidrs, fqdns) = match (f.get("cidrs"), f.get("fqdns")) {
            (Some(_), Some(n)) => {
                self.fail(
                    n,
                    path.key("fqdns"),
                    "a rule names either cidrs or fqdns, not both; write two rules",
                );
                (None, None)
            }
            (None, None) => {
                self.error(
                    node.start,
                    format!("{path}: a rule needs `cidrs` or `fqdns`"),
                );
                (None, None)
            }
            (Some(n), None) => {
                let p = path.key("cidrs");
                let cidrs = self
                    .non_empty_list(n, p, "")
                    .and_then(|items| self.each(items, p, Self::cidr));
                (cidrs, Some(Vec::new()))
            }
            (None, Some(n)) => {
                let p = path.key("fqdns");
                let fqdns = self
                    .non_empty_list(n, p, "")
                    .and_then(|items| self.each(items, p, Self::fqdn));
                (Some(Vec::new()), fqdns)
            }
        };

        let allow_private = match f.get("allowPrivate") {
            None => Some(false),
            Some(n) if f.get("fqdns").is_none() => {
                self.fail(
                    n,
                    path.key("allowPrivate"),
                    "only an fqdns rule learns addresses; a cidrs rule says which ranges it opens itself",
                );
                None
            }
            Some(n) => match &n.data {
                Data::Value(Scalar::Boolean(b)) => Some(*b),
                _ => {
                    self.type_error(n, path.key("allowPrivate"), "true or false");
                    None
                }
            },
        };

        let ports = match f.get("ports") {
            None => Some(None),
            Some(n) => {
                let p = path.key("ports");
                self.non_empty_list(n, p, "; omit `ports` to allow every port")
                    .and_then(|items| self.each(items, p, Self::port).map(Some))
            }
        };

        let protocols = match f.get("protocols") {
            None => Some(Protocols::default()),
            Some(n) => self.protocols(n, path.key("protocols")),
        };

        Some(EgressRule {
            cidrs: cidrs?,
            fqdns: fqdns?,
            allow_private: allow_private?,
            ports: ports?,
            protocols: protocols?,
        })
    }

    /// One `fqdns` item: a name pattern (see `policy/fqdn.rs`).
    fn fqdn(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<NamePattern> {
        match NamePattern::parse(self.string(node, path)?) {
            Ok(p) => Some(p),
            Err(msg) => {
                self.fail(node, path, &msg);
                None
            }
        }
    }

    /// `protocols`: each of tcp and udp at most once.
    fn protocols(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<Protocols> {
        let items = self.non_empty_list(node, path, "; omit `protocols` to allow tcp and udp")?;
        let mut seen = Protocols {
            tcp: false,
            udp: false,
        };
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let ip = path.index(i);
            let slot = match self.one_of(item, ip, "a protocol", &["tcp", "udp"]) {
                Some(0) => &mut seen.tcp,
                Some(_) => &mut seen.udp,
                None => {
                    ok = false;
                    continue;
                }
            };
            if *slot {
                self.fail(item, ip, &format!("{} is listed twice", show(item)));
                ok = false;
            }
            *slot = true;
        }
        ok.then_some(seen)
    }
}
