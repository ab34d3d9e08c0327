//! One record → at most one update of the store.
//!
//! Pure: reads one OCSF JSON object as the agent renders it (CONTRACT
//! section 3) and says what it adds to the store:
//! - a connection attempt (class 4001, `unmapped.tiergate.kind`
//!   `connection`) with a destination: one observation, keyed by
//!   (identity class, tier, policy version, destination, port, protocol,
//!   verdict, rule uid);
//! - a DNS query the proxy answered (class 4003, kind `dns`): one
//!   observation of the queried name, protocol `dns`;
//! - a policy record (kind `policy`, action `applied` or `loaded`): the
//!   version and the rules (`unmapped.tiergate.rules`) it put in force;
//! - anything else (refused sockets, losses, gaps, HTTP, findings): nothing.

use std::borrow::Cow;

use serde::Deserialize;

use super::identity;
use super::record::{Rec, Text, Tiergate, text};
use super::shape::Shape;

/// What the store keeps one row of observations for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservationKey {
    /// The identity class (see `identity.rs`).
    pub identity: String,
    /// Tier name, or `host`.
    pub tier: String,
    /// `sha256:…` of the policy in force; empty when the record had none.
    pub policy_version: String,
    /// The DNS name that opened the address when known, else the address.
    pub destination: String,
    pub port: u16,
    /// `tcp`, `udp` or `dns` (a query of the name `destination`).
    pub protocol: String,
    /// `allow`, `deny` or `audit-deny`.
    pub verdict: String,
    /// `unmapped.tiergate.rule.uid` of the rule that allowed it; empty when
    /// none (denials, loopback, older agents).
    pub rule_uid: String,
}

/// How often and when something was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

impl Seen {
    /// `count` sightings at `time_ms`.
    pub fn at(time_ms: u64, count: u64) -> Seen {
        Seen {
            count,
            first_ms: time_ms,
            last_ms: time_ms,
        }
    }

    /// Adds `other`: counts add, the window widens.
    pub fn merge(&mut self, other: Seen) {
        self.count += other.count;
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
    }
}

/// The workload behind an observation, for the identity inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub node: String,
    /// `unmapped.tiergate.workload.owner` (a string, or compact JSON of
    /// whatever else it is).
    pub owner: Option<String>,
    /// Connection attempts this record stands for (0 for a DNS query).
    pub attempts: u64,
    /// `unmapped.tiergate.policy.name`.
    pub policy_name: String,
}

/// A rule of a policy version, as policy records list them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuleRef {
    pub uid: String,
    pub tier: String,
    pub index: u32,
}

/// A policy version seen in force, with its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySighting {
    pub version: String,
    pub name: String,
    pub time_ms: u64,
    pub rules: Vec<RuleRef>,
}

/// What one record adds to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Traffic {
        key: ObservationKey,
        seen: Seen,
        who: Sighting,
    },
    Policy(PolicySighting),
}

/// Why a line could not be read as a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObserveError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("a {kind} record without {field}")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
}

/// Reads one record (one OCSF JSON object) and says what it adds.
pub fn observe(line: &[u8]) -> Result<Option<Update>, ObserveError> {
    Ok(observe_ref(line)?.map(Observed::into_update))
}

/// What one record adds, borrowed from its line where it can be: what
/// [`observe`] says before anything is copied, so that an aggregate
/// copies only what it does not hold yet.
#[derive(Debug)]
// Made and taken apart at once, never kept: boxing the traffic (nearly
// every record) would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Observed<'a> {
    Traffic(TrafficRef<'a>),
    Policy(PolicySighting),
}

/// [`Update::Traffic`] borrowed from its line, the identity class not
/// worked out yet (an aggregate remembers the class of each workload).
#[derive(Debug, Clone)]
pub(super) struct TrafficRef<'a> {
    pub workload: WorkloadRef<'a>,
    pub tier: Cow<'a, str>,
    pub policy_version: Cow<'a, str>,
    pub destination: Cow<'a, str>,
    pub port: u16,
    pub protocol: Cow<'a, str>,
    pub verdict: Cow<'a, str>,
    pub rule_uid: Cow<'a, str>,
    pub seen: Seen,
    pub node: Cow<'a, str>,
    pub owner: Option<Cow<'a, str>>,
    pub attempts: u64,
    pub policy_name: Cow<'a, str>,
    /// A DNS query: not a connection attempt, whatever its count.
    pub dns: bool,
}

/// The fields of `unmapped.tiergate.workload` the identity class is made
/// of, in the order [`identity::class`] takes them.
#[derive(Debug, Default, Clone)]
pub(super) struct WorkloadRef<'a>(pub [Option<Cow<'a, str>>; 5]);

impl WorkloadRef<'_> {
    /// The fields, borrowed.
    pub fn fields(&self) -> [Option<&str>; 5] {
        std::array::from_fn(|i| self.0[i].as_deref())
    }

    /// The identity class these fields make.
    pub fn class(&self) -> String {
        let [
            spiffe_id,
            namespace,
            service_account,
            systemd_unit,
            cgroup_path,
        ] = self.fields();
        identity::class(
            spiffe_id,
            namespace,
            service_account,
            systemd_unit,
            cgroup_path,
        )
    }
}

impl Observed<'_> {
    /// The update, owned.
    pub fn into_update(self) -> Update {
        match self {
            Observed::Policy(p) => Update::Policy(p),
            Observed::Traffic(t) => Update::Traffic {
                key: ObservationKey {
                    identity: t.workload.class(),
                    tier: t.tier.into_owned(),
                    policy_version: t.policy_version.into_owned(),
                    destination: t.destination.into_owned(),
                    port: t.port,
                    protocol: t.protocol.into_owned(),
                    verdict: t.verdict.into_owned(),
                    rule_uid: t.rule_uid.into_owned(),
                },
                seen: t.seen,
                who: Sighting {
                    node: t.node.into_owned(),
                    owner: t.owner.map(Cow::into_owned),
                    attempts: t.attempts,
                    policy_name: t.policy_name.into_owned(),
                },
            },
        }
    }
}

/// [`observe`] with serde_json alone (no scanner): what the scanner must
/// agree with (the `store_records` fuzz target).
pub fn observe_with_serde_json(line: &[u8]) -> Result<Option<Update>, ObserveError> {
    Ok(observed(Rec::read_serde(line))?.map(Observed::into_update))
}

/// [`observe`] without copying.
pub(super) fn observe_ref(line: &[u8]) -> Result<Option<Observed<'_>>, ObserveError> {
    observed(Rec::read(line))
}

/// [`observe_ref`], and the line's shape into `shape` (see `shape.rs`).
pub(super) fn observe_shaped<'a>(
    line: &'a [u8],
    shape: &mut Shape,
) -> Result<Option<Observed<'a>>, ObserveError> {
    observed(Rec::read_shaped(line, shape))
}

fn observed(rec: Result<Rec<'_>, serde_json::Error>) -> Result<Option<Observed<'_>>, ObserveError> {
    let mut rec = match rec {
        Ok(r) => r,
        Err(e) => return Err(ObserveError::NotJson(e.to_string())),
    };
    let Some(tg) = rec.unmapped.take().and_then(|u| u.tiergate) else {
        return Ok(None);
    };
    let kind = text(&tg.kind).unwrap_or("");
    match (rec.class_uid, kind) {
        (Some(4001), "connection") => traffic(rec, tg, "connection"),
        (Some(4003), "dns") => traffic(rec, tg, "dns"),
        (_, "policy") if matches!(text(&tg.action), Some("applied" | "loaded")) => {
            policy(&rec, tg).map(Some)
        }
        _ => Ok(None),
    }
}

/// A string field, or empty.
fn take(v: Option<Text<'_>>) -> Cow<'_, str> {
    v.map_or(Cow::Borrowed(""), |t| t.0)
}

/// A DNS name as the store keys it: lower case, without the final dot.
fn name_key(name: Cow<'_, str>) -> Cow<'_, str> {
    let len = name.trim_end_matches('.').len();
    match name {
        Cow::Borrowed(n) if !n[..len].bytes().any(|b| b.is_ascii_uppercase()) => {
            Cow::Borrowed(&n[..len])
        }
        n => Cow::Owned(n[..len].to_ascii_lowercase()),
    }
}

fn traffic<'a>(
    rec: Rec<'a>,
    tg: Tiergate<'a>,
    kind: &'static str,
) -> Result<Option<Observed<'a>>, ObserveError> {
    let missing = |field| ObserveError::Missing { kind, field };
    let time = rec.time.ok_or(missing("time"))?;
    let verdict = tg.verdict.ok_or(missing("unmapped.tiergate.verdict"))?.0;
    let dst = rec.dst_endpoint;
    let (destination, port, protocol) = if kind == "dns" {
        let name = rec
            .query
            .and_then(|q| q.hostname)
            .map(|t| t.0)
            .filter(|n| !n.is_empty())
            .ok_or(missing("query.hostname"))?;
        let port = dst.and_then(|d| d.port).unwrap_or(53);
        (name_key(name), port, Cow::Borrowed("dns"))
    } else {
        let Some(dst) = dst else {
            return Ok(None);
        };
        let destination = match tg.fqdn.map(|t| t.0).filter(|n| !n.is_empty()) {
            Some(name) => name_key(name),
            None => dst.ip.ok_or(missing("dst_endpoint.ip"))?.0,
        };
        let protocol = rec
            .connection_info
            .and_then(|c| c.protocol_name)
            .ok_or(missing("connection_info.protocol_name"))?
            .0;
        let port = dst.port.ok_or(missing("dst_endpoint.port"))?;
        (destination, port, protocol)
    };
    let (workload, owner) = match tg.workload {
        Some(w) => (
            WorkloadRef(
                [
                    w.spiffe_id,
                    w.namespace,
                    w.service_account,
                    w.systemd_unit,
                    w.cgroup_path,
                ]
                .map(|f| f.map(|t| t.0)),
            ),
            match w.owner {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(Cow::Owned(s)),
                Some(other) => Some(Cow::Owned(other.to_string())),
            },
        ),
        None => (WorkloadRef::default(), None),
    };
    let count = rec.count.unwrap_or(1);
    let (policy_name, policy_version) = match tg.policy {
        Some(p) => (take(p.name), take(p.version)),
        None => (Cow::Borrowed(""), Cow::Borrowed("")),
    };
    Ok(Some(Observed::Traffic(TrafficRef {
        workload,
        tier: take(tg.tier),
        policy_version,
        destination,
        port,
        protocol,
        verdict,
        rule_uid: take(tg.rule.and_then(|r| r.uid)),
        seen: Seen::at(time, count),
        node: take(rec.device.and_then(|d| d.hostname)),
        owner,
        attempts: if kind == "dns" { 0 } else { count },
        policy_name,
        dns: kind == "dns",
    })))
}

fn policy(rec: &Rec<'_>, tg: Tiergate<'_>) -> Result<Observed<'static>, ObserveError> {
    let missing = |field| ObserveError::Missing {
        kind: "policy",
        field,
    };
    let time = rec.time.ok_or(missing("time"))?;
    let (name, version) = match tg.policy {
        Some(p) => (take(p.name), take(p.version)),
        None => (Cow::Borrowed(""), Cow::Borrowed("")),
    };
    if version.is_empty() {
        return Err(missing("unmapped.tiergate.policy.version"));
    }
    Ok(Observed::Policy(PolicySighting {
        version: version.into_owned(),
        name: name.into_owned(),
        time_ms: time,
        rules: tg.rules.unwrap_or_default(),
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A connection record as `agent/src/events/ocsf.rs` renders it.
    pub(crate) fn connection(verdict: &str, ip: &str, port: u16) -> serde_json::Value {
        json!({
            "class_uid": 4001, "class_name": "Network Activity", "activity_id": 1,
            "time": 1_700_000_000_123u64, "disposition_id": 1, "disposition": "Allowed",
            "connection_info": {"protocol_name": "tcp", "protocol_num": 6},
            "dst_endpoint": {"ip": ip, "port": port},
            "actor": {"process": {"pid": 42, "name": "curl", "tid": 42}, "user": {"uid": "0"}},
            "device": {"hostname": "node-1", "type_id": 0},
            "metadata": {"uid": "a-7", "version": "1.3.0", "product": {"name": "tiergate"}},
            "unmapped": {"tiergate": {
                "kind": "connection", "seq": 7, "verdict": verdict, "reason": "egress-rule",
                "tier": "tier0", "hook": "connect4", "metadata_service": false,
                "tier_inherited": false,
                "policy": {"name": "p", "version": "sha256:ab"},
                "workload": {"cgroup_id": 9, "cgroup_path": "/agents/tier0/session-4.scope"}
            }}
        })
    }

    fn obs(v: &serde_json::Value) -> Option<Update> {
        observe(v.to_string().as_bytes()).expect("a valid record")
    }

    fn key(v: &serde_json::Value) -> ObservationKey {
        match obs(v) {
            Some(Update::Traffic { key, .. }) => key,
            other => panic!("expected an observation, got {other:?}"),
        }
    }

    #[test]
    fn a_connection_is_one_observation() {
        let v = connection("allow", "10.0.0.1", 443);
        let Some(Update::Traffic { key, seen, who }) = obs(&v) else {
            panic!("no observation");
        };
        assert_eq!(
            key,
            ObservationKey {
                identity: "cgroup:/agents/tier0/session-*.scope".into(),
                tier: "tier0".into(),
                policy_version: "sha256:ab".into(),
                destination: "10.0.0.1".into(),
                port: 443,
                protocol: "tcp".into(),
                verdict: "allow".into(),
                rule_uid: String::new(),
            }
        );
        assert_eq!(seen, Seen::at(1_700_000_000_123, 1));
        assert_eq!(
            who,
            Sighting {
                node: "node-1".into(),
                owner: None,
                attempts: 1,
                policy_name: "p".into(),
            }
        );
    }

    #[test]
    fn identity_classes_in_order_of_preference() {
        let mut v = connection("deny", "10.0.0.1", 443);
        let w = &mut v["unmapped"]["tiergate"]["workload"];
        w["systemd_unit"] = json!("backup-17.service");
        assert_eq!(key(&v).identity, "systemd:backup-*.service");
        let w = &mut v["unmapped"]["tiergate"]["workload"];
        w["namespace"] = json!("agents");
        w["service_account"] = json!("retriever");
        assert_eq!(key(&v).identity, "k8s:agents/retriever");
        let w = &mut v["unmapped"]["tiergate"]["workload"];
        w["spiffe_id"] = json!("spiffe://corp.example/ns/agents/sa/retriever");
        assert_eq!(
            key(&v).identity,
            "spiffe://corp.example/ns/agents/sa/retriever"
        );
        v["unmapped"]["tiergate"]
            .as_object_mut()
            .unwrap()
            .remove("workload");
        assert_eq!(key(&v).identity, "unknown");
    }

    #[test]
    fn the_name_that_opened_the_address_is_the_destination() {
        let mut v = connection("allow", "198.18.0.7", 443);
        v["unmapped"]["tiergate"]["fqdn"] = json!("API.Example.com.");
        v["unmapped"]["tiergate"]["rule"] = json!({"uid": "r-0123456789ab", "index": 2});
        let k = key(&v);
        assert_eq!(k.destination, "api.example.com");
        assert_eq!(k.rule_uid, "r-0123456789ab");
    }

    #[test]
    fn an_aggregated_record_counts_as_many() {
        let mut v = connection("deny", "10.0.0.1", 443);
        v["count"] = json!(12);
        v["unmapped"]["tiergate"]["workload"]["owner"] =
            json!({"kind": "Deployment", "name": "web"});
        let Some(Update::Traffic { seen, who, .. }) = obs(&v) else {
            panic!("no observation");
        };
        assert_eq!(seen.count, 12);
        assert_eq!(who.attempts, 12);
        assert_eq!(
            who.owner.as_deref(),
            Some(r#"{"kind":"Deployment","name":"web"}"#)
        );
    }

    #[test]
    fn dns_queries_are_observations_of_the_name() {
        let v = json!({
            "class_uid": 4003, "time": 5, "query": {"hostname": "api.example.com", "type": "A"},
            "connection_info": {"protocol_name": "udp"},
            "dst_endpoint": {"ip": "10.0.0.53", "port": 53},
            "device": {"hostname": "n"},
            "unmapped": {"tiergate": {"kind": "dns", "verdict": "deny", "tier": "t",
                "policy": {"version": "sha256:1"}, "workload": {"cgroup_path": "/a"}}}
        });
        let Some(Update::Traffic { key, who, .. }) = obs(&v) else {
            panic!("no observation");
        };
        assert_eq!(
            (key.destination.as_str(), key.port, key.protocol.as_str()),
            ("api.example.com", 53, "dns")
        );
        assert_eq!(key.verdict, "deny");
        assert_eq!(who.attempts, 0);
    }

    #[test]
    fn policy_records_carry_their_rules() {
        let v = json!({
            "class_uid": 0, "time": 9, "device": {"hostname": "n"},
            "unmapped": {"tiergate": {"kind": "policy", "action": "applied", "seq": 1,
                "policy": {"name": "p", "version": "sha256:2"},
                "rules": [{"tier": "t", "index": 0, "uid": "r-000000000001"}]}}
        });
        assert_eq!(
            obs(&v),
            Some(Update::Policy(PolicySighting {
                version: "sha256:2".into(),
                name: "p".into(),
                time_ms: 9,
                rules: vec![RuleRef {
                    uid: "r-000000000001".into(),
                    tier: "t".into(),
                    index: 0
                }],
            }))
        );
        // Older agents: no rules yet, the version alone.
        let mut old = v.clone();
        old["unmapped"]["tiergate"]
            .as_object_mut()
            .unwrap()
            .remove("rules");
        assert!(matches!(obs(&old), Some(Update::Policy(p)) if p.rules.is_empty()));
        let mut rejected = v;
        rejected["unmapped"]["tiergate"]["action"] = json!("rejected");
        assert_eq!(obs(&rejected), None);
    }

    #[test]
    fn other_records_make_nothing() {
        let socket = {
            let mut v = connection("deny", "1.1.1.1", 1);
            v["unmapped"]["tiergate"]["kind"] = json!("socket");
            v.as_object_mut().unwrap().remove("dst_endpoint");
            v
        };
        let loss = json!({"class_uid": 0, "time": 1, "unmapped": {"tiergate": {"kind": "loss", "count": 3}}});
        let gap = json!({"class_uid": 0, "time": 1, "unmapped": {"tiergate": {"kind": "gap"}}});
        let http =
            json!({"class_uid": 4002, "time": 1, "unmapped": {"tiergate": {"kind": "http"}}});
        let foreign = json!({"class_uid": 4001, "time": 1});
        for v in [socket, loss, gap, http, foreign] {
            assert_eq!(obs(&v), None, "{v}");
        }
    }

    #[test]
    fn strings_with_escapes_are_read_too() {
        let mut v = connection("allow", "10.0.0.1", 443);
        v["unmapped"]["tiergate"]["workload"]["cgroup_path"] = json!("/a\"b/\u{e9}\n");
        let line = v.to_string();
        assert!(line.contains("\\\"b"), "{line}");
        assert_eq!(key(&v).identity, "cgroup:/a\"b/\u{e9}\n");
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        assert!(matches!(
            observe(b"not json"),
            Err(ObserveError::NotJson(_))
        ));
        assert!(matches!(
            observe(b"\"a string\""),
            Err(ObserveError::NotJson(_))
        ));
        assert!(matches!(
            observe(b"{\"time\": -1}"),
            Err(ObserveError::NotJson(_))
        ));
        let mut v = connection("allow", "10.0.0.1", 1);
        v.as_object_mut().unwrap().remove("time");
        assert_eq!(
            observe(v.to_string().as_bytes()),
            Err(ObserveError::Missing {
                kind: "connection",
                field: "time"
            })
        );
        let mut v = connection("allow", "10.0.0.1", 1);
        v["unmapped"]["tiergate"]["verdict"] = json!(7);
        assert!(observe(v.to_string().as_bytes()).is_err());
    }
}
