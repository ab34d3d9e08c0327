//! A tier's `egress` list: each rule's keys (cidrs, ports, protocols) and their checks.

use super::walker::{KeyPath, Walker, show};
use crate::policy::model::{EgressRule, Protocols};
use crate::policy::yaml::Node;

const RULE_KEYS: &[&str] = &["cidrs", "ports", "protocols"];

impl Walker<'_> {
    pub(super) fn egress(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<Vec<EgressRule>> {
        let items = self.list(node, path)?;
        self.each(items, path, Self::rule)
    }

    fn rule(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<EgressRule> {
        let f = self.mapping(node, path, RULE_KEYS, &["cidrs"])?;

        let cidrs = f.get("cidrs").and_then(|n| {
            let p = path.key("cidrs");
            let items = self.non_empty_list(n, p, "")?;
            self.each(items, p, Self::cidr)
        });

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
            ports: ports?,
            protocols: protocols?,
        })
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
