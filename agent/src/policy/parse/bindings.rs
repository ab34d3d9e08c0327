//! `spec.bindings`: each binding's tier reference and its match keys (cgroupPath, pod keys, spiffeId).

use std::collections::BTreeMap;

use tiergate_tls::SpiffePattern;

use super::tiers::TierNames;
use super::walker::{KeyPath, Walker};
use crate::policy::glob::Glob;
use crate::policy::model::{Binding, Match};
use crate::policy::yaml::{Data, Node};

const BINDING_KEYS: &[&str] = &["tier", "match"];
const MATCH_KEYS: &[&str] = &[
    "cgroupPath",
    "namespace",
    "serviceAccount",
    "podLabels",
    "container",
    "spiffeId",
];

impl Walker<'_> {
    pub(super) fn bindings(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        names: &TierNames,
    ) -> Option<Vec<Binding>> {
        let items = self.list(node, path)?;
        self.each(items, path, |w, item, path| w.binding(item, path, names))
    }

    fn binding(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        names: &TierNames,
    ) -> Option<Binding> {
        let f = self.mapping(node, path, BINDING_KEYS, BINDING_KEYS)?;
        let tier = f
            .get("tier")
            .and_then(|n| self.tier_ref(n, path.key("tier"), names));
        let matcher = f
            .get("match")
            .and_then(|n| self.matcher(n, path.key("match")));
        Some(Binding {
            tier: tier?,
            matcher: matcher?,
        })
    }

    fn matcher(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<Match> {
        let f = self.mapping(node, path, MATCH_KEYS, &[])?;
        let mapping_len = match &node.data {
            Data::Mapping(m) => m.len(),
            _ => 0,
        };
        if mapping_len == 0 {
            self.fail(
                node,
                path,
                &format!("must have at least one of: {}", MATCH_KEYS.join(", ")),
            );
            return None;
        }
        let mut ok = true;
        let mut m = Match::default();

        if let Some(n) = f.get("cgroupPath") {
            let p = path.key("cgroupPath");
            match self.string(n, p) {
                Some(s) if !s.starts_with('/') => {
                    self.fail(
                        n,
                        p,
                        &format!("{s:?} must start with `/` (the cgroup v2 path as /proc/PID/cgroup shows it after \"0::\")"),
                    );
                    ok = false;
                }
                Some(s) => match Glob::parse(s) {
                    Ok(g) => m.cgroup_path = Some(g),
                    Err(e) => {
                        self.fail(n, p, &e);
                        ok = false;
                    }
                },
                None => ok = false,
            }
        }
        for (key, slot) in [
            ("namespace", &mut m.namespace),
            ("serviceAccount", &mut m.service_account),
            ("container", &mut m.container),
        ] {
            if let Some(n) = f.get(key) {
                match self.name_string(n, path.key(key)) {
                    Some(s) => *slot = Some(s.to_owned()),
                    None => ok = false,
                }
            }
        }
        if let Some(n) = f.get("podLabels") {
            match self.labels(n, path.key("podLabels")) {
                Some(l) => m.pod_labels = l,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("spiffeId") {
            let p = path.key("spiffeId");
            match self.string(n, p).map(SpiffePattern::parse) {
                Some(Ok(s)) => m.spiffe_id = Some(s),
                Some(Err(e)) => {
                    self.fail(n, p, &e);
                    ok = false;
                }
                None => ok = false,
            }
        }
        // Every key present was either accepted or reported above; a mapping
        // made only of unknown keys has no usable key left.
        if ok && m.cgroup_path.is_none() && !m.has_pod_keys() {
            return None;
        }
        ok.then_some(m)
    }

    fn labels(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<BTreeMap<String, String>> {
        let Data::Mapping(map) = &node.data else {
            self.type_error(node, path, "a mapping of label names to values");
            return None;
        };
        if map.is_empty() {
            self.fail(
                node,
                path,
                "must not be empty; omit `podLabels` to match any labels",
            );
            return None;
        }
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, v) in map {
            let Some(key) = self.string(k, path) else {
                ok = false;
                continue;
            };
            let kp = path.key(key);
            match self.string(v, kp) {
                Some(val) => {
                    out.insert(key.to_owned(), val.to_owned());
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}
