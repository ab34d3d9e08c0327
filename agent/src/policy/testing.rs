//! Test helpers the policy modules' tests share: policies that must parse.

use super::{Policy, parse_str};

/// Parses a policy the test relies on being valid.
pub(crate) fn valid(src: &str) -> Policy {
    match parse_str(src, "p.yaml") {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// A valid policy from its `spec:` part, under the usual header.
pub(crate) fn with_spec(spec: &str) -> Policy {
    valid(&format!(
        "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata: {{name: p}}\n{spec}"
    ))
}
