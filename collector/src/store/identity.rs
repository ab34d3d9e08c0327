//! Identity classes: the stable name under which a workload's observations
//! are kept, whatever node, pod or process made them.
//!
//! In order of preference:
//! 1. the SPIFFE ID (`spiffe://…`), as the record carries it;
//! 2. `k8s:<namespace>/<service account>`;
//! 3. `systemd:<unit>`, with volatile parts replaced (see [`pattern_segment`]);
//! 4. `cgroup:<path>`, every segment with volatile parts replaced;
//! 5. `unknown` when the record names none of these.

/// The identity class of a workload from the fields of
/// `unmapped.tiergate.workload`.
pub fn class(
    spiffe_id: Option<&str>,
    namespace: Option<&str>,
    service_account: Option<&str>,
    systemd_unit: Option<&str>,
    cgroup_path: Option<&str>,
) -> String {
    fn given(s: Option<&str>) -> Option<&str> {
        s.filter(|s| !s.is_empty())
    }
    if let Some(id) = given(spiffe_id) {
        return id.to_string();
    }
    if let (Some(ns), Some(sa)) = (given(namespace), given(service_account)) {
        return format!("k8s:{ns}/{sa}");
    }
    if let Some(unit) = given(systemd_unit) {
        return format!("systemd:{}", pattern_segment(unit));
    }
    if let Some(path) = given(cgroup_path) {
        return format!("cgroup:{}", cgroup_pattern(path));
    }
    "unknown".to_string()
}

/// A cgroup path with the volatile parts of each segment replaced by `*`
/// (see [`pattern_segment`]).
pub fn cgroup_pattern(path: &str) -> String {
    path.split('/')
        .map(pattern_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// Characters that separate the parts of a cgroup or unit name.
fn is_separator(c: char) -> bool {
    matches!(c, '-' | '_' | '.' | ':' | '@')
}

/// One path segment (or unit name) with its volatile parts replaced by `*`.
///
/// The rule: a UUID (8-4-4-4-12 hex digits, joined by `-` or `_`: pod uids)
/// anywhere in the segment becomes `*`; then, of the parts between the
/// separators `- _ . : @`, one that is all decimal digits (`session-12`,
/// `user-1000`, pids) becomes `*`, and one that is at least 8 hex digits
/// with a decimal digit among them, whole or after 1 to 3 leading letters
/// (as many as possible: container ids, `pod<uid>`, systemd's `run-r<hex>`),
/// keeps its letters and the rest becomes `*`. Everything else (`kubepods`, `burstable`,
/// `tier0`, `nginx.service`) is kept as it is.
pub fn pattern_segment(segment: &str) -> String {
    // Every volatile part holds a decimal digit: most names have none.
    if !segment.bytes().any(|b| b.is_ascii_digit()) {
        return segment.to_string();
    }
    let segment = replace_uuids(segment);
    let mut out = String::with_capacity(segment.len());
    let mut start = 0;
    for (i, c) in segment.char_indices() {
        if is_separator(c) {
            push_part(&mut out, &segment[start..i]);
            out.push(c);
            start = i + c.len_utf8();
        }
    }
    push_part(&mut out, &segment[start..]);
    out
}

/// Appends `part`, or its pattern when it is volatile.
fn push_part(out: &mut String, part: &str) {
    if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
        out.push('*');
        return;
    }
    let letters = part
        .bytes()
        .take_while(|b| b.is_ascii_alphabetic())
        .count()
        .min(3);
    // An id may start with hex letters: the whole part first, then with as
    // many leading letters kept as possible (`pod` + id, not `po` + `d…`).
    for split in std::iter::once(0).chain((1..=letters).rev()) {
        let rest = &part[split..];
        if rest.len() >= 8
            && rest.bytes().all(|b| b.is_ascii_hexdigit())
            && rest.bytes().any(|b| b.is_ascii_digit())
        {
            out.push_str(&part[..split]);
            out.push('*');
            return;
        }
    }
    out.push_str(part);
}

/// Replaces every UUID (hex groups of 8-4-4-4-12 joined by one kind of
/// separator, `-` or `_`) by `*`.
fn replace_uuids(s: &str) -> String {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    const LEN: usize = 36;
    let b = s.as_bytes();
    let is_uuid_at = |i: usize| -> bool {
        if i + LEN > b.len() {
            return false;
        }
        let sep = b[i + 8];
        if sep != b'-' && sep != b'_' {
            return false;
        }
        let mut p = i;
        for (n, g) in GROUPS.iter().enumerate() {
            if !b[p..p + g].iter().all(u8::is_ascii_hexdigit) {
                return false;
            }
            p += g;
            if n < 4 {
                if b[p] != sep {
                    return false;
                }
                p += 1;
            }
        }
        // Not the middle of a longer hex run.
        b.get(p).is_none_or(|c| !c.is_ascii_hexdigit())
    };
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if is_uuid_at(i) {
            out.push('*');
            i += LEN;
        } else {
            // Multi-byte characters are copied whole.
            let c = s[i..].chars().next().expect("i is a char boundary");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order() {
        let spiffe = Some("spiffe://corp.example/ns/a/sa/b");
        assert_eq!(
            class(spiffe, Some("a"), Some("b"), Some("x.service"), Some("/p")),
            "spiffe://corp.example/ns/a/sa/b"
        );
        assert_eq!(
            class(None, Some("a"), Some("b"), Some("x.service"), Some("/p")),
            "k8s:a/b"
        );
        // A namespace without its service account is not enough.
        assert_eq!(
            class(None, Some("a"), None, Some("x.service"), Some("/p")),
            "systemd:x.service"
        );
        assert_eq!(class(Some(""), None, None, None, Some("/p")), "cgroup:/p");
        assert_eq!(class(None, None, None, None, None), "unknown");
    }

    #[test]
    fn volatile_parts_become_stars() {
        let cases = [
            // systemd driver: pod uid with `_`, container id.
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b6d8f0e_2c1a_4b3f_9a1e_0c1d2e3f4a5b.slice/cri-containerd-4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f.scope",
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod*.slice/cri-containerd-*.scope",
            ),
            // cgroupfs driver: pod uid with `-`, bare container id.
            (
                "/kubepods/besteffort/pod6b6d8f0e-2c1a-4b3f-9a1e-0c1d2e3f4a5b/4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d",
                "/kubepods/besteffort/pod*/*",
            ),
            // A pod uid with no separators at all.
            ("/kubepods/pod6b6d8f0e2c1a4b3f", "/kubepods/pod*"),
            (
                "/user.slice/user-1000.slice/session-12.scope",
                "/user.slice/user-*.slice/session-*.scope",
            ),
            (
                "/system.slice/docker-0123456789abcdef0123.scope",
                "/system.slice/docker-*.scope",
            ),
            (
                "/system.slice/run-r1a2b3c4d5e6f7a8b9c0.scope",
                "/system.slice/run-r*.scope",
            ),
            ("/tiergate-test-4242/tier0", "/tiergate-test-*/tier0"),
            // Kept: names, short hex-looking words, versions.
            ("/agents/tier0/tool", "/agents/tier0/tool"),
            ("/system.slice/nginx.service", "/system.slice/nginx.service"),
            ("/apps/cafe/deadbeef", "/apps/cafe/deadbeef"),
            ("/apps/app-v2", "/apps/app-v2"),
            ("/", "/"),
            ("/é/ü-1", "/é/ü-*"),
        ];
        for (path, want) in cases {
            assert_eq!(cgroup_pattern(path), want, "{path}");
        }
        assert_eq!(pattern_segment("session-3.scope"), "session-*.scope");
    }

    #[test]
    fn a_uuid_is_found_after_any_prefix_but_not_inside_a_longer_hex_run() {
        assert_eq!(
            pattern_segment("a6b6d8f0e-2c1a-4b3f-9a1e-0c1d2e3f4a5b"),
            "a*"
        );
        // One hex digit too many at the end: not a UUID, the parts are
        // judged one by one.
        assert_eq!(
            pattern_segment("6b6d8f0e-2c1a-4b3f-9a1e-0c1d2e3f4a5bc"),
            "*-2c1a-4b3f-9a1e-*"
        );
    }
}
