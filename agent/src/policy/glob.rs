//! Globs over `/`-separated paths: cgroup v2 paths (`cgroupPath`) and the path
//! part of SPIFFE IDs (`spiffeId`).
//!
//! Semantics (documented for operators in the README):
//! - The pattern is split on `/` into segments; empty segments (`//`, a
//!   trailing `/`) are rejected in patterns and ignored in the matched paths.
//! - A segment that is exactly `**` matches zero or more whole segments.
//! - Any other segment matches exactly one segment; in it `*` matches any run
//!   of characters (never `/`) and `?` exactly one character. Everything else
//!   is literal: there is no escaping and no `[...]` class.
//! - `**` inside a longer segment (`a**`) is rejected rather than guessed at.
//!
//! Matching runs an NFA whose states are positions in the segment list, so
//! the same machine answers both "does this path match?" and the question the
//! kernel needs for cgroups it has not seen yet: "which *descendants* of this
//! path can match?" ([`Glob::descendants`]). The machine itself lives in
//! `tiergate_tls::glob`, shared with SPIFFE ID patterns.

use std::collections::HashSet;

use serde::{Serialize, Serializer};
use tiergate_tls::glob::SegmentGlob;

pub use tiergate_tls::glob::MAX_GLOB_SEGMENTS;

/// A compiled path glob (see the module docs for the syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    nfa: SegmentGlob,
}

/// Which unknown strict descendants of a path a glob matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// No descendant, whatever its names and depth.
    None,
    /// Every descendant, whatever its names and depth.
    All,
    /// Some descendants but not others (depends on names or depth).
    Some,
}

impl Glob {
    /// Parses an absolute pattern (`/a/*/b/**`). `/` alone matches the root.
    pub fn parse(pattern: &str) -> Result<Glob, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("{pattern:?} must start with `/`"));
        };
        Ok(Glob {
            nfa: SegmentGlob::parse(pattern, rest)?,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.nfa.as_str()
    }

    /// Whether `path` (absolute, `/`-separated) matches the whole pattern.
    pub fn matches(&self, path: &str) -> bool {
        self.nfa.matches(path)
    }

    /// For an *unknown* strict descendant `path/x/...` (any names, depth ≥ 1):
    /// does the glob match none of them, all of them, or only some?
    ///
    /// `None` is exact: it holds iff no sequence of names reaches the accepting
    /// state. `All` is checked against a "generic" name that only universal
    /// segments (`*`, `**`, `?*`) accept; because the NFA is monotone, if every
    /// generic sequence is accepted then every real one is. The converse can
    /// fail only for contrived sets of partial segments that together cover
    /// every name (e.g. `?` and `??*` on alternative branches); then this
    /// answers `Some` where `All` would hold, which callers treat as
    /// ambiguous and resolve fail-closed, never open.
    pub fn descendants(&self, path: &str) -> Coverage {
        let start = self.nfa.run(path);
        if start == 0 {
            return Coverage::None;
        }
        let accept = self.nfa.accept();

        // Reachability with any names: the union of step_any^k(start), k ≥ 1.
        // step_any distributes over union, so iterate to a fixed point.
        let mut reach = self.nfa.step_any(start);
        loop {
            let next = reach | self.nfa.step_any(reach);
            if next == reach {
                break;
            }
            reach = next;
        }
        if reach & accept == 0 {
            return Coverage::None;
        }

        // Generic names: deterministic on state sets, so the walk cycles; every
        // set met after at least one step must accept.
        let mut seen = HashSet::new();
        let mut cur = self.nfa.step_generic(start);
        loop {
            if cur & accept == 0 {
                return Coverage::Some;
            }
            if !seen.insert(cur) {
                return Coverage::All;
            }
            cur = self.nfa.step_generic(cur);
        }
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.nfa.serialize(s)
    }
}

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.nfa.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_bad_patterns() {
        for bad in ["a/b", "", "/a//b", "/a/", "/a**/b", "/x/**y"] {
            assert!(Glob::parse(bad).is_err(), "{bad} should be rejected");
        }
        let long = "/a".repeat(MAX_GLOB_SEGMENTS + 1);
        assert!(Glob::parse(&long).is_err());
        assert!(Glob::parse(&"/a".repeat(MAX_GLOB_SEGMENTS)).is_ok());
        assert!(Glob::parse("/").is_ok());
    }

    #[test]
    fn matches_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("/agents/tier0/**", "/agents/tier0", true),
            ("/agents/tier0/**", "/agents/tier0/a", true),
            ("/agents/tier0/**", "/agents/tier0/a/b/c", true),
            ("/agents/tier0/**", "/agents/tier1/a", false),
            ("/agents/tier0/**", "/agents", false),
            ("/a/*", "/a/b", true),
            ("/a/*", "/a", false),
            ("/a/*", "/a/b/c", false),
            ("/a/*/c", "/a/b/c", true),
            ("/a/*/c", "/a/b/x/c", false),
            ("/a/**/c", "/a/c", true),
            ("/a/**/c", "/a/b/x/c", true),
            ("/a/**/c", "/a/b/x/d", false),
            ("/a/b?", "/a/bc", true),
            ("/a/b?", "/a/b", false),
            ("/a/b?", "/a/bcd", false),
            ("/x/*.scope", "/x/cri-containerd-1.scope", true),
            ("/x/*.scope", "/x/cri-containerd-1.slice", false),
            ("/x/a*b*c", "/x/aXbYc", true),
            ("/x/a*b*c", "/x/aXbY", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/", "/", true),
            ("/", "/a", false),
            ("/a/b", "/a/b/", true),
            ("/a/b", "//a//b", true),
            ("/**/foo/**", "/x/y/foo/z", true),
            ("/**/foo/**", "/x/y/fo/z", false),
        ];
        for (pat, path, want) in cases {
            let g = Glob::parse(pat).expect("valid pattern");
            assert_eq!(g.matches(path), *want, "{pat} vs {path}");
        }
    }

    #[test]
    fn descendants_table() {
        use Coverage::*;
        let cases: &[(&str, &str, Coverage)] = &[
            ("/a/b/**", "/a/b", All),
            ("/a/b/**", "/a/b/c/d", All),
            ("/a/b/**", "/a", Some),
            ("/a/b/**", "/", Some),
            ("/a/b/**", "/c", None),
            ("/a/*", "/a", Some),
            ("/a/*", "/a/b", None),
            ("/a/**/x", "/a", Some),
            ("/a/**/x", "/a/x", Some),
            ("/a/b", "/a/b", None),
            ("/a/b", "/a", Some),
            ("/**", "/", All),
            ("/**", "/x/y", All),
            ("/a/*/**", "/a", All),
            ("/a/?*/**", "/a", All),
            ("/a/??*/**", "/a", Some),
            ("/a/b*/**", "/a", Some),
            ("/a/*/*", "/a", Some),
            ("/a/*/*", "/a/x", Some),
            ("/a/*/*", "/a/x/y", None),
            ("/**/x/**", "/q", Some),
            ("/**/x/**", "/q/x", All),
            ("/**/*", "/q", All),
            ("/*/**", "/", All),
        ];
        for (pat, path, want) in cases {
            let g = Glob::parse(pat).expect("valid pattern");
            assert_eq!(g.descendants(path), *want, "{pat} under {path}");
        }
    }

    /// Cross-check `descendants` against brute force over a small universe of
    /// names (one per kind of segment plus a generic one) and depths 1..=4.
    #[test]
    fn descendants_agree_with_brute_force() {
        let pats = [
            "/a/b/**",
            "/a/*",
            "/a/**/x",
            "/a/*/x/**",
            "/**/b",
            "/a/b",
            "/a/x*/**",
            "/**",
            "/a/**/b/*",
        ];
        let names = ["a", "b", "x", "xy", "zzz"];
        for pat in pats {
            let g = Glob::parse(pat).expect("valid");
            for base in ["/", "/a", "/a/b", "/a/x", "/q", "/a/b/x"] {
                let (mut any, mut all) = (false, true);
                let mut stack: Vec<String> = vec![base.trim_end_matches('/').to_owned()];
                for _depth in 1..=4 {
                    let mut next = Vec::new();
                    for p in &stack {
                        for n in names {
                            let c = format!("{p}/{n}");
                            let m = g.matches(&c);
                            any |= m;
                            all &= m;
                            next.push(c);
                        }
                    }
                    stack = next;
                }
                let got = g.descendants(base);
                let want = if all {
                    Coverage::All
                } else if any {
                    Coverage::Some
                } else {
                    Coverage::None
                };
                // Brute force can miss matches needing more depth; only
                // compare where it is conclusive.
                if want != Coverage::None {
                    assert_eq!(got, want, "{pat} under {base}");
                } else {
                    assert_ne!(got, Coverage::All, "{pat} under {base}");
                }
            }
        }
    }
}
