//! TierElevation objects: the tests' side (upsert, delete, get, wait for a
//! status) and the status subresource's merge patch.

use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::http::{Request, respond_json, respond_status, status};
use super::routes::{details, not_found};
use super::store::Resource;
use super::{FakeKube, Inner, POLL, lock};

/// The only patch type the status subresource takes here.
const MERGE_PATCH: &str = "application/merge-patch+json";

impl FakeKube {
    /// Adds or replaces a TierElevation (keyed by
    /// `metadata.namespace`/`metadata.name`, namespace `default` when absent),
    /// bumping the resourceVersion and sending ADDED or MODIFIED to the open
    /// watches it matches. Sets `apiVersion` (`tiergate.io/v1alpha1`) and
    /// `kind` (`TierElevation`); fills in when absent `metadata.uid` (the
    /// stored object's on an update), `metadata.creationTimestamp` (the
    /// stored object's on an update, else now, RFC 3339 UTC seconds: give an
    /// old one to make an already-expired elevation) and `metadata.generation`
    /// (1, bumped when `spec` changes); keeps the stored `status` when `obj`
    /// has none (or a null one). Returns the object as stored.
    pub fn upsert_elevation(&self, obj: Value) -> Value {
        let now = rfc3339_seconds(SystemTime::now());
        self.inner.upsert(Resource::Elevations, obj, |o, old| {
            fill_elevation(o, old, now)
        })
    }

    /// Deletes a TierElevation, sending DELETED (its last state at a new
    /// resourceVersion) to the watches it matched. Returns whether it existed.
    pub fn delete_elevation(&self, namespace: &str, name: &str) -> bool {
        self.inner.delete(Resource::Elevations, namespace, name)
    }

    /// The stored TierElevation, if any.
    pub fn get_elevation(&self, namespace: &str, name: &str) -> Option<Value> {
        self.inner.get(Resource::Elevations, namespace, name)
    }

    /// Waits until the stored TierElevation exists and `pred` holds for its
    /// `status` (`Value::Null` when it has none); returns the whole object,
    /// or None on timeout.
    pub fn wait_for_elevation_status(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            // pred runs without the store's lock: it may call back into self.
            if let Some(o) = self.get_elevation(namespace, name)
                && pred(&o["status"])
            {
                return Some(o);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let st = lock(&self.inner.store);
            let _ = self
                .inner
                .changed
                .wait_timeout(st, (deadline - now).min(POLL));
        }
    }
}

/// What [`FakeKube::upsert_elevation`] fills in, with the stored object (if
/// any) in hand.
fn fill_elevation(o: &mut Map<String, Value>, old: Option<&Value>, now: String) {
    let spec_changed = old.is_some_and(|p| p.get("spec") != o.get("spec"));
    let meta = o
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("fake kube: metadata is an object");
    let old_meta = old.map(|p| &p["metadata"]);
    if meta.get("creationTimestamp").is_none_or(Value::is_null) {
        let ts = old_meta
            .map(|m| &m["creationTimestamp"])
            .filter(|t| !t.is_null())
            .cloned()
            .unwrap_or_else(|| now.into());
        meta.insert("creationTimestamp".into(), ts);
    }
    if meta.get("generation").is_none_or(Value::is_null) {
        let generation = match old_meta {
            None => 1,
            Some(m) => m["generation"].as_u64().unwrap_or(1) + u64::from(spec_changed),
        };
        meta.insert("generation".into(), generation.into());
    }
    if o.get("status").is_none_or(Value::is_null) {
        match old.map(|p| &p["status"]).filter(|s| !s.is_null()) {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }
}

/// `PATCH .../namespaces/{ns}/tierelevations/{name}/status`: a JSON merge
/// patch (RFC 7386) of which only `status` counts, as on the status
/// subresource of a real server; `metadata.resourceVersion` in the patch is a
/// precondition (409 Conflict when stale). A patch that changes nothing
/// writes nothing: same resourceVersion, no watch event.
pub(super) fn patch_status(
    inner: &Inner,
    stream: &mut TcpStream,
    req: &Request,
    namespace: &str,
    name: &str,
) -> bool {
    let media = req
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if media != MERGE_PATCH {
        return respond_status(
            stream,
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: {MERGE_PATCH} (the fake API server's only one), not {media:?}"
            ),
        );
    }
    let patch: Value = match serde_json::from_slice(&req.body) {
        Ok(p @ Value::Object(_)) => p,
        Ok(_) => {
            return respond_status(stream, 400, "BadRequest", "the patch is not a JSON object");
        }
        Err(e) => {
            return respond_status(
                stream,
                400,
                "BadRequest",
                &format!("error decoding patch: {e}"),
            );
        }
    };
    let resource = Resource::Elevations;
    let outcome = {
        let mut st = lock(&inner.store);
        match st.get(resource, namespace, name).cloned() {
            None => Err((404, not_found(resource, name))),
            Some(old) => {
                let have = old["metadata"]["resourceVersion"].as_str();
                match patch["metadata"]["resourceVersion"].as_str() {
                    Some(want) if Some(want) != have => Err((409, conflict(resource, name))),
                    _ => {
                        let new = patched(&old, &patch);
                        if new == old {
                            Ok(old)
                        } else {
                            Ok(st.put(resource, new))
                        }
                    }
                }
            }
        }
    };
    inner.changed.notify_all();
    match outcome {
        Ok(obj) => respond_json(stream, 200, &obj),
        Err((code, st)) => respond_json(stream, code, &st),
    }
}

/// `old` with the `status` that merging `patch` into it gives; everything
/// else stays as it was.
fn patched(old: &Value, patch: &Value) -> Value {
    let mut merged = old.clone();
    merge_patch(&mut merged, patch);
    let mut new = old.clone();
    if let Some(o) = new.as_object_mut() {
        match merged.get("status") {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }
    new
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key,
/// anything else replaces the target.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn conflict(resource: Resource, name: &str) -> Value {
    let mut st = status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            resource.qualified()
        ),
    );
    st["details"] = details(resource, name);
    st
}

/// `t` as RFC 3339 in UTC to the second (`2025-01-01T00:00:00Z`), the form
/// of `metadata.creationTimestamp`; times before 1970 give the epoch.
pub fn rfc3339_seconds(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
