//! Policy version ids: `sha256:` + lowercase hex of the SHA-256 of the
//! canonical form.
//!
//! The canonical form is the compact JSON serialization of the validated
//! model ([`Policy`] minus its `version`). Because it is built from the model
//! and not from the file text, comments, YAML key order, quoting, flow vs
//! block style and spelled-out defaults (`metadata: deny`, `protocols: [tcp,
//! udp]`, `"443"` vs `443` vs `"443-443"`) do not change it, while any change
//! to a value the agent acts on does. List order (tiers, rules, CIDRs,
//! bindings) is kept: it decides tier ids, first-match order and the rule an
//! explanation names.

use sha2::{Digest, Sha256};

use super::model::Policy;

impl Policy {
    /// The canonical JSON form that the version hashes.
    pub fn canonical_json(&self) -> String {
        // The model holds only strings, integers, booleans, sequences and
        // string-keyed maps, which serde_json always serializes.
        serde_json::to_string(self).expect("policy model serializes to JSON")
    }

    /// `sha256:<hex>` of [`Policy::canonical_json`]. The parser stores it in
    /// `version`; callers that build a `Policy` by hand call this themselves.
    pub fn compute_version(&self) -> String {
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        format!("sha256:{}", hex::encode(digest))
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::parse_str;

    const BASE: &str = r#"
apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: p
spec:
  defaultTier: b
  tiers:
    - name: a
      egress:
        - cidrs: ["10.0.0.0/8", "fd00::/64"]
          ports: ["443", 8000-8100]
          protocols: [tcp]
    - name: b
  bindings:
    - tier: a
      match: {cgroupPath: "/x/**", podLabels: {k: v, j: w}}
"#;

    // Same meaning: comments, key order, flow style, explicit defaults,
    // integer vs string ports, mapped IPv6 spelling.
    const REFORMATTED: &str = r#"
# a comment
kind: TierPolicy   # trailing comment
apiVersion: "tiergate.io/v1alpha1"
spec:
  bindings:
  - match:
      podLabels:
        j: w
        k: v
      cgroupPath: /x/**
    tier: a
  tiers:
  - egress:
    - protocols: ["tcp"]
      ports: [443, "8000-8100"]
      cidrs:
      - ::ffff:10.0.0.0/104
      - fd00:0::/64
    metadata: deny
    name: a
  - {name: b, metadata: deny}
  mode: enforce
  trustDomain: cluster.local
  defaultTier: b
metadata: {name: p}
"#;

    fn version(src: &str) -> String {
        match parse_str(src, "t.yaml") {
            Ok(p) => {
                assert_eq!(p.version, p.compute_version());
                p.version
            }
            Err(e) => panic!("should parse:\n{e}"),
        }
    }

    #[test]
    fn version_format() {
        let v = version(BASE);
        assert!(v.starts_with("sha256:"));
        assert_eq!(v.len(), 7 + 64);
        assert!(
            v[7..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn version_is_stable_under_reformatting() {
        assert_eq!(version(BASE), version(REFORMATTED));
    }

    #[test]
    fn version_changes_on_semantic_change() {
        let base = version(BASE);
        let edits: &[(&str, &str)] = &[
            ("name: p", "name: q"),
            ("\"443\"", "\"444\""),
            ("[tcp]", "[udp]"),
            ("10.0.0.0/8", "10.0.0.0/9"),
            ("defaultTier: b", "defaultTier: a"),
            ("/x/**", "/x/*"),
            ("k: v", "k: w"),
            ("    - name: b\n", "    - name: b\n      metadata: allow\n"),
            ("    - name: b\n", "    - name: b\n      mode: audit\n"),
            ("  defaultTier: b\n", "  defaultTier: b\n  mode: audit\n"),
            (
                "  defaultTier: b\n",
                "  defaultTier: b\n  trustDomain: x.y\n",
            ),
            ("    - name: b\n", "    - name: b\n      description: hi\n"),
        ];
        for (from, to) in edits {
            assert!(BASE.contains(from), "edit {from:?} does not apply");
            let changed = BASE.replacen(from, to, 1);
            assert_ne!(
                version(&changed),
                base,
                "{from:?} -> {to:?} kept the version"
            );
        }
    }
}
