//! OCSF 1.3 HTTP Activity (class 4002) for each request the metadata proxy
//! decided: method (as the activity), canonical path, the status the
//! workload got, whether a session token was presented (never its value),
//! and the rule that decided, with the same `unmapped.tiergate` block as
//! connection records.

use super::ocsf_access::ElevationTag;
use serde::Serialize;

use super::ocsf::{
    Class, Device, Endpoint, Envelope, Outcome, PolicyRef, Unmapped, Workload, metadata,
};
use crate::metadata::record::MetadataRecord;

/// OCSF's HTTP Activity ids by method (`99`: Other).
fn activity(method: &str) -> (u32, &'static str) {
    match method {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        _ => (99, "Other"),
    }
}

#[derive(Serialize)]
struct Url<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_string: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
}

#[derive(Serialize)]
struct HttpRequest<'a> {
    http_method: &'a str,
    url: Url<'a>,
    version: &'static str,
}

#[derive(Serialize)]
struct HttpResponse {
    code: u16,
}

#[derive(Serialize)]
struct TiergateHttp<'a> {
    kind: &'static str,
    seq: u64,
    verdict: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    tier: &'a str,
    provider: &'a str,
    /// The path could be put in canonical form (else `url.path` is the
    /// target as sent).
    canonical: bool,
    token_presented: bool,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    elevation: Option<&'a ElevationTag>,
    policy: PolicyRef<'a>,
    workload: &'a Workload,
}

#[derive(Serialize)]
struct HttpActivity<'a> {
    #[serde(flatten)]
    class: Class,
    type_name: String,
    time: u64,
    #[serde(flatten)]
    outcome: Outcome,
    http_request: HttpRequest<'a>,
    http_response: HttpResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_endpoint: Option<Endpoint>,
    device: Device<'a>,
    metadata: super::ocsf::Metadata<'a>,
    unmapped: Unmapped<TiergateHttp<'a>>,
}

/// Renders one metadata proxy record as one JSON line (no trailing newline).
pub fn http_activity(
    env: &Envelope<'_>,
    r: &MetadataRecord,
    workload: &Workload,
    out: &mut Vec<u8>,
) {
    let (activity_id, activity_name) = activity(&r.method);
    let rec = HttpActivity {
        class: Class {
            class_uid: 4002,
            class_name: "HTTP Activity",
            category_uid: 4,
            category_name: "Network Activity",
            activity_id,
            activity_name,
            type_uid: 400200 + activity_id,
        },
        type_name: format!("HTTP Activity: {activity_name}"),
        time: env.time,
        outcome: Outcome::of(r.verdict.as_str()),
        http_request: HttpRequest {
            http_method: &r.method,
            url: Url {
                path: &r.path,
                query_string: r.query.as_deref(),
                hostname: r.host.as_deref(),
            },
            version: "HTTP/1.1",
        },
        http_response: HttpResponse { code: r.status },
        dst_endpoint: r.upstream.map(|a| Endpoint {
            ip: a.ip().to_string(),
            port: a.port(),
        }),
        device: Device {
            hostname: env.hostname,
            type_id: 0,
        },
        metadata: metadata(env.uid),
        unmapped: Unmapped {
            tiergate: TiergateHttp {
                kind: "metadata",
                seq: env.seq,
                verdict: r.verdict.as_str(),
                reason: r.reason,
                rule: r.rule.as_deref(),
                tier: &r.tier,
                provider: r.provider,
                canonical: r.canonical,
                token_presented: r.token_presented,
                latency_us: r.latency_us,
                elevation: r.elevation.as_deref(),
                policy: PolicyRef {
                    name: env.policy_name,
                    version: env.policy_version,
                },
                workload,
            },
        },
    };
    serde_json::to_writer(&mut *out, &rec).expect("serializing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_ocsf_activities() {
        assert_eq!(activity("GET"), (3, "Get"));
        assert_eq!(activity("PUT"), (7, "Put"));
        assert_eq!(activity("BREW"), (99, "Other"));
    }
}
