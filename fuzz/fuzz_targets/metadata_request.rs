//! The metadata proxy's request handling: the request-target canonicalizer
//! (`metadata/canon.rs`) and the per-request rules (`metadata/rules.rs`).
//! Never panics; a canonical target is a fixpoint and holds no `%`, `.`/`..`
//! or empty segment; a canonical pattern is a fixpoint and always builds; a
//! path a deny pattern names exactly is never forwarded (the AWS token
//! request aside, which reveals nothing); a forwarding header or a method
//! other than GET, HEAD and PUT is always refused.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use tiergate::metadata::canon::{canonical_pattern, canonicalize};
use tiergate::metadata::rules::{Decision, PathRules, decide};

/// The input, one item per line: the request target, the method, then
/// `allow PATTERN`, `deny PATTERN`, `deny-this` (deny the request's own
/// path), `imdsv2`, or `Header-Name: value`.
struct Input {
    target: String,
    method: String,
    headers: Vec<(String, Vec<u8>)>,
    allow: Vec<String>,
    deny: Vec<String>,
    deny_this_path: bool,
    imdsv2: bool,
}

fn input(data: &[u8]) -> Option<Input> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.split('\n');
    let mut i = Input {
        target: lines.next()?.to_owned(),
        method: lines.next().unwrap_or("GET").to_owned(),
        headers: Vec::new(),
        allow: Vec::new(),
        deny: Vec::new(),
        deny_this_path: false,
        imdsv2: false,
    };
    for l in lines {
        if let Some(p) = l.strip_prefix("allow ") {
            i.allow.push(p.to_owned());
        } else if let Some(p) = l.strip_prefix("deny ") {
            i.deny.push(p.to_owned());
        } else if l == "deny-this" {
            i.deny_this_path = true;
        } else if l == "imdsv2" {
            i.imdsv2 = true;
        } else if let Some((n, v)) = l.split_once(':') {
            i.headers
                .push((n.to_owned(), v.trim_start().as_bytes().to_vec()));
        }
    }
    Some(i)
}

fn patterns(raw: &[String]) -> Vec<String> {
    raw.iter()
        .take(8)
        .filter_map(|p| canonical_pattern(p).ok())
        .inspect(|c| {
            assert_eq!(
                canonical_pattern(c).as_deref(),
                Ok(c.as_str()),
                "not a fixpoint"
            )
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input(data) else {
        return;
    };
    let Ok(target) = canonicalize(&input.target) else {
        let _ = patterns(&input.allow);
        return;
    };
    let uri = target.forward_uri();
    assert_eq!(
        canonicalize(&uri),
        Ok(target.clone()),
        "{:?} -> {uri:?}",
        input.target
    );
    assert!(target.path.starts_with('/'));
    assert!(!target.path.contains('%'), "{target:?}");
    if target.path != "/" {
        assert!(
            target.path[1..]
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."),
            "{target:?}"
        );
    }
    assert!(
        uri.parse::<http::Uri>().is_ok(),
        "the upstream request target {uri:?} is not a URI"
    );

    let allow = patterns(&input.allow);
    let mut deny = patterns(&input.deny);
    let literal = if input.deny_this_path {
        canonical_pattern(&target.path)
            .ok()
            .filter(|p| !p.contains('*'))
    } else {
        None
    };
    if let Some(p) = &literal {
        deny.push(p.clone());
    }
    let rules = PathRules::new(&allow, &deny, input.imdsv2)
        .unwrap_or_else(|e| panic!("canonical patterns refused: {e}"));

    let Ok(method) = Method::from_bytes(input.method.as_bytes()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (n, v) in input.headers.iter().take(8) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(name, value);
        }
    }
    let decision = decide(&method, &target, &headers, &rules);
    let forwarded_header = ["x-forwarded-for", "forwarded", "x-forwarded-host"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if forwarded_header || !matches!(method.as_str(), "GET" | "HEAD" | "PUT") {
        assert!(
            matches!(decision, Decision::Refuse { .. }),
            "{method} {uri} {headers:?}: {decision:?}"
        );
    }
    let token_request = method == Method::PUT && target.path == "/latest/api/token";
    if literal.is_some() && !token_request {
        assert!(
            matches!(decision, Decision::Refuse { .. }),
            "{method} {uri} forwarded though denied by {literal:?}: {decision:?}"
        );
    }
    if let Decision::Refuse { status, code, .. } = &decision {
        assert!((400..500).contains(status), "{decision:?}");
        assert!(!code.is_empty());
    }
});
