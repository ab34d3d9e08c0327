//! SPIFFE ID patterns (`--allow-spiffe`, `--collector-spiffe-id`, a
//! binding's `spiffeId`): `spiffe://` followed by a segment glob.

use serde::{Serialize, Serializer};

use crate::glob::SegmentGlob;

/// A `spiffeId` pattern: `spiffe://` followed by a glob over the trust domain
/// and path segments (`spiffe://corp.example/ns/*/sa/**`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffePattern {
    glob: SegmentGlob,
}

impl SpiffePattern {
    /// Parses `spiffe://TRUST-DOMAIN/PATH` with the glob wildcards (`*` one
    /// segment or part of one, `?` one character, `**` any depth).
    pub fn parse(pattern: &str) -> Result<SpiffePattern, String> {
        let Some(rest) = pattern.strip_prefix("spiffe://") else {
            return Err(format!("{pattern:?} must start with `spiffe://`"));
        };
        if rest.is_empty() {
            return Err(format!("{pattern:?} has no trust domain"));
        }
        Ok(SpiffePattern {
            glob: SegmentGlob::parse(pattern, rest)?,
        })
    }

    /// Whether a SPIFFE ID matches.
    pub fn matches(&self, id: &str) -> bool {
        id.strip_prefix("spiffe://")
            .is_some_and(|rest| self.glob.matches(rest))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.glob.as_str()
    }
}

impl Serialize for SpiffePattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.glob.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_patterns() {
        let p = SpiffePattern::parse("spiffe://corp.example/ns/ops/sa/*").expect("valid");
        assert!(p.matches("spiffe://corp.example/ns/ops/sa/retriever"));
        assert!(!p.matches("spiffe://corp.example/ns/ops/sa/a/b"));
        assert!(!p.matches("spiffe://other.example/ns/ops/sa/retriever"));
        assert!(!p.matches("corp.example/ns/ops/sa/retriever"));
        let deep = SpiffePattern::parse("spiffe://corp.example/**").expect("valid");
        assert!(deep.matches("spiffe://corp.example/ns/a/sa/b"));
        assert!(SpiffePattern::parse("https://x/y").is_err());
        assert!(SpiffePattern::parse("spiffe://").is_err());
    }
}
