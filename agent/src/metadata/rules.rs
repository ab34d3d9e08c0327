//! The decision for one metadata request, apart from token state: forward
//! it, or answer it here with a refusal that names the rule.
//!
//! The proxy runs this on the canonical target ([`Target`]) and forwards
//! exactly that target, so what the rules saw is what the upstream serves.
//! Checks run in a fixed order and the first refusal wins (see [`decide`]):
//! headers that make the request look proxied, the method, each provider's
//! required header, the AWS token request, the AWS session token, then the
//! tier's path patterns.
//!
//! Path patterns (`allowPaths`, `denyPaths`) are [`canonical_pattern`]
//! outputs run on `tiergate_tls::glob`: `*` within a segment, `**` any
//! depth (`/a/**` matches `/a` and everything under it); the trailing slash
//! is ignored. Both lists fail closed where an upstream may read a path
//! more loosely than the proxy does:
//! - `denyPaths` match without ASCII case, and with OCI's `/opc/v1` and
//!   `/opc/v2` as one (both serve the same data): no provider documents
//!   that its server routes `IAM` apart from `iam`, and common web stacks
//!   (ASP.NET routing, for one) ignore case by default. `allowPaths` match
//!   exactly.
//! - Where an upstream answers a directory with its descendants' *content*
//!   (OCI's and Azure's JSON documents, GCP with `?recursive=true`), a
//!   request for a directory above a denied path is refused too
//!   (`denied-descendant`): GCP's `attributes/?recursive=true` must not
//!   return the `kube-env` a rule denies. AWS directories list names only,
//!   so they are not refused that way.

use http::{HeaderMap, HeaderValue, Method};
use tiergate_tls::glob::{MAX_GLOB_SEGMENTS, SegmentGlob};

use super::canon::{Target, canonical_pattern, hex};

/// The metadata service a path belongs to, by its first segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
    Oci,
    Unknown,
}

impl Provider {
    /// The event spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
            Provider::Oci => "oci",
            Provider::Unknown => "unknown",
        }
    }
}

/// The provider of a canonical target: `latest` → AWS, `computeMetadata`
/// (and GCP's legacy `0.1`) → GCP, `metadata` → Azure, `opc` → OCI.
/// Without case, so that a server which ignores case cannot be reached
/// around its provider's header checks.
pub fn provider_of(t: &Target) -> Provider {
    let Some(first) = t.segments().next() else {
        return Provider::Unknown;
    };
    let is = |name: &str| first.eq_ignore_ascii_case(name);
    if is("latest") {
        Provider::Aws
    } else if is("computeMetadata") || is("0.1") {
        Provider::Gcp
    } else if is("metadata") {
        Provider::Azure
    } else if is("opc") {
        Provider::Oci
    } else {
        Provider::Unknown
    }
}

/// What a tier's `metadata: {mode: filter, ...}` says, compiled.
#[derive(Clone, Debug)]
pub struct PathRules {
    /// Matched against the canonical path as is.
    allow: Vec<SegmentGlob>,
    /// Compiled from [`loose_key`] of the pattern, displayed as written;
    /// matched against the loose key of the path.
    deny: Vec<SegmentGlob>,
    require_imdsv2: bool,
}

impl PathRules {
    /// Patterns are [`canonical_pattern`] outputs (the policy parser has
    /// already run it on each and reported errors with file positions), so
    /// building cannot fail for those; anything else is an `Err`.
    pub fn new(
        allow: &[String],
        deny: &[String],
        require_imdsv2: bool,
    ) -> Result<PathRules, String> {
        let allow = allow
            .iter()
            .map(|p| compile(p, p.clone()))
            .collect::<Result<_, _>>()?;
        let deny = deny
            .iter()
            .map(|p| compile(p, loose_key(p)))
            .collect::<Result<_, _>>()?;
        Ok(PathRules {
            allow,
            deny,
            require_imdsv2,
        })
    }

    /// Whether AWS requests must present a session token (IMDSv2).
    pub fn require_imdsv2(&self) -> bool {
        self.require_imdsv2
    }
}

/// A glob displaying `pattern` that matches `key` (the pattern or its
/// loose key).
fn compile(pattern: &str, key: String) -> Result<SegmentGlob, String> {
    let canonical = canonical_pattern(pattern)?;
    if canonical != pattern {
        return Err(format!(
            "path pattern {pattern:?} is not in canonical form; write {canonical:?}"
        ));
    }
    SegmentGlob::parse(pattern, key.strip_prefix('/').unwrap_or(&key))
}

/// The spelling deny patterns and paths are compared in: ASCII lowercase,
/// `/opc/v1` read as `/opc/v2` (see the module docs).
fn loose_key(path: &str) -> String {
    let lower = path.to_ascii_lowercase();
    match lower.strip_prefix("/opc/v1") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/opc/v2{rest}"),
        _ => lower,
    }
}

/// The decision on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward upstream. `token`: the AWS session token the request presents
    /// (value of `X-aws-ec2-metadata-token`), which the proxy must check was
    /// issued to this same workload; `issues_token`: this is the AWS token
    /// request (PUT /latest/api/token), whose response token the proxy
    /// records for the workload.
    Forward {
        token: Option<String>,
        issues_token: bool,
    },
    /// Answer `status` without asking upstream. `code` is a stable
    /// kebab-case reason for events and metrics; `rule` names the policy
    /// rule or provider rule that refused it, as the user would write it.
    Refuse {
        status: u16,
        code: &'static str,
        rule: String,
    },
}

fn refuse(status: u16, code: &'static str, rule: impl Into<String>) -> Decision {
    Decision::Refuse {
        status,
        code,
        rule: rule.into(),
    }
}

/// Headers that say "this request passed through a proxy". The real
/// services refuse proxied requests (IMDSv2, GCP, Azure; OCI names all
/// three), so a workload that sets one is trying to look like the proxy.
const FORWARDED_HEADERS: [&str; 3] = ["X-Forwarded-For", "Forwarded", "X-Forwarded-Host"];

const TOKEN: &str = "X-aws-ec2-metadata-token";
const TOKEN_TTL: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// IMDSv2's longest token lifetime, in seconds (6 hours).
const MAX_TOKEN_TTL: u32 = 21_600;

/// Decides on one request. Checks, first refusal wins (403 unless stated):
/// 1. A forwarding header (`X-Forwarded-For`, `Forwarded`,
///    `X-Forwarded-Host`) → `forwarded-header`.
/// 2. GET and HEAD anywhere, PUT only as the AWS token request → else 405
///    `method-not-allowed`. (So GCP guest-attribute writes and Azure
///    scheduled-event approvals are refused.)
/// 3. The provider's header: GCP legacy endpoints → `gcp-legacy-endpoint`
///    (they never required `Metadata-Flavor`); GCP `Metadata-Flavor: Google`
///    exactly → else `gcp-header-missing`; Azure `Metadata: true` (value
///    without case) → else `azure-header-missing`; OCI `/opc/v2/**`
///    `Authorization: Bearer Oracle` → else `oci-header-missing`.
/// 4. The AWS token request (PUT /latest/api/token): a TTL of 1..=21600
///    seconds → else 400 `bad-token-request`; then forwarded without path
///    rules: it only mints a token and reveals nothing, and every later
///    request still meets the rules.
/// 5. `X-aws-ec2-metadata-token`, on any request: present but empty or not
///    printable → 401 `bad-token`. With `require: imdsv2`, an AWS request
///    (or one of no known provider: the upstream may be AWS) without it →
///    `imdsv2-required`.
/// 6. Path rules: a deny pattern matches → `path-denied`; the answer would
///    hold a denied descendant → `denied-descendant`; allow patterns exist
///    and none matches → `path-not-allowed`. No allow pattern means every
///    path not denied is allowed.
///
/// A provider header given more than once → `duplicate-header`: the proxy
/// and the upstream might each read a different one.
pub fn decide(
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    rules: &PathRules,
) -> Decision {
    check(method, target, headers, rules).unwrap_or_else(|refusal| refusal)
}

/// [`decide`], with refusals on the error side so `?` stops at the first.
fn check(
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    rules: &PathRules,
) -> Result<Decision, Decision> {
    if let Some(name) = FORWARDED_HEADERS
        .into_iter()
        .find(|name| headers.contains_key(*name))
    {
        return Err(refuse(403, "forwarded-header", name));
    }

    let provider = provider_of(target);
    // `is_token_path` implies the AWS provider.
    let token_request = *method == Method::PUT && is_token_path(target);
    if !(*method == Method::GET || *method == Method::HEAD || token_request) {
        return Err(refuse(
            405,
            "method-not-allowed",
            "methods: GET, HEAD (PUT only on /latest/api/token)",
        ));
    }

    check_provider_header(provider, target, headers)?;

    if token_request {
        let ttl = single(headers, TOKEN_TTL)?;
        if !ttl.is_some_and(valid_ttl) {
            return Err(refuse(
                400,
                "bad-token-request",
                format!("{TOKEN_TTL}: 1..{MAX_TOKEN_TTL}"),
            ));
        }
        return Ok(Decision::Forward {
            token: None,
            issues_token: true,
        });
    }

    let token = match single(headers, TOKEN)? {
        None => None,
        Some(value) => match value.to_str() {
            Ok(s) if !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b)) => {
                Some(s.to_owned())
            }
            _ => return Err(refuse(401, "bad-token", TOKEN)),
        },
    };
    let aws_like = matches!(provider, Provider::Aws | Provider::Unknown);
    if rules.require_imdsv2 && aws_like && token.is_none() {
        return Err(refuse(403, "imdsv2-required", "require: imdsv2"));
    }

    check_paths(provider, target, rules)?;
    Ok(Decision::Forward {
        token,
        issues_token: false,
    })
}

/// Step 3 of [`decide`].
fn check_provider_header(
    provider: Provider,
    target: &Target,
    headers: &HeaderMap,
) -> Result<(), Decision> {
    match provider {
        Provider::Gcp => {
            if let Some(legacy) = gcp_legacy_endpoint(target) {
                return Err(refuse(
                    403,
                    "gcp-legacy-endpoint",
                    format!("legacy endpoint {legacy}"),
                ));
            }
            let flavor = single(headers, "Metadata-Flavor")?;
            if !matches!(flavor, Some(v) if v.as_bytes() == b"Google") {
                return Err(refuse(403, "gcp-header-missing", "Metadata-Flavor: Google"));
            }
        }
        Provider::Azure => {
            let metadata = single(headers, "Metadata")?;
            if !metadata.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")) {
                return Err(refuse(403, "azure-header-missing", "Metadata: true"));
            }
        }
        Provider::Oci if nth_is(target, 1, "v2") => {
            // OCI documents the header as exactly this for every IMDSv2
            // request, and not whether the server is lenient about the
            // scheme's case; exact is the side that cannot let more in.
            // `/opc/v1` needs no header (OCI lets tenants disable it).
            let auth = single(headers, "Authorization")?;
            if !matches!(auth, Some(v) if v.as_bytes() == b"Bearer Oracle") {
                return Err(refuse(
                    403,
                    "oci-header-missing",
                    "Authorization: Bearer Oracle",
                ));
            }
        }
        Provider::Oci | Provider::Aws | Provider::Unknown => {}
    }
    Ok(())
}

/// Step 6 of [`decide`].
fn check_paths(provider: Provider, target: &Target, rules: &PathRules) -> Result<(), Decision> {
    let key = loose_key(&target.path);
    if let Some(glob) = rules.deny.iter().find(|g| g.matches(&key)) {
        return Err(refuse(403, "path-denied", format!("denyPaths: {glob}")));
    }
    let returns_content = match provider {
        Provider::Azure | Provider::Oci => true,
        Provider::Gcp => asks_recursive(target.query.as_deref()),
        Provider::Aws | Provider::Unknown => false,
    };
    if returns_content && let Some(glob) = rules.deny.iter().find(|g| denies_descendant(g, &key)) {
        return Err(refuse(
            403,
            "denied-descendant",
            format!("denyPaths: {glob}"),
        ));
    }
    if !rules.allow.is_empty() && !rules.allow.iter().any(|g| g.matches(&target.path)) {
        return Err(refuse(
            403,
            "path-not-allowed",
            "allowPaths (no pattern matches)",
        ));
    }
    Ok(())
}

/// The header's one value, if any; several → `duplicate-header`.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h HeaderValue>, Decision> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(refuse(403, "duplicate-header", name));
    }
    Ok(first)
}

/// Decimal digits only (no sign, no spaces) in 1..=21600. At most five
/// digits are read, so no value overflows.
fn valid_ttl(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 5 || !bytes.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let ttl = bytes
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    (1..=MAX_TOKEN_TTL).contains(&ttl)
}

/// `/latest/api/token`, without case like [`provider_of`].
fn is_token_path(t: &Target) -> bool {
    let mut segs = t.segments();
    ["latest", "api", "token"]
        .iter()
        .all(|want| segs.next().is_some_and(|s| s.eq_ignore_ascii_case(want)))
        && segs.next().is_none()
}

/// Whether segment `n` (from 0) is `name`, without case.
fn nth_is(t: &Target, n: usize, name: &str) -> bool {
    t.segments()
        .nth(n)
        .is_some_and(|s| s.eq_ignore_ascii_case(name))
}

/// GCP's retired endpoints, which served without `Metadata-Flavor`.
fn gcp_legacy_endpoint(t: &Target) -> Option<&'static str> {
    if nth_is(t, 0, "0.1") {
        Some("/0.1/**")
    } else if nth_is(t, 0, "computeMetadata") && nth_is(t, 1, "v1beta1") {
        Some("/computeMetadata/v1beta1/**")
    } else {
        None
    }
}

/// Whether a GCP query asks for a directory's whole subtree. Read as
/// loosely as any server might: the name without case and decoded, `&` or
/// `;` between parameters, and any value but an explicit false (Go's
/// `strconv.ParseBool` also takes `1`, `t`, `TRUE`...).
fn asks_recursive(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query.split(['&', ';']).any(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = decode_query_part(value);
        decode_query_part(name).eq_ignore_ascii_case("recursive")
            && !["false", "f", "0"]
                .iter()
                .any(|no| value.eq_ignore_ascii_case(no))
    })
}

/// Form decoding (`+` is a space, `%XX` a byte); a bad escape stays as is.
fn decode_query_part(part: &str) -> String {
    let mut out = Vec::with_capacity(part.len());
    let mut bytes = part.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let mut rest = bytes.clone();
                let hi = rest.next().and_then(hex);
                let lo = rest.next().and_then(hex);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi << 4) | lo);
                        bytes = rest;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `glob` matches some strict descendant of `path`. Every segment
/// of a glob admits some name, so "some name" steps
/// ([`SegmentGlob::step_any`]) reach the accepting state iff a real
/// descendant does; each step advances past a segment or stays on a `**`,
/// so `MAX_GLOB_SEGMENTS + 1` steps reach it if anything does.
fn denies_descendant(glob: &SegmentGlob, path: &str) -> bool {
    let accept = glob.accept();
    let mut states = glob.run(path);
    for _ in 0..=MAX_GLOB_SEGMENTS {
        if states == 0 {
            return false;
        }
        states = glob.step_any(states);
        if states & accept != 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderName, HeaderValue};

    use super::super::canon::canonicalize;
    use super::*;

    fn rules(allow: &[&str], deny: &[&str], require_imdsv2: bool) -> PathRules {
        let canon = |ps: &[&str]| -> Vec<String> {
            ps.iter().map(|p| canonical_pattern(p).expect(p)).collect()
        };
        PathRules::new(&canon(allow), &canon(deny), require_imdsv2).expect("rules")
    }

    const CREDS: &str = "/latest/meta-data/iam/security-credentials/**";
    const GCP_TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/*/token";
    const KUBE_ENV: &str = "/computeMetadata/v1/instance/attributes/kube-env";
    const AZURE_IDENTITY: &str = "/metadata/identity/**";
    const OCI_USER_DATA: &str = "/opc/v2/instance/metadata/user_data";

    /// A tier that denies the credential endpoints of every provider.
    fn deny_secrets(require_imdsv2: bool) -> PathRules {
        rules(
            &[],
            &[CREDS, GCP_TOKEN, KUBE_ENV, AZURE_IDENTITY, OCI_USER_DATA],
            require_imdsv2,
        )
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect(name),
                HeaderValue::from_bytes(value).expect(name),
            );
        }
        map
    }

    fn run(method: &str, target: &str, pairs: &[(&str, &[u8])], rules: &PathRules) -> Decision {
        let method = Method::from_bytes(method.as_bytes()).expect(method);
        let target = canonicalize(target).expect(target);
        decide(&method, &target, &headers(pairs), rules)
    }

    fn forward(token: Option<&str>) -> Decision {
        Decision::Forward {
            token: token.map(str::to_owned),
            issues_token: false,
        }
    }

    const ISSUE: Decision = Decision::Forward {
        token: None,
        issues_token: true,
    };

    fn no(status: u16, code: &'static str, rule: &str) -> Decision {
        refuse(status, code, rule)
    }

    const GOOGLE: (&str, &[u8]) = ("Metadata-Flavor", b"Google");
    const AZURE: (&str, &[u8]) = ("Metadata", b"true");
    const ORACLE: (&str, &[u8]) = ("Authorization", b"Bearer Oracle");
    const TTL: (&str, &[u8]) = ("X-aws-ec2-metadata-token-ttl-seconds", b"21600");
    const TOKEN_OK: (&str, &[u8]) = ("X-aws-ec2-metadata-token", b"AQAEAtoken==");
    const METHODS: &str = "methods: GET, HEAD (PUT only on /latest/api/token)";

    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a [u8])], Decision);

    fn check_table(cases: &[Case<'_>], rules: &PathRules) {
        for (method, target, pairs, want) in cases {
            assert_eq!(
                &run(method, target, pairs, rules),
                want,
                "{method} {target} {pairs:?}"
            );
        }
    }

    #[test]
    fn forwarding_headers_beat_everything() {
        let xff: &[(&str, &[u8])] = &[("X-Forwarded-For", b"10.0.0.1")];
        let cases: &[Case<'_>] = &[
            (
                "GET",
                "/latest/meta-data/",
                xff,
                no(403, "forwarded-header", "X-Forwarded-For"),
            ),
            // Would be 405, legacy, denied, bad token: the header comes first.
            (
                "POST",
                "/latest/meta-data/",
                xff,
                no(403, "forwarded-header", "X-Forwarded-For"),
            ),
            (
                "GET",
                "/computeMetadata/v1beta1/x",
                xff,
                no(403, "forwarded-header", "X-Forwarded-For"),
            ),
            (
                "GET",
                "/latest/meta-data/iam/security-credentials/r",
                xff,
                no(403, "forwarded-header", "X-Forwarded-For"),
            ),
            (
                "PUT",
                "/latest/api/token",
                &[("x-forwarded-for", b"1.2.3.4"), TTL],
                no(403, "forwarded-header", "X-Forwarded-For"),
            ),
            (
                "GET",
                "/latest/meta-data/",
                &[("X-Aws-Ec2-Metadata-Token", b""), ("X-FORWARDED-FOR", b"")],
                no(403, "forwarded-header", "X-Forwarded-For"),
            ),
            (
                "GET",
                "/latest/meta-data/",
                &[("Forwarded", b"for=10.0.0.1")],
                no(403, "forwarded-header", "Forwarded"),
            ),
            (
                "GET",
                "/metadata/instance",
                &[AZURE, ("x-forwarded-host", b"x")],
                no(403, "forwarded-header", "X-Forwarded-Host"),
            ),
            // Other X-Forwarded-* headers are not claims of a proxy hop.
            (
                "GET",
                "/latest/meta-data/",
                &[("X-Forwarded-Proto", b"http")],
                forward(None),
            ),
        ];
        check_table(cases, &deny_secrets(false));
    }

    #[test]
    fn methods() {
        let cases: &[Case<'_>] = &[
            ("GET", "/latest/meta-data/", &[], forward(None)),
            ("HEAD", "/latest/meta-data/", &[], forward(None)),
            ("PUT", "/latest/api/token", &[TTL], ISSUE),
            ("PUT", "/2021-07-15/api/token", &[TTL], ISSUE),
            ("PUT", "/latest//api/./token/", &[TTL], ISSUE),
            ("PUT", "/LATEST/API/Token", &[TTL], ISSUE),
            ("GET", "/latest/api/token", &[TTL], forward(None)),
            (
                "POST",
                "/latest/api/token",
                &[TTL],
                no(405, "method-not-allowed", METHODS),
            ),
            (
                "PUT",
                "/latest/meta-data/",
                &[TTL],
                no(405, "method-not-allowed", METHODS),
            ),
            (
                "PUT",
                "/latest/api/token/x",
                &[TTL],
                no(405, "method-not-allowed", METHODS),
            ),
            (
                "PUT",
                "/latest/api",
                &[TTL],
                no(405, "method-not-allowed", METHODS),
            ),
            (
                "PUT",
                "/x/latest/api/token",
                &[TTL],
                no(405, "method-not-allowed", METHODS),
            ),
            (
                "PUT",
                "/computeMetadata/v1/instance/guest-attributes/a/b",
                &[GOOGLE],
                no(405, "method-not-allowed", METHODS),
            ),
            (
                "POST",
                "/metadata/scheduledevents",
                &[AZURE],
                no(405, "method-not-allowed", METHODS),
            ),
            (
                "DELETE",
                "/latest/meta-data/",
                &[],
                no(405, "method-not-allowed", METHODS),
            ),
            (
                "PATCH",
                "/latest/meta-data/",
                &[],
                no(405, "method-not-allowed", METHODS),
            ),
            ("OPTIONS", "/", &[], no(405, "method-not-allowed", METHODS)),
            ("CONNECT", "/", &[], no(405, "method-not-allowed", METHODS)),
            ("TRACE", "/", &[], no(405, "method-not-allowed", METHODS)),
            (
                "get",
                "/latest/meta-data/",
                &[],
                no(405, "method-not-allowed", METHODS),
            ),
            // 405 comes before the provider's header.
            (
                "POST",
                "/computeMetadata/v1/",
                &[],
                no(405, "method-not-allowed", METHODS),
            ),
        ];
        check_table(cases, &deny_secrets(false));
    }

    #[test]
    fn gcp_headers() {
        let missing = no(403, "gcp-header-missing", "Metadata-Flavor: Google");
        let legacy_01 = no(403, "gcp-legacy-endpoint", "legacy endpoint /0.1/**");
        let legacy_beta = no(
            403,
            "gcp-legacy-endpoint",
            "legacy endpoint /computeMetadata/v1beta1/**",
        );
        let id = "/computeMetadata/v1/instance/id";
        let cases: &[Case<'_>] = &[
            ("GET", id, &[GOOGLE], forward(None)),
            ("GET", id, &[("metadata-flavor", b"Google")], forward(None)),
            ("GET", id, &[], missing.clone()),
            (
                "GET",
                id,
                &[("Metadata-Flavor", b"google")],
                missing.clone(),
            ),
            (
                "GET",
                id,
                &[("Metadata-Flavor", b"Google ")],
                missing.clone(),
            ),
            (
                "GET",
                id,
                &[("Metadata-Flavor", b"Google, Google")],
                missing.clone(),
            ),
            ("GET", id, &[("Metadata-Flavor", b"")], missing.clone()),
            (
                "GET",
                id,
                &[("X-Google-Metadata-Request", b"True")],
                missing.clone(),
            ),
            (
                "GET",
                id,
                &[GOOGLE, GOOGLE],
                no(403, "duplicate-header", "Metadata-Flavor"),
            ),
            (
                "GET",
                "/computemetadata/v1/instance/id",
                &[],
                missing.clone(),
            ),
            ("GET", "/", &[], forward(None)),
            (
                "GET",
                "/0.1/meta-data/service-accounts/default/acquire",
                &[GOOGLE],
                legacy_01.clone(),
            ),
            ("GET", "/0.1/meta-data/", &[], legacy_01.clone()),
            ("GET", "/0.1", &[], legacy_01),
            (
                "GET",
                "/computeMetadata/v1beta1/instance/service-accounts/default/token",
                &[],
                legacy_beta.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1beta1/",
                &[GOOGLE],
                legacy_beta.clone(),
            ),
            ("GET", "/COMPUTEMETADATA/V1BETA1/x", &[GOOGLE], legacy_beta),
            (
                "GET",
                "/computeMetadata/v1/instance/service-accounts/default/token",
                &[GOOGLE],
                no(403, "path-denied", &format!("denyPaths: {GCP_TOKEN}")),
            ),
            // The header comes before the path rules.
            (
                "GET",
                "/computeMetadata/v1/instance/service-accounts/default/token",
                &[],
                missing,
            ),
        ];
        check_table(cases, &deny_secrets(false));
    }

    #[test]
    fn azure_headers() {
        let missing = no(403, "azure-header-missing", "Metadata: true");
        let instance = "/metadata/instance?api-version=2021-02-01";
        let cases: &[Case<'_>] = &[
            ("GET", instance, &[AZURE], forward(None)),
            ("GET", instance, &[("metadata", b"TRUE")], forward(None)),
            ("GET", instance, &[("Metadata", b"True")], forward(None)),
            ("GET", instance, &[], missing.clone()),
            ("GET", instance, &[("Metadata", b"false")], missing.clone()),
            (
                "GET",
                instance,
                &[("Metadata", b"true, true")],
                missing.clone(),
            ),
            ("GET", instance, &[("Metadata", b"1")], missing.clone()),
            ("GET", "/Metadata/instance", &[], missing.clone()),
            (
                "GET",
                instance,
                &[AZURE, AZURE],
                no(403, "duplicate-header", "Metadata"),
            ),
            (
                "GET",
                instance,
                &[AZURE, ("Metadata", b"false")],
                no(403, "duplicate-header", "Metadata"),
            ),
            (
                "GET",
                "/metadata/identity/oauth2/token?resource=x",
                &[AZURE],
                no(403, "path-denied", &format!("denyPaths: {AZURE_IDENTITY}")),
            ),
            ("GET", "/metadata/identity/oauth2/token", &[], missing),
        ];
        check_table(cases, &deny_secrets(false));
    }

    #[test]
    fn oci_headers() {
        let missing = no(403, "oci-header-missing", "Authorization: Bearer Oracle");
        let cases: &[Case<'_>] = &[
            ("GET", "/opc/v2/instance/id", &[ORACLE], forward(None)),
            ("GET", "/opc/v2/instance/id", &[], missing.clone()),
            ("GET", "/opc/V2/instance/id", &[], missing.clone()),
            (
                "GET",
                "/opc/v2/instance/id",
                &[("Authorization", b"bearer oracle")],
                missing.clone(),
            ),
            (
                "GET",
                "/opc/v2/instance/id",
                &[("Authorization", b"Bearer Oracle2")],
                missing.clone(),
            ),
            (
                "GET",
                "/opc/v2/instance/id",
                &[("Authorization", b"Basic eDp5")],
                missing.clone(),
            ),
            ("GET", "/opc/v2", &[], missing),
            (
                "GET",
                "/opc/v2/instance/id",
                &[ORACLE, ORACLE],
                no(403, "duplicate-header", "Authorization"),
            ),
            // IMDSv1 needs no header (when the tenant has not disabled it).
            ("GET", "/opc/v1/instance/id", &[], forward(None)),
            ("GET", "/opc/v1/vnics/", &[], forward(None)),
        ];
        check_table(cases, &deny_secrets(false));
    }

    #[test]
    fn aws_token_request() {
        let bad = no(
            400,
            "bad-token-request",
            "X-aws-ec2-metadata-token-ttl-seconds: 1..21600",
        );
        let ttl = |v: &'static [u8]| -> [(&'static str, &'static [u8]); 1] {
            [("X-aws-ec2-metadata-token-ttl-seconds", v)]
        };
        let ok_ttls: &[&[u8]] = &[b"1", b"2", b"60", b"21599", b"21600", b"00060", b"01"];
        let bad_ttls: &[&[u8]] = &[
            b"",
            b"0",
            b"00000",
            b"21601",
            b"99999",
            b"100000",
            b"999999999999999999999",
            b"-1",
            b"+5",
            b" 5",
            b"5 ",
            b"5s",
            b"1e3",
            b"0x10",
            b"6.5",
            b"\xd9\xa5",
        ];
        let v2 = deny_secrets(true);
        for v in ok_ttls {
            assert_eq!(
                run("PUT", "/latest/api/token", &ttl(v), &v2),
                ISSUE,
                "{v:?}"
            );
        }
        for v in bad_ttls {
            assert_eq!(run("PUT", "/latest/api/token", &ttl(v), &v2), bad, "{v:?}");
        }
        let cases: &[Case<'_>] = &[
            ("PUT", "/latest/api/token", &[], bad.clone()),
            (
                "PUT",
                "/latest/api/token",
                &[TTL, TTL],
                no(
                    403,
                    "duplicate-header",
                    "X-aws-ec2-metadata-token-ttl-seconds",
                ),
            ),
            // The token header is neither required nor checked on the PUT.
            (
                "PUT",
                "/latest/api/token",
                &[TTL, ("X-aws-ec2-metadata-token", b"")],
                ISSUE,
            ),
        ];
        check_table(cases, &v2);
        // Not subject to path rules: minting a token reveals nothing.
        let deny_all = rules(&["/latest/meta-data/instance-id"], &["/**"], true);
        assert_eq!(run("PUT", "/latest/api/token", &[TTL], &deny_all), ISSUE);
        assert_eq!(
            run("GET", "/latest/api/token", &[TOKEN_OK], &deny_all),
            no(403, "path-denied", "denyPaths: /**")
        );
    }

    #[test]
    fn aws_session_token() {
        let bad = no(401, "bad-token", "X-aws-ec2-metadata-token");
        let required = no(403, "imdsv2-required", "require: imdsv2");
        let tok = |v: &'static [u8]| -> [(&'static str, &'static [u8]); 1] {
            [("X-aws-ec2-metadata-token", v)]
        };
        let v2 = deny_secrets(true);
        let v1 = deny_secrets(false);
        let id = "/latest/meta-data/instance-id";
        for (rules, name) in [(&v1, "v1"), (&v2, "v2")] {
            assert_eq!(
                run("GET", id, &[TOKEN_OK], rules),
                forward(Some("AQAEAtoken==")),
                "{name}"
            );
            assert_eq!(
                run("GET", id, &[("x-aws-ec2-metadata-token", b"t")], rules),
                forward(Some("t")),
                "{name}"
            );
            for v in [&b""[..], b"a b", b"a\tb", b" a", b"\xff\xfe", b"t\x80"] {
                assert_eq!(run("GET", id, &tok(v), rules), bad, "{name} {v:?}");
            }
            assert_eq!(
                run("GET", id, &[TOKEN_OK, TOKEN_OK], rules),
                no(403, "duplicate-header", "X-aws-ec2-metadata-token"),
                "{name}"
            );
            // The token is passed on wherever it appears, for the proxy to check.
            assert_eq!(
                run("GET", "/computeMetadata/v1/", &[GOOGLE, TOKEN_OK], rules),
                forward(Some("AQAEAtoken==")),
                "{name}"
            );
        }
        assert_eq!(run("GET", id, &[], &v1), forward(None));
        assert_eq!(run("HEAD", id, &[], &v1), forward(None));
        // The issue's tests: a token-less GET under `require: imdsv2` is 403.
        assert_eq!(run("GET", id, &[], &v2), required);
        assert_eq!(run("GET", "/2021-07-15/meta-data/", &[], &v2), required);
        // No known provider: the upstream may be AWS.
        assert_eq!(run("GET", "/", &[], &v2), required);
        assert_eq!(run("GET", "/openstack/latest", &[], &v2), required);
        // Other providers are not asked for an AWS token.
        assert_eq!(
            run("GET", "/computeMetadata/v1/", &[GOOGLE], &v2),
            forward(None)
        );
        assert_eq!(
            run("GET", "/metadata/instance", &[AZURE], &v2),
            forward(None)
        );
        assert_eq!(
            run("GET", "/opc/v2/instance/id", &[ORACLE], &v2),
            forward(None)
        );
        // A bad token is 401 before imdsv2 and path rules are looked at.
        assert_eq!(
            run(
                "GET",
                "/latest/meta-data/iam/security-credentials/r",
                &tok(b""),
                &v2
            ),
            bad
        );
        // imdsv2 comes before path rules.
        assert_eq!(
            run(
                "GET",
                "/latest/meta-data/iam/security-credentials/r",
                &[],
                &v2
            ),
            required
        );
    }

    #[test]
    fn deny_catches_every_spelling() {
        let denied = no(403, "path-denied", &format!("denyPaths: {CREDS}"));
        let rules = deny_secrets(false);
        let spellings = [
            "/latest/meta-data/iam/security-credentials",
            "/latest/meta-data/iam/security-credentials/",
            "/latest/meta-data/iam/security-credentials/my-role",
            "/latest/meta-data/iam/security-credentials/my-role/",
            "/latest//meta-data/iam/security-credentials",
            "/latest/meta-data/./iam/security-credentials",
            "/latest/meta-data/x/../iam/security-credentials",
            "/latest/meta-data/%69am/security-credentials",
            "/latest/meta-data/%2e%2e/meta-data/iam/security-credentials/r",
            "/2021-07-15/meta-data/iam/security-credentials/",
            "/1.0/meta-data/iam/security-credentials/r",
            "/latest/meta-data/IAM/security-credentials/r",
            "/LATEST/META-DATA/IAM/SECURITY-CREDENTIALS",
            "/latest/meta-data/iam/security-credentials?x=1",
        ];
        for target in spellings {
            assert_eq!(run("GET", target, &[TOKEN_OK], &rules), denied, "{target}");
        }
        for target in [
            "/latest/meta-data/iam/info",
            "/latest/meta-data/iam/",
            "/latest/meta-data/iam/security-credentialsx",
            "/latest/meta-data/",
        ] {
            assert_eq!(
                run("GET", target, &[TOKEN_OK], &rules),
                forward(Some("AQAEAtoken==")),
                "{target}"
            );
        }
    }

    #[test]
    fn allow_and_deny() {
        let rules = rules(
            &[
                "/latest/meta-data/instance-id",
                "/latest/meta-data/placement/**",
                "/computeMetadata/v1/project/*",
            ],
            &[
                "/latest/meta-data/placement/secret",
                "/latest/meta-data/placement/s*/x/**",
            ],
            false,
        );
        let not_allowed = no(403, "path-not-allowed", "allowPaths (no pattern matches)");
        let cases: &[Case<'_>] = &[
            ("GET", "/latest/meta-data/instance-id", &[], forward(None)),
            ("GET", "/1.0/meta-data/instance-id/", &[], forward(None)),
            ("GET", "/latest/meta-data/placement", &[], forward(None)),
            ("GET", "/latest/meta-data/placement/", &[], forward(None)),
            (
                "GET",
                "/latest/meta-data/placement/availability-zone",
                &[],
                forward(None),
            ),
            (
                "GET",
                "/latest/meta-data/placement/a/b/c",
                &[],
                forward(None),
            ),
            // Deny beats allow.
            (
                "GET",
                "/latest/meta-data/placement/secret",
                &[],
                no(
                    403,
                    "path-denied",
                    "denyPaths: /latest/meta-data/placement/secret",
                ),
            ),
            (
                "GET",
                "/latest/meta-data/placement/Secret",
                &[],
                no(
                    403,
                    "path-denied",
                    "denyPaths: /latest/meta-data/placement/secret",
                ),
            ),
            (
                "GET",
                "/latest/meta-data/placement/sub/x",
                &[],
                no(
                    403,
                    "path-denied",
                    "denyPaths: /latest/meta-data/placement/s*/x/**",
                ),
            ),
            (
                "GET",
                "/latest/meta-data/placement/s/x/y/z",
                &[],
                no(
                    403,
                    "path-denied",
                    "denyPaths: /latest/meta-data/placement/s*/x/**",
                ),
            ),
            (
                "GET",
                "/latest/meta-data/placement/sub/y",
                &[],
                forward(None),
            ),
            ("GET", "/latest/meta-data/ami-id", &[], not_allowed.clone()),
            ("GET", "/latest/meta-data", &[], not_allowed.clone()),
            (
                "GET",
                "/latest/meta-data/instance-id/x",
                &[],
                not_allowed.clone(),
            ),
            ("GET", "/", &[], not_allowed.clone()),
            // Allow patterns match exactly, case included.
            (
                "GET",
                "/latest/meta-data/Instance-id",
                &[],
                not_allowed.clone(),
            ),
            (
                "GET",
                "/latest/meta-data/placementx",
                &[],
                not_allowed.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/project/project-id",
                &[GOOGLE],
                forward(None),
            ),
            (
                "GET",
                "/computeMetadata/v1/project",
                &[GOOGLE],
                not_allowed.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/project/attributes/x",
                &[GOOGLE],
                not_allowed,
            ),
        ];
        check_table(cases, &rules);
    }

    /// `**`, `*` and the root, as the glob runs them on canonical paths.
    #[test]
    fn glob_semantics() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "/a/**",
                &["/a", "/a/", "/a/b", "/a/b/c/d"],
                &["/", "/ab", "/b/a", "/A/b"],
            ),
            (
                "/a/*/c",
                &["/a/b/c", "/a/*/c", "/a/b/c/"],
                &["/a/c", "/a/b/d/c", "/a/b"],
            ),
            ("/a/b*", &["/a/b", "/a/bc"], &["/a/cb", "/a/b/c"]),
            (
                "/a/**/z",
                &["/a/z", "/a/b/z", "/a/b/c/z"],
                &["/a", "/a/b", "/z"],
            ),
            ("/**", &["/", "/a", "/a/b/c"], &[]),
            ("/*", &["/a", "/latest"], &["/", "/a/b"]),
            ("/", &["/"], &["/a"]),
        ];
        for &(pattern, hits, misses) in cases {
            let allow = rules(&[pattern], &[], false);
            for target in hits {
                assert_eq!(
                    run("GET", target, &[], &allow),
                    forward(None),
                    "{pattern} allows {target}"
                );
            }
            for target in misses {
                assert_eq!(
                    run("GET", target, &[], &allow).code(),
                    Some("path-not-allowed"),
                    "{pattern} !~ {target}"
                );
            }
        }
    }

    impl Decision {
        fn code(&self) -> Option<&'static str> {
            match self {
                Decision::Forward { .. } => None,
                Decision::Refuse { code, .. } => Some(code),
            }
        }
    }

    #[test]
    fn directories_above_denied_content() {
        let rules = deny_secrets(false);
        let kube = no(403, "denied-descendant", &format!("denyPaths: {KUBE_ENV}"));
        let gcp_token = no(403, "denied-descendant", &format!("denyPaths: {GCP_TOKEN}"));
        let azure = no(
            403,
            "denied-descendant",
            &format!("denyPaths: {AZURE_IDENTITY}"),
        );
        let oci = no(
            403,
            "denied-descendant",
            &format!("denyPaths: {OCI_USER_DATA}"),
        );
        let cases: &[Case<'_>] = &[
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?recursive=true",
                &[GOOGLE],
                kube.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes?alt=json&recursive=true",
                &[GOOGLE],
                kube.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?recursive=TRUE",
                &[GOOGLE],
                kube.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?Recursive=1",
                &[GOOGLE],
                kube.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?%72ecursive=true",
                &[GOOGLE],
                kube.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?x=1;recursive=true",
                &[GOOGLE],
                kube.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?recursive",
                &[GOOGLE],
                kube.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?recursive=%74rue",
                &[GOOGLE],
                kube.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/?recursive=true",
                &[GOOGLE],
                gcp_token.clone(),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
                &[GOOGLE],
                gcp_token,
            ),
            (
                "GET",
                "/computeMetadata/?recursive=true",
                &[GOOGLE],
                gcp_token_first(),
            ),
            // Listing names, or a subtree with nothing denied.
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/",
                &[GOOGLE],
                forward(None),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?recursive=false",
                &[GOOGLE],
                forward(None),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?recursive=0",
                &[GOOGLE],
                forward(None),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?recursive%3Dtrue",
                &[GOOGLE],
                forward(None),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/?notrecursive=true",
                &[GOOGLE],
                forward(None),
            ),
            (
                "GET",
                "/computeMetadata/v1/project/?recursive=true",
                &[GOOGLE],
                forward(None),
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/attributes/other?recursive=true",
                &[GOOGLE],
                forward(None),
            ),
            // Azure and OCI answer directories with their content.
            ("GET", "/metadata", &[AZURE], azure.clone()),
            ("GET", "/METADATA/", &[AZURE], azure),
            ("GET", "/metadata/instance", &[AZURE], forward(None)),
            ("GET", "/opc/v2/instance/", &[ORACLE], oci.clone()),
            ("GET", "/opc/v2/instance/metadata", &[ORACLE], oci.clone()),
            ("GET", "/opc/v2/", &[ORACLE], oci.clone()),
            ("GET", "/opc/v1/instance/", &[], oci.clone()),
            ("GET", "/opc", &[], oci),
            (
                "GET",
                "/opc/v1/instance/metadata/user_data",
                &[],
                no(403, "path-denied", &format!("denyPaths: {OCI_USER_DATA}")),
            ),
            ("GET", "/opc/v2/instance/id", &[ORACLE], forward(None)),
            ("GET", "/opc/v2/vnics/", &[ORACLE], forward(None)),
            // AWS directories list names only.
            ("GET", "/latest/meta-data/iam/", &[], forward(None)),
            ("GET", "/latest/?recursive=true", &[], forward(None)),
        ];
        check_table(cases, &rules);
    }

    /// The first matching deny pattern is the one named.
    fn gcp_token_first() -> Decision {
        no(403, "denied-descendant", &format!("denyPaths: {GCP_TOKEN}"))
    }

    #[test]
    fn precedence() {
        let rules = rules(
            &["/latest/meta-data/instance-id"],
            &["/latest/meta-data/**"],
            true,
        );
        let cases: &[Case<'_>] = &[
            (
                "POST",
                "/latest/meta-data/instance-id",
                &[("Forwarded", b"x")],
                no(403, "forwarded-header", "Forwarded"),
            ),
            (
                "POST",
                "/computeMetadata/v1beta1/",
                &[],
                no(405, "method-not-allowed", METHODS),
            ),
            (
                "GET",
                "/computeMetadata/v1beta1/",
                &[("X-aws-ec2-metadata-token", b"")],
                no(
                    403,
                    "gcp-legacy-endpoint",
                    "legacy endpoint /computeMetadata/v1beta1/**",
                ),
            ),
            (
                "GET",
                "/computeMetadata/v1/",
                &[("X-aws-ec2-metadata-token", b"")],
                no(403, "gcp-header-missing", "Metadata-Flavor: Google"),
            ),
            (
                "GET",
                "/computeMetadata/v1/",
                &[GOOGLE, ("X-aws-ec2-metadata-token", b"")],
                no(401, "bad-token", "X-aws-ec2-metadata-token"),
            ),
            (
                "GET",
                "/latest/meta-data/instance-id",
                &[],
                no(403, "imdsv2-required", "require: imdsv2"),
            ),
            (
                "GET",
                "/latest/meta-data/instance-id",
                &[TOKEN_OK],
                no(403, "path-denied", "denyPaths: /latest/meta-data/**"),
            ),
            (
                "GET",
                "/latest/dynamic/instance-identity/document",
                &[TOKEN_OK],
                no(403, "path-not-allowed", "allowPaths (no pattern matches)"),
            ),
        ];
        check_table(cases, &rules);
    }

    #[test]
    fn providers() {
        let cases: &[(&str, Provider)] = &[
            ("/latest/meta-data/", Provider::Aws),
            ("/2021-07-15/meta-data/", Provider::Aws),
            ("/1.0", Provider::Aws),
            ("/Latest", Provider::Aws),
            ("/computeMetadata/v1/", Provider::Gcp),
            ("/computemetadata", Provider::Gcp),
            ("/0.1/meta-data", Provider::Gcp),
            ("/metadata/instance", Provider::Azure),
            ("/opc/v2/instance/", Provider::Oci),
            ("/", Provider::Unknown),
            ("/openstack/latest/meta_data.json", Provider::Unknown),
            ("/x/latest", Provider::Unknown),
            ("/latest-x", Provider::Unknown),
        ];
        for &(target, want) in cases {
            let t = canonicalize(target).expect(target);
            assert_eq!(provider_of(&t), want, "{target}");
            assert!(!want.as_str().is_empty());
        }
    }

    #[test]
    fn rules_take_canonical_patterns_only() {
        for (allow, deny) in [
            (vec!["/a/".to_owned()], vec![]),
            (vec![], vec!["/2021-07-15/meta-data".to_owned()]),
            (vec![], vec!["/**/**".to_owned()]),
            (vec!["a".to_owned()], vec![]),
            (vec![], vec!["/a?b".to_owned()]),
            (vec![], vec!["/a/%69".to_owned()]),
            (vec!["/a//b".to_owned()], vec![]),
        ] {
            assert!(
                PathRules::new(&allow, &deny, false).is_err(),
                "{allow:?} {deny:?}"
            );
        }
        let err = PathRules::new(&[], &["/1.0/x".to_owned()], false).expect_err("dated");
        assert!(err.contains("write \"/latest/x\""), "{err}");
        let ok = PathRules::new(&["/".to_owned()], &["/**".to_owned()], true).expect("canonical");
        assert!(ok.require_imdsv2());
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

        fn pick<'a, T>(&mut self, from: &'a [T]) -> Option<&'a T> {
            let i = usize::try_from(self.next() % from.len() as u64).ok()?;
            from.get(i)
        }
    }

    const PIECES: &[&str] = &[
        "/",
        "/",
        "/",
        "*",
        "**",
        "latest",
        "meta-data",
        "iam",
        "a",
        "b",
        ".",
        "..",
        "%2e",
        "2021-07-15",
        "1.0",
        "computeMetadata",
        "v1",
        "v1beta1",
        "0.1",
        "metadata",
        "opc",
        "v2",
        "api",
        "token",
        "?",
        "recursive=true",
        "&",
        ";",
        "=",
        "%",
        "A",
        "#",
    ];

    /// Random patterns that canonical_pattern accepts always build, and
    /// random requests against them never panic; a denied path is never
    /// forwarded, whatever its spelling.
    #[test]
    fn random_patterns_and_requests() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let methods = [Method::GET, Method::HEAD, Method::PUT, Method::POST];
        let header_sets: [&[(&str, &[u8])]; 5] = [
            &[],
            &[GOOGLE, TOKEN_OK],
            &[AZURE, ORACLE, TTL],
            &[GOOGLE, GOOGLE, ("X-aws-ec2-metadata-token", b"")],
            &[("Forwarded", b"x")],
        ];
        let random = |rng: &mut Rng, len: u64| {
            let mut s = String::from("/");
            for _ in 0..rng.next() % len {
                s.push_str(rng.pick(PIECES).copied().unwrap_or(""));
            }
            s
        };
        let mut built = 0;
        let mut forwarded = 0;
        for _ in 0..3_000 {
            let patterns: Vec<String> = (0..3)
                .filter_map(|_| canonical_pattern(&random(&mut rng, 8)).ok())
                .collect();
            let (allow, deny) = patterns.split_at(patterns.len() / 2);
            let rules = PathRules::new(allow, deny, rng.next().is_multiple_of(2))
                .expect("canonical patterns build");
            built += 1;
            for _ in 0..4 {
                let Ok(target) = canonicalize(&random(&mut rng, 12)) else {
                    continue;
                };
                let method = rng.pick(&methods).cloned().unwrap_or(Method::GET);
                let pairs = rng.pick(&header_sets).copied().unwrap_or(&[]);
                let decision = decide(&method, &target, &headers(pairs), &rules);
                if let Decision::Forward {
                    issues_token: false,
                    ..
                } = decision
                {
                    forwarded += 1;
                    let key = loose_key(&target.path);
                    assert!(
                        !rules.deny.iter().any(|g| g.matches(&key)),
                        "{target:?} forwarded"
                    );
                    assert!(
                        rules.allow.is_empty()
                            || rules.allow.iter().any(|g| g.matches(&target.path))
                    );
                }
            }
        }
        assert!(built == 3_000 && forwarded > 100, "{forwarded} forwarded");
    }
}
