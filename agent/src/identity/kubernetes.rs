//! The Kubernetes pod watch: a list+watch of the pods on this node only
//! (field selector `spec.nodeName`), turned into [`PodChange`]s for the
//! control task. kube's watcher relists after a 410 Gone and retries with
//! backoff after errors; while the API is unreachable the agent keeps what it
//! knows, and a pod it never heard of stays in defaultTier: nothing opens up.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;

use super::pods::{ContainerInfo, PodChange, PodInfo};
use crate::metrics::Metrics;

/// Where the API server is.
pub enum Source {
    Kubeconfig(std::path::PathBuf),
    InCluster,
}

/// Errors reaching the API server configuration.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read --kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster Kubernetes configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// `--kubeconfig` if given, else the in-cluster config when the agent runs in
/// a pod (KUBERNETES_SERVICE_HOST is set), else no Kubernetes.
pub fn source(kubeconfig: Option<&Path>) -> Result<Option<Source>, KubeError> {
    Ok(match kubeconfig {
        Some(p) => Some(Source::Kubeconfig(p.to_path_buf())),
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Some(Source::InCluster),
        None => None,
    })
}

/// A client for the API server at `source`.
pub async fn client(source: &Source) -> Result<kube::Client, KubeError> {
    let config = match source {
        Source::Kubeconfig(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        Source::InCluster => kube::Config::incluster()?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Starts the watch of `node`'s pods.
pub fn spawn(
    client: kube::Client,
    node: String,
    tx: mpsc::UnboundedSender<PodChange>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        // A relist arrives as Init, InitApply*, InitDone; it replaces the
        // store only when complete, so a half-done relist removes nothing.
        let mut relist: Vec<PodInfo> = Vec::new();
        while let Some(ev) = stream.next().await {
            let change = match ev {
                Ok(Event::Init) => {
                    relist.clear();
                    None
                }
                Ok(Event::InitApply(p)) => {
                    relist.extend(pod_info(&p));
                    None
                }
                Ok(Event::InitDone) => {
                    metrics.pod_watch_relists.inc();
                    Some(PodChange::Replace(std::mem::take(&mut relist)))
                }
                Ok(Event::Apply(p)) => pod_info(&p).map(PodChange::Upsert),
                Ok(Event::Delete(p)) => p.metadata.uid.clone().map(PodChange::Delete),
                Err(e) => {
                    metrics.pod_watch_errors.inc();
                    tracing::warn!(error = %e, "pod watch error; keeping what is known and retrying");
                    None
                }
            };
            if let Some(c) = change
                && tx.send(c).is_err()
            {
                return;
            }
        }
    })
}

/// The fields of a pod object identity needs; None without name or uid.
pub fn pod_info(p: &Pod) -> Option<PodInfo> {
    let md = &p.metadata;
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let mut containers: Vec<ContainerInfo> = Vec::new();
    if let Some(spec) = spec {
        let names = spec
            .containers
            .iter()
            .map(|c| c.name.clone())
            .chain(
                spec.init_containers
                    .iter()
                    .flatten()
                    .map(|c| c.name.clone()),
            )
            .chain(
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .map(|c| c.name.clone()),
            );
        containers.extend(names.map(|name| ContainerInfo { name, id: None }));
    }
    if let Some(st) = status {
        let statuses = st
            .container_statuses
            .iter()
            .flatten()
            .chain(st.init_container_statuses.iter().flatten())
            .chain(st.ephemeral_container_statuses.iter().flatten());
        for cs in statuses {
            let id = cs.container_id.as_deref().map(strip_runtime_scheme);
            match containers.iter_mut().find(|c| c.name == cs.name) {
                Some(c) => c.id = id,
                None => containers.push(ContainerInfo {
                    name: cs.name.clone(),
                    id,
                }),
            }
        }
    }
    Some(PodInfo {
        namespace: md.namespace.clone().unwrap_or_else(|| "default".into()),
        name: md.name.clone()?,
        uid: md.uid.clone()?,
        config_hash: md
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.hash"))
            .cloned(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        labels: md
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        containers,
    })
}

/// `containerd://abc` → `abc` (also cri-o://, docker://).
fn strip_runtime_scheme(id: &str) -> String {
    id.split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(id)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_objects_become_pod_info() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r-0", "namespace": "agents", "uid": "u-1",
                         "labels": {"app": "retriever"},
                         "annotations": {"kubernetes.io/config.hash": "abc"}},
            "spec": {"serviceAccountName": "retriever", "hostNetwork": true,
                     "containers": [{"name": "tool"}, {"name": "side"}],
                     "initContainers": [{"name": "init"}]},
            "status": {"containerStatuses": [
                {"name": "tool", "containerID": "containerd://ABCDEF", "ready": true, "restartCount": 0,
                 "image": "x", "imageID": "y"}],
                "initContainerStatuses": [
                {"name": "init", "containerID": "cri-o://123", "ready": false, "restartCount": 0,
                 "image": "x", "imageID": "y"}]}
        }))
        .unwrap();
        let i = pod_info(&p).unwrap();
        assert_eq!(i.namespace, "agents");
        assert_eq!(i.service_account, "retriever");
        assert_eq!(i.config_hash.as_deref(), Some("abc"));
        assert!(i.host_network);
        assert_eq!(i.labels.get("app").map(String::as_str), Some("retriever"));
        let tool = i.containers.iter().find(|c| c.name == "tool").unwrap();
        assert_eq!(tool.id.as_deref(), Some("abcdef"));
        let init = i.containers.iter().find(|c| c.name == "init").unwrap();
        assert_eq!(init.id.as_deref(), Some("123"));
        assert_eq!(
            i.containers.iter().find(|c| c.name == "side").unwrap().id,
            None
        );
    }

    #[test]
    fn defaults_for_missing_fields() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "uid": "u"}
        }))
        .unwrap();
        let i = pod_info(&p).unwrap();
        assert_eq!(i.namespace, "default");
        assert_eq!(i.service_account, "default");
        let nameless: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"uid": "u"}})).unwrap();
        assert!(pod_info(&nameless).is_none());
    }
}
