//! The decision on one metadata request, and its forwarding: whose it is
//! (the slot it arrived on), what the tier's rules say about its canonical
//! form, whether its session token is the caller's own, then either the
//! upstream's answer or a 403 that names tiergate and the rule.
//!
//! Every request is judged against the policy in force *when it arrives*,
//! so a keep-alive connection opened under an older policy keeps nothing a
//! reload took away.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::canon::{self, Target};
use super::record::MetadataRecord;
use super::rules::{self, Decision, PathRules};
use super::tokens::{TokenBook, TokenCheck};
use super::upstream::Upstream;
use crate::dns::record::QueryVerdict;
use crate::policy::{MetadataAccess, Mode, Policy};
use crate::state::NodeState;

/// Request bodies (IMDS requests have none) and response bodies (user data
/// is at most 16 KiB on AWS) beyond these are refused.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;
/// An upstream that has not answered by then gets the workload a 504.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cgroup created a moment ago may take to be known.
const NEW_CGROUP_WAIT: Duration = Duration::from_millis(200);
/// The AWS token lifetime header (request and response).
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";

/// Headers that belong to one hop and are never passed on (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub type Body = Full<Bytes>;

/// Each tier's compiled path rules (`None`: the tier does not filter).
type TierRules = Arc<Vec<Option<PathRules>>>;

/// The proxy's shared state.
pub struct Proxy {
    state: Arc<NodeState>,
    upstream: Upstream,
    pub tokens: TokenBook,
    records: mpsc::Sender<MetadataRecord>,
    /// Records that did not fit the writer's queue (reported as a loss).
    pub lost_records: Arc<AtomicU64>,
    /// Requests by verdict, for the metrics.
    pub requests: [AtomicU64; 3],
    rules: Mutex<Option<(Arc<Policy>, TierRules)>>,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A response made by the proxy itself.
fn own_response(status: u16, text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The short body of a refusal: who refused, and by which rule.
fn refusal_text(tier: &str, reason: &str, rule: Option<&str>) -> String {
    match rule {
        Some(rule) => {
            format!("tiergate: metadata request refused for tier {tier:?} by {rule} ({reason})\n")
        }
        None => format!("tiergate: metadata request refused for tier {tier:?} ({reason})\n"),
    }
}

/// What a request came to, before it is reported.
struct Judged {
    verdict: QueryVerdict,
    reason: &'static str,
    rule: Option<String>,
    /// Refusal status, when refused.
    status: u16,
}

impl Judged {
    fn allow() -> Self {
        Judged {
            verdict: QueryVerdict::Allow,
            reason: "path-allowed",
            rule: None,
            status: 200,
        }
    }

    fn refuse(status: u16, reason: &'static str, rule: Option<String>) -> Self {
        Judged {
            verdict: QueryVerdict::Deny,
            reason,
            rule,
            status,
        }
    }
}

impl Proxy {
    pub fn new(
        state: Arc<NodeState>,
        upstream: SocketAddr,
        records: mpsc::Sender<MetadataRecord>,
    ) -> Self {
        Self {
            state,
            upstream: Upstream::new(upstream, MAX_RESPONSE_BODY),
            tokens: TokenBook::default(),
            records,
            lost_records: Default::default(),
            requests: Default::default(),
            rules: Mutex::new(None),
        }
    }

    /// The compiled path rules of every tier of `policy` (cached per policy).
    fn tier_rules(&self, policy: &Arc<Policy>) -> TierRules {
        let mut cache = self.rules.lock().expect("rules lock");
        if let Some((p, r)) = cache.as_ref()
            && Arc::ptr_eq(p, policy)
        {
            return r.clone();
        }
        let compiled: TierRules = Arc::new(
            policy
                .tiers
                .iter()
                .map(|t| match &t.metadata {
                    MetadataAccess::Filter(f) => {
                        match PathRules::new(&f.allow_paths, &f.deny_paths, f.require_imdsv2) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                // The parser checked every pattern; a tier
                                // whose rules still fail refuses everything.
                                tracing::error!(tier = %t.name, error = %e, "metadata rules do not compile");
                                None
                            }
                        }
                    }
                    _ => None,
                })
                .collect(),
        );
        *cache = Some((policy.clone(), compiled.clone()));
        compiled
    }

    fn report(&self, rec: MetadataRecord) {
        let i = match rec.verdict {
            QueryVerdict::Allow => 0,
            QueryVerdict::Deny => 1,
            QueryVerdict::AuditDeny => 2,
        };
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        if self.records.try_send(rec).is_err() {
            self.lost_records.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers one request that arrived on `slot`.
    pub async fn handle(&self, slot: u32, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let raw = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |p| p.as_str().to_owned());
        let target = canon::canonicalize(&raw);
        let mut rec = MetadataRecord {
            time_ms: epoch_ms(),
            cgroup_id: 0,
            tier: "unknown".into(),
            policy: self.state.active_policy(),
            elevation: None,
            receipt: None,
            method: parts.method.as_str().chars().take(16).collect(),
            path: match &target {
                Ok(t) => t.path.clone(),
                Err(_) => raw.chars().take(512).collect(),
            },
            query: target.as_ref().ok().and_then(|t| t.query.clone()),
            canonical: target.is_ok(),
            host: parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.chars().take(255).collect()),
            provider: target
                .as_ref()
                .map_or("unknown", |t| rules::provider_of(t).as_str()),
            verdict: QueryVerdict::Deny,
            reason: "unknown-workload",
            rule: None,
            token_presented: parts.headers.contains_key("x-aws-ec2-metadata-token"),
            status: 403,
            upstream: None,
            latency_us: 0,
        };
        let (judged, forward) = self.judge(slot, &parts, &target, &mut rec).await;
        let mut response = match forward {
            Some(f) => self.forward(&parts, f, body, &mut rec).await,
            None => {
                rec.status = judged.status;
                own_response(
                    judged.status,
                    refusal_text(&rec.tier, judged.reason, judged.rule.as_deref()),
                )
            }
        };
        rec.verdict = judged.verdict;
        rec.reason = if rec.reason == "upstream-failed" {
            rec.reason
        } else {
            judged.reason
        };
        rec.rule = judged.rule;
        rec.latency_us = started.elapsed().as_micros() as u64;
        response.headers_mut().insert(
            "x-tiergate-verdict",
            HeaderValue::from_static(rec.verdict.as_str()),
        );
        self.report(rec);
        response
    }

    /// The verdict on a request and, if it goes upstream, how.
    async fn judge(
        &self,
        slot: u32,
        parts: &http::request::Parts,
        target: &Result<Target, canon::CanonError>,
        rec: &mut MetadataRecord,
    ) -> (Judged, Option<Forward>) {
        let Some((cgroup, workload)) = self
            .state
            .workload_by_slot_within(slot, NEW_CGROUP_WAIT)
            .await
        else {
            return (Judged::refuse(403, "unknown-workload", None), None);
        };
        rec.cgroup_id = cgroup;
        // Under an elevation grant, the granted tier's metadata rules (as
        // the kernel judges the connection by the granted tier).
        (rec.tier, rec.elevation) = self.state.judged_tier(cgroup, &workload.tier, rec.time_ms);
        let Some(policy) = rec.policy.clone() else {
            return (Judged::refuse(403, "unknown-workload", None), None);
        };
        let Some(tier_id) = policy.tier_index(&rec.tier) else {
            return (Judged::refuse(403, "unknown-workload", None), None);
        };
        let tier = &policy.tiers[tier_id];
        let audit = tier.effective_mode(policy.mode) == Mode::Audit;
        let judged = match &tier.metadata {
            // A reload took `filter` away while this connection stayed open.
            MetadataAccess::Deny => {
                Judged::refuse(403, "metadata-denied", Some("metadata: deny".to_owned()))
            }
            MetadataAccess::Allow => Judged::allow(),
            MetadataAccess::Filter(_) => match target {
                Err(e) => Judged::refuse(400, e.code(), Some(format!("canonical path: {e}"))),
                Ok(t) => match self.tier_rules(&policy)[tier_id].as_ref() {
                    None => Judged::refuse(403, "rules-invalid", None),
                    Some(r) => self.decide(cgroup, parts, t, r),
                },
            },
        };
        let forward = match (&judged.verdict, target) {
            (QueryVerdict::Allow, Ok(t)) => Some(Forward::canonical(t, issues_token(parts, t))),
            (QueryVerdict::Allow, Err(_)) => None,
            // Audit tiers are never blocked: the request goes on as sent,
            // and the event says what enforce mode would have done.
            (QueryVerdict::Deny, _) if audit => Some(match target {
                Ok(t) => Forward::canonical(t, issues_token(parts, t)),
                Err(_) => Forward::as_sent(),
            }),
            _ => None,
        };
        let judged = if audit && judged.verdict == QueryVerdict::Deny {
            Judged {
                verdict: QueryVerdict::AuditDeny,
                ..judged
            }
        } else {
            judged
        };
        (judged, forward)
    }

    /// The tier's rules, then the token's owner.
    fn decide(
        &self,
        cgroup: u64,
        parts: &http::request::Parts,
        t: &Target,
        r: &PathRules,
    ) -> Judged {
        match rules::decide(&parts.method, t, &parts.headers, r) {
            Decision::Refuse { status, code, rule } => Judged::refuse(status, code, Some(rule)),
            Decision::Forward { token, .. } => {
                match token.map(|tok| self.tokens.check(&tok, cgroup)) {
                    None | Some(TokenCheck::Ours) => Judged::allow(),
                    // IMDS answers 401 to a token it does not know; SDKs
                    // then fetch a new one (through the proxy).
                    Some(TokenCheck::Unknown) => Judged::refuse(
                        401,
                        "token-unknown",
                        Some("session token not issued to this workload through tiergate".into()),
                    ),
                    Some(TokenCheck::OtherWorkload) => Judged::refuse(
                        403,
                        "token-of-another-workload",
                        Some("session token issued to another workload".into()),
                    ),
                }
            }
        }
    }

    /// Sends the request upstream and passes the answer back.
    async fn forward(
        &self,
        parts: &http::request::Parts,
        f: Forward,
        body: Incoming,
        rec: &mut MetadataRecord,
    ) -> Response<Body> {
        rec.upstream = Some(self.upstream.addr);
        let uri = f.uri.unwrap_or_else(|| {
            parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
        });
        let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                rec.status = 413;
                rec.reason = "upstream-failed";
                return own_response(413, "tiergate: request body too large\n".into());
            }
        };
        let mut req = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(Full::new(body))
            .expect("a method and a path that parsed once build again");
        copy_end_to_end(&parts.headers, req.headers_mut());
        match tokio::time::timeout(UPSTREAM_TIMEOUT, self.upstream.exchange(req)).await {
            Ok(Ok((head, bytes))) => {
                rec.status = head.status.as_u16();
                if f.issues_token && head.status == StatusCode::OK {
                    let ttl = head
                        .headers
                        .get(TTL_HEADER)
                        .or_else(|| parts.headers.get(TTL_HEADER))
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(21_600);
                    if let Ok(token) = std::str::from_utf8(&bytes) {
                        self.tokens
                            .record(token.trim(), rec.cgroup_id, Duration::from_secs(ttl));
                    }
                }
                let mut resp = Response::new(Full::new(bytes));
                *resp.status_mut() = head.status;
                copy_end_to_end(&head.headers, resp.headers_mut());
                resp
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "metadata upstream failed");
                rec.status = 502;
                rec.reason = "upstream-failed";
                own_response(
                    502,
                    "tiergate: the metadata service did not answer\n".into(),
                )
            }
            Err(_) => {
                rec.status = 504;
                rec.reason = "upstream-failed";
                own_response(504, "tiergate: the metadata service timed out\n".into())
            }
        }
    }
}

/// The target sent upstream (`None`: as the workload sent it) and whether
/// the answer is a session token to record.
struct Forward {
    uri: Option<String>,
    issues_token: bool,
}

impl Forward {
    fn canonical(t: &Target, issues_token: bool) -> Self {
        Forward {
            uri: Some(t.forward_uri()),
            issues_token,
        }
    }

    fn as_sent() -> Self {
        Forward {
            uri: None,
            issues_token: false,
        }
    }
}

fn issues_token(parts: &http::request::Parts, t: &Target) -> bool {
    parts.method == Method::PUT && t.path == "/latest/api/token"
}

/// Copies end-to-end headers: hop-by-hop ones, those the `Connection`
/// header names, and `Content-Length` (recomputed) stay behind.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "content-length" || named.iter().any(|x| x == n) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}
