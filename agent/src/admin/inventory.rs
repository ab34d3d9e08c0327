//! `/inventory`: every workload the agent has seen, with its identity, tier,
//! whether it is enforced and its reported attempts — the node's
//! machine-identity inventory with last use, rendered from the node state
//! as a [`Document`].

use std::sync::Arc;

use serde::Deserialize;

use crate::identity::cgroupfs;
use crate::identity::pods::PodFields;
use crate::inventory::{Document, PolicyRef, Row};
use crate::state::NodeState;

/// Query parameters of `/inventory`.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    /// Only the workload with this cgroup path.
    pub cgroup: Option<String>,
    /// Only enforced workloads (`true`) or only host ones (`false`).
    pub enforced: Option<bool>,
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
            .workloads_with_usage()
            .into_iter()
            .filter(|(_, w, _)| f.cgroup.as_deref().is_none_or(|c| *w.path == *c))
            .filter(|(_, w, _)| f.enforced.is_none_or(|e| w.enforced() == e))
            .map(|(id, w, usage)| {
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
                    usage,
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
