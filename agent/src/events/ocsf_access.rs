//! OCSF 1.3 User Access Management (class 3005) for time-boxed tier
//! elevations: activity 1 "Assign Privileges" when a grant is made, 2
//! "Revoke Privileges" when it ends (revoked, expired, or no longer allowed
//! by the policy). The privilege is `tier:<TO>`; the grant id is the
//! `resource.uid` and `metadata.correlation_uid`, so a SIEM pairs each
//! grant with its end and with the connection records made under it, which
//! carry the same grant as `unmapped.tiergate.elevation` ([`ElevationTag`]).
//!
//! OCSF's `user` is the one "to which privileges were assigned": here the
//! workload. The person who granted or revoked is `actor.user`; an expiry
//! or a policy change is the agent's own doing (`actor.app_name`).

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::ocsf::{Class, Device, Envelope, Metadata, PolicyRef, Unmapped, Workload, metadata};

/// The person behind a grant or a revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// A local user on the admin socket: the peer's uid (SO_PEERCRED) and
    /// its account name when it resolves.
    Unix { uid: u32, name: Option<String> },
    /// A Kubernetes user: the creator of the grant object.
    Kubernetes { username: String },
}

impl Operator {
    /// OCSF `user.uid`: the uid in decimal, or the Kubernetes username.
    fn uid(&self) -> String {
        match self {
            Operator::Unix { uid, .. } => uid.to_string(),
            Operator::Kubernetes { username } => username.clone(),
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Operator::Unix { name, .. } => name.as_deref(),
            Operator::Kubernetes { username } => Some(username),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Operator::Unix { .. } => "unix",
            Operator::Kubernetes { .. } => "kubernetes",
        }
    }

    /// `alice (uid 1000)`, `uid 1000`, `kubernetes user alice`: for messages.
    fn describe(&self) -> String {
        match self {
            Operator::Unix { uid, name: Some(n) } => format!("{n} (uid {uid})"),
            Operator::Unix { uid, name: None } => format!("uid {uid}"),
            Operator::Kubernetes { username } => format!("kubernetes user {username}"),
        }
    }
}

/// `{type: unix|kubernetes, uid, name?}`.
impl Serialize for Operator {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let name = self.name();
        let mut m = s.serialize_map(Some(2 + usize::from(name.is_some())))?;
        m.serialize_entry("type", self.kind())?;
        m.serialize_entry("uid", &self.uid())?;
        if let Some(n) = name {
            m.serialize_entry("name", n)?;
        }
        m.end()
    }
}

/// A grant as every record made under it names it
/// (`unmapped.tiergate.elevation`, CONTRACT section 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElevationTag {
    /// The grant id (`elevate list`, `elevate revoke ID`).
    pub id: String,
    /// `--ticket`.
    pub ticket: String,
    /// `--reason`.
    pub reason: String,
    /// Who granted it.
    pub granted_by: Operator,
    /// When it ends, epoch milliseconds.
    pub expires: u64,
    /// The tier granted (what the DNS and metadata proxies judge by while
    /// the grant is in force; the records name it as `tier`).
    #[serde(skip)]
    pub tier: String,
}

/// Why a grant ended (`unmapped.tiergate.elevation.end`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElevationEnd {
    /// Someone revoked it before its expiry.
    Revoked { by: Operator },
    /// It reached its expiry.
    Expired,
    /// A new policy no longer allows it (the pair is gone or its
    /// `maxDuration` is now shorter than what is left).
    Policy,
    /// The `TierElevation` object it came from was deleted (by whom, the
    /// API server's audit log says; the watch does not).
    Deleted { object: String },
}

impl ElevationEnd {
    /// `(action, end)` in `unmapped.tiergate`.
    fn words(&self) -> (&'static str, &'static str) {
        match self {
            ElevationEnd::Revoked { .. } => ("revoke", "revoked"),
            ElevationEnd::Expired => ("expire", "expired"),
            ElevationEnd::Policy => ("revoke", "policy"),
            ElevationEnd::Deleted { .. } => ("revoke", "deleted"),
        }
    }
}

/// What a 3005 record reports: a grant made (`end` None) or ended.
#[derive(Debug, Clone)]
pub struct ElevationRecord<'a> {
    pub grant: &'a ElevationTag,
    /// The workload's tier without the grant.
    pub from_tier: &'a str,
    /// The tier it is judged by while the grant lasts.
    pub to_tier: &'a str,
    /// `None` for a grant, else why it ended.
    pub end: Option<ElevationEnd>,
}

#[derive(Serialize)]
struct User {
    uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    type_id: u8,
    #[serde(rename = "type")]
    type_name: &'static str,
}

#[derive(Serialize)]
struct Actor {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_name: Option<&'static str>,
}

#[derive(Serialize)]
struct Resource<'a> {
    uid: &'a str,
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct ElevationOut<'a> {
    #[serde(flatten)]
    tag: &'a ElevationTag,
    from: &'a str,
    to: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_by: Option<&'a Operator>,
}

#[derive(Serialize)]
struct TiergateElevation<'a> {
    kind: &'static str,
    seq: u64,
    action: &'static str,
    elevation: ElevationOut<'a>,
    workload: &'a Workload,
    policy: PolicyRef<'a>,
}

#[derive(Serialize)]
struct UserAccess<'a> {
    #[serde(flatten)]
    class: Class,
    type_name: String,
    time: u64,
    severity_id: u8,
    severity: &'static str,
    status_id: u8,
    status: &'static str,
    message: String,
    privileges: [String; 1],
    user: User,
    actor: Actor,
    resource: Resource<'a>,
    device: Device<'a>,
    metadata: Metadata<'a>,
    unmapped: Unmapped<TiergateElevation<'a>>,
}

/// The workload as OCSF's `user`: its SPIFFE ID when it has one, else its
/// cgroup path, else its cgroup id; named `namespace/pod[/container]` for
/// pods.
fn workload_user(w: &Workload) -> User {
    let uid = (w.spiffe_id.clone())
        .or_else(|| w.cgroup_path.clone())
        .unwrap_or_else(|| format!("cgroup:{}", w.cgroup_id));
    User {
        name: Some(workload_name(w)),
        uid,
        type_id: 99,
        type_name: "Workload",
    }
}

fn workload_name(w: &Workload) -> String {
    match (&w.pod.namespace, &w.pod.pod) {
        (Some(ns), Some(pod)) => match &w.pod.container {
            Some(c) => format!("{ns}/{pod}/{c}"),
            None => format!("{ns}/{pod}"),
        },
        _ => (w.cgroup_path.clone()).unwrap_or_else(|| format!("cgroup {}", w.cgroup_id)),
    }
}

fn operator_user(o: &Operator) -> User {
    User {
        uid: o.uid(),
        name: o.name().map(str::to_owned),
        type_id: 1,
        type_name: "User",
    }
}

/// Renders one grant or end of a grant as one JSON line (no trailing
/// newline). `workload` is the grant's, as connection records carry it.
pub fn user_access(
    env: &Envelope<'_>,
    r: &ElevationRecord<'_>,
    workload: &Workload,
    out: &mut Vec<u8>,
) {
    let g = r.grant;
    let who = workload_name(workload);
    let (activity_id, activity_name) = if r.end.is_none() {
        (1, "Assign Privileges")
    } else {
        (2, "Revoke Privileges")
    };
    let (action, end) = r.end.as_ref().map_or(("grant", None), |e| {
        let (a, end) = e.words();
        (a, Some(end))
    });
    let (from, to) = (r.from_tier, r.to_tier);
    let message = match &r.end {
        None => format!(
            "{} elevated {who} from tier {from} to tier {to} (grant {}, ticket {}: {})",
            g.granted_by.describe(),
            g.id,
            g.ticket,
            g.reason
        ),
        Some(e) => ended_message(e, &who, g, from, to, env),
    };
    let (actor_user, app_name) = match &r.end {
        None => (Some(operator_user(&g.granted_by)), None),
        Some(ElevationEnd::Revoked { by }) => (Some(operator_user(by)), None),
        Some(_) => (None, Some(super::ocsf::PRODUCT)),
    };
    let rec = UserAccess {
        class: Class {
            class_uid: 3005,
            class_name: "User Access Management",
            category_uid: 3,
            category_name: "Identity & Access Management",
            activity_id,
            activity_name,
            type_uid: 300500 + activity_id,
        },
        type_name: format!("User Access Management: {activity_name}"),
        time: env.time,
        severity_id: 1,
        severity: "Informational",
        status_id: 1,
        status: "Success",
        message,
        privileges: [format!("tier:{to}")],
        user: workload_user(workload),
        actor: Actor {
            user: actor_user,
            app_name,
        },
        resource: Resource {
            uid: &g.id,
            name: format!("tier:{to}"),
            kind: "tiergate elevation",
        },
        device: Device {
            hostname: env.hostname,
            type_id: 0,
        },
        metadata: metadata(env.uid).correlated(&g.id),
        unmapped: Unmapped {
            tiergate: TiergateElevation {
                kind: "elevation",
                seq: env.seq,
                action,
                elevation: ElevationOut {
                    tag: g,
                    from,
                    to,
                    end,
                    revoked_by: match &r.end {
                        Some(ElevationEnd::Revoked { by }) => Some(by),
                        _ => None,
                    },
                },
                workload,
                policy: PolicyRef {
                    name: env.policy_name,
                    version: env.policy_version,
                },
            },
        },
    };
    serde_json::to_writer(&mut *out, &rec).expect("serializing to a Vec cannot fail");
}

fn ended_message(
    end: &ElevationEnd,
    who: &str,
    g: &ElevationTag,
    from: &str,
    to: &str,
    env: &Envelope<'_>,
) -> String {
    let back = format!("{who} is back in tier {from}");
    match end {
        ElevationEnd::Revoked { by } => format!(
            "{} revoked grant {} (tier {to}, ticket {}); {back}",
            by.describe(),
            g.id,
            g.ticket
        ),
        ElevationEnd::Expired => {
            format!(
                "grant {} (tier {to}, ticket {}) expired; {back}",
                g.id, g.ticket
            )
        }
        ElevationEnd::Policy => format!(
            "grant {} (tier {to}, ticket {}) ended: policy {} no longer allows {from}→{to} for it; {back}",
            g.id,
            g.ticket,
            env.policy_name.unwrap_or("(none)")
        ),
        ElevationEnd::Deleted { object } => format!(
            "grant {} (tier {to}, ticket {}) revoked: {object} was deleted; {back}",
            g.id, g.ticket
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::identity::pods::PodFields;

    fn env() -> Envelope<'static> {
        Envelope {
            time: 1_764_600_000_000,
            seq: 11,
            uid: "abc-11",
            hostname: "node-1",
            policy_name: Some("ai-platform"),
            policy_version: Some("sha256:00"),
        }
    }

    fn grant() -> ElevationTag {
        ElevationTag {
            tier: "tier2".into(),
            id: "el-7f3a".into(),
            ticket: "INC-42".into(),
            reason: "restore the index".into(),
            granted_by: Operator::Unix {
                uid: 1000,
                name: Some("alice".into()),
            },
            expires: 1_764_603_600_000,
        }
    }

    fn pod() -> Workload {
        Workload {
            cgroup_id: 9,
            cgroup_path: Some("/kubepods/pod-u1/abc".into()),
            pod: PodFields {
                namespace: Some("agents".into()),
                pod: Some("retriever-0".into()),
                container: Some("tool".into()),
                ..Default::default()
            },
            spiffe_id: Some("spiffe://corp.example/ns/agents/sa/retriever".into()),
            ..Default::default()
        }
    }

    fn render(end: Option<ElevationEnd>, w: &Workload) -> Value {
        let g = grant();
        let r = ElevationRecord {
            grant: &g,
            from_tier: "tier0",
            to_tier: "tier1",
            end,
        };
        let mut out = Vec::new();
        user_access(&env(), &r, w, &mut out);
        serde_json::from_slice(&out).expect("one JSON object")
    }

    #[test]
    fn a_grant_has_every_field() {
        let j = render(None, &pod());
        assert_eq!(j["class_uid"], 3005);
        assert_eq!(j["class_name"], "User Access Management");
        assert_eq!(j["category_uid"], 3);
        assert_eq!(j["category_name"], "Identity & Access Management");
        assert_eq!(j["activity_id"], 1);
        assert_eq!(j["activity_name"], "Assign Privileges");
        assert_eq!(j["type_uid"], 300501);
        assert_eq!(j["type_name"], "User Access Management: Assign Privileges");
        assert_eq!(j["time"], 1_764_600_000_000u64);
        assert_eq!(j["severity_id"], 1);
        assert_eq!(j["status_id"], 1);
        assert_eq!(
            j["message"],
            "alice (uid 1000) elevated agents/retriever-0/tool from tier tier0 to tier tier1 \
             (grant el-7f3a, ticket INC-42: restore the index)"
        );
        assert_eq!(j["privileges"], serde_json::json!(["tier:tier1"]));
        // OCSF: `user` received the privilege, `actor` gave it.
        assert_eq!(
            j["user"]["uid"],
            "spiffe://corp.example/ns/agents/sa/retriever"
        );
        assert_eq!(j["user"]["name"], "agents/retriever-0/tool");
        assert_eq!(j["actor"]["user"]["uid"], "1000");
        assert_eq!(j["actor"]["user"]["name"], "alice");
        assert_eq!(j["actor"]["user"]["type_id"], 1);
        assert!(j["actor"].get("app_name").is_none());
        assert_eq!(j["resource"]["uid"], "el-7f3a");
        assert_eq!(j["resource"]["name"], "tier:tier1");
        assert_eq!(j["device"]["hostname"], "node-1");
        assert_eq!(j["metadata"]["uid"], "abc-11");
        assert_eq!(j["metadata"]["correlation_uid"], "el-7f3a");
        assert_eq!(j["metadata"]["version"], "1.3.0");
        assert_eq!(j["metadata"]["product"]["name"], "tiergate");
        let t = &j["unmapped"]["tiergate"];
        assert_eq!(t["kind"], "elevation");
        assert_eq!(t["seq"], 11);
        assert_eq!(t["action"], "grant");
        let e = &t["elevation"];
        assert_eq!(e["id"], "el-7f3a");
        assert_eq!(e["ticket"], "INC-42");
        assert_eq!(e["reason"], "restore the index");
        assert_eq!(
            e["granted_by"],
            serde_json::json!({"type": "unix", "uid": "1000", "name": "alice"})
        );
        assert_eq!(e["from"], "tier0");
        assert_eq!(e["to"], "tier1");
        assert_eq!(e["expires"], 1_764_603_600_000u64);
        assert!(
            e.get("end").is_none() && e.get("revoked_by").is_none(),
            "{e}"
        );
        assert_eq!(t["workload"]["cgroup_id"], 9);
        assert_eq!(t["workload"]["namespace"], "agents");
        assert_eq!(
            t["workload"]["spiffe_id"],
            "spiffe://corp.example/ns/agents/sa/retriever"
        );
        assert_eq!(t["policy"]["name"], "ai-platform");
        assert_eq!(t["policy"]["version"], "sha256:00");
    }

    #[test]
    fn every_end_is_a_revoke_saying_which() {
        let bob = Operator::Unix {
            uid: 1001,
            name: None,
        };
        let cases = [
            (
                ElevationEnd::Revoked { by: bob },
                "revoke",
                "revoked",
                "uid 1001 revoked grant el-7f3a (tier tier1, ticket INC-42); agents/retriever-0/tool is back in tier tier0",
            ),
            (
                ElevationEnd::Expired,
                "expire",
                "expired",
                "grant el-7f3a (tier tier1, ticket INC-42) expired; agents/retriever-0/tool is back in tier tier0",
            ),
            (
                ElevationEnd::Policy,
                "revoke",
                "policy",
                "grant el-7f3a (tier tier1, ticket INC-42) ended: policy ai-platform no longer allows tier0→tier1 for it; agents/retriever-0/tool is back in tier tier0",
            ),
            (
                ElevationEnd::Deleted {
                    object: "TierElevation agents/inc-42".into(),
                },
                "revoke",
                "deleted",
                "grant el-7f3a (tier tier1, ticket INC-42) revoked: TierElevation agents/inc-42 was deleted; agents/retriever-0/tool is back in tier tier0",
            ),
        ];
        for (end, action, word, message) in cases {
            let revoked = matches!(end, ElevationEnd::Revoked { .. });
            let j = render(Some(end), &pod());
            assert_eq!(j["activity_id"], 2, "{word}");
            assert_eq!(j["activity_name"], "Revoke Privileges");
            assert_eq!(j["type_uid"], 300502);
            assert_eq!(j["message"], message);
            assert_eq!(j["privileges"][0], "tier:tier1");
            assert_eq!(j["metadata"]["correlation_uid"], "el-7f3a");
            let t = &j["unmapped"]["tiergate"];
            assert_eq!(t["action"], action);
            assert_eq!(t["elevation"]["end"], word);
            assert_eq!(t["elevation"]["granted_by"]["uid"], "1000", "{word}");
            if revoked {
                assert_eq!(j["actor"]["user"]["uid"], "1001");
                assert!(j["actor"]["user"].get("name").is_none());
                assert_eq!(t["elevation"]["revoked_by"]["uid"], "1001");
            } else {
                assert!(
                    j["actor"].get("user").is_none(),
                    "{word}: the agent ended it"
                );
                assert_eq!(j["actor"]["app_name"], "tiergate");
                assert!(t["elevation"].get("revoked_by").is_none());
            }
        }
    }

    #[test]
    fn non_pods_and_kubernetes_users_are_named_too() {
        let g = ElevationTag {
            granted_by: Operator::Kubernetes {
                username: "alice@corp.example".into(),
            },
            ..grant()
        };
        let w = Workload {
            cgroup_id: 5,
            cgroup_path: Some("/agents/tier0/job".into()),
            ..Default::default()
        };
        let r = ElevationRecord {
            grant: &g,
            from_tier: "tier0",
            to_tier: "tier1",
            end: None,
        };
        let mut out = Vec::new();
        user_access(&env(), &r, &w, &mut out);
        let j: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(j["user"]["uid"], "/agents/tier0/job");
        assert_eq!(j["user"]["name"], "/agents/tier0/job");
        assert_eq!(j["actor"]["user"]["uid"], "alice@corp.example");
        assert_eq!(
            j["unmapped"]["tiergate"]["elevation"]["granted_by"],
            serde_json::json!({"type": "kubernetes", "uid": "alice@corp.example", "name": "alice@corp.example"})
        );
        let anonymous = Workload {
            cgroup_id: 5,
            ..Default::default()
        };
        let mut out = Vec::new();
        user_access(&env(), &r, &anonymous, &mut out);
        let j: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(j["user"]["uid"], "cgroup:5");
    }
}
