//! The inventory document: every workload with its identity, tier,
//! whether it is enforced and its reported connection attempts, as the
//! admin endpoint serves it and the CLI (`tiergate inventory`, `policy
//! explain --agent`) reads it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::pods::PodFields;
use crate::policy::PodIdentity;
use crate::state::{PodState, Usage};

/// One workload row.
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    pub cgroup_id: u64,
    pub cgroup_path: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub systemd_unit: Option<String>,
    pub tier: String,
    pub enforced: bool,
    /// `spec.bindings[i]` index that placed it, if any.
    pub binding: Option<usize>,
    pub pod_state: PodState,
    #[serde(flatten)]
    pub pod: PodFields,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub spiffe_id: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub labels: BTreeMap<String, String>,
    /// `attempts` and the last-attempt times.
    #[serde(flatten)]
    pub usage: Usage,
}

impl Row {
    /// The pod identity this row describes, if it is a resolved pod.
    pub fn pod_identity(&self) -> Option<PodIdentity> {
        let p = &self.pod;
        Some(PodIdentity {
            namespace: p.namespace.clone()?,
            pod: p.pod.clone()?,
            pod_uid: p.pod_uid.clone()?,
            service_account: p.service_account.clone()?,
            labels: self.labels.clone(),
            container: p.container.clone(),
            container_id: p.container_id.clone(),
        })
    }
}

/// The whole document.
#[derive(Debug, Serialize, Deserialize)]
pub struct Document {
    pub node: String,
    pub policy: Option<PolicyRef>,
    pub workloads: Vec<Row>,
}

/// Policy name and version.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyRef {
    pub name: String,
    pub version: String,
}
