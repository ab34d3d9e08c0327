//! The document's top level: apiVersion, kind and metadata, with `spec` handed to `spec.rs`.

use saphyr::Scalar;

use super::walker::{KeyPath, Walker};
use crate::policy::model::{API_VERSION, KIND, Policy};
use crate::policy::yaml::{Data, Node};

const TOP_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_KEYS: &[&str] = &["name"];

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

impl Walker<'_> {
    pub(super) fn policy(&mut self, root: &Node<'_>) -> Option<Policy> {
        if matches!(root.data, Data::Value(Scalar::Null) | Data::BadValue) {
            self.error(
                root.start,
                "the document is empty; expected a TierPolicy".to_owned(),
            );
            return None;
        }
        let f = self.mapping(root, KeyPath::Root, TOP_KEYS, TOP_KEYS)?;
        for (key, expected) in [("apiVersion", API_VERSION), ("kind", KIND)] {
            if let Some(n) = f.get(key)
                && let Some(v) = self.string(n, KeyPath::At(key))
                && v != expected
            {
                self.fail(
                    n,
                    KeyPath::At(key),
                    &format!("{v:?} is not supported (expected {expected})"),
                );
            }
        }
        let name = f.get("metadata").and_then(|n| self.metadata(n));
        let spec = f.get("spec").and_then(|n| self.spec(n));
        Some(Policy {
            name: name?,
            ..spec?
        })
    }

    fn metadata(&mut self, node: &Node<'_>) -> Option<String> {
        let f = self.mapping(node, KeyPath::At("metadata"), METADATA_KEYS, METADATA_KEYS)?;
        let n = f.get("name")?;
        let name = self.string(n, KeyPath::At("metadata.name"))?;
        if !is_dns1123_subdomain(name) {
            self.fail(
                n,
                KeyPath::At("metadata.name"),
                &format!(
                    "{name:?} is not a valid name (lowercase letters, digits, '-' and '.', \
                     starting and ending with a letter or digit, at most 253 characters)"
                ),
            );
            return None;
        }
        Some(name.to_owned())
    }
}
