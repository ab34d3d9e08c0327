//! OCSF 1.3 DNS Activity (class 4003, activity 2 "Response") for each query
//! the DNS proxy answered: the question, the response code the workload
//! got, the answer's addresses and which of them were learned (or why not),
//! with the same `unmapped.tiergate` block as connection records.

use super::ocsf_access::ElevationTag;
use serde::Serialize;

use super::ocsf::{
    Class, Device, Endpoint, Envelope, Outcome, PolicyRef, Unmapped, Workload, metadata,
};
use crate::dns::record::DnsRecord;

const DNS_RESPONSE: Class = Class {
    class_uid: 4003,
    class_name: "DNS Activity",
    category_uid: 4,
    category_name: "Network Activity",
    activity_id: 2,
    activity_name: "Response",
    type_uid: 400302,
};

#[derive(Serialize)]
struct Query<'a> {
    hostname: &'a str,
    #[serde(rename = "type")]
    qtype: &'a str,
    class: &'static str,
}

#[derive(Serialize)]
struct Answer {
    rdata: String,
    #[serde(rename = "type")]
    rtype: &'static str,
    ttl: u32,
}

#[derive(Serialize)]
struct ConnectionInfo<'a> {
    protocol_name: &'a str,
    direction_id: u8,
    direction: &'a str,
}

#[derive(Serialize)]
struct Learned<'a> {
    ip: String,
    owner: &'a str,
    ttl: u32,
    learned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

#[derive(Serialize)]
struct TiergateDns<'a> {
    kind: &'static str,
    seq: u64,
    verdict: &'a str,
    reason: &'a str,
    tier: &'a str,
    matched: &'a [String],
    addresses: Vec<Learned<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cap_hit: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    evicted: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    elevation: Option<&'a ElevationTag>,
    policy: PolicyRef<'a>,
    workload: &'a Workload,
}

#[derive(Serialize)]
struct DnsActivity<'a> {
    #[serde(flatten)]
    class: Class,
    type_name: &'static str,
    time: u64,
    #[serde(flatten)]
    outcome: Outcome,
    rcode_id: u16,
    rcode: &'a str,
    query: Query<'a>,
    answers: Vec<Answer>,
    connection_info: ConnectionInfo<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_endpoint: Option<Endpoint>,
    device: Device<'a>,
    metadata: super::ocsf::Metadata<'a>,
    unmapped: Unmapped<TiergateDns<'a>>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Renders one proxy record as one JSON line (no trailing newline).
pub fn dns_activity(env: &Envelope<'_>, r: &DnsRecord, workload: &Workload, out: &mut Vec<u8>) {
    let rec = DnsActivity {
        class: DNS_RESPONSE,
        type_name: "DNS Activity: Response",
        time: env.time,
        outcome: Outcome::of(r.verdict.as_str()),
        rcode_id: r.rcode_id,
        rcode: r.rcode,
        query: Query {
            hostname: &r.qname,
            qtype: &r.qtype,
            class: "IN",
        },
        answers: r
            .answers
            .iter()
            .map(|a| Answer {
                rdata: a.addr.to_string(),
                rtype: if a.addr.is_ipv4() { "A" } else { "AAAA" },
                ttl: a.ttl,
            })
            .collect(),
        connection_info: ConnectionInfo {
            protocol_name: r.transport,
            direction_id: 2,
            direction: "Outbound",
        },
        dst_endpoint: r.resolver.map(|ip| Endpoint {
            ip: ip.to_string(),
            port: agent_common::DNS_PORT,
        }),
        device: Device {
            hostname: env.hostname,
            type_id: 0,
        },
        metadata: metadata(env.uid),
        unmapped: Unmapped {
            tiergate: TiergateDns {
                kind: "dns",
                seq: env.seq,
                verdict: r.verdict.as_str(),
                reason: r.reason,
                tier: &r.tier,
                matched: &r.matched,
                addresses: r
                    .answers
                    .iter()
                    .map(|a| Learned {
                        ip: a.addr.to_string(),
                        owner: &a.owner,
                        ttl: a.ttl,
                        learned: a.rejected.is_none(),
                        reason: a.rejected,
                    })
                    .collect(),
                commit_us: r.commit_us,
                cap_hit: r.cap,
                evicted: r.evicted,
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
