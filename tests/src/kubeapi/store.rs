//! What the server holds: the objects of each resource, one global
//! resourceVersion (as one etcd revision on a real server) and the change
//! history watches resume from.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

/// Changes kept for resuming watches; older ones are compacted away.
const HISTORY_MAX: usize = 10_000;

/// Field labels the pod field selector supports (as the real server does).
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

/// A custom resource's field selector supports only these (unless its CRD
/// declares selectableFields, which TierElevation's does not).
const CUSTOM_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// The resources the server serves.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) enum Resource {
    Pods,
    /// `tierelevations.tiergate.io`, version `v1alpha1`, kind `TierElevation`.
    Elevations,
}

impl Resource {
    pub(super) fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Elevations => "TierElevation",
        }
    }

    pub(super) fn list_kind(self) -> &'static str {
        match self {
            Resource::Pods => "PodList",
            Resource::Elevations => "TierElevationList",
        }
    }

    pub(super) fn api_version(self) -> &'static str {
        match self {
            Resource::Pods => "v1",
            Resource::Elevations => "tiergate.io/v1alpha1",
        }
    }

    /// The API group, empty for the core group.
    pub(super) fn group(self) -> &'static str {
        match self {
            Resource::Pods => "",
            Resource::Elevations => "tiergate.io",
        }
    }

    pub(super) fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Elevations => "tierelevations",
        }
    }

    /// `plural.group` (`plural` for the core group), as server messages name it.
    pub(super) fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    pub(super) fn field_labels(self) -> &'static [&'static str] {
        match self {
            Resource::Pods => POD_FIELDS,
            Resource::Elevations => CUSTOM_FIELDS,
        }
    }

    /// Whether list items keep `kind`/`apiVersion`: a real server leaves them
    /// out for built-in types but serves custom resources as unstructured
    /// objects, which keep them.
    pub(super) fn typed_list_items(self) -> bool {
        self == Resource::Elevations
    }
}

/// `(namespace, name)`.
pub(super) type Key = (String, String);

#[derive(Default)]
pub(super) struct Store {
    pub(super) rv: u64,
    objects: BTreeMap<Resource, BTreeMap<Key, Value>>,
    pub(super) history: VecDeque<Change>,
    /// Watches from a resourceVersion below this one get 410 Gone.
    pub(super) floor: u64,
    /// Bumped by `expire_watches`: open watches end with 410 Gone.
    pub(super) expire_epoch: u64,
    /// Set by `expire_watches` when no watch was open: the next watch gets 410.
    pub(super) expire_next: bool,
    /// Bumped by `send_bookmarks`.
    pub(super) bookmark_epoch: u64,
    pub(super) open_watches: usize,
    next_uid: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) resource: Resource,
    pub(super) kind: ChangeKind,
    pub(super) old: Option<Value>,
    pub(super) new: Value,
}

impl Store {
    /// An empty store at resourceVersion 1.
    pub(super) fn new() -> Store {
        Store {
            rv: 1,
            floor: 1,
            ..Store::default()
        }
    }

    /// The objects of `resource`, in `(namespace, name)` order.
    pub(super) fn objects(&self, resource: Resource) -> impl Iterator<Item = (&Key, &Value)> {
        self.objects.get(&resource).into_iter().flatten()
    }

    pub(super) fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&resource)?
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Stores `obj` (which has its `metadata.namespace` and `metadata.name`)
    /// at a new resourceVersion, keeping the stored object's `metadata.uid`
    /// when `obj` has none (a new one when there is no stored object), and
    /// records ADDED or MODIFIED. Returns the object as stored.
    pub(super) fn put(&mut self, resource: Resource, mut obj: Value) -> Value {
        let meta = &obj["metadata"];
        let key = (
            meta["namespace"].as_str().unwrap_or_default().to_string(),
            meta["name"].as_str().unwrap_or_default().to_string(),
        );
        let old = self
            .objects
            .get(&resource)
            .and_then(|m| m.get(&key))
            .cloned();
        self.rv += 1;
        let rv = self.rv;
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("fake kube: metadata is an object");
        meta.insert("resourceVersion".into(), rv.to_string().into());
        if meta.get("uid").is_none_or(Value::is_null) {
            let uid = match old.as_ref().and_then(|o| o["metadata"]["uid"].as_str()) {
                Some(uid) => uid.to_string(),
                None => {
                    self.next_uid += 1;
                    format!("00000000-0000-4000-8000-{:012x}", self.next_uid)
                }
            };
            meta.insert("uid".into(), uid.into());
        }
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.objects
            .entry(resource)
            .or_default()
            .insert(key, obj.clone());
        self.push_change(resource, kind, old, obj.clone());
        obj
    }

    /// Deletes an object, recording DELETED with its last state at a new
    /// resourceVersion. Returns whether it existed.
    pub(super) fn remove(&mut self, resource: Resource, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = self.objects.get_mut(&resource).and_then(|m| m.remove(&key)) else {
            return false;
        };
        self.rv += 1;
        let mut last = old.clone();
        last["metadata"]["resourceVersion"] = self.rv.to_string().into();
        self.push_change(resource, ChangeKind::Deleted, Some(old), last);
        true
    }

    /// Records a change at the current resourceVersion.
    fn push_change(
        &mut self,
        resource: Resource,
        kind: ChangeKind,
        old: Option<Value>,
        new: Value,
    ) {
        self.history.push_back(Change {
            rv: self.rv,
            resource,
            kind,
            old,
            new,
        });
        while self.history.len() > HISTORY_MAX {
            if let Some(c) = self.history.pop_front() {
                self.floor = self.floor.max(c.rv);
            }
        }
    }
}
