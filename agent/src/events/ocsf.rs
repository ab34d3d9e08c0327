//! OCSF 1.3 rendering of tiergate events (CONTRACT section 3).
//!
//! Connection attempts and refused sockets are Network Activity (class 4001,
//! activity 1 "Open"). Records about the agent itself (losses, policy loads
//! and rejections) are OCSF Base Events (class 0, activity 99 "Other") with
//! `unmapped.tiergate.kind` saying which. Every record carries `seq` and a
//! `metadata.uid` that stays the same when the record is sent again.

use serde::Serialize;

pub use super::ocsf_access::ElevationTag;
pub use super::ocsf_conn::network_activity;
use crate::identity::pods::PodFields;

pub const PRODUCT: &str = "tiergate";
pub const OCSF_VERSION: &str = "1.3.0";

/// Fields every record shares, filled by the writer.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope<'a> {
    pub time: u64,
    pub seq: u64,
    pub uid: &'a str,
    pub hostname: &'a str,
    pub policy_name: Option<&'a str>,
    pub policy_version: Option<&'a str>,
}

#[derive(Serialize)]
pub(super) struct Product<'a> {
    name: &'a str,
    vendor_name: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
pub(super) struct Metadata<'a> {
    uid: &'a str,
    version: &'a str,
    product: Product<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_uid: Option<&'a str>,
}

impl<'a> Metadata<'a> {
    /// With `correlation_uid`: the id records about one thing share.
    pub(super) fn correlated(self, id: &'a str) -> Metadata<'a> {
        Metadata {
            correlation_uid: Some(id),
            ..self
        }
    }
}

pub(super) fn metadata<'a>(uid: &'a str) -> Metadata<'a> {
    Metadata {
        uid,
        version: OCSF_VERSION,
        product: Product {
            name: PRODUCT,
            vendor_name: PRODUCT,
            version: env!("CARGO_PKG_VERSION"),
        },
        correlation_uid: None,
    }
}

#[derive(Serialize)]
pub(super) struct Device<'a> {
    pub(super) hostname: &'a str,
    pub(super) type_id: u8,
}

#[derive(Serialize)]
pub(super) struct Endpoint {
    pub(super) ip: String,
    pub(super) port: u16,
}

/// Identity of the workload that acted (pod fields only for pods).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Workload {
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    #[serde(flatten)]
    pub pod: PodFields,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// `resolved`, `unresolved` or `malformed` for pod cgroups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_state: Option<crate::state::PodState>,
}

#[derive(Serialize)]
pub(super) struct PolicyRef<'a> {
    pub(super) name: Option<&'a str>,
    pub(super) version: Option<&'a str>,
}

/// The tiergate-specific part of a connection or socket record.
#[derive(Debug, Clone)]
pub struct Verdict<'a> {
    pub verdict: &'a str,
    pub reason: &'a str,
    pub tier: &'a str,
    pub hook: &'a str,
    pub metadata_service: bool,
    /// The tier came from an ancestor cgroup (user space had not seen it yet).
    pub inherited: bool,
    /// The DNS name whose answer opened the destination (`fqdn` verdicts).
    pub fqdn: Option<&'a str>,
    /// The rule that allowed the attempt: (id, index in the tier).
    pub rule: Option<(&'a str, usize)>,
    /// The grant the workload was judged under (its tier is the grant's).
    pub elevation: Option<&'a ElevationTag>,
    /// For an aggregated record: how many attempts, first and last (epoch
    /// ms); `time` is the last.
    pub span: Option<Span>,
}

/// Repeated identical attempts in one record (OCSF `count`, `start_time`,
/// `end_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub count: u64,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// socket() arguments of a refused socket.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SocketInfo {
    pub family: u32,
    #[serde(rename = "type")]
    pub sock_type: u32,
    pub protocol: u32,
}

#[derive(Serialize)]
pub(super) struct Unmapped<T> {
    pub(super) tiergate: T,
}

/// The OCSF classification every record opens with: class, category,
/// activity and type.
#[derive(Serialize)]
pub(super) struct Class {
    pub(super) class_uid: u32,
    pub(super) class_name: &'static str,
    pub(super) category_uid: u32,
    pub(super) category_name: &'static str,
    pub(super) activity_id: u32,
    pub(super) activity_name: &'static str,
    pub(super) type_uid: u32,
}

/// What became of an attempt (a connection, a DNS query), from the verdict.
#[derive(Serialize)]
pub(super) struct Outcome {
    severity_id: u8,
    action_id: u8,
    action: &'static str,
    disposition_id: u8,
    disposition: &'static str,
    status_id: u8,
}

impl Outcome {
    /// Only `deny` is blocked; `audit-deny` was let through (Medium
    /// severity, like a deny), `allow` is informational.
    pub(super) fn of(verdict: &str) -> Outcome {
        let blocked = verdict == "deny";
        Outcome {
            severity_id: if verdict == "allow" { 1 } else { 3 },
            action_id: if blocked { 2 } else { 1 },
            action: if blocked { "Denied" } else { "Allowed" },
            disposition_id: if blocked { 2 } else { 1 },
            disposition: if blocked { "Blocked" } else { "Allowed" },
            status_id: if blocked { 2 } else { 1 },
        }
    }
}

/// A record about the agent itself.
const BASE_OTHER: Class = Class {
    class_uid: 0,
    class_name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
    activity_id: 99,
    activity_name: "Other",
    type_uid: 99,
};

/// The acting process.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub name: String,
}

#[derive(Serialize)]
struct BaseEvent<'a, T: Serialize> {
    #[serde(flatten)]
    class: Class,
    severity_id: u8,
    status_id: u8,
    time: u64,
    message: &'a str,
    device: Device<'a>,
    metadata: Metadata<'a>,
    unmapped: Unmapped<T>,
}

/// Renders an agent record (loss, policy) as an OCSF Base Event. `detail`
/// becomes `unmapped.tiergate` (it must carry `kind`); `seq` and `policy`
/// are added here.
pub fn base_event(
    env: &Envelope<'_>,
    message: &str,
    failure: bool,
    detail: serde_json::Value,
    out: &mut Vec<u8>,
) {
    let mut detail = detail;
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("seq".into(), env.seq.into());
        obj.insert(
            "policy".into(),
            serde_json::json!({"name": env.policy_name, "version": env.policy_version}),
        );
    }
    let rec = BaseEvent {
        class: BASE_OTHER,
        severity_id: if failure { 4 } else { 1 },
        status_id: if failure { 2 } else { 1 },
        time: env.time,
        message,
        device: Device {
            hostname: env.hostname,
            type_id: 0,
        },
        metadata: metadata(env.uid),
        unmapped: Unmapped { tiergate: detail },
    };
    serde_json::to_writer(&mut *out, &rec).expect("serializing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn env() -> Envelope<'static> {
        Envelope {
            time: 1_700_000_000_123,
            seq: 7,
            uid: "abc-7",
            hostname: "node-1",
            policy_name: Some("ai-platform"),
            policy_version: Some("sha256:00"),
        }
    }

    #[test]
    fn connection_record_has_every_contract_field() {
        let v = Verdict {
            verdict: "deny",
            reason: "no-matching-rule",
            tier: "tier0",
            hook: "connect4",
            metadata_service: false,
            inherited: false,
            fqdn: None,
            rule: None,
            elevation: None,
            span: None,
        };
        let p = ProcessInfo {
            pid: 42,
            tid: 43,
            uid: 0,
            name: "curl".into(),
        };
        let w = Workload {
            cgroup_id: 9,
            cgroup_path: Some("/agents/tier0".into()),
            pod: PodFields {
                namespace: Some("agents".into()),
                pod: Some("retriever-0".into()),
                pod_uid: Some("u-1".into()),
                service_account: Some("retriever".into()),
                container: Some("tool".into()),
                container_id: Some("abc".into()),
                owner: Some("team-search".into()),
            },
            spiffe_id: Some("spiffe://corp.example/ns/agents/sa/retriever".into()),
            ..Default::default()
        };
        let mut out = Vec::new();
        network_activity(
            &env(),
            &v,
            6,
            Some(("10.0.0.1".parse().unwrap(), 443)),
            None,
            &p,
            &w,
            &mut out,
        );
        let j: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(j["class_uid"], 4001);
        assert_eq!(j["activity_id"], 1);
        assert_eq!(j["activity_name"], "Open");
        assert_eq!(j["time"], 1_700_000_000_123u64);
        assert_eq!(j["disposition_id"], 2);
        assert_eq!(j["disposition"], "Blocked");
        assert_eq!(j["connection_info"]["protocol_name"], "tcp");
        assert_eq!(j["dst_endpoint"]["ip"], "10.0.0.1");
        assert_eq!(j["dst_endpoint"]["port"], 443);
        assert_eq!(j["actor"]["process"]["pid"], 42);
        assert_eq!(j["actor"]["process"]["name"], "curl");
        assert_eq!(j["device"]["hostname"], "node-1");
        assert_eq!(j["metadata"]["uid"], "abc-7");
        assert!(
            j["firewall_rule"].is_null(),
            "a denied attempt names no rule"
        );
        assert_eq!(j["metadata"]["product"]["name"], "tiergate");
        let t = &j["unmapped"]["tiergate"];
        assert_eq!(t["seq"], 7);
        assert_eq!(t["verdict"], "deny");
        assert_eq!(t["reason"], "no-matching-rule");
        assert_eq!(t["tier"], "tier0");
        assert_eq!(t["policy"]["name"], "ai-platform");
        assert_eq!(t["policy"]["version"], "sha256:00");
        assert_eq!(t["workload"]["cgroup_id"], 9);
        assert_eq!(t["workload"]["cgroup_path"], "/agents/tier0");
        assert_eq!(t["metadata_service"], false);
        for (k, v) in [
            ("namespace", "agents"),
            ("pod", "retriever-0"),
            ("owner", "team-search"),
            ("pod_uid", "u-1"),
            ("service_account", "retriever"),
            ("container", "tool"),
            ("container_id", "abc"),
            ("spiffe_id", "spiffe://corp.example/ns/agents/sa/retriever"),
        ] {
            assert_eq!(t["workload"][k], v, "workload.{k}");
        }
        assert!(
            t["workload"].get("systemd_unit").is_none(),
            "absent fields are left out"
        );
        assert!(t.get("elevation").is_none(), "no grant, no elevation block");
        assert!(j["metadata"].get("correlation_uid").is_none());
    }

    /// An attempt by an unnamed workload's process to 10.0.0.1:443 over TCP.
    fn render_tcp_443(v: &Verdict<'_>) -> Value {
        let p = ProcessInfo {
            pid: 1,
            tid: 1,
            uid: 0,
            name: "x".into(),
        };
        let mut out = Vec::new();
        let dst = Some(("10.0.0.1".parse().unwrap(), 443));
        network_activity(&env(), v, 6, dst, None, &p, &Workload::default(), &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn allowed_record_names_its_rule() {
        let v = Verdict {
            verdict: "allow",
            reason: "egress-rule",
            tier: "retrieval",
            hook: "connect4",
            metadata_service: false,
            inherited: false,
            fqdn: None,
            rule: Some(("r-0123456789ab", 2)),
            elevation: None,
            span: None,
        };
        let j = render_tcp_443(&v);
        assert_eq!(j["firewall_rule"]["uid"], "r-0123456789ab");
        assert_eq!(j["firewall_rule"]["name"], "retrieval:egress[2]");
        assert_eq!(j["unmapped"]["tiergate"]["rule"]["uid"], "r-0123456789ab");
        assert_eq!(j["unmapped"]["tiergate"]["rule"]["index"], 2);
    }

    #[test]
    fn a_record_made_under_a_grant_names_it() {
        let grant = ElevationTag {
            tier: "tier2".into(),
            id: "el-7f3a".into(),
            ticket: "INC-42".into(),
            reason: "restore the index".into(),
            granted_by: crate::events::ocsf_access::Operator::Unix {
                uid: 1000,
                name: Some("alice".into()),
            },
            expires: 1_700_000_900_000,
        };
        let v = Verdict {
            verdict: "allow",
            reason: "egress-rule",
            tier: "tier1",
            hook: "connect4",
            metadata_service: false,
            inherited: false,
            fqdn: None,
            rule: Some(("r-0123456789ab", 0)),
            elevation: Some(&grant),
            span: None,
        };
        let j = render_tcp_443(&v);
        assert_eq!(
            j["unmapped"]["tiergate"]["elevation"],
            serde_json::json!({
                "id": "el-7f3a",
                "ticket": "INC-42",
                "reason": "restore the index",
                "granted_by": {"type": "unix", "uid": "1000", "name": "alice"},
                "expires": 1_700_000_900_000u64,
            })
        );
        assert_eq!(j["unmapped"]["tiergate"]["tier"], "tier1");
    }

    #[test]
    fn audit_deny_is_allowed_disposition() {
        let v = Verdict {
            verdict: "audit-deny",
            reason: "metadata-service",
            tier: "t",
            hook: "connect4",
            metadata_service: true,
            inherited: false,
            fqdn: None,
            rule: None,
            elevation: None,
            span: None,
        };
        let p = ProcessInfo {
            pid: 1,
            tid: 1,
            uid: 0,
            name: "x".into(),
        };
        let mut out = Vec::new();
        network_activity(
            &env(),
            &v,
            17,
            Some(("169.254.169.254".parse().unwrap(), 80)),
            None,
            &p,
            &Workload::default(),
            &mut out,
        );
        let j: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(j["disposition_id"], 1);
        assert_eq!(j["disposition"], "Allowed");
        assert_eq!(j["connection_info"]["protocol_name"], "udp");
        assert_eq!(j["unmapped"]["tiergate"]["verdict"], "audit-deny");
        assert_eq!(j["unmapped"]["tiergate"]["metadata_service"], true);
    }

    #[test]
    fn base_event_carries_kind_seq_and_policy() {
        let mut out = Vec::new();
        base_event(
            &env(),
            "lost 3 events",
            true,
            serde_json::json!({"kind": "loss", "count": 3}),
            &mut out,
        );
        let j: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(j["class_uid"], 0);
        assert_eq!(j["unmapped"]["tiergate"]["kind"], "loss");
        assert_eq!(j["unmapped"]["tiergate"]["count"], 3);
        assert_eq!(j["unmapped"]["tiergate"]["seq"], 7);
        assert_eq!(j["unmapped"]["tiergate"]["policy"]["name"], "ai-platform");
    }
}
