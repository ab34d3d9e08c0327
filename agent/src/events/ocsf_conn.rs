//! Connection records (OCSF Network Activity 4001, activity Open): one per
//! attempt the kernel reports, so this is the event path's most frequent
//! renderer. It writes the JSON by hand (see `json_out`): the same bytes as
//! the serde rendering in `reference` below, which the tests hold it to,
//! at about a quarter of the cost (0.46 against 1.95 µs for a pod's record
//! on the bench machine).

use std::io::Write as _;

use super::json_out::{boolean, needs_escape, num, opt_string, raw, some_string, string, value};
use super::ocsf::{Envelope, ProcessInfo, SocketInfo, Verdict, Workload};

/// The record's opening: classification and type, up to `"time":`.
const OPEN: &str = concat!(
    r#"{"class_uid":4001,"class_name":"Network Activity","category_uid":4,"#,
    r#""category_name":"Network Activity","activity_id":1,"activity_name":"Open","#,
    r#""type_uid":400101,"type_name":"Network Activity: Open","time":"#
);
const ALLOWED: &str = r#","severity_id":1,"action_id":1,"action":"Allowed","disposition_id":1,"disposition":"Allowed","status_id":1"#;
const LET_THROUGH: &str = r#","severity_id":3,"action_id":1,"action":"Allowed","disposition_id":1,"disposition":"Allowed","status_id":1"#;
const BLOCKED: &str = r#","severity_id":3,"action_id":2,"action":"Denied","disposition_id":2,"disposition":"Blocked","status_id":2"#;
/// `metadata` after its `uid`: the OCSF version and the product.
const PRODUCT: &str = concat!(
    r#","version":"1.3.0","product":{"name":"tiergate","vendor_name":"tiergate","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""}}"#
);

/// Renders a connection attempt (or, with `dst` None and `socket` set, a
/// refused socket) as one JSON line (no trailing newline).
#[allow(clippy::too_many_arguments)]
pub fn network_activity(
    env: &Envelope<'_>,
    v: &Verdict<'_>,
    protocol_num: u8,
    dst: Option<(std::net::IpAddr, u16)>,
    socket: Option<SocketInfo>,
    process: &ProcessInfo,
    workload: &Workload,
    out: &mut Vec<u8>,
) {
    out.reserve(1536);
    raw(out, OPEN);
    num(out, env.time);
    if let Some(s) = v.span {
        raw(out, r#","count":"#);
        num(out, s.count);
        raw(out, r#","start_time":"#);
        num(out, s.start_ms);
        raw(out, r#","end_time":"#);
        num(out, s.end_ms);
    }
    raw(
        out,
        match v.verdict {
            "allow" => ALLOWED,
            "deny" => BLOCKED,
            _ => LET_THROUGH,
        },
    );
    raw(
        out,
        match protocol_num {
            6 => r#","connection_info":{"protocol_name":"tcp","protocol_num":"#,
            17 => r#","connection_info":{"protocol_name":"udp","protocol_num":"#,
            _ => r#","connection_info":{"protocol_name":"other","protocol_num":"#,
        },
    );
    num(out, protocol_num);
    raw(out, r#","direction_id":2,"direction":"Outbound"}"#);
    if let Some((ip, port)) = dst {
        raw(out, r#","dst_endpoint":{"ip":""#);
        // An address's text needs no escaping.
        let _ = write!(out, "{ip}");
        raw(out, r#"","port":"#);
        num(out, port);
        raw(out, "}");
    }
    raw(out, r#","actor":{"process":{"pid":"#);
    num(out, process.pid);
    raw(out, r#","name":"#);
    string(out, &process.name);
    raw(out, r#","tid":"#);
    num(out, process.tid);
    raw(out, r#"},"user":{"uid":""#);
    num(out, process.uid);
    raw(out, r#""}},"device":{"hostname":"#);
    string(out, env.hostname);
    raw(out, r#","type_id":0}"#);
    if let Some((uid, index)) = v.rule {
        raw(out, r#","firewall_rule":{"uid":"#);
        string(out, uid);
        raw(out, r#","name":"#);
        rule_name(out, v.tier, index);
        raw(out, "}");
    }
    raw(out, r#","metadata":{"uid":"#);
    string(out, env.uid);
    raw(out, PRODUCT);
    raw(out, r#","unmapped":{"tiergate":{"kind":"#);
    raw(
        out,
        if socket.is_some() {
            r#""socket""#
        } else {
            r#""connection""#
        },
    );
    raw(out, r#","seq":"#);
    num(out, env.seq);
    raw(out, r#","verdict":"#);
    string(out, v.verdict);
    raw(out, r#","reason":"#);
    string(out, v.reason);
    raw(out, r#","tier":"#);
    string(out, v.tier);
    raw(out, r#","hook":"#);
    string(out, v.hook);
    raw(out, r#","metadata_service":"#);
    boolean(out, v.metadata_service);
    raw(out, r#","tier_inherited":"#);
    boolean(out, v.inherited);
    some_string(out, r#","fqdn":"#, v.fqdn);
    if let Some((uid, index)) = v.rule {
        raw(out, r#","rule":{"uid":"#);
        string(out, uid);
        raw(out, r#","index":"#);
        num(out, index);
        raw(out, "}");
    }
    if let Some(e) = v.elevation {
        raw(out, r#","elevation":"#);
        value(out, e);
    }
    raw(out, r#","policy":{"name":"#);
    opt_string(out, env.policy_name);
    raw(out, r#","version":"#);
    opt_string(out, env.policy_version);
    raw(out, r#"},"workload":"#);
    workload_json(out, workload);
    if let Some(s) = socket {
        raw(out, r#","socket":"#);
        value(out, &s);
    }
    raw(out, "}}}");
}

/// `unmapped.tiergate.workload`, as `Workload`'s Serialize writes it.
fn workload_json(out: &mut Vec<u8>, w: &Workload) {
    raw(out, r#"{"cgroup_id":"#);
    num(out, w.cgroup_id);
    raw(out, r#","cgroup_path":"#);
    opt_string(out, w.cgroup_path.as_deref());
    some_string(out, r#","systemd_unit":"#, w.systemd_unit.as_deref());
    let p = &w.pod;
    some_string(out, r#","namespace":"#, p.namespace.as_deref());
    some_string(out, r#","pod":"#, p.pod.as_deref());
    some_string(out, r#","pod_uid":"#, p.pod_uid.as_deref());
    some_string(out, r#","service_account":"#, p.service_account.as_deref());
    some_string(out, r#","container":"#, p.container.as_deref());
    some_string(out, r#","container_id":"#, p.container_id.as_deref());
    some_string(out, r#","owner":"#, p.owner.as_deref());
    some_string(out, r#","spiffe_id":"#, w.spiffe_id.as_deref());
    if let Some(state) = w.pod_state {
        raw(out, r#","pod_state":"#);
        value(out, &state);
    }
    raw(out, "}");
}

/// The serde rendering the hand-written one must equal, byte for byte.
/// `"<tier>:egress[<index>]"`, as a JSON string (no allocation unless the
/// tier name needs escaping).
fn rule_name(out: &mut Vec<u8>, tier: &str, index: usize) {
    if needs_escape(tier) {
        string(out, &format!("{tier}:egress[{index}]"));
    } else {
        out.push(b'"');
        out.extend_from_slice(tier.as_bytes());
        raw(out, ":egress[");
        num(out, index);
        raw(out, "]\"");
    }
}

#[cfg(test)]
pub(super) mod reference {
    use serde::Serialize;

    use super::super::ocsf::{
        Class, Device, ElevationTag, Endpoint, Envelope, Metadata, Outcome, PolicyRef, ProcessInfo,
        SocketInfo, Unmapped, Verdict, Workload, metadata,
    };

    #[derive(Serialize)]
    struct ConnectionInfo<'a> {
        protocol_name: &'a str,
        protocol_num: u8,
        direction_id: u8,
        direction: &'a str,
    }

    #[derive(Serialize)]
    struct Process<'a> {
        pid: u32,
        name: &'a str,
        tid: u32,
    }

    #[derive(Serialize)]
    struct User {
        uid: String,
    }

    #[derive(Serialize)]
    struct Actor<'a> {
        process: Process<'a>,
        user: User,
    }

    /// `unmapped.tiergate.rule`.
    #[derive(Serialize)]
    struct RuleOut<'a> {
        uid: &'a str,
        index: usize,
    }

    /// OCSF `firewall_rule` (Security Control profile): the rule that decided.
    #[derive(Serialize)]
    struct FirewallRule<'a> {
        uid: &'a str,
        name: String,
    }

    #[derive(Serialize)]
    struct TiergateConn<'a> {
        kind: &'a str,
        seq: u64,
        verdict: &'a str,
        reason: &'a str,
        tier: &'a str,
        hook: &'a str,
        metadata_service: bool,
        tier_inherited: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        fqdn: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<RuleOut<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        elevation: Option<&'a ElevationTag>,
        policy: PolicyRef<'a>,
        workload: &'a Workload,
        #[serde(skip_serializing_if = "Option::is_none")]
        socket: Option<SocketInfo>,
    }

    /// A connection attempt or a refused socket.
    const NETWORK_OPEN: Class = Class {
        class_uid: 4001,
        class_name: "Network Activity",
        category_uid: 4,
        category_name: "Network Activity",
        activity_id: 1,
        activity_name: "Open",
        type_uid: 400101,
    };

    #[derive(Serialize)]
    struct NetworkActivity<'a> {
        #[serde(flatten)]
        class: Class,
        type_name: &'a str,
        time: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        start_time: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        end_time: Option<u64>,
        #[serde(flatten)]
        outcome: Outcome,
        connection_info: ConnectionInfo<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        dst_endpoint: Option<Endpoint>,
        actor: Actor<'a>,
        device: Device<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        firewall_rule: Option<FirewallRule<'a>>,
        metadata: Metadata<'a>,
        unmapped: Unmapped<TiergateConn<'a>>,
    }

    /// Renders a connection attempt (or, with `dst` None and `socket` set, a
    /// refused socket) as one JSON line (no trailing newline).
    #[allow(clippy::too_many_arguments)]
    pub fn network_activity(
        env: &Envelope<'_>,
        v: &Verdict<'_>,
        protocol_num: u8,
        dst: Option<(std::net::IpAddr, u16)>,
        socket: Option<SocketInfo>,
        process: &ProcessInfo,
        workload: &Workload,
        out: &mut Vec<u8>,
    ) {
        let protocol_name = match protocol_num {
            6 => "tcp",
            17 => "udp",
            _ => "other",
        };
        let rec = NetworkActivity {
            class: NETWORK_OPEN,
            type_name: "Network Activity: Open",
            time: env.time,
            count: v.span.map(|s| s.count),
            start_time: v.span.map(|s| s.start_ms),
            end_time: v.span.map(|s| s.end_ms),
            outcome: Outcome::of(v.verdict),
            connection_info: ConnectionInfo {
                protocol_name,
                protocol_num,
                direction_id: 2,
                direction: "Outbound",
            },
            dst_endpoint: dst.map(|(ip, port)| Endpoint {
                ip: ip.to_string(),
                port,
            }),
            actor: Actor {
                process: Process {
                    pid: process.pid,
                    name: &process.name,
                    tid: process.tid,
                },
                user: User {
                    uid: process.uid.to_string(),
                },
            },
            device: Device {
                hostname: env.hostname,
                type_id: 0,
            },
            firewall_rule: v.rule.map(|(uid, index)| FirewallRule {
                uid,
                name: format!("{}:egress[{index}]", v.tier),
            }),
            metadata: metadata(env.uid),
            unmapped: Unmapped {
                tiergate: TiergateConn {
                    kind: if socket.is_some() {
                        "socket"
                    } else {
                        "connection"
                    },
                    seq: env.seq,
                    verdict: v.verdict,
                    reason: v.reason,
                    tier: v.tier,
                    hook: v.hook,
                    metadata_service: v.metadata_service,
                    tier_inherited: v.inherited,
                    fqdn: v.fqdn,
                    rule: v.rule.map(|(uid, index)| RuleOut { uid, index }),
                    elevation: v.elevation,
                    policy: PolicyRef {
                        name: env.policy_name,
                        version: env.policy_version,
                    },
                    workload,
                    socket,
                },
            },
        };
        serde_json::to_writer(&mut *out, &rec).expect("serializing to a Vec cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use super::super::ocsf::{ElevationTag, Span};
    use super::super::ocsf_access::Operator;
    use super::*;
    use crate::identity::pods::PodFields;
    use crate::state::PodState;

    fn workloads() -> Vec<Workload> {
        vec![
            Workload::default(),
            Workload {
                cgroup_id: 9,
                cgroup_path: Some("/agents/tier0".into()),
                pod: PodFields {
                    namespace: Some("agents".into()),
                    pod: Some("retriever-0".into()),
                    pod_uid: Some("u-1".into()),
                    service_account: Some("retriever".into()),
                    container: Some("tool".into()),
                    container_id: Some("abc".into()),
                    owner: Some("team \"search\"".into()),
                },
                spiffe_id: Some("spiffe://corp.example/ns/agents/sa/retriever".into()),
                pod_state: Some(PodState::Resolved),
                ..Default::default()
            },
            Workload {
                cgroup_id: u64::MAX,
                cgroup_path: Some("/system.slice/odd\nname\\x2d.service".into()),
                systemd_unit: Some("odd.service".into()),
                pod: PodFields {
                    pod: Some("only-a-pod".into()),
                    ..Default::default()
                },
                pod_state: Some(PodState::Unresolved),
                ..Default::default()
            },
        ]
    }

    /// Every combination of the parts that vary is rendered as serde does.
    #[test]
    fn the_hand_written_record_is_the_serde_record_byte_for_byte() {
        let grant = ElevationTag {
            id: "g-1".into(),
            ticket: "INC-7".into(),
            reason: "on call \"fix\"".into(),
            granted_by: Operator::Unix {
                uid: 1000,
                name: Some("alice".into()),
            },
            expires: 1_700_000_100_000,
            tier: "tier2".into(),
        };
        let envs = [
            Envelope {
                time: 1_700_000_000_123,
                seq: 7,
                uid: "abc-7",
                hostname: "node-1",
                policy_name: Some("ai-platform"),
                policy_version: Some("sha256:00"),
            },
            Envelope {
                time: 0,
                seq: u64::MAX,
                uid: "",
                hostname: "host\twith tab",
                policy_name: None,
                policy_version: None,
            },
        ];
        let processes = [
            ProcessInfo {
                pid: 42,
                tid: 43,
                uid: 0,
                name: "curl".into(),
            },
            ProcessInfo {
                pid: u32::MAX,
                tid: 1,
                uid: 65534,
                name: "we\"ird\u{1}".into(),
            },
        ];
        let dsts = [
            None,
            Some(("10.0.0.1".parse().unwrap(), 443)),
            Some(("2001:db8::1".parse().unwrap(), 0)),
            Some(("::ffff:10.0.0.1".parse().unwrap(), 65535)),
        ];
        let mut n = 0;
        for env in &envs {
            for verdict in ["allow", "deny", "audit-deny"] {
                for (rule, fqdn, span, elevation) in [
                    (None, None, None, None),
                    (Some(("r-1", 3)), Some("api.github.com"), None, None),
                    (
                        Some(("r-\\2", 0)),
                        None,
                        Some(Span {
                            count: 50,
                            start_ms: 1,
                            end_ms: 2,
                        }),
                        Some(&grant),
                    ),
                ] {
                    for (proto, socket) in [
                        (6, None),
                        (17, None),
                        (
                            1,
                            Some(SocketInfo {
                                family: 2,
                                sock_type: 3,
                                protocol: 1,
                            }),
                        ),
                    ] {
                        for dst in &dsts {
                            for p in &processes {
                                for w in workloads() {
                                    let v = Verdict {
                                        verdict,
                                        reason: "no-matching-rule",
                                        // Tier names reach the rule's name too.
                                        tier: if n % 5 == 0 { "t\"0\\" } else { "tier0" },
                                        hook: "connect4",
                                        metadata_service: n % 2 == 0,
                                        inherited: n % 3 == 0,
                                        fqdn,
                                        rule,
                                        elevation,
                                        span,
                                    };
                                    let (mut fast, mut slow) = (Vec::new(), Vec::new());
                                    network_activity(
                                        env, &v, proto, *dst, socket, p, &w, &mut fast,
                                    );
                                    reference::network_activity(
                                        env, &v, proto, *dst, socket, p, &w, &mut slow,
                                    );
                                    assert_eq!(
                                        String::from_utf8_lossy(&fast),
                                        String::from_utf8_lossy(&slow)
                                    );
                                    n += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(n, 2 * 3 * 3 * 3 * 4 * 2 * 3);
    }
}
