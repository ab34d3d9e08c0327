//! `/inventory`: every workload the agent has seen, with its identity, tier
//! and whether it is enforced — the node's machine-identity inventory.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::events::ocsf::PodFields;
use crate::identity::cgroupfs;
use crate::policy::PodIdentity;
use crate::state::{NodeState, PodState};

/// Query parameters of `/inventory`.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    /// Only the workload with this cgroup path.
    pub cgroup: Option<String>,
    /// Only enforced workloads (`true`) or only host ones (`false`).
    pub enforced: Option<bool>,
}

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

/// Renders the inventory from the node state.
pub struct Inventory {
    pub node: String,
    pub state: Arc<NodeState>,
}

impl Inventory {
    pub fn document(&self, f: &Filter) -> Document {
        let workloads = self
            .state
            .workloads()
            .into_iter()
            .filter(|(_, w)| f.cgroup.as_deref().is_none_or(|c| *w.path == *c))
            .filter(|(_, w)| f.enforced.is_none_or(|e| w.enforced() == e))
            .map(|(id, w)| {
                let pod = w.pod.as_ref();
                Row {
                    cgroup_id: id,
                    cgroup_path: w.path.to_string(),
                    systemd_unit: cgroupfs::systemd_unit(&w.path).map(str::to_string),
                    tier: w.tier.clone(),
                    enforced: w.enforced(),
                    binding: w.binding,
                    pod_state: w.pod_state,
                    pod: PodFields::of(pod),
                    spiffe_id: w.spiffe_id.clone(),
                    labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
                }
            })
            .collect();
        Document {
            node: self.node.clone(),
            policy: self.state.active_policy().map(|p| PolicyRef {
                name: p.name.clone(),
                version: p.version.clone(),
            }),
            workloads,
        }
    }

    pub fn render(&self, f: &Filter) -> String {
        serde_json::to_string(&self.document(f)).expect("serializing to a String")
    }
}
