//! The `/`-segment glob matcher shared by cgroup path globs (the policy's
//! `Glob`) and SPIFFE ID patterns ([`SpiffePattern`](crate::SpiffePattern)).
//!
//! The syntax is documented with the policy's `Glob` (and for operators in
//! the README). Matching runs an NFA whose states are positions in the
//! segment list; besides [`SegmentGlob::matches`] the state-set steps are
//! public so the policy can answer "which *descendants* of this path can
//! match?" on the same machine.

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

/// A compiled segment glob: the pattern as written and its segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentGlob {
    source: String,
    segs: Vec<Seg>,
}

/// A set of NFA states (bit `i` = position `i` in the segment list).
pub type States = u128;

impl SegmentGlob {
    /// Builds a glob from the part after the leading `/` (or after
    /// `spiffe://`); `source` is kept verbatim for display and serialization.
    pub fn parse(source: &str, rest: &str) -> Result<SegmentGlob, String> {
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
        Ok(SegmentGlob {
            source: source.to_owned(),
            segs,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `path` (`/`-separated) matches the whole pattern.
    pub fn matches(&self, path: &str) -> bool {
        let s = self.run(path);
        s & self.accept() != 0
    }

    /// The accepting state: every segment consumed.
    pub fn accept(&self) -> States {
        1u128 << self.segs.len()
    }

    /// The ε-closed state set after consuming the segments of `path`.
    pub fn run(&self, path: &str) -> States {
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
    pub fn step_any(&self, s: States) -> States {
        self.step(s, |_| true)
    }

    /// A step on a name only universal segments admit.
    pub fn step_generic(&self, s: States) -> States {
        self.step(s, |seg| match seg {
            Seg::AnyDepth => true,
            Seg::Literal(_) => false,
            Seg::Wild { universal, .. } => *universal,
        })
    }
}

impl Serialize for SegmentGlob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl std::fmt::Display for SegmentGlob {
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
