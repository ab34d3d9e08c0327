//! Builders of the pod objects tests upsert.

use serde_json::{Map, Value, json};

/// Timestamp used for every time field of the pods [`pod`] builds.
pub(super) const TIMESTAMP: &str = "2025-01-01T00:00:00Z";

/// A pod object shaped like one the API server returns for a running pod:
/// `metadata` {name, namespace, uid, labels, creationTimestamp}, `spec`
/// {serviceAccountName, containers, initContainers: [], ephemeralContainers:
/// [], hostNetwork: false, ...}, `status` {phase: Running, containerStatuses
/// with `containerID: containerd://<id>` and `ready: true`, empty
/// initContainerStatuses and ephemeralContainerStatuses, qosClass}.
///
/// `spec.nodeName` is left out: [`FakeKube::upsert_pod`] puts the pod on the
/// server's node unless [`on_node`] placed it elsewhere; `resourceVersion` is
/// set by `upsert_pod`. Unlike a real server, which omits empty lists and
/// false booleans, this keeps them so tests can edit them in place.
///
/// [`FakeKube::upsert_pod`]: super::FakeKube::upsert_pod
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    service_account: &str,
    labels: &[(&str, &str)],
    containers: &[(&str, &str)],
) -> Value {
    let labels: Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
        .collect();
    let specs: Vec<Value> = containers.iter().map(|(n, _)| container_spec(n)).collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(n, id)| container_status(n, id, true, json!({"running": {"startedAt": TIMESTAMP}})))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "labels": labels,
            "creationTimestamp": TIMESTAMP,
        },
        "spec": {
            "serviceAccountName": service_account,
            "serviceAccount": service_account,
            "automountServiceAccountToken": true,
            "containers": specs,
            "initContainers": [],
            "ephemeralContainers": [],
            "hostNetwork": false,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "enableServiceLinks": true,
            "priority": 0,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": TIMESTAMP},
                {"type": "Ready", "status": "True", "lastTransitionTime": TIMESTAMP},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": TIMESTAMP},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": TIMESTAMP},
            ],
            "containerStatuses": statuses,
            "initContainerStatuses": [],
            "ephemeralContainerStatuses": [],
            "qosClass": "BestEffort",
            "startTime": TIMESTAMP,
        },
    })
}

/// Places `pod` on `node` (`spec.nodeName`).
pub fn on_node(mut pod: Value, node: &str) -> Value {
    pod["spec"]["nodeName"] = node.into();
    pod
}

/// Adds an init container with its status: completed (exit 0), or running
/// and ready for a sidecar (`restartPolicy: Always`).
pub fn add_init_container(mut pod: Value, name: &str, id: &str, sidecar: bool) -> Value {
    let mut spec = container_spec(name);
    let state = if sidecar {
        spec["restartPolicy"] = "Always".into();
        json!({"running": {"startedAt": TIMESTAMP}})
    } else {
        json!({"terminated": {
            "exitCode": 0,
            "reason": "Completed",
            "startedAt": TIMESTAMP,
            "finishedAt": TIMESTAMP,
            "containerID": format!("containerd://{id}"),
        }})
    };
    push(&mut pod["spec"]["initContainers"], spec);
    push(
        &mut pod["status"]["initContainerStatuses"],
        container_status(name, id, sidecar, state),
    );
    pod
}

/// Adds a running ephemeral (debug) container with its status (never ready,
/// as on a real node).
pub fn add_ephemeral_container(mut pod: Value, name: &str, id: &str) -> Value {
    let mut spec = container_spec(name);
    if let Some(o) = spec.as_object_mut() {
        o.remove("resources");
    }
    push(&mut pod["spec"]["ephemeralContainers"], spec);
    push(
        &mut pod["status"]["ephemeralContainerStatuses"],
        container_status(
            name,
            id,
            false,
            json!({"running": {"startedAt": TIMESTAMP}}),
        ),
    );
    pod
}

fn push(list: &mut Value, item: Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(a) = list.as_array_mut() {
        a.push(item);
    }
}

fn container_spec(name: &str) -> Value {
    json!({
        "name": name,
        "image": format!("registry.invalid/{name}:1.0"),
        "imagePullPolicy": "IfNotPresent",
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    })
}

fn container_status(name: &str, id: &str, ready: bool, state: Value) -> Value {
    let running = state.get("running").is_some();
    json!({
        "name": name,
        "containerID": format!("containerd://{id}"),
        "image": format!("registry.invalid/{name}:1.0"),
        "imageID": format!("registry.invalid/{name}@sha256:{}", "0".repeat(64)),
        "ready": ready,
        "started": running,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    })
}
