//! The `TierElevation` custom resource (deploy/kubernetes/base/
//! tierelevation-crd.yaml): the same grant as `tiergate elevate`, made by
//! creating an object, so Kubernetes RBAC decides who may elevate.
//!
//! Pure: one API object → what it asks for, or why it cannot be read. The
//! object is namespaced and names a pod *of its own namespace* (never a
//! SPIFFE ID or a cgroup: a namespaced object must not reach another
//! namespace's workloads). Its expiry is `metadata.creationTimestamp`
//! (set by the API server, not by its author) plus `spec.duration`: every
//! agent, whenever it first sees the object, computes the same end, and an
//! object older than its duration grants nothing. `spec.requestedBy` is
//! who asked; the admission policy shipped beside the CRD makes the API
//! server check it against the creating user.

use kube::api::DynamicObject;
use serde::{Deserialize, Serialize};

use super::grant::{Request, Target};
use crate::duration::Span;

pub const GROUP: &str = "tiergate.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "TierElevation";
pub const PLURAL: &str = "tierelevations";

/// Status phases after which an object never grants again (on any agent,
/// also after a restart): the grant it made is over.
pub const TERMINAL: &[&str] = &["Expired", "Revoked", "Ended"];

/// Which object a grant came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KIND} {}/{}", self.namespace, self.name)
    }
}

/// A readable `TierElevation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElevationObject {
    pub object: ObjectRef,
    /// `metadata.creationTimestamp`, ms since the epoch.
    pub created_ms: u64,
    /// The grant asked for (target: the pod in the object's namespace).
    pub request: Request,
    /// `spec.requestedBy`.
    pub requested_by: String,
    /// `status.phase`, when an agent wrote one.
    pub phase: Option<String>,
}

impl ElevationObject {
    /// When the grant ends, whoever applies it.
    pub fn expires_ms(&self) -> u64 {
        self.created_ms.saturating_add(self.request.duration_ms)
    }

    /// The object's grant is over (an agent said so in its status).
    pub fn is_over(&self) -> bool {
        self.phase.as_deref().is_some_and(|p| TERMINAL.contains(&p))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    pod: String,
    #[serde(default)]
    container: Option<String>,
    to: String,
    duration: String,
    ticket: String,
    reason: String,
    requested_by: String,
}

/// Reads one object; the error is one sentence naming the object.
pub fn parse(obj: &DynamicObject) -> Result<ElevationObject, String> {
    let md = &obj.metadata;
    let namespace = md.namespace.clone().unwrap_or_else(|| "default".into());
    let name = md.name.clone().unwrap_or_default();
    let at = format!("{KIND} {namespace}/{name}");
    let uid = md
        .uid
        .clone()
        .ok_or_else(|| format!("{at} has no metadata.uid"))?;
    let created_ms =
        md.creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond())
            .filter(|ms| *ms > 0)
            .ok_or_else(|| format!("{at} has no metadata.creationTimestamp"))? as u64;
    let spec: Spec =
        serde_json::from_value(obj.data["spec"].clone()).map_err(|e| format!("{at}: spec: {e}"))?;
    let duration: Span = spec
        .duration
        .parse()
        .map_err(|e| format!("{at}: spec.duration: {e}"))?;
    if spec.pod.is_empty() {
        return Err(format!("{at}: spec.pod is empty"));
    }
    if spec.requested_by.trim().is_empty() {
        return Err(format!("{at}: spec.requestedBy is empty"));
    }
    Ok(ElevationObject {
        request: Request {
            target: Target::Pod {
                namespace: namespace.clone(),
                name: spec.pod,
                container: spec.container.filter(|c| !c.is_empty()),
            },
            to: spec.to,
            duration_ms: duration.get().as_millis() as u64,
            ticket: spec.ticket,
            reason: spec.reason,
        },
        object: ObjectRef {
            namespace,
            name,
            uid,
        },
        created_ms,
        requested_by: spec.requested_by,
        phase: obj.data["status"]["phase"].as_str().map(str::to_string),
    })
}

/// RFC 3339 (UTC, milliseconds) for a status field.
pub fn rfc3339(ms: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(spec: serde_json::Value, status: Option<&str>) -> DynamicObject {
        let mut v = serde_json::json!({
            "apiVersion": "tiergate.io/v1alpha1",
            "kind": "TierElevation",
            "metadata": {
                "name": "debug-1", "namespace": "agents", "uid": "u-1",
                "creationTimestamp": "2026-12-01T10:00:00Z"
            },
            "spec": spec,
        });
        if let Some(p) = status {
            v["status"] = serde_json::json!({"phase": p});
        }
        serde_json::from_value(v).unwrap()
    }

    fn spec() -> serde_json::Value {
        serde_json::json!({
            "pod": "tool-0", "to": "tier2", "duration": "15m",
            "ticket": "INC-1234", "reason": "restore", "requestedBy": "alice"
        })
    }

    #[test]
    fn an_object_is_a_grant_of_its_own_namespace_pod_ending_at_creation_plus_duration() {
        let e = parse(&obj(spec(), None)).unwrap();
        assert_eq!(
            e.request.target,
            Target::Pod {
                namespace: "agents".into(),
                name: "tool-0".into(),
                container: None
            }
        );
        assert_eq!(e.request.duration_ms, 900_000);
        assert_eq!(e.created_ms, 1_796_119_200_000);
        assert_eq!(e.expires_ms(), 1_796_119_200_000 + 900_000);
        assert_eq!(e.requested_by, "alice");
        assert_eq!(e.object.to_string(), "TierElevation agents/debug-1");
        assert!(!e.is_over());
        assert!(parse(&obj(spec(), Some("Expired"))).unwrap().is_over());
        assert!(!parse(&obj(spec(), Some("Active"))).unwrap().is_over());
        let mut with_c = spec();
        with_c["container"] = "main".into();
        assert!(matches!(
            parse(&obj(with_c, None)).unwrap().request.target,
            Target::Pod { container: Some(c), .. } if c == "main"
        ));
    }

    #[test]
    fn unreadable_objects_say_what_is_wrong() {
        let err = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut s = spec();
            f(&mut s);
            parse(&obj(s, None)).unwrap_err()
        };
        assert!(err(&|s| s["duration"] = "forever".into()).contains("spec.duration"));
        assert!(err(&|s| s["duration"] = "".into()).contains("spec.duration"));
        assert!(err(&|s| s["spiffeId"] = "spiffe://x".into()).contains("unknown field"));
        assert!(err(&|s| s["pod"] = "".into()).contains("spec.pod is empty"));
        assert!(err(&|s| s["requestedBy"] = " ".into()).contains("requestedBy"));
        assert!(
            err(&|s| {
                s.as_object_mut().unwrap().remove("ticket");
            })
            .contains("missing field `ticket`")
        );
        let mut o = obj(spec(), None);
        o.metadata.creation_timestamp = None;
        assert!(parse(&o).unwrap_err().contains("creationTimestamp"));
    }

    /// The CRD shipped in deploy/ asks for exactly what `Spec` reads.
    #[test]
    fn the_crd_requires_the_fields_the_agent_reads() {
        let crd = include_str!("../../../deploy/kubernetes/base/tierelevation-crd.yaml");
        assert!(crd.contains("required: [pod, to, duration, ticket, reason, requestedBy]"));
        for field in [
            "pod",
            "container",
            "to",
            "duration",
            "ticket",
            "reason",
            "requestedBy",
        ] {
            assert!(
                crd.contains(&format!("\n                {field}:\n")),
                "{field}"
            );
        }
        for phase in TERMINAL.iter().chain(&["Active", "Refused"]) {
            assert!(crd.contains(phase), "{phase}");
        }
        assert!(
            crd.contains(&format!("group: {GROUP}")) && crd.contains(&format!("name: {VERSION}"))
        );
        assert!(
            crd.contains(&format!("kind: {KIND}")) && crd.contains(&format!("plural: {PLURAL}"))
        );
    }

    #[test]
    fn status_times_are_rfc3339() {
        assert_eq!(rfc3339(1_796_119_200_500), "2026-12-01T10:00:00.5Z");
    }
}
