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
//! path can match?" ([`Glob::descendants`]).

use std::collections::HashSet;

use serde::{Serialize, Serializer};

/// Most segments a pattern may have. The NFA state set is a `u128` bitmask
/// (positions `0..=len`), so this keeps every state representable.
pub const MAX_GLOB_SEGMENTS: usize = 64;

/// One segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    /// `**`: zero or more whole segments.
    AnyDepth,
    /// A segment without wildcards: equal names only.
    Literal(String),
    /// A segment with `*` / `?`.
    Wild {
        pat: Vec<char>,
        /// Matches every non-empty name (e.g. `*`, `?*`). Path segments are
        /// never empty, so such a segment accepts any name.
        universal: bool,
    },
}

/// A compiled path glob (see the module docs for the syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    source: String,
    segs: Vec<Seg>,
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

type States = u128;

impl Glob {
    /// Parses an absolute pattern (`/a/*/b/**`). `/` alone matches the root.
    pub fn parse(pattern: &str) -> Result<Glob, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("{pattern:?} must start with `/`"));
        };
        Self::from_segments(pattern, rest)
    }

    /// Builds a glob from the part after the leading `/` (or after
    /// `spiffe://`); `source` is kept verbatim for display and serialization.
    fn from_segments(source: &str, rest: &str) -> Result<Glob, String> {
        let mut segs = Vec::new();
        if !rest.is_empty() {
            for s in rest.split('/') {
                if s.is_empty() {
                    return Err(format!(
                        "{source:?} has an empty path segment (`//` or a trailing `/`)"
                    ));
                }
                let seg = if s == "**" {
                    // `**/**` means the same as `**`; collapsing keeps the NFA small.
                    if segs.last() == Some(&Seg::AnyDepth) {
                        continue;
                    }
                    Seg::AnyDepth
                } else if s.contains("**") {
                    return Err(format!(
                        "{source:?}: `**` must be a whole path segment (`/**/`), found {s:?}"
                    ));
                } else if s.contains(['*', '?']) {
                    let pat: Vec<char> = s.chars().collect();
                    let stars = pat.iter().filter(|&&c| c == '*').count();
                    let qs = pat.iter().filter(|&&c| c == '?').count();
                    let only_wild = stars + qs == pat.len();
                    Seg::Wild {
                        universal: only_wild && stars > 0 && qs <= 1,
                        pat,
                    }
                } else {
                    Seg::Literal(s.to_owned())
                };
                segs.push(seg);
            }
        }
        if segs.len() > MAX_GLOB_SEGMENTS {
            return Err(format!(
                "{source:?} has more than {MAX_GLOB_SEGMENTS} path segments"
            ));
        }
        Ok(Glob {
            source: source.to_owned(),
            segs,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `path` (absolute, `/`-separated) matches the whole pattern.
    pub fn matches(&self, path: &str) -> bool {
        let s = self.run(path);
        s & self.accept() != 0
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
        let start = self.run(path);
        if start == 0 {
            return Coverage::None;
        }
        let accept = self.accept();

        // Reachability with any names: the union of step_any^k(start), k ≥ 1.
        // step_any distributes over union, so iterate to a fixed point.
        let mut reach = self.step_any(start);
        loop {
            let next = reach | self.step_any(reach);
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
        let mut cur = self.step_generic(start);
        loop {
            if cur & accept == 0 {
                return Coverage::Some;
            }
            if !seen.insert(cur) {
                return Coverage::All;
            }
            cur = self.step_generic(cur);
        }
    }

    fn accept(&self) -> States {
        1u128 << self.segs.len()
    }

    /// The ε-closed state set after consuming the segments of `path`.
    fn run(&self, path: &str) -> States {
        let mut s = self.closure(1);
        for name in path.split('/').filter(|n| !n.is_empty()) {
            s = self.step(s, |seg| match seg {
                Seg::AnyDepth => true,
                Seg::Literal(l) => l == name,
                Seg::Wild { pat, .. } => wild_match(pat, name),
            });
            if s == 0 {
                break;
            }
        }
        s
    }

    /// ε-moves: `**` may match zero segments. Ascending order lets a chain of
    /// such moves propagate in one pass.
    fn closure(&self, mut s: States) -> States {
        for (i, seg) in self.segs.iter().enumerate() {
            if s & (1 << i) != 0 && *seg == Seg::AnyDepth {
                s |= 1 << (i + 1);
            }
        }
        s
    }

    /// One consumed segment; `admits(seg)` says whether the segment accepts
    /// the consumed name. `**` loops on itself, others advance.
    fn step(&self, s: States, admits: impl Fn(&Seg) -> bool) -> States {
        let mut out = 0;
        for (i, seg) in self.segs.iter().enumerate() {
            if s & (1 << i) == 0 || !admits(seg) {
                continue;
            }
            out |= if *seg == Seg::AnyDepth {
                1 << i
            } else {
                1 << (i + 1)
            };
        }
        self.closure(out)
    }

    /// A step for which some name exists (every segment admits some name).
    fn step_any(&self, s: States) -> States {
        self.step(s, |_| true)
    }

    /// A step on a name only universal segments admit.
    fn step_generic(&self, s: States) -> States {
        self.step(s, |seg| match seg {
            Seg::AnyDepth => true,
            Seg::Literal(_) => false,
            Seg::Wild { universal, .. } => *universal,
        })
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

/// `*` / `?` match within one name (names never contain `/`). Greedy with a
/// single backtrack point: O(len(pat) * len(name)) at worst.
fn wild_match(pat: &[char], name: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() && (pat[p] == '?' || pat[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pat.len() && pat[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == '*')
}

/// A `spiffeId` pattern: `spiffe://` followed by a glob over the trust domain
/// and path segments (`spiffe://corp.example/ns/*/sa/**`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffePattern {
    glob: Glob,
}

impl SpiffePattern {
    /// Parses `spiffe://TRUST-DOMAIN/PATH` with the [`Glob`] wildcards.
    pub fn parse(pattern: &str) -> Result<SpiffePattern, String> {
        let Some(rest) = pattern.strip_prefix("spiffe://") else {
            return Err(format!("{pattern:?} must start with `spiffe://`"));
        };
        if rest.is_empty() {
            return Err(format!("{pattern:?} has no trust domain"));
        }
        Ok(SpiffePattern {
            glob: Glob::from_segments(pattern, rest)?,
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
