//! DNS name patterns of `egress[].fqdns` rules and the per-tier index that
//! matches a queried name against them in a few hash lookups.
//!
//! Semantics (pinned by the table in the tests):
//! - `api.github.com` matches that name only;
//! - `*.s3.amazonaws.com` matches exactly one label left of the suffix;
//! - `**.googleapis.com` matches one or more labels left of the suffix;
//! - no pattern matches its apex (`s3.amazonaws.com` itself), and a suffix
//!   matches on a label boundary only (`evils3.amazonaws.com` never matches
//!   `*.s3.amazonaws.com`);
//! - comparison is ASCII case-insensitive, one trailing dot is ignored, and
//!   internationalized names are written in their `xn--` form.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Serialize, Serializer};

/// Longest presentation form of a DNS name without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// How much of the name left of the suffix a pattern admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Depth {
    /// The suffix itself is the whole name.
    Exact,
    /// `*.`: exactly one label.
    OneLabel,
    /// `**.`: one or more labels.
    AnyLabels,
}

/// One validated name pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamePattern {
    /// What may stand left of `suffix`.
    pub depth: Depth,
    /// Lowercase, no trailing dot, at least one label.
    pub suffix: String,
}

impl NamePattern {
    /// Parses a pattern as written in a policy; the error is one sentence
    /// naming what is wrong with it.
    pub fn parse(text: &str) -> Result<NamePattern, String> {
        let (depth, rest) = if let Some(r) = text.strip_prefix("**.") {
            (Depth::AnyLabels, r)
        } else if let Some(r) = text.strip_prefix("*.") {
            (Depth::OneLabel, r)
        } else {
            (Depth::Exact, text)
        };
        if text == "*" || text == "**" {
            return Err(format!(
                "`{text}` would allow every name (and DNS tunnelling with it); name the domain, e.g. `*.example.com`"
            ));
        }
        let suffix = normalize(rest).map_err(|e| format!("`{text}`: {e}"))?;
        if suffix.split('.').any(|l| l.contains('*')) {
            return Err(format!(
                "`{text}`: `*` and `**` may only stand alone as the leftmost label (`*.example.com`, `**.example.com`)"
            ));
        }
        Ok(NamePattern { depth, suffix })
    }

    /// Whether `name` (already [`normalize`]d) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.depth {
            Depth::Exact => name == self.suffix,
            Depth::OneLabel | Depth::AnyLabels => {
                let Some(left) = name
                    .strip_suffix(self.suffix.as_str())
                    .and_then(|l| l.strip_suffix('.'))
                else {
                    return false;
                };
                !left.is_empty() && (self.depth == Depth::AnyLabels || !left.contains('.'))
            }
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.depth {
            Depth::Exact => f.write_str(&self.suffix),
            Depth::OneLabel => write!(f, "*.{}", self.suffix),
            Depth::AnyLabels => write!(f, "**.{}", self.suffix),
        }
    }
}

impl Serialize for NamePattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The comparison form of a name: ASCII lowercase, one trailing dot removed,
/// every label 1–63 characters of letters, digits, `-` or `_` (and `*` for
/// patterns, checked by the caller), at most 253 characters.
pub fn normalize(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if !name.is_ascii() {
        return Err("write internationalized names in their ASCII `xn--` form (IDNA)".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name is {} characters long; DNS allows at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("the name has an empty label (`..` or a leading dot)".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "the label `{label}` is {} characters long; DNS allows at most {MAX_LABEL_LEN}",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*')))
        {
            return Err(format!(
                "the label `{label}` holds `{c}`, which no host name has"
            ));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// Which rules of one tier a name matches: exact names and wildcard
/// suffixes in hash maps, so a lookup costs one probe per label of the
/// queried name, whatever the number of patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameIndex {
    exact: HashMap<String, Vec<usize>>,
    one_label: HashMap<String, Vec<usize>>,
    any_labels: HashMap<String, Vec<usize>>,
}

impl NameIndex {
    /// Adds `pattern` as belonging to rule `rule` (an index the caller owns).
    pub fn insert(&mut self, pattern: &NamePattern, rule: usize) {
        let map = match pattern.depth {
            Depth::Exact => &mut self.exact,
            Depth::OneLabel => &mut self.one_label,
            Depth::AnyLabels => &mut self.any_labels,
        };
        let rules = map.entry(pattern.suffix.clone()).or_default();
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }

    /// Whether no pattern is indexed.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.one_label.is_empty() && self.any_labels.is_empty()
    }

    /// The rules whose patterns match `name` (already [`normalize`]d), in
    /// ascending order, without repeats.
    pub fn matching_rules(&self, name: &str) -> Vec<usize> {
        let mut found: HashSet<usize> = HashSet::new();
        if let Some(r) = self.exact.get(name) {
            found.extend(r);
        }
        // Every proper suffix that starts after a dot: `b.c` and `c` of `a.b.c`.
        let mut first = true;
        for (i, _) in name.match_indices('.') {
            let suffix = &name[i + 1..];
            if first && let Some(r) = self.one_label.get(suffix) {
                found.extend(r);
            }
            first = false;
            if let Some(r) = self.any_labels.get(suffix) {
                found.extend(r);
            }
        }
        let mut v: Vec<usize> = found.into_iter().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> NamePattern {
        NamePattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// The semantics table: (pattern, name, matches).
    const TABLE: &[(&str, &str, bool)] = &[
        ("api.github.com", "api.github.com", true),
        ("api.github.com", "API.GitHub.com", true),
        ("api.github.com", "api.github.com.", true),
        ("API.GITHUB.COM.", "api.github.com", true),
        ("api.github.com", "x.api.github.com", false),
        ("api.github.com", "github.com", false),
        ("api.github.com", "api.github.co", false),
        ("*.s3.amazonaws.com", "bucket.s3.amazonaws.com", true),
        ("*.s3.amazonaws.com", "BUCKET.S3.amazonaws.com.", true),
        ("*.s3.amazonaws.com", "s3.amazonaws.com", false),
        ("*.s3.amazonaws.com", "a.b.s3.amazonaws.com", false),
        ("*.s3.amazonaws.com", "evils3.amazonaws.com", false),
        ("*.s3.amazonaws.com", "bucket.evils3.amazonaws.com", false),
        (
            "*.s3.amazonaws.com",
            "bucket.s3.amazonaws.com.evil.example",
            false,
        ),
        ("**.googleapis.com", "storage.googleapis.com", true),
        ("**.googleapis.com", "a.b.c.googleapis.com", true),
        ("**.googleapis.com", "googleapis.com", false),
        ("**.googleapis.com", "evilgoogleapis.com", false),
        ("**.googleapis.com", "x.evilgoogleapis.com", false),
        ("xn--bcher-kva.example", "XN--BCHER-KVA.example", true),
        ("_dmarc.example.com", "_dmarc.example.com", true),
        ("*.com", "example.com", true),
        ("*.com", "a.example.com", false),
    ];

    #[test]
    fn semantics_table() {
        for &(p, name, want) in TABLE {
            let p = pat(p);
            let n = normalize(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.matches(&n), want, "{p} vs {name}");
            let mut idx = NameIndex::default();
            idx.insert(&p, 7);
            let got = idx.matching_rules(&n);
            assert_eq!(got == [7], want, "index: {p} vs {name}: {got:?}");
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        let cases: &[(&str, &str)] = &[
            ("*", "every name"),
            ("**", "every name"),
            ("", "empty"),
            (".", "empty"),
            ("a..b", "empty label"),
            (".example.com", "empty label"),
            ("api.*.com", "leftmost label"),
            ("*foo.example.com", "leftmost label"),
            ("***.example.com", "leftmost label"),
            ("*.*.example.com", "leftmost label"),
            ("bücher.example", "xn--"),
            ("exa mple.com", "holds ` `"),
            ("a/b.com", "holds `/`"),
        ];
        for (p, want) in cases {
            let e = NamePattern::parse(p).expect_err(p);
            assert!(e.contains(want), "{p:?}: {e}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(
            NamePattern::parse(&long_label)
                .expect_err("64")
                .contains("at most 63")
        );
        let long_name = ["a".repeat(63).as_str(); 4].join(".") + ".com";
        assert!(
            NamePattern::parse(&long_name)
                .expect_err("long")
                .contains("at most 253")
        );
    }

    #[test]
    fn display_round_trips() {
        for p in ["api.github.com", "*.s3.amazonaws.com", "**.googleapis.com"] {
            assert_eq!(pat(p).to_string(), p);
            assert_eq!(pat(&pat(p).to_string()), pat(p));
        }
        assert_eq!(pat("*.S3.Amazonaws.COM.").to_string(), "*.s3.amazonaws.com");
    }

    #[test]
    fn index_returns_every_matching_rule_once() {
        let mut idx = NameIndex::default();
        idx.insert(&pat("api.github.com"), 0);
        idx.insert(&pat("**.github.com"), 1);
        idx.insert(&pat("*.github.com"), 2);
        idx.insert(&pat("**.com"), 3);
        idx.insert(&pat("api.github.com"), 0);
        assert_eq!(idx.matching_rules("api.github.com"), vec![0, 1, 2, 3]);
        assert_eq!(idx.matching_rules("a.b.github.com"), vec![1, 3]);
        assert_eq!(idx.matching_rules("github.com"), vec![3]);
        assert_eq!(idx.matching_rules("com"), Vec::<usize>::new());
        assert_eq!(idx.matching_rules("example.org"), Vec::<usize>::new());
        assert!(!idx.is_empty());
        assert!(NameIndex::default().is_empty());
    }
}
