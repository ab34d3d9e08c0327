//! Typed readers every section uses: checked mappings, lists, strings, choices, modes, ports and CIDRs.

use std::net::IpAddr;

use ipnet::IpNet;
use saphyr::Scalar;

use super::walker::{KeyPath, Walker, kind};
use crate::policy::model::{Mode, normalize_net};
use crate::policy::yaml::{Data, Node};

/// The keys of one mapping, checked against the allowed set.
pub(super) struct Fields<'a, 'y> {
    entries: Vec<(&'a str, &'a Node<'y>)>,
}

impl<'a, 'y> Fields<'a, 'y> {
    pub(super) fn get(&self, key: &str) -> Option<&'a Node<'y>> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

/// Levenshtein distance, for "did you mean" hints on misspelt keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A port or `LO-HI` range, 1..=65535, digits only.
fn parse_port_text(s: &str) -> Option<Result<(u16, u16), (u16, u16)>> {
    fn one(s: &str) -> Option<u16> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse::<u16>().ok().filter(|p| *p != 0)
    }
    match s.split_once('-') {
        None => one(s).map(|p| Ok((p, p))),
        Some((lo, hi)) => {
            let (lo, hi) = (one(lo)?, one(hi)?);
            Some(if lo <= hi {
                Ok((lo, hi))
            } else {
                Err((lo, hi))
            })
        }
    }
}

/// A CIDR or a bare address (/32, /128), normalised; host bits are an error.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => {
                return Err(format!(
                    "{s:?} is not a CIDR or IP address (expected e.g. 10.0.0.0/8, fd00::/64 or 192.0.2.1)"
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{s} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(normalize_net(net))
}

impl Walker<'_> {
    /// Checks that `node` is a mapping whose keys are strings from `allowed`
    /// and that every `required` key is present.
    pub(super) fn mapping<'a, 'y>(
        &mut self,
        node: &'a Node<'y>,
        path: KeyPath<'_>,
        allowed: &[&str],
        required: &[&str],
    ) -> Option<Fields<'a, 'y>> {
        let Data::Mapping(map) = &node.data else {
            self.type_error(node, path, "a mapping");
            return None;
        };
        let mut entries = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Data::Value(Scalar::String(key)) = &k.data else {
                self.fail(k, path, &format!("keys must be strings, found {}", kind(k)));
                continue;
            };
            if !allowed.contains(&key.as_ref()) {
                let near = allowed
                    .iter()
                    .filter(|a| edit_distance(&a.to_lowercase(), &key.to_lowercase()) <= 2)
                    .min_by_key(|a| edit_distance(a, key));
                let hint = near.map_or(String::new(), |n| format!("did you mean {n:?}? "));
                self.error(
                    k.start,
                    format!(
                        "{}: unknown key ({hint}allowed keys: {})",
                        path.key(key),
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            entries.push((key.as_ref(), v));
        }
        for r in required {
            if !map
                .iter()
                .any(|(k, _)| matches!(&k.data, Data::Value(Scalar::String(s)) if s == r))
            {
                self.error(node.start, format!("{}: missing required key", path.key(r)));
            }
        }
        Some(Fields { entries })
    }

    pub(super) fn string<'a>(&mut self, node: &'a Node<'_>, path: KeyPath<'_>) -> Option<&'a str> {
        if let Data::Value(Scalar::String(s)) = &node.data {
            Some(s.as_ref())
        } else {
            self.type_error(node, path, "a string");
            None
        }
    }

    /// A non-empty string.
    pub(super) fn name_string<'a>(
        &mut self,
        node: &'a Node<'_>,
        path: KeyPath<'_>,
    ) -> Option<&'a str> {
        let s = self.string(node, path)?;
        if s.is_empty() {
            self.fail(node, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(super) fn list<'a, 'y>(
        &mut self,
        node: &'a Node<'y>,
        path: KeyPath<'_>,
    ) -> Option<&'a [Node<'y>]> {
        if let Data::Sequence(items) = &node.data {
            Some(items.as_slice())
        } else {
            self.type_error(node, path, "a list");
            None
        }
    }

    /// A list that must have at least one item.
    pub(super) fn non_empty_list<'a, 'y>(
        &mut self,
        node: &'a Node<'y>,
        path: KeyPath<'_>,
        hint: &str,
    ) -> Option<&'a [Node<'y>]> {
        let items = self.list(node, path)?;
        if items.is_empty() {
            self.fail(node, path, &format!("must not be empty{hint}"));
            return None;
        }
        Some(items)
    }

    /// Every item read by `read` at `path[i]`; all are read even after a bad
    /// one, so that each bad item is reported, and the list is kept only if
    /// none was bad.
    pub(super) fn each<'y, T>(
        &mut self,
        items: &[Node<'y>],
        path: KeyPath<'_>,
        mut read: impl FnMut(&mut Self, &Node<'y>, KeyPath<'_>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match read(self, item, path.index(i)) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A string among `options`; returns its index.
    pub(super) fn one_of(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        what: &str,
        options: &[&str],
    ) -> Option<usize> {
        let s = self.string(node, path)?;
        let found = options.iter().position(|o| *o == s);
        if found.is_none() {
            self.fail(
                node,
                path,
                &format!("{s:?} is not {what} (expected {})", options.join(" or ")),
            );
        }
        found
    }

    pub(super) fn mode(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<Mode> {
        self.one_of(node, path, "a mode", &["enforce", "audit"])
            .map(|i| if i == 0 { Mode::Enforce } else { Mode::Audit })
    }

    pub(super) fn port(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<(u16, u16)> {
        let text = match &node.data {
            Data::Value(Scalar::String(s)) => s.to_string(),
            Data::Value(Scalar::Integer(i)) => i.to_string(),
            _ => {
                self.type_error(node, path, "a port number or a \"LO-HI\" string");
                return None;
            }
        };
        match parse_port_text(&text) {
            Some(Ok(r)) => Some(r),
            Some(Err((lo, hi))) => {
                self.fail(
                    node,
                    path,
                    &format!("{text:?} is a reversed range ({lo} > {hi}); write \"{hi}-{lo}\""),
                );
                None
            }
            None => {
                self.fail(
                    node,
                    path,
                    &format!("{text:?} is not a port or range (expected 1-65535 or LO-HI)"),
                );
                None
            }
        }
    }

    /// A CIDR or bare address string, normalised (see [`parse_cidr`]).
    pub(super) fn cidr(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<IpNet> {
        match parse_cidr(self.string(node, path)?) {
            Ok(net) => Some(net),
            Err(msg) => {
                self.fail(node, path, &msg);
                None
            }
        }
    }
}
