//! What the agent knows about the pods on its node (from the Kubernetes
//! watch), how a pod cgroup's path plus that knowledge becomes a workload
//! identity, and the pod fields events and the inventory name it by.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::kubepods::{self, ParseOutcome};
use crate::policy::PodIdentity;

/// One container of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    /// Runtime id without the `containerd://` scheme; None until it runs.
    pub id: Option<String>,
}

/// The pod fields identity and policy use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// kubelet's `kubernetes.io/config.hash` for static pods: their cgroup
    /// carries this hash, not the mirror pod's uid.
    pub config_hash: Option<String>,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub host_network: bool,
    /// Regular, init and ephemeral containers.
    pub containers: Vec<ContainerInfo>,
}

/// A change reported by the Kubernetes pod watch.
#[derive(Debug)]
pub enum PodChange {
    Upsert(PodInfo),
    /// By metadata uid.
    Delete(String),
    /// A full relist: the pods of this node now.
    Replace(Vec<PodInfo>),
}

/// A workload's pod fields as events and the inventory name them; all
/// absent for a cgroup that is no pod's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodFields {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_id: Option<String>,
    /// Who answers for the workload: the pod's `tiergate.io/owner` label,
    /// else its `owner` label (`tiergate advise` lists workloads without).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner: Option<String>,
}

/// Pod labels naming a workload's owner, in order of preference.
pub const OWNER_LABELS: [&str; 2] = ["tiergate.io/owner", "owner"];

impl PodFields {
    pub fn of(pod: Option<&PodIdentity>) -> Self {
        Self {
            namespace: pod.map(|p| p.namespace.clone()),
            pod: pod.map(|p| p.pod.clone()),
            pod_uid: pod.map(|p| p.pod_uid.clone()),
            service_account: pod.map(|p| p.service_account.clone()),
            container: pod.and_then(|p| p.container.clone()),
            container_id: pod.and_then(|p| p.container_id.clone()),
            owner: pod.and_then(|p| OWNER_LABELS.iter().find_map(|l| p.labels.get(*l).cloned())),
        }
    }
}

/// Pods by the uid their cgroups carry.
#[derive(Default)]
pub struct PodStore {
    by_cgroup_uid: HashMap<String, Arc<PodInfo>>,
}

impl PodStore {
    /// The uid kubelet uses in the pod's cgroup name.
    fn cgroup_uid(p: &PodInfo) -> String {
        p.config_hash.clone().unwrap_or_else(|| p.uid.clone())
    }

    /// Adds or replaces a pod; returns the cgroup uid it is filed under.
    pub fn upsert(&mut self, p: PodInfo) -> String {
        let key = Self::cgroup_uid(&p);
        self.by_cgroup_uid.insert(key.clone(), Arc::new(p));
        key
    }

    /// Removes a pod by its metadata uid; returns its cgroup uid if known.
    pub fn remove(&mut self, uid: &str) -> Option<String> {
        let key = self
            .by_cgroup_uid
            .iter()
            .find(|(_, p)| p.uid == uid)
            .map(|(k, _)| k.clone())?;
        self.by_cgroup_uid.remove(&key);
        Some(key)
    }

    /// Replaces everything (after a relist); returns the cgroup uids whose
    /// pod changed, appeared or went away.
    pub fn replace(&mut self, pods: Vec<PodInfo>) -> Vec<String> {
        let mut fresh: HashMap<String, Arc<PodInfo>> = HashMap::new();
        for p in pods {
            fresh.insert(Self::cgroup_uid(&p), Arc::new(p));
        }
        let mut changed: Vec<String> = fresh
            .iter()
            .filter(|(k, p)| self.by_cgroup_uid.get(*k) != Some(*p))
            .map(|(k, _)| k.clone())
            .collect();
        changed.extend(
            self.by_cgroup_uid
                .keys()
                .filter(|k| !fresh.contains_key(*k))
                .cloned(),
        );
        self.by_cgroup_uid = fresh;
        changed
    }

    pub fn get(&self, cgroup_uid: &str) -> Option<&Arc<PodInfo>> {
        self.by_cgroup_uid.get(cgroup_uid)
    }

    pub fn len(&self) -> usize {
        self.by_cgroup_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cgroup_uid.is_empty()
    }
}

/// What a cgroup path says about a pod, and what the store adds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodResolution {
    /// Not a pod cgroup.
    NotPod,
    /// A pod cgroup whose pod the agent does not know (yet): defaultTier.
    Unresolved {
        pod_uid: String,
        container_id: Option<String>,
    },
    /// A pod cgroup path kubelet would not create: defaultTier, reported.
    Malformed(String),
    Resolved(PodIdentity),
}

impl PodResolution {
    /// The cgroup uid of the pod, for indexing cgroups by pod.
    pub fn pod_uid(&self) -> Option<&str> {
        match self {
            PodResolution::Unresolved { pod_uid, .. } => Some(pod_uid),
            PodResolution::Resolved(id) => Some(&id.pod_uid),
            _ => None,
        }
    }

    pub fn identity(&self) -> Option<&PodIdentity> {
        match self {
            PodResolution::Resolved(id) => Some(id),
            _ => None,
        }
    }
}

/// Resolves a cgroup path against the pods known.
pub fn resolve(store: &PodStore, path: &str) -> PodResolution {
    let pc = match kubepods::parse(path) {
        ParseOutcome::NotPod => return PodResolution::NotPod,
        ParseOutcome::Malformed(why) => return PodResolution::Malformed(why),
        ParseOutcome::Pod(pc) => pc,
    };
    let Some(pod) = store.get(&pc.pod_uid) else {
        return PodResolution::Unresolved {
            pod_uid: pc.pod_uid,
            container_id: pc.container_id,
        };
    };
    // A container id not (yet) in the pod's status — e.g. the sandbox
    // ("pause") container — is the pod without a container name.
    let container = pc
        .container_id
        .as_deref()
        .and_then(|id| pod.containers.iter().find(|c| c.id.as_deref() == Some(id)))
        .map(|c| c.name.clone());
    PodResolution::Resolved(PodIdentity {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        pod_uid: pc.pod_uid,
        service_account: pod.service_account.clone(),
        labels: pod.labels.clone(),
        container,
        container_id: pc.container_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b8c0d47-3c0b-4a53-9f0e-6c3f2f3b9a11";
    const CID: &str = "4f1e4f2a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70";

    fn pod() -> PodInfo {
        PodInfo {
            namespace: "agents".into(),
            name: "retriever-0".into(),
            uid: UID.into(),
            config_hash: None,
            service_account: "retriever".into(),
            labels: BTreeMap::from([("app".into(), "retriever".into())]),
            host_network: false,
            containers: vec![
                ContainerInfo {
                    name: "tool".into(),
                    id: Some(CID.into()),
                },
                ContainerInfo {
                    name: "sidecar".into(),
                    id: None,
                },
            ],
        }
    }

    fn path(cid: &str) -> String {
        format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
            UID.replace('-', "_")
        )
    }

    #[test]
    fn container_cgroup_resolves_to_the_container() {
        let mut s = PodStore::default();
        s.upsert(pod());
        let PodResolution::Resolved(id) = resolve(&s, &path(CID)) else {
            panic!("not resolved")
        };
        assert_eq!(id.namespace, "agents");
        assert_eq!(id.service_account, "retriever");
        assert_eq!(id.container.as_deref(), Some("tool"));
        assert_eq!(id.container_id.as_deref(), Some(CID));
        assert_eq!(id.pod_uid, UID);
    }

    #[test]
    fn unknown_container_is_the_pod_without_a_name() {
        let mut s = PodStore::default();
        s.upsert(pod());
        let other = "a".repeat(64);
        let PodResolution::Resolved(id) = resolve(&s, &path(&other)) else {
            panic!("not resolved")
        };
        assert_eq!(id.container, None);
        assert_eq!(id.container_id.as_deref(), Some(other.as_str()));
    }

    #[test]
    fn unknown_pod_is_unresolved_and_host_paths_are_not_pods() {
        let s = PodStore::default();
        assert_eq!(
            resolve(&s, &path(CID)),
            PodResolution::Unresolved {
                pod_uid: UID.into(),
                container_id: Some(CID.into())
            }
        );
        assert_eq!(
            resolve(&s, "/system.slice/nginx.service"),
            PodResolution::NotPod
        );
        assert!(matches!(
            resolve(&s, "/kubepods/burstable/podnot-a-uid/x"),
            PodResolution::Malformed(_)
        ));
    }

    #[test]
    fn static_pods_are_filed_under_their_config_hash() {
        let mut s = PodStore::default();
        let hash = "8daa50c3a64c9ff60bb9eab7b44b56fd";
        let mut p = pod();
        p.config_hash = Some(hash.into());
        s.upsert(p);
        let path =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice");
        assert!(matches!(resolve(&s, &path), PodResolution::Resolved(_)));
        assert_eq!(s.remove(UID).as_deref(), Some(hash));
        assert!(s.is_empty());
    }

    #[test]
    fn replace_reports_changed_new_and_gone_pods() {
        let mut s = PodStore::default();
        s.upsert(pod());
        let mut other = pod();
        other.uid = "11111111-2222-3333-4444-555555555555".into();
        s.upsert(other.clone());
        let mut changed_first = pod();
        changed_first.labels.insert("x".into(), "y".into());
        let third = PodInfo {
            uid: "99999999-2222-3333-4444-555555555555".into(),
            ..pod()
        };
        let mut got = s.replace(vec![changed_first, third.clone()]);
        got.sort();
        let mut want = vec![UID.to_string(), other.uid.clone(), third.uid.clone()];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(s.len(), 2);
    }
}
