//! What the proxy reports per query (rendered as OCSF 4003 DNS Activity by
//! the event writer).

use crate::events::ocsf_access::ElevationTag;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::Policy;

/// The decision on a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryVerdict {
    /// Forwarded (a tier name allowed it).
    Allow,
    /// Answered NXDOMAIN (or an error) by the proxy; never forwarded.
    Deny,
    /// Not allowed, forwarded anyway because the tier is in audit mode.
    AuditDeny,
}

impl QueryVerdict {
    /// `allow`, `deny` or `audit-deny`, as in connection events.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryVerdict::Allow => "allow",
            QueryVerdict::Deny => "deny",
            QueryVerdict::AuditDeny => "audit-deny",
        }
    }
}

/// One address in the answer and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerAddr {
    pub addr: IpAddr,
    pub ttl: u32,
    /// Owner name of its record.
    pub owner: String,
    /// `None`: learned; `Some(reason)`: not learned, and why.
    #[serde(with = "crate::static_str::option")]
    pub rejected: Option<crate::static_str::Word>,
}

/// One query the proxy handled. On the wire from `tiergate proxy` the
/// policy and the grant travel beside it (`proxies::wire`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DnsRecord {
    /// Epoch milliseconds when the query arrived.
    pub time_ms: u64,
    pub cgroup_id: u64,
    /// Tier name, or `unknown` when the slot named no workload.
    pub tier: String,
    /// The policy in force when the query was judged.
    #[serde(skip)]
    pub policy: Option<Arc<Policy>>,
    pub qname: String,
    /// `A`, `AAAA`, ...
    pub qtype: String,
    /// `udp` or `tcp`.
    #[serde(with = "crate::static_str")]
    pub transport: crate::static_str::Word,
    pub verdict: QueryVerdict,
    /// Why: `name-allowed`, `name-not-allowed`, `upstream-failed`,
    /// `unknown-workload`, `malformed`, `overload`.
    #[serde(with = "crate::static_str")]
    pub reason: crate::static_str::Word,
    /// Response code sent to the workload (numeric, and OCSF's caption).
    pub rcode_id: u16,
    #[serde(with = "crate::static_str")]
    pub rcode: crate::static_str::Word,
    /// The name patterns of the tier that matched.
    pub matched: Vec<String>,
    /// The resolver that answered, if one did.
    pub resolver: Option<IpAddr>,
    pub answers: Vec<AnswerAddr>,
    /// Microseconds to commit the learned addresses to the kernel.
    pub commit_us: Option<u64>,
    /// A cap (`workload`, `name`) that closed older addresses of this
    /// workload to make room for this answer's, and how many it closed.
    #[serde(with = "crate::static_str::option")]
    pub cap: Option<crate::static_str::Word>,
    pub evicted: usize,
    /// The grant the query was judged under, if any (`tier` is its tier).
    #[serde(skip)]
    pub elevation: Option<Arc<ElevationTag>>,
    /// Set by the agent for a record from `tiergate proxy`: done when written.
    #[serde(skip)]
    pub receipt: Option<crate::events::pipeline::proxy_records::Receipt>,
}
