//! A grant: which workloads, from which tier to which, until when, on whose
//! word and why. Pure: validation of a request against the policy and the
//! workloads it matches, and matching workloads to grants.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::resource::ObjectRef;
use crate::events::ocsf_access::{ElevationTag, Operator};
use crate::state::WorkloadInfo;

/// Longest ticket and reason accepted (they travel in every event made
/// under the grant).
pub const MAX_TICKET: usize = 128;
pub const MAX_REASON: usize = 1024;

/// Which workloads a grant is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A cgroup (path as `/proc/PID/cgroup` shows it) and its descendants.
    Cgroup(String),
    /// A pod's containers (one container's when named).
    Pod {
        namespace: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
    /// Every pod with this SPIFFE ID.
    SpiffeId(String),
}

impl Target {
    pub fn matches(&self, w: &WorkloadInfo) -> bool {
        match self {
            Target::Cgroup(p) => {
                let path: &str = &w.path;
                path == p
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            }
            Target::Pod {
                namespace,
                name,
                container,
            } => w.pod.as_ref().is_some_and(|pod| {
                pod.namespace == *namespace
                    && pod.pod == *name
                    && container
                        .as_ref()
                        .is_none_or(|c| pod.container.as_deref() == Some(c.as_str()))
            }),
            Target::SpiffeId(id) => w.spiffe_id.as_deref() == Some(id.as_str()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Cgroup(p) => write!(f, "cgroup {p}"),
            Target::Pod {
                namespace,
                name,
                container: Some(c),
            } => write!(f, "pod {namespace}/{name} container {c}"),
            Target::Pod {
                namespace, name, ..
            } => write!(f, "pod {namespace}/{name}"),
            Target::SpiffeId(id) => write!(f, "SPIFFE ID {id}"),
        }
    }
}

/// Who granted: a local user (the admin socket's peer) or a Kubernetes
/// object's creator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// `uid:N` for the socket, `kubernetes:USER` for a TierElevation.
    pub id: String,
    /// A user name when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A grant in force (persisted as JSON; the field names are the file's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `g-` and 16 hex digits, random.
    pub id: String,
    /// Small number written to the kernel entry (diagnostics).
    pub seq: u64,
    pub target: Target,
    /// The workloads' own tier when granted, and the tier granted.
    pub from: String,
    pub to: String,
    pub granted_ms: u64,
    pub expires_ms: u64,
    pub ticket: String,
    pub reason: String,
    pub granted_by: Principal,
    /// The `TierElevation` object the grant came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
}

impl Principal {
    /// The OCSF form of who granted.
    pub fn operator(&self) -> Operator {
        match self.id.strip_prefix("uid:").and_then(|u| u.parse().ok()) {
            Some(uid) => Operator::Unix {
                uid,
                name: self.name.clone(),
            },
            None => Operator::Kubernetes {
                username: self.id.trim_start_matches("kubernetes:").to_string(),
            },
        }
    }
}

impl Grant {
    /// What every record made under the grant carries.
    pub fn tag(&self) -> ElevationTag {
        ElevationTag {
            tier: self.to.clone(),
            id: self.id.clone(),
            ticket: self.ticket.clone(),
            reason: self.reason.clone(),
            granted_by: self.granted_by.operator(),
            expires: self.expires_ms,
        }
    }
}

/// What a caller asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub target: Target,
    pub to: String,
    /// Milliseconds; 0 (or absent) is refused: no grant without an expiry.
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub ticket: String,
    #[serde(default)]
    pub reason: String,
}

fn text_ok(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err(format!("a grant needs a {what}"));
    }
    if s.len() > max {
        return Err(format!("the {what} is longer than {max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("the {what} contains control characters"));
    }
    Ok(())
}

/// Checks `req` for the workloads it matches (`matched`: their own tiers)
/// against the policy's elevation rules (`allowed(from, to, duration)`);
/// on success the (from tier, duration) of the grant.
pub fn check(
    req: &Request,
    matched: &[&WorkloadInfo],
    allowed: impl Fn(&str, &str, Duration) -> Result<(), String>,
) -> Result<(String, Duration), String> {
    if req.duration_ms == 0 {
        return Err("a grant needs an expiry (--for DURATION); none is ever open-ended".into());
    }
    text_ok("ticket", &req.ticket, MAX_TICKET)?;
    text_ok("reason", &req.reason, MAX_REASON)?;
    if matched.is_empty() {
        return Err(format!("no workload on this node matches {}", req.target));
    }
    let mut tiers: Vec<&str> = matched.iter().map(|w| w.tier.as_str()).collect();
    tiers.sort_unstable();
    tiers.dedup();
    if tiers.len() > 1 {
        return Err(format!(
            "{} matches workloads in tiers {}; elevate one tier's workloads at a time",
            req.target,
            tiers.join(", ")
        ));
    }
    let from = tiers[0];
    if from == crate::policy::HOST_TIER_NAME {
        return Err(format!(
            "{} is not enforced (tier host): there is nothing to elevate",
            req.target
        ));
    }
    let d = Duration::from_millis(req.duration_ms);
    allowed(from, &req.to, d)?;
    Ok((from.to_string(), d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PodIdentity;
    use crate::state::PodState;

    fn w(path: &str, tier: &str, pod: Option<(&str, &str, &str)>) -> WorkloadInfo {
        WorkloadInfo {
            path: path.into(),
            pod: pod.map(|(ns, name, c)| PodIdentity {
                namespace: ns.into(),
                pod: name.into(),
                pod_uid: "u".into(),
                service_account: "sa".into(),
                labels: Default::default(),
                container: Some(c.into()),
                container_id: None,
            }),
            pod_state: PodState::None,
            spiffe_id: pod.map(|(ns, _, _)| format!("spiffe://cluster.local/ns/{ns}/sa/sa")),
            tier: tier.into(),
            binding: None,
        }
    }

    #[test]
    fn targets_match_their_workloads_only() {
        let a = w("/a/b", "t0", Some(("agents", "tool-0", "main")));
        let sidecar = w("/a/c", "t0", Some(("agents", "tool-0", "proxy")));
        let other = w("/a/bc", "t0", None);
        let cg = Target::Cgroup("/a/b".into());
        assert!(cg.matches(&a) && !cg.matches(&other) && !cg.matches(&sidecar));
        assert!(Target::Cgroup("/a".into()).matches(&other));
        let pod = Target::Pod {
            namespace: "agents".into(),
            name: "tool-0".into(),
            container: None,
        };
        assert!(pod.matches(&a) && pod.matches(&sidecar) && !pod.matches(&other));
        let main = Target::Pod {
            namespace: "agents".into(),
            name: "tool-0".into(),
            container: Some("main".into()),
        };
        assert!(main.matches(&a) && !main.matches(&sidecar));
        let id = Target::SpiffeId("spiffe://cluster.local/ns/agents/sa/sa".into());
        assert!(id.matches(&a) && !id.matches(&other));
    }

    #[test]
    fn requests_are_refused_with_a_sentence() {
        let t0 = w("/a/b", "t0", None);
        let t1 = w("/a/c", "t1", None);
        let host = w("/h", "host", None);
        let req = |ms: u64, ticket: &str, reason: &str| Request {
            target: Target::Cgroup("/a".into()),
            to: "t2".into(),
            duration_ms: ms,
            ticket: ticket.into(),
            reason: reason.into(),
        };
        let ok = |_: &str, _: &str, _: Duration| Ok(());
        let e = |r: Result<(String, Duration), String>| r.unwrap_err();
        assert!(e(check(&req(0, "T", "R"), &[&t0], ok)).contains("needs an expiry"));
        assert!(e(check(&req(1000, " ", "R"), &[&t0], ok)).contains("needs a ticket"));
        assert!(e(check(&req(1000, "T", ""), &[&t0], ok)).contains("needs a reason"));
        assert!(e(check(&req(1000, "T\n", "R"), &[&t0], ok)).contains("control characters"));
        assert!(e(check(&req(1000, &"x".repeat(200), "R"), &[&t0], ok)).contains("longer than"));
        assert!(e(check(&req(1000, "T", "R"), &[], ok)).contains("no workload"));
        assert!(e(check(&req(1000, "T", "R"), &[&t0, &t1], ok)).contains("tiers t0, t1"));
        assert!(e(check(&req(1000, "T", "R"), &[&host], ok)).contains("not enforced"));
        let refuse = |f: &str, t: &str, _: Duration| Err(format!("no elevation from {f} to {t}"));
        assert_eq!(
            e(check(&req(1000, "T", "R"), &[&t0], refuse)),
            "no elevation from t0 to t2"
        );
        assert_eq!(
            check(&req(1500, "INC-1", "debug"), &[&t0, &t0], ok).unwrap(),
            ("t0".to_string(), Duration::from_millis(1500))
        );
    }
}
