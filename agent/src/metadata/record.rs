//! What the metadata proxy reports per request (rendered as OCSF 4002 HTTP
//! Activity by the event writer).

use crate::events::ocsf_access::ElevationTag;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::dns::record::QueryVerdict;
use crate::policy::Policy;

/// One HTTP request the proxy decided. On the wire from `tiergate proxy`
/// the policy and the grant travel beside it (`proxies::wire`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetadataRecord {
    /// Epoch milliseconds when the request head was read.
    pub time_ms: u64,
    /// 0 when the proxy address named no workload.
    pub cgroup_id: u64,
    /// Tier name, or `unknown`.
    pub tier: String,
    /// The policy in force when the request was judged.
    #[serde(skip)]
    pub policy: Option<Arc<Policy>>,
    /// The grant the request was judged under, if any (`tier` is its tier).
    #[serde(skip)]
    pub elevation: Option<Arc<ElevationTag>>,
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The canonical path when there is one, else the target as sent
    /// (cut to 512 bytes).
    pub path: String,
    /// The query string as sent.
    pub query: Option<String>,
    /// Whether the request could be canonicalized.
    pub canonical: bool,
    /// The `Host` header as sent.
    pub host: Option<String>,
    /// `aws`, `gcp`, `azure`, `oci`, `unknown`.
    #[serde(with = "crate::static_str")]
    pub provider: crate::static_str::Word,
    /// `allow` (forwarded), `deny` (refused), `audit-deny` (forwarded by an
    /// audit tier although the rules refuse it).
    pub verdict: QueryVerdict,
    /// Stable reason: `path-allowed`, `path-denied`, `imdsv2-required`, ...
    #[serde(with = "crate::static_str")]
    pub reason: crate::static_str::Word,
    /// The rule that decided, as written in the policy (or the provider
    /// rule), when one did.
    pub rule: Option<String>,
    /// An AWS session token was presented.
    pub token_presented: bool,
    /// The status the workload received.
    pub status: u16,
    /// Where the request was forwarded, when it was.
    pub upstream: Option<SocketAddr>,
    /// Microseconds from the request head to the response head.
    pub latency_us: u64,
    /// Set by the agent for a record from `tiergate proxy`: done when written.
    #[serde(skip)]
    pub receipt: Option<crate::events::pipeline::proxy_records::Receipt>,
}
