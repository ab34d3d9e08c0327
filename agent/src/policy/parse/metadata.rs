//! `spec.tiers[*].metadata`: `deny`, `allow`, or the per-request rules of
//! `filter` (`require`, `allowPaths`, `denyPaths`), with each path pattern
//! checked and stored in the canonical form the proxy matches requests in.

use saphyr::Scalar;

use super::walker::{KeyPath, Walker};
use crate::metadata::canon::canonical_pattern;
use crate::policy::model::{MetadataAccess, MetadataFilter};
use crate::policy::yaml::{Data, Node};

const KEYS: &[&str] = &["mode", "require", "allowPaths", "denyPaths"];
const MODES: &[&str] = &["deny", "allow", "filter"];
/// Patterns per list: each request is matched against every one.
const MAX_PATTERNS: usize = 256;

impl Walker<'_> {
    /// A tier's `metadata`: a word, or a mapping with `mode` and, for
    /// `filter`, its rules.
    pub(super) fn tier_metadata(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
    ) -> Option<MetadataAccess> {
        match &node.data {
            Data::Value(Scalar::String(_)) => {
                let mode = self.one_of(node, path, "a metadata access", MODES)?;
                Some(access(mode, MetadataFilter::default()))
            }
            Data::Mapping(_) => self.metadata_mapping(node, path),
            _ => {
                self.type_error(
                    node,
                    path,
                    "deny, allow, filter, or a mapping such as {mode: filter, denyPaths: [...]}",
                );
                None
            }
        }
    }

    fn metadata_mapping(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<MetadataAccess> {
        let f = self.mapping(node, path, KEYS, &["mode"])?;
        let mode = f
            .get("mode")
            .and_then(|n| self.one_of(n, path.key("mode"), "a metadata mode", MODES));
        let require = match f.get("require") {
            None => Some(false),
            Some(n) => self
                .one_of(n, path.key("require"), "a requirement", &["imdsv2"])
                .map(|_| true),
        };
        let allow = self.path_patterns(f.get("allowPaths"), path.key("allowPaths"));
        let deny = self.path_patterns(f.get("denyPaths"), path.key("denyPaths"));
        let mode = mode?;
        if MODES[mode] != "filter" {
            // Rules that would silently do nothing are a mistake to report.
            let mut ok = true;
            for key in ["require", "allowPaths", "denyPaths"] {
                if let Some(n) = f.get(key) {
                    self.fail(
                        n,
                        path.key(key),
                        &format!(
                            "only takes effect with mode: filter (mode is {}); remove it or use mode: filter",
                            MODES[mode]
                        ),
                    );
                    ok = false;
                }
            }
            return ok.then(|| access(mode, MetadataFilter::default()));
        }
        Some(access(
            mode,
            MetadataFilter {
                require_imdsv2: require?,
                allow_paths: allow?,
                deny_paths: deny?,
            },
        ))
    }

    /// A list of path patterns (absent: empty), each in canonical form.
    fn path_patterns(&mut self, node: Option<&Node<'_>>, path: KeyPath<'_>) -> Option<Vec<String>> {
        let Some(node) = node else {
            return Some(Vec::new());
        };
        let items = self.list(node, path)?;
        if items.len() > MAX_PATTERNS {
            self.fail(
                node,
                path,
                &format!(
                    "{} patterns, more than the limit of {MAX_PATTERNS}",
                    items.len()
                ),
            );
            return None;
        }
        self.each(items, path, |w, item, p| {
            let s = w.name_string(item, p)?;
            match canonical_pattern(s) {
                Ok(c) => Some(c),
                Err(e) => {
                    w.fail(item, p, &e);
                    None
                }
            }
        })
    }
}

fn access(mode: usize, filter: MetadataFilter) -> MetadataAccess {
    match MODES[mode] {
        "deny" => MetadataAccess::Deny,
        "allow" => MetadataAccess::Allow,
        _ => MetadataAccess::Filter(filter),
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::{MetadataAccess, parse_str};

    fn with_metadata(m: &str) -> String {
        format!(
            "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: p\nspec:\n  defaultTier: a\n  tiers:\n    - name: a\n      metadata:{m}\n"
        )
    }

    fn errors(m: &str) -> String {
        match parse_str(&with_metadata(m), "p.yaml") {
            Ok(_) => panic!("should be rejected: {m}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn filter_rules_are_read_in_canonical_form() {
        let p = parse_str(
            &with_metadata(
                "\n        mode: filter\n        require: imdsv2\n        allowPaths: [\"/2021-07-15/meta-data/instance-id\"]\n        denyPaths: [\"/latest/meta-data/iam/**\"]",
            ),
            "p.yaml",
        )
        .expect("valid");
        let MetadataAccess::Filter(f) = &p.tiers[0].metadata else {
            panic!("not filter: {:?}", p.tiers[0].metadata);
        };
        assert!(f.require_imdsv2);
        assert_eq!(f.allow_paths, ["/latest/meta-data/instance-id"]);
        assert_eq!(f.deny_paths, ["/latest/meta-data/iam/**"]);
        let plain = parse_str(&with_metadata(" filter"), "p.yaml").expect("valid");
        assert!(plain.tiers[0].filters_metadata());
    }

    #[test]
    fn the_words_keep_their_meaning_and_their_version() {
        let word = parse_str(&with_metadata(" allow"), "p.yaml").expect("valid");
        let mapping = parse_str(&with_metadata(" {mode: allow}"), "p.yaml").expect("valid");
        assert_eq!(word.tiers[0].metadata, MetadataAccess::Allow);
        assert_eq!(word.version, mapping.version);
        assert!(word.canonical_json().contains("\"metadata\":\"allow\""));
    }

    #[test]
    fn mistakes_are_reported_where_they_are() {
        let e = errors(" {mode: deny, denyPaths: [/x]}");
        assert!(
            e.contains(
                "p.yaml:9:41: spec.tiers[0].metadata.denyPaths: only takes effect with mode: filter"
            ),
            "{e}"
        );
        let e = errors(" {mode: filter, require: imdsv1}");
        assert!(
            e.contains(
                "spec.tiers[0].metadata.require: \"imdsv1\" is not a requirement (expected imdsv2)"
            ),
            "{e}"
        );
        let e = errors(" {denyPaths: [/x]}");
        assert!(
            e.contains("spec.tiers[0].metadata.mode: missing required key"),
            "{e}"
        );
        let e = errors(" {mode: filter, denyPaths: [\"/latest/meta-data/../x\"]}");
        assert!(
            e.contains("p.yaml:9:44: spec.tiers[0].metadata.denyPaths[0]:"),
            "{e}"
        );
        let e = errors(" {mode: filter, allowPaths: [\"latest/x\"]}");
        assert!(e.contains("spec.tiers[0].metadata.allowPaths[0]:"), "{e}");
        let e = errors(" 3");
        assert!(
            e.contains("spec.tiers[0].metadata: expected deny, allow, filter"),
            "{e}"
        );
    }
}
