//! The `TierElevation` watch (every namespace: objects are few) and the
//! status writer. Objects become [`ObjectChange`]s for the control task,
//! which decides; the status it wants written comes back as
//! [`StatusUpdate`]s and is merged into the object's `status`
//! subresource.
//!
//! Without the CRD installed (or without RBAC to read it) the watch fails,
//! says so once, and keeps retrying with kube's backoff: installing the CRD
//! later turns Kubernetes elevation on without restarting the agent.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;

use super::resource::{self, ElevationObject, ObjectRef};
use crate::metrics::Metrics;

/// What the watch saw.
#[derive(Debug)]
pub enum ObjectChange {
    /// A complete (re)list: every readable object.
    Replace(Vec<ElevationObject>),
    Upsert(Box<ElevationObject>),
    /// The object with this uid is gone.
    Delete(String),
}

/// A status the control task wants an object to show.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    pub object: ObjectRef,
    pub status: serde_json::Value,
}

/// The resource, for an untyped API.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: resource::GROUP.into(),
        version: resource::VERSION.into(),
        api_version: format!("{}/{}", resource::GROUP, resource::VERSION),
        kind: resource::KIND.into(),
        plural: resource::PLURAL.into(),
    }
}

/// Starts the watch and the status writer.
pub fn spawn(
    client: kube::Client,
    tx: mpsc::UnboundedSender<ObjectChange>,
    status: mpsc::UnboundedReceiver<StatusUpdate>,
    metrics: Arc<Metrics>,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let watch = tokio::spawn(watch(client.clone(), tx, metrics));
    let writer = tokio::spawn(write_status(client, status));
    (watch, writer)
}

async fn watch(
    client: kube::Client,
    tx: mpsc::UnboundedSender<ObjectChange>,
    metrics: Arc<Metrics>,
) {
    let ar = api_resource();
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Vec<ElevationObject> = Vec::new();
    // Objects already reported unreadable, and whether the watch is failing:
    // one log line per object and per outage.
    let mut unreadable: HashSet<String> = HashSet::new();
    let mut failing = false;
    while let Some(ev) = stream.next().await {
        let read = |o: &DynamicObject, unreadable: &mut HashSet<String>| match resource::parse(o) {
            Ok(e) => Some(e),
            Err(e) => {
                if unreadable.insert(o.metadata.uid.clone().unwrap_or_default()) {
                    tracing::warn!(error = %e, "TierElevation not readable; it grants nothing");
                }
                None
            }
        };
        let change = match ev {
            Ok(ev) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("TierElevation watch works again");
                }
                handle(ev, &mut relist, &mut unreadable, read)
            }
            Err(e) => {
                metrics.elevation_watch_errors.inc();
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e,
                        "cannot watch TierElevation objects (is the CRD installed and may the agent read it?); \
                         Kubernetes elevation is off until it can, grants already made stay until they end; retrying");
                }
                None
            }
        };
        if let Some(c) = change
            && tx.send(c).is_err()
        {
            return;
        }
    }
}

/// One watch event → a change, if it completes one. A relist replaces the
/// control task's view only when complete (a half-done relist ends nothing).
fn handle(
    ev: Event<DynamicObject>,
    relist: &mut Vec<ElevationObject>,
    unreadable: &mut HashSet<String>,
    read: impl Fn(&DynamicObject, &mut HashSet<String>) -> Option<ElevationObject>,
) -> Option<ObjectChange> {
    match ev {
        Event::Init => {
            relist.clear();
            None
        }
        Event::InitApply(o) => {
            relist.extend(read(&o, unreadable));
            None
        }
        Event::InitDone => Some(ObjectChange::Replace(std::mem::take(relist))),
        Event::Apply(o) => read(&o, unreadable).map(|e| ObjectChange::Upsert(Box::new(e))),
        Event::Delete(o) => o.metadata.uid.clone().map(ObjectChange::Delete),
    }
}

/// Merges each wanted status into its object; an object deleted meanwhile
/// is no error.
async fn write_status(client: kube::Client, mut rx: mpsc::UnboundedReceiver<StatusUpdate>) {
    let ar = api_resource();
    while let Some(u) = rx.recv().await {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &u.object.namespace, &ar);
        let patch = serde_json::json!({ "status": u.status });
        match api
            .patch_status(
                &u.object.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::debug!(object = %u.object, "object gone before its status was written");
            }
            Err(e) => tracing::warn!(object = %u.object, error = %e,
                "cannot write the TierElevation status (the grant itself is unaffected)"),
        }
    }
}
