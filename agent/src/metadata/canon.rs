//! The one canonical form of a metadata request's target: the proxy decides
//! on it, and forwards exactly it.
//!
//! Path rules in front of metadata services have been bypassed in other
//! tools by every spelling a server accepts for the same resource: `..`,
//! `//`, percent-encoding, a missing trailing slash, and AWS's dated version
//! prefixes (`/2021-07-15/meta-data/...` is `/latest/meta-data/...`). If the
//! rules look at one spelling and the server resolves another, a deny rule is
//! decoration. So [`canonicalize`] resolves the target once, the rules match
//! that result, and the proxy forwards [`Target::forward_uri`]; what cannot
//! be resolved without guessing how the upstream would read it is refused
//! ([`CanonError`]), never passed through.
//!
//! Choices beyond "decode, then resolve dot segments":
//! - A path segment may hold only RFC 3986 `pchar`s minus `;` (letters,
//!   digits, `-._~!$&'()*+,=:@`), raw or decoded. Others cannot be forwarded
//!   as they are (`?` and `#` decoded from `%3F`/`%23` would start a query or
//!   a fragment; `<`, `>` and `` ` `` are refused by the `http` crate), or are
//!   read differently by some servers (`;` starts path parameters, which
//!   Java servlet containers strip before routing). Re-encoding them instead
//!   would forward a spelling the upstream decodes again, the very ambiguity
//!   this removes. No metadata path needs them: the names that vary (AWS
//!   instance tag keys, GCP metadata keys) are limited to this set. They
//!   are refused as `reserved-character`.
//! - So the canonical path holds no `%` at all: the upstream's own decoding
//!   is the identity on it.
//! - `..` at the root is refused, not clamped: a client that writes it is
//!   probing, and clamping would hide that.
//! - The limit [`MAX_TARGET`] holds for the canonical form too (`/1.0`
//!   grows into `/latest`), so every accepted target is a fixpoint.
//! - Case is kept: AWS tag keys are case-sensitive. Servers that ignore case
//!   are the rules' concern (deny patterns match without case).

use std::fmt;

use tiergate_tls::glob::MAX_GLOB_SEGMENTS;

/// Most bytes of a request target (and of its canonical form).
pub const MAX_TARGET: usize = 2048;

/// A request target in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Canonical path: starts with '/', no empty, "." or ".." segments, no
    /// trailing '/' (the root is "/"), every byte printable ASCII and no '%',
    /// dated version prefix replaced by `latest`.
    pub path: String,
    /// The request named a directory (its path ended with '/', or with a
    /// "." or ".." segment); kept so the forwarded request lists it as asked.
    pub trailing_slash: bool,
    /// The query string as sent, without '?', validated, not decoded (None
    /// when absent; Some("") for a bare '?').
    pub query: Option<String>,
}

impl Target {
    /// What goes upstream: path, '/' if trailing_slash (and path != "/"),
    /// '?' + query if any.
    pub fn forward_uri(&self) -> String {
        let query_len = self.query.as_ref().map_or(0, |q| q.len() + 1);
        let mut uri = String::with_capacity(self.path.len() + 1 + query_len);
        uri.push_str(&self.path);
        if self.trailing_slash && self.path != "/" {
            uri.push('/');
        }
        if let Some(q) = &self.query {
            uri.push('?');
            uri.push_str(q);
        }
        uri
    }

    /// The path's segments (none for "/").
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').filter(|s| !s.is_empty())
    }
}

/// Why a request target has no canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanonError {
    /// Not origin-form: absolute-form (`http://...`), authority-form, `*`,
    /// or empty.
    NotOriginForm,
    /// More than [`MAX_TARGET`] bytes, as sent or once canonical.
    TooLong { len: usize },
    /// A `#`: clients never send fragments, so one is an attempt to make the
    /// proxy and the upstream split the target differently.
    Fragment,
    /// A byte outside printable ASCII (space, control, non-ASCII) in the
    /// path, as sent or percent-decoded.
    ControlOrNonAscii { byte: u8, encoded: bool },
    /// A raw `\`, which some servers read as `/`.
    Backslash,
    /// A `%` in the path not followed by two hex digits.
    BadPercentEscape,
    /// `%2F` or `%5C`: a separator hidden inside a segment.
    EncodedSlash { byte: u8 },
    /// `%25`: decoding would leave an escape for the upstream to decode
    /// again.
    DoubleEncoding,
    /// A printable byte that cannot be forwarded as is (see the module
    /// docs), as sent or percent-decoded.
    ReservedCharacter { byte: u8, encoded: bool },
    /// `..` above the root.
    AboveRoot,
    /// A query byte that is not printable ASCII, not accepted by the `http`
    /// crate (`"`, `<`, `>`), or a `%` not followed by two hex digits.
    BadQuery { byte: u8 },
}

impl CanonError {
    /// Stable kebab-case reason, for events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            CanonError::NotOriginForm => "not-origin-form",
            CanonError::TooLong { .. } => "too-long",
            CanonError::Fragment => "fragment",
            CanonError::ControlOrNonAscii { .. } => "control-or-non-ascii",
            CanonError::Backslash => "backslash",
            CanonError::BadPercentEscape => "bad-percent-escape",
            CanonError::EncodedSlash { .. } => "encoded-slash",
            CanonError::DoubleEncoding => "double-encoding",
            CanonError::ReservedCharacter { .. } => "reserved-character",
            CanonError::AboveRoot => "above-root",
            CanonError::BadQuery { .. } => "bad-query",
        }
    }
}

impl fmt::Display for CanonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = |encoded: bool| if encoded { " percent-encoded" } else { "" };
        match self {
            CanonError::NotOriginForm => f.write_str(
                "the request target is not a path starting with '/' \
                 (absolute-form, authority-form and '*' are refused)",
            ),
            CanonError::TooLong { len } => write!(
                f,
                "the request target is {len} bytes, more than the {MAX_TARGET} allowed"
            ),
            CanonError::Fragment => f.write_str("the request target contains a '#' fragment"),
            CanonError::ControlOrNonAscii { byte, encoded } => write!(
                f,
                "the path contains{} byte 0x{byte:02x}, which is not printable ASCII",
                how(*encoded)
            ),
            CanonError::Backslash => {
                f.write_str("the path contains '\\', which some servers read as '/'")
            }
            CanonError::BadPercentEscape => {
                f.write_str("the path contains a '%' not followed by two hex digits")
            }
            CanonError::EncodedSlash { byte } => write!(
                f,
                "the path hides a separator inside a segment as \"%{byte:02X}\""
            ),
            CanonError::DoubleEncoding => {
                f.write_str("the path contains \"%25\", an encoded '%' (double encoding)")
            }
            CanonError::ReservedCharacter { byte, encoded } => write!(
                f,
                "the path contains{} {}, which cannot be forwarded as is",
                how(*encoded),
                show(*byte)
            ),
            CanonError::AboveRoot => f.write_str("the path escapes above the root with \"..\""),
            CanonError::BadQuery { byte: b'%' } => {
                f.write_str("the query contains a '%' not followed by two hex digits")
            }
            CanonError::BadQuery { byte } => {
                write!(
                    f,
                    "the query contains {}, which is not allowed",
                    show(*byte)
                )
            }
        }
    }
}

impl std::error::Error for CanonError {}

/// A byte for a message: quoted when printable, hex otherwise.
fn show(byte: u8) -> String {
    if is_printable(byte) {
        format!("'{}'", char::from(byte))
    } else {
        format!("byte 0x{byte:02x}")
    }
}

/// Resolves a request target (`path[?query]` as received) into its
/// canonical form, or says why it has none.
pub fn canonicalize(target: &str) -> Result<Target, CanonError> {
    if target.len() > MAX_TARGET {
        return Err(CanonError::TooLong { len: target.len() });
    }
    if !target.starts_with('/') {
        return Err(CanonError::NotOriginForm);
    }
    if target.contains('#') {
        return Err(CanonError::Fragment);
    }
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    // Raw bytes first, so that what was sent is judged before what it
    // decodes to.
    for byte in raw_path.bytes() {
        match byte {
            b'\\' => return Err(CanonError::Backslash),
            b'/' | b'%' => {}
            b if !is_printable(b) => {
                return Err(CanonError::ControlOrNonAscii {
                    byte: b,
                    encoded: false,
                });
            }
            b if !is_segment_byte(b) => {
                return Err(CanonError::ReservedCharacter {
                    byte: b,
                    encoded: false,
                });
            }
            _ => {}
        }
    }

    let mut segments: Vec<String> = Vec::new();
    let mut directory = false;
    // The first piece is the empty string before the leading '/'.
    for raw in raw_path.split('/').skip(1) {
        // Decoding comes first: "%2e%2e" is "..".
        let segment = decode_segment(raw)?;
        directory = matches!(segment.as_str(), "" | "." | "..");
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(CanonError::AboveRoot);
                }
            }
            _ => segments.push(segment),
        }
    }
    if let Some(first) = segments.first_mut()
        && is_dated_version(first)
    {
        *first = "latest".to_owned();
    }

    if let Some(q) = query {
        check_query(q)?;
    }
    let canonical = Target {
        path: format!("/{}", segments.join("/")),
        trailing_slash: directory && !segments.is_empty(),
        query: query.map(str::to_owned),
    };
    let len = canonical.forward_uri().len();
    if len > MAX_TARGET {
        return Err(CanonError::TooLong { len });
    }
    Ok(canonical)
}

/// Percent-decodes one raw segment (its raw bytes already checked).
fn decode_segment(raw: &str) -> Result<String, CanonError> {
    let mut out = String::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'%' {
            out.push(char::from(byte));
            continue;
        }
        let decoded = match (bytes.next().and_then(hex), bytes.next().and_then(hex)) {
            (Some(hi), Some(lo)) => (hi << 4) | lo,
            _ => return Err(CanonError::BadPercentEscape),
        };
        match decoded {
            b'/' | b'\\' => return Err(CanonError::EncodedSlash { byte: decoded }),
            b'%' => return Err(CanonError::DoubleEncoding),
            b if !is_printable(b) => {
                return Err(CanonError::ControlOrNonAscii {
                    byte: b,
                    encoded: true,
                });
            }
            b if !is_segment_byte(b) => {
                return Err(CanonError::ReservedCharacter {
                    byte: b,
                    encoded: true,
                });
            }
            b => out.push(char::from(b)),
        }
    }
    Ok(out)
}

/// The query is forwarded as sent, so it only has to be something the
/// `http` crate parses back into the same query, with well-formed escapes.
fn check_query(query: &str) -> Result<(), CanonError> {
    let mut bytes = query.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => {
                let escape = (bytes.next().and_then(hex), bytes.next().and_then(hex));
                let (Some(_), Some(_)) = escape else {
                    return Err(CanonError::BadQuery { byte: b'%' });
                };
            }
            b'"' | b'<' | b'>' => return Err(CanonError::BadQuery { byte }),
            b if !is_printable(b) => return Err(CanonError::BadQuery { byte }),
            _ => {}
        }
    }
    Ok(())
}

/// Canonical form of a *pattern* written in the policy (e.g.
/// `/2021-07-15/meta-data/iam/**`), so that it names what [`canonicalize`]
/// produces.
///
/// Literal segments follow the path rules, but what a request may spell
/// loosely a pattern must spell exactly: `//`, a trailing `/`, `.`, `..`,
/// `%`, `\`, `#` and reserved characters are errors, not resolved, because
/// a policy that does not say what it means should not be guessed at. `?`
/// is an error too: in a URL it starts the query, and the proxy's patterns
/// match paths only. `*` matches within one segment and a whole `**`
/// segment matches any depth (`/a/**` matches `/a` itself); `**/**` is
/// written `**`. A dated first segment becomes `latest`; a first segment
/// with a wildcard that could only match version names (`/20*/...`) is an
/// error, since it would never match a canonical path.
pub fn canonical_pattern(pattern: &str) -> Result<String, String> {
    if pattern.len() > MAX_TARGET {
        return Err(format!(
            "the path pattern is {} bytes, more than the {MAX_TARGET} allowed",
            pattern.len()
        ));
    }
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(format!("path pattern {pattern:?} must start with '/'"));
    };
    if rest.is_empty() {
        return Ok("/".to_owned());
    }
    let mut out: Vec<&str> = Vec::new();
    for (i, seg) in rest.split('/').enumerate() {
        check_pattern_segment(pattern, seg)?;
        if seg == "**" && out.last() == Some(&"**") {
            continue;
        }
        if i == 0 && is_dated_version(seg) {
            out.push("latest");
        } else if i == 0 && is_version_wildcard(seg) {
            return Err(format!(
                "path pattern {pattern:?}: requests' version prefixes are read as \
                 `latest`, so {seg:?} would never match; write `latest`"
            ));
        } else {
            out.push(seg);
        }
    }
    if out.len() > MAX_GLOB_SEGMENTS {
        return Err(format!(
            "path pattern {pattern:?} has more than {MAX_GLOB_SEGMENTS} segments"
        ));
    }
    Ok(format!("/{}", out.join("/")))
}

/// One segment of a pattern, as [`canonical_pattern`] documents.
fn check_pattern_segment(pattern: &str, seg: &str) -> Result<(), String> {
    if seg.is_empty() {
        return Err(format!(
            "path pattern {pattern:?} has an empty segment (`//` or a trailing `/`)"
        ));
    }
    if seg == "." || seg == ".." {
        return Err(format!(
            "path pattern {pattern:?} has a {seg:?} segment; write the path it means"
        ));
    }
    if seg != "**" && seg.contains("**") {
        return Err(format!(
            "path pattern {pattern:?}: `**` must be a whole segment, found {seg:?}"
        ));
    }
    for byte in seg.bytes() {
        let why = match byte {
            b'?' => "'?' starts a query (patterns match paths only; use '*')",
            b'#' => "'#' starts a fragment",
            b'%' => "'%' escapes are not resolved in patterns; write the character",
            b'\\' => "'\\' is refused in requests",
            b if !is_printable(b) => "it is not printable ASCII",
            b if !is_segment_byte(b) => "requests with it are refused",
            _ => continue,
        };
        return Err(format!(
            "path pattern {pattern:?} contains {}: {why}",
            show(byte)
        ));
    }
    Ok(())
}

/// An AWS dated version (`YYYY-MM-DD`) or the oldest one, `1.0`: all are
/// served as `latest` is, so rules and requests see them as `latest`.
fn is_dated_version(seg: &str) -> bool {
    let b = seg.as_bytes();
    seg == "1.0"
        || (b.len() == 10
            && b.iter().enumerate().all(|(i, &c)| {
                if i == 4 || i == 7 {
                    c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            }))
}

/// A wildcard segment made only of version characters (`20*`, `1.*`):
/// it can match dated versions, which canonical paths never hold, and
/// cannot match `latest`.
fn is_version_wildcard(seg: &str) -> bool {
    seg.contains('*')
        && seg
            .bytes()
            .any(|c| c.is_ascii_digit() || c == b'-' || c == b'.')
        && seg
            .bytes()
            .all(|c| c == b'*' || c.is_ascii_digit() || c == b'-' || c == b'.')
}

fn is_printable(byte: u8) -> bool {
    (0x21..=0x7e).contains(&byte)
}

/// RFC 3986 `pchar` minus `%` and `;` (see the module docs).
fn is_segment_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

/// A hex digit's value.
pub(super) fn hex(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str, trailing_slash: bool, query: Option<&str>) -> Target {
        Target {
            path: path.to_owned(),
            trailing_slash,
            query: query.map(str::to_owned),
        }
    }

    fn ok(path: &str, trailing_slash: bool, query: Option<&str>) -> Result<Target, &'static str> {
        Ok(target(path, trailing_slash, query))
    }

    const CREDS: &str = "/latest/meta-data/iam/security-credentials";

    /// Spellings of one resource that other tools' rules missed.
    #[test]
    fn bypass_spellings_resolve_to_one_path() {
        let cases: &[(&str, bool)] = &[
            ("/latest/meta-data/iam/security-credentials", false),
            ("/latest/meta-data/iam/security-credentials/", true),
            ("/latest//meta-data/iam/security-credentials", false),
            ("//latest/meta-data//iam///security-credentials//", true),
            ("/latest/meta-data/./iam/security-credentials", false),
            ("/latest/meta-data/x/../iam/security-credentials", false),
            (
                "/latest/meta-data/x/y/../../iam/security-credentials",
                false,
            ),
            ("/latest/meta-data/%69am/security-credentials", false),
            ("/latest/meta-data/%69%61%6D/security-credentials", false),
            (
                "/latest/meta-data/%2e%2e/meta-data/iam/security-credentials",
                false,
            ),
            (
                "/latest/meta-data/%2E%2E/meta-data/iam/security-credentials",
                false,
            ),
            (
                "/latest/meta-data/.%2e/meta-data/iam/security-credentials",
                false,
            ),
            ("/latest/meta-data/%2e/iam/security-credentials", false),
            ("/2021-07-15/meta-data/iam/security-credentials/", true),
            ("/1.0/meta-data/iam/security-credentials", false),
            ("/x/../2021-07-15/meta-data/iam/security-credentials", false),
            ("/latest/meta-data/iam/security-credentials/x/..", true),
            ("/latest/meta-data/iam/security-credentials/.", true),
            ("/latest/meta-data/iam/security-credentials/%2e", true),
        ];
        for &(input, trailing) in cases {
            assert_eq!(
                canonicalize(input),
                Ok(target(CREDS, trailing, None)),
                "{input}"
            );
        }
    }

    #[test]
    fn accepted_targets() {
        let cases: &[(&str, Result<Target, &str>)] = &[
            ("/", ok("/", false, None)),
            ("//", ok("/", false, None)),
            ("/.", ok("/", false, None)),
            ("/./", ok("/", false, None)),
            ("/a/..", ok("/", false, None)),
            ("/latest/%2e%2e", ok("/", false, None)),
            ("/1.0/meta-data/", ok("/latest/meta-data", true, None)),
            ("/1.0", ok("/latest", false, None)),
            ("/latest/meta-data/.", ok("/latest/meta-data", true, None)),
            ("/latest/meta-data/..", ok("/latest", true, None)),
            (
                "/latest/1.0/2021-07-15",
                ok("/latest/1.0/2021-07-15", false, None),
            ),
            // Not dated versions: left alone.
            ("/2021-7-15/x", ok("/2021-7-15/x", false, None)),
            ("/20210715/x", ok("/20210715/x", false, None)),
            ("/2021-07-1a/x", ok("/2021-07-1a/x", false, None)),
            ("/1.00/x", ok("/1.00/x", false, None)),
            ("/LATEST/Meta-Data", ok("/LATEST/Meta-Data", false, None)),
            ("/...", ok("/...", false, None)),
            ("/a/.../b", ok("/a/.../b", false, None)),
            ("/%7e%41", ok("/~A", false, None)),
            (
                "/latest/meta-data/tags/instance/a+b=c,d:e@f",
                ok("/latest/meta-data/tags/instance/a+b=c,d:e@f", false, None),
            ),
            ("/a/%2A/b", ok("/a/*/b", false, None)),
            ("/?", ok("/", false, Some(""))),
            ("/latest?", ok("/latest", false, Some(""))),
            (
                "/latest/meta-data?x=%41&y=%2f%2e%2e&z?",
                ok("/latest/meta-data", false, Some("x=%41&y=%2f%2e%2e&z?")),
            ),
            (
                "/computeMetadata/v1/instance/?recursive=true&alt=json",
                ok(
                    "/computeMetadata/v1/instance",
                    true,
                    Some("recursive=true&alt=json"),
                ),
            ),
            (
                "/metadata/instance?api-version=2021-02-01&format=text",
                ok(
                    "/metadata/instance",
                    false,
                    Some("api-version=2021-02-01&format=text"),
                ),
            ),
            ("/a?b/../c", ok("/a", false, Some("b/../c"))),
            ("/a?`{}|^[]\\", ok("/a", false, Some("`{}|^[]\\"))),
        ];
        for (input, want) in cases {
            let got = canonicalize(input).map_err(|e| e.code());
            assert_eq!(&got, want, "{input}");
        }
    }

    #[test]
    fn refused_targets() {
        let long = format!("/{}", "a".repeat(MAX_TARGET));
        // Fits as sent (2048 bytes), not once `1.0` becomes `latest`.
        let grows = format!("/1.0/{}", "a".repeat(MAX_TARGET - 5));
        let cases: &[(&str, &str)] = &[
            (
                "/latest/meta-data/iam%2Fsecurity-credentials",
                "encoded-slash",
            ),
            (
                "/latest/meta-data/iam%2fsecurity-credentials",
                "encoded-slash",
            ),
            (
                "/latest/meta-data/iam%5Csecurity-credentials",
                "encoded-slash",
            ),
            (
                "/latest/meta-data/iam%5csecurity-credentials",
                "encoded-slash",
            ),
            ("/%2e%2e/x", "above-root"),
            ("/..", "above-root"),
            ("/../latest", "above-root"),
            ("/a/../..", "above-root"),
            ("/a/./../../latest", "above-root"),
            ("/latest/meta-data/%252e%252e/", "double-encoding"),
            ("/latest/%25", "double-encoding"),
            ("/latest/%252F", "double-encoding"),
            ("/latest/%", "bad-percent-escape"),
            ("/latest/%2", "bad-percent-escape"),
            ("/latest/%2/", "bad-percent-escape"),
            ("/latest/%zz", "bad-percent-escape"),
            ("/latest/%2g", "bad-percent-escape"),
            ("/latest/%g2", "bad-percent-escape"),
            ("/latest/%%32%65", "bad-percent-escape"),
            ("/latest/%+1", "bad-percent-escape"),
            ("/latest/%-1", "bad-percent-escape"),
            ("/latest/m\u{e9}ta", "control-or-non-ascii"),
            ("/latest/meta data", "control-or-non-ascii"),
            ("/latest/\tx", "control-or-non-ascii"),
            ("/latest/\0", "control-or-non-ascii"),
            ("/latest/\x7f", "control-or-non-ascii"),
            ("/latest/%20x", "control-or-non-ascii"),
            ("/latest/%09", "control-or-non-ascii"),
            ("/latest/%00", "control-or-non-ascii"),
            ("/latest/%7f", "control-or-non-ascii"),
            ("/latest/%c3%a9", "control-or-non-ascii"),
            ("/latest/%FF", "control-or-non-ascii"),
            ("/latest\\meta-data", "backslash"),
            ("/latest/meta-data\\..\\..\\x", "backslash"),
            ("/latest/meta-data#frag", "fragment"),
            ("/latest?x#y", "fragment"),
            ("/#", "fragment"),
            ("/latest/%23", "reserved-character"),
            ("/latest/%3F", "reserved-character"),
            ("/latest/%3f/x", "reserved-character"),
            ("/latest/a;b", "reserved-character"),
            ("/latest/iam;x/security-credentials", "reserved-character"),
            ("/latest/a%3Bb", "reserved-character"),
            ("/latest/<", "reserved-character"),
            ("/latest/%3C", "reserved-character"),
            ("/latest/%3e", "reserved-character"),
            ("/latest/`", "reserved-character"),
            ("/latest/%60", "reserved-character"),
            ("/latest/{x}", "reserved-character"),
            ("/latest/\"", "reserved-character"),
            ("/latest/|", "reserved-character"),
            ("/latest/[0]", "reserved-character"),
            ("/latest/^", "reserved-character"),
            ("/latest/%5E", "reserved-character"),
            (
                "http://169.254.169.254/latest/meta-data/",
                "not-origin-form",
            ),
            ("HTTP://169.254.169.254/", "not-origin-form"),
            ("169.254.169.254:80", "not-origin-form"),
            ("*", "not-origin-form"),
            ("", "not-origin-form"),
            ("latest/meta-data", "not-origin-form"),
            ("?x", "not-origin-form"),
            ("#x", "not-origin-form"),
            (" /latest", "not-origin-form"),
            (&long, "too-long"),
            (&grows, "too-long"),
            ("/latest?x=%zz", "bad-query"),
            ("/latest?x=%4", "bad-query"),
            ("/latest?x=%", "bad-query"),
            ("/latest?a b", "bad-query"),
            ("/latest?a\tb", "bad-query"),
            ("/latest?a=\u{e9}", "bad-query"),
            ("/latest?a=\"", "bad-query"),
            ("/latest?a=<", "bad-query"),
            ("/latest?a=>", "bad-query"),
            ("/latest?a=\x01", "bad-query"),
        ];
        for &(input, code) in cases {
            let got = canonicalize(input).map_err(|e| e.code());
            assert_eq!(got, Err(code), "{input:?}");
        }
    }

    #[test]
    fn length_limit_is_inclusive() {
        let max = format!("/{}", "a".repeat(MAX_TARGET - 1));
        assert_eq!(canonicalize(&max).map(|t| t.path.len()), Ok(MAX_TARGET));
        let over = format!("{max}a");
        assert_eq!(
            canonicalize(&over),
            Err(CanonError::TooLong {
                len: MAX_TARGET + 1
            })
        );
    }

    /// Which error wins when a target has several faults.
    #[test]
    fn first_fault_wins_in_a_fixed_order() {
        let cases: &[(&str, &str)] = &[
            ("http://x/#", "not-origin-form"),
            ("/a b#", "fragment"),
            ("/a b/%zz", "control-or-non-ascii"),
            ("/a\\b/%zz", "backslash"),
            ("/a<b/%zz", "reserved-character"),
            ("/%zz/a b?%", "control-or-non-ascii"),
            ("/%zz/..?%", "bad-percent-escape"),
            ("/../%zz", "above-root"),
            ("/../x?%", "above-root"),
            ("/x?%", "bad-query"),
        ];
        for &(input, code) in cases {
            assert_eq!(
                canonicalize(input).map_err(|e| e.code()),
                Err(code),
                "{input:?}"
            );
        }
    }

    #[test]
    fn messages_name_the_fault() {
        let cases: &[(&str, &str)] = &[
            ("/..", "the path escapes above the root with \"..\""),
            (
                "/a%2Fb",
                "the path hides a separator inside a segment as \"%2F\"",
            ),
            (
                "/a%5cb",
                "the path hides a separator inside a segment as \"%5C\"",
            ),
            (
                "/a%3Fb",
                "the path contains percent-encoded '?', which cannot be forwarded as is",
            ),
            (
                "/a;b",
                "the path contains ';', which cannot be forwarded as is",
            ),
            (
                "/a%20b",
                "the path contains percent-encoded byte 0x20, which is not printable ASCII",
            ),
            (
                "/a b",
                "the path contains byte 0x20, which is not printable ASCII",
            ),
            ("/x?a<b", "the query contains '<', which is not allowed"),
            (
                "/x?a b",
                "the query contains byte 0x20, which is not allowed",
            ),
            (
                "/x?%g0",
                "the query contains a '%' not followed by two hex digits",
            ),
            (
                "/%",
                "the path contains a '%' not followed by two hex digits",
            ),
        ];
        for &(input, want) in cases {
            let got = canonicalize(input).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_owned()), "{input:?}");
        }
        for input in ["*", "/a#", "/\\", "/%25", "/x?\""] {
            let err = canonicalize(input).expect_err(input);
            assert!(!err.to_string().is_empty() && !err.code().is_empty());
        }
    }

    #[test]
    fn forward_uri_and_segments() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("/", "/", &[]),
            ("/?", "/?", &[]),
            ("//?a=%2F", "/?a=%2F", &[]),
            ("/a/..", "/", &[]),
            (
                "/1.0/meta-data/",
                "/latest/meta-data/",
                &["latest", "meta-data"],
            ),
            (
                "/latest/meta-data/.",
                "/latest/meta-data/",
                &["latest", "meta-data"],
            ),
            ("/latest//x?y", "/latest/x?y", &["latest", "x"]),
            ("/latest/%69am/?", "/latest/iam/?", &["latest", "iam"]),
        ];
        for &(input, uri, segments) in cases {
            let t = canonicalize(input).expect(input);
            assert_eq!(t.forward_uri(), uri, "{input}");
            assert_eq!(t.segments().collect::<Vec<_>>(), segments, "{input}");
        }
    }

    /// What every accepted target must satisfy: the canonical-form
    /// invariants, a fixpoint, and a forward URI that the `http` crate reads
    /// back as the same path and query.
    fn assert_canonical(input: &str, t: &Target) {
        let p = &t.path;
        assert!(p.starts_with('/'), "{input:?} -> {p:?}");
        assert!(p == "/" || !p.ends_with('/'), "{input:?} -> {p:?}");
        assert!(!p.contains("//"), "{input:?} -> {p:?}");
        assert!(!p.contains('%'), "{input:?} -> {p:?}");
        assert!(
            p.bytes().all(|b| b == b'/' || is_segment_byte(b)),
            "{input:?} -> {p:?}"
        );
        assert!(
            t.segments().all(|s| s != "." && s != ".."),
            "{input:?} -> {p:?}"
        );
        assert!(
            t.segments().next().is_none_or(|s| !is_dated_version(s)),
            "{input:?}"
        );
        assert!(!(p == "/" && t.trailing_slash), "{input:?}");
        let uri = t.forward_uri();
        assert!(uri.len() <= MAX_TARGET, "{input:?}");
        assert_eq!(
            canonicalize(&uri).as_ref(),
            Ok(t),
            "{input:?} is not a fixpoint"
        );
        let parsed: http::uri::PathAndQuery = uri.parse().expect("http parses the forward URI");
        let path = parsed
            .path()
            .strip_suffix('/')
            .filter(|s| !s.is_empty())
            .unwrap_or(parsed.path());
        assert_eq!(path, p, "{input:?}");
        assert_eq!(parsed.query(), t.query.as_deref(), "{input:?}");
    }

    #[test]
    fn accepted_targets_are_canonical_fixpoints() {
        let inputs = [
            "/",
            "//",
            "/?",
            "/a/..",
            "/1.0",
            "/1.0/meta-data/",
            "/2021-07-15/meta-data/iam/security-credentials/",
            "/latest/meta-data/./iam/security-credentials",
            "/latest/meta-data/x/../iam/security-credentials",
            "/latest/meta-data/%69am/security-credentials",
            "/latest/meta-data/%2e%2e/meta-data/iam",
            "/latest/meta-data/.",
            "/latest//meta-data/iam/security-credentials",
            "/latest/meta-data?x=%41&y",
            "/computeMetadata/v1/instance/?recursive=true&alt=json",
            "/a?`{}|^[]\\",
            "/%7e%41/%2A",
            "/latest/meta-data/tags/instance/a+b=c,d:e@f",
        ];
        for input in inputs {
            let t = canonicalize(input).expect(input);
            assert_canonical(input, &t);
        }
    }

    #[test]
    fn patterns_in_canonical_form() {
        let cases: &[(&str, &str)] = &[
            ("/", "/"),
            ("/**", "/**"),
            ("/**/**", "/**"),
            ("/latest/meta-data/iam/**", "/latest/meta-data/iam/**"),
            ("/2021-07-15/meta-data/iam/**", "/latest/meta-data/iam/**"),
            ("/1.0/meta-data", "/latest/meta-data"),
            ("/latest/**/**/x/**", "/latest/**/x/**"),
            ("/*/meta-data/*", "/*/meta-data/*"),
            ("/l*/x", "/l*/x"),
            ("/*", "/*"),
            ("/latest/2021-07-15", "/latest/2021-07-15"),
            (
                "/computeMetadata/v1/instance/service-accounts/*/token",
                "/computeMetadata/v1/instance/service-accounts/*/token",
            ),
            (
                "/latest/meta-data/tags/instance/a+b=c,d:e@f",
                "/latest/meta-data/tags/instance/a+b=c,d:e@f",
            ),
        ];
        for &(pattern, want) in cases {
            assert_eq!(canonical_pattern(pattern).as_deref(), Ok(want), "{pattern}");
            assert_eq!(
                canonical_pattern(want).as_deref(),
                Ok(want),
                "{want} is a fixpoint"
            );
        }
    }

    #[test]
    fn patterns_refused() {
        let too_deep = "/a".repeat(MAX_GLOB_SEGMENTS + 1);
        let too_long = format!("/{}", "a".repeat(MAX_TARGET));
        let cases: &[(&str, &str)] = &[
            ("", "must start with '/'"),
            ("latest/meta-data", "must start with '/'"),
            ("/latest//meta-data", "empty segment"),
            ("/latest/meta-data/", "empty segment"),
            ("//", "empty segment"),
            ("/latest/./meta-data", "\".\" segment"),
            ("/latest/../meta-data", "\"..\" segment"),
            ("/latest/%69am", "'%'"),
            ("/latest\\iam", "'\\'"),
            ("/latest/meta-data?x", "'?' starts a query"),
            ("/latest/i?m", "'?' starts a query"),
            ("/latest#x", "'#'"),
            ("/latest/a**", "`**` must be a whole segment"),
            ("/latest/**b", "`**` must be a whole segment"),
            ("/latest/a b", "not printable ASCII"),
            ("/latest/\u{e9}", "not printable ASCII"),
            ("/latest/a;b", "requests with it are refused"),
            ("/latest/<x>", "requests with it are refused"),
            ("/20*/meta-data/**", "would never match"),
            ("/2021-07-*/meta-data", "would never match"),
            ("/1.*", "would never match"),
            ("/*-*/x", "would never match"),
            (&too_deep, "more than 64 segments"),
            (&too_long, "more than the 2048 allowed"),
        ];
        for &(pattern, needle) in cases {
            let err = canonical_pattern(pattern).expect_err(pattern);
            assert!(err.contains(needle), "{pattern:?}: {err}");
        }
    }

    /// A literal pattern names exactly the path a request for it resolves to.
    #[test]
    fn literal_patterns_agree_with_requests() {
        for p in [
            "/",
            "/1.0/meta-data",
            "/2021-07-15/meta-data/iam",
            "/latest/1.0",
            "/a/.../b",
        ] {
            let t = canonicalize(p).expect(p);
            assert_eq!(canonical_pattern(p), Ok(t.path), "{p}");
        }
    }

    /// xorshift64: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            let i = usize::try_from(self.next() % from.len() as u64).unwrap_or(0);
            from.get(i).copied().unwrap_or("")
        }
    }

    /// Pieces that make the interesting cases likely: separators, dots,
    /// escapes whole and broken, version prefixes, delimiters.
    const PIECES: &[&str] = &[
        "/",
        "/",
        "/",
        ".",
        ".",
        "..",
        "%",
        "2",
        "e",
        "E",
        "f",
        "F",
        "a",
        "i",
        "m",
        "-",
        "?",
        "#",
        "\\",
        "5",
        "c",
        "C",
        "3",
        "0",
        "1",
        " ",
        "\t",
        "\u{e9}",
        ";",
        "<",
        "=",
        "&",
        "*",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%25",
        "%5c",
        "%3f",
        "%69",
        "%20",
        "%e9",
        "%",
        "%2",
        "..",
        "latest",
        "2021-07-15",
        "1.0",
        "//",
        "/./",
        "/../",
        "iam",
        "meta-data",
        "**",
    ];

    #[test]
    fn random_targets_never_panic_and_accepted_ones_are_canonical() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut input = String::new();
            if !rng.next().is_multiple_of(10) {
                input.push('/');
            }
            for _ in 0..rng.next() % 24 {
                input.push_str(rng.pick(PIECES));
            }
            match canonicalize(&input) {
                Ok(t) => {
                    accepted += 1;
                    assert_canonical(&input, &t);
                }
                Err(e) => assert!(!e.code().is_empty() && !e.to_string().is_empty()),
            }
            if let Ok(p) = canonical_pattern(&input) {
                assert_eq!(canonical_pattern(&p).as_ref(), Ok(&p), "{input:?}");
            }
        }
        // Enough of both outcomes for the properties to mean something.
        assert!(accepted > 2_000, "only {accepted} accepted");
    }

    /// Pieces whose every combination is well-formed, so only `..` above
    /// the root can refuse it.
    const BENIGN: &[&str] = &[
        "/",
        "/",
        "//",
        ".",
        "..",
        "/./",
        "/../",
        "%2e",
        "%2E",
        "%2e%2e",
        "%69",
        "%41",
        "a",
        "iam",
        "latest",
        "1.0",
        "2021-07-15",
        "-",
        "~",
        "?x=1",
        "?",
    ];

    /// An independent reading of a well-formed target: decode the whole
    /// path first (safe here: no encoded separators), then resolve.
    fn reference(input: &str) -> Option<Target> {
        let (raw, query) = match input.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (input, None),
        };
        let mut decoded = String::new();
        let mut rest = raw;
        while let Some(i) = rest.find('%') {
            decoded.push_str(rest.get(..i)?);
            let byte = u8::from_str_radix(rest.get(i + 1..i + 3)?, 16).ok()?;
            decoded.push(char::from(byte));
            rest = rest.get(i + 3..)?;
        }
        decoded.push_str(rest);
        let mut stack: Vec<&str> = Vec::new();
        for seg in decoded.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    stack.pop()?;
                }
                s => stack.push(s),
            }
        }
        let last = decoded.rsplit('/').next().unwrap_or("");
        let mut path = format!("/{}", stack.join("/"));
        let dated = stack
            .first()
            .is_some_and(|s| *s == "1.0" || *s == "2021-07-15");
        if dated {
            path = format!("/latest{}", path.get(stack.first()?.len() + 1..)?);
        }
        Some(Target {
            trailing_slash: !stack.is_empty() && matches!(last, "" | "." | ".."),
            path,
            query,
        })
    }

    #[test]
    fn random_well_formed_targets_match_an_independent_reading() {
        let mut rng = Rng(0xd1b5_4a32_d192_ed03);
        let (mut accepted, mut above_root) = (0, 0);
        for _ in 0..20_000 {
            let mut input = String::from("/");
            for _ in 0..rng.next() % 16 {
                input.push_str(rng.pick(BENIGN));
            }
            let got = canonicalize(&input);
            match (&got, reference(&input)) {
                (Ok(t), Some(want)) => {
                    accepted += 1;
                    assert_eq!(t, &want, "{input:?}");
                    assert_canonical(&input, t);
                }
                (Err(CanonError::AboveRoot), None) => above_root += 1,
                _ => panic!("{input:?}: {got:?}"),
            }
        }
        assert!(
            accepted > 10_000 && above_root > 1_000,
            "{accepted} {above_root}"
        );
    }
}
