//! `TierElevation` objects in the control task: an object becomes a grant
//! on the node that runs its pod, with the same checks as the admin
//! socket's (`admit`), ending at the object's creation plus its duration;
//! deleting the object revokes the grant. The node that decided writes the
//! object's `status`: `Active`, `Refused` (with the sentence), then
//! `Expired`, `Revoked` or `Ended` (the policy no longer allows it).
//!
//! Objects whose pod is not on this node wait here, silently, until they
//! end (the pod may start later). A refused object is tried again when
//! the policy or the workloads change (an edit may allow it), and its
//! refusal is reported once per distinct sentence. An object whose grant
//! ended never grants again: this agent remembers it, and the terminal
//! status tells any agent that starts later.

use std::collections::HashSet;

use serde_json::json;

use super::Control;
use crate::elevation::grant::{Grant, Principal};
use crate::elevation::kube::{ObjectChange, StatusUpdate};
use crate::elevation::resource::{self, ElevationObject, ObjectRef};
use crate::events::pipeline::now_epoch_ms;

/// How an end of a grant reads in its object's status (None: the object
/// is gone, nothing to write).
fn ended_phase(end: &str) -> Option<&'static str> {
    match end {
        "expired" => Some("Expired"),
        "revoked" => Some("Revoked"),
        DELETED => None,
        _ => Some("Ended"),
    }
}

/// The end of a grant whose object was deleted.
const DELETED: &str = "deleted";

impl Control {
    /// A change from the `TierElevation` watch.
    pub fn elevation_object(&mut self, change: ObjectChange) {
        match change {
            ObjectChange::Upsert(o) => self.object_seen(*o),
            ObjectChange::Delete(uid) => self.object_deleted(&uid),
            ObjectChange::Replace(all) => {
                let live: HashSet<&str> = all.iter().map(|o| o.object.uid.as_str()).collect();
                // Deleted while the watch was down (or before a restart).
                let gone: Vec<String> = self
                    .elevation
                    .grants
                    .values()
                    .filter_map(|g| g.object.as_ref().map(|o| o.uid.clone()))
                    .chain(self.elevation.objects.keys().cloned())
                    .chain(self.elevation.ended_objects.iter().cloned())
                    .filter(|uid| !live.contains(uid.as_str()))
                    .collect();
                for uid in gone {
                    self.object_deleted(&uid);
                }
                for o in all {
                    self.object_seen(o);
                }
            }
        }
        self.admit_objects();
    }

    fn grant_of(&self, uid: &str) -> Option<String> {
        self.elevation
            .grants
            .values()
            .find(|g| g.object.as_ref().is_some_and(|o| o.uid == uid))
            .map(|g| g.id.clone())
    }

    fn object_seen(&mut self, o: ElevationObject) {
        let uid = o.object.uid.clone();
        // Granted here (the spec cannot change), or over.
        if self.grant_of(&uid).is_some()
            || self.elevation.ended_objects.contains(&uid)
            || o.is_over()
        {
            self.elevation.objects.remove(&uid);
            return;
        }
        let refused = self.elevation.objects.remove(&uid).and_then(|(_, r)| r);
        self.elevation.objects.insert(uid, (o, refused));
    }

    fn object_deleted(&mut self, uid: &str) {
        self.elevation.objects.remove(uid);
        self.elevation.ended_objects.remove(uid);
        if let Some(id) = self.grant_of(uid) {
            let by = Principal {
                id: "kubernetes".into(),
                name: None,
            };
            self.end_grant(&id, DELETED, Some(&by));
        }
    }

    /// Grants what waiting objects ask for where their pod runs here.
    pub(super) fn admit_objects(&mut self) {
        if self.elevation.objects.is_empty() {
            return;
        }
        let now = now_epoch_ms();
        let workloads = self.state.workloads();
        let uids: Vec<String> = self.elevation.objects.keys().cloned().collect();
        for uid in uids {
            let Some((o, refused)) = self.elevation.objects.get(&uid).cloned() else {
                continue;
            };
            let here = workloads.iter().any(|(_, w)| o.request.target.matches(w));
            if o.expires_ms() <= now {
                self.elevation.objects.remove(&uid);
                if here {
                    self.set_status(
                        &o.object,
                        json!({"phase": "Expired", "message": "ended before this node could apply it"}),
                    );
                }
                continue;
            }
            if !here {
                continue;
            }
            let by = Principal {
                id: format!("kubernetes:{}", o.requested_by),
                name: None,
            };
            match self.admit(o.request.clone(), by, Some(&o)) {
                Ok(g) => {
                    self.elevation.objects.remove(&uid);
                    let status = json!({
                        "phase": "Active",
                        "message": format!("{} elevated from {} to {}", g.target, g.from, g.to),
                        "grantId": g.id,
                        "from": g.from,
                        "expiresAt": resource::rfc3339(g.expires_ms),
                    });
                    self.set_status(&o.object, status);
                }
                Err(e) if refused.as_deref() == Some(e.as_str()) => {}
                Err(e) => {
                    tracing::warn!(object = %o.object, by = %o.requested_by, error = %e, "TierElevation refused");
                    self.set_status(&o.object, json!({"phase": "Refused", "message": e}));
                    if let Some(entry) = self.elevation.objects.get_mut(&uid) {
                        entry.1 = Some(e);
                    }
                }
            }
        }
    }

    /// A grant that came from `object` ended (`end`, as `end_grant` says).
    pub(super) fn object_ended(&mut self, object: &ObjectRef, g: &Grant, end: &str) {
        self.elevation.ended_objects.insert(object.uid.clone());
        if let Some(phase) = ended_phase(end) {
            self.set_status(
                object,
                json!({
                    "phase": phase,
                    "message": format!("elevation {} ended: {end}", g.id),
                    "grantId": g.id,
                }),
            );
        }
    }

    fn set_status(&self, object: &ObjectRef, mut status: serde_json::Value) {
        let Some(tx) = &self.elevation.status else {
            return;
        };
        status["node"] = self.elevation.node.clone().into();
        let _ = tx.send(StatusUpdate {
            object: object.clone(),
            status,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_but_a_deletion_is_written_back() {
        assert_eq!(ended_phase("expired"), Some("Expired"));
        assert_eq!(ended_phase("revoked"), Some("Revoked"));
        assert_eq!(ended_phase("policy"), Some("Ended"));
        assert_eq!(ended_phase(DELETED), None);
        for p in ["Expired", "Revoked", "Ended"] {
            assert!(resource::TERMINAL.contains(&p), "{p} must stop re-granting");
        }
    }
}
