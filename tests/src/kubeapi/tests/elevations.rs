//! TierElevations: list + watch, status patches, errors, the tests' API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::kube::api::{GroupVersionKind, Patch, PatchParams, PostParams};
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::*;
use crate::kubeapi::{FakeKube, rfc3339_seconds};

#[tokio::test]
async fn kube_watcher_sees_elevations_added_modified_deleted() {
    let fake = FakeKube::start(NODE);
    fake.upsert_elevation(elevation("ops", "e1", json!({"tier": "db"})));
    let mut stream = watcher::watcher(elevations(&fake), watcher::Config::default())
        .default_backoff()
        .boxed();
    let first = next(&mut stream).await;
    assert!(matches!(first, Event::Init), "{}", describe(&first));
    match next(&mut stream).await {
        Event::InitApply(o) => {
            assert_eq!(o.metadata.namespace.as_deref(), Some("ops"));
            assert_eq!(o.metadata.name.as_deref(), Some("e1"));
            assert_eq!(
                o.types.expect("list items keep their type").kind,
                "TierElevation"
            );
            assert_eq!(o.data["spec"], json!({"tier": "db"}));
        }
        ev => panic!("expected InitApply ops/e1, got {}", describe(&ev)),
    }
    assert_eq!(next_n(&mut stream, 1).await, ["InitDone"]);

    fake.upsert_elevation(elevation("default", "e2", json!({"tier": "web"})));
    match next(&mut stream).await {
        Event::Apply(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("e2"));
            let types = o.types.expect("watch objects carry their type");
            assert_eq!(types.api_version, "tiergate.io/v1alpha1");
            assert_eq!(types.kind, "TierElevation");
        }
        ev => panic!("expected Apply default/e2, got {}", describe(&ev)),
    }

    let patched = elevations_in(&fake, "default")
        .patch_status(
            "e2",
            &PatchParams::default(),
            &merge(json!({"status": {"phase": "Active"}})),
        )
        .await
        .expect("patch_status");
    assert_eq!(patched.data["status"], json!({"phase": "Active"}));
    match next(&mut stream).await {
        Event::Apply(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("e2"));
            assert_eq!(o.data["status"], json!({"phase": "Active"}));
            assert_eq!(
                o.metadata.resource_version,
                patched.metadata.resource_version
            );
        }
        ev => panic!("expected Apply default/e2 (status), got {}", describe(&ev)),
    }

    assert!(fake.delete_elevation("ops", "e1"));
    assert!(!fake.delete_elevation("ops", "e1"));
    assert_eq!(next_n(&mut stream, 1).await, ["Delete ops/e1"]);

    // The server restarting keeps the history: the watch resumes, no relist.
    fake.go_down();
    fake.come_back();
    fake.upsert_elevation(elevation("ops", "e3", json!({})));
    assert_eq!(next_n(&mut stream, 1).await, ["Apply ops/e3"]);

    // A forced relist.
    fake.expire_watches();
    assert_eq!(
        next_n(&mut stream, 4).await,
        [
            "Init",
            "InitApply default/e2",
            "InitApply ops/e3",
            "InitDone"
        ]
    );

    let requests = fake.requests();
    for r in &requests {
        eprintln!("request: {r}");
    }
    assert!(
        requests.iter().any(
            |r| r.starts_with("GET /apis/tiergate.io/v1alpha1/tierelevations?")
                && !r.contains("watch=true")
        ),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(
            |r| r.starts_with("GET /apis/tiergate.io/v1alpha1/tierelevations?")
                && r.contains("watch=true")
        ),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.starts_with(
            "PATCH /apis/tiergate.io/v1alpha1/namespaces/default/tierelevations/e2/status"
        )),
        "{requests:?}"
    );
}

#[tokio::test]
async fn patch_status_merges_into_status_only() {
    let fake = FakeKube::start(NODE);
    let mut obj = elevation("default", "e1", json!({"tier": "db", "ttl": "1h"}));
    obj["status"] = json!({"phase": "Pending", "count": 1, "nested": {"x": 1, "y": 2}});
    let before = fake.upsert_elevation(obj);
    let rv_before: u64 = before["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("resourceVersion");
    let api = elevations_in(&fake, "default");
    let pp = PatchParams::default();
    let got = api
        .patch_status(
            "e1",
            &pp,
            &merge(json!({
                "spec": {"tier": "changed"},
                "metadata": {"labels": {"sneaky": "yes"}},
                "status": {"phase": "Active", "count": null, "nested": {"y": 3}},
            })),
        )
        .await
        .expect("patch_status");
    let want_status = json!({"phase": "Active", "nested": {"x": 1, "y": 3}});
    assert_eq!(got.data["status"], want_status);
    assert_eq!(
        got.data["spec"],
        json!({"tier": "db", "ttl": "1h"}),
        "spec ignored"
    );
    assert_eq!(got.metadata.labels, None, "metadata ignored");
    assert_eq!(
        got.metadata.uid,
        before["metadata"]["uid"].as_str().map(String::from)
    );
    assert_eq!(
        got.metadata.generation,
        Some(1),
        "a status write is no new generation"
    );
    let rv_after: u64 = got
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("resourceVersion");
    assert_eq!(rv_after, rv_before + 1);
    let stored = fake.get_elevation("default", "e1").expect("stored");
    assert_eq!(stored["status"], want_status);
    assert_eq!(stored["metadata"]["resourceVersion"], rv_after.to_string());

    // A patch that changes nothing writes nothing, as on a real server.
    let same = api
        .patch_status("e1", &pp, &merge(json!({"status": {"phase": "Active"}})))
        .await
        .expect("no-op patch_status");
    assert_eq!(
        same.metadata.resource_version,
        got.metadata.resource_version
    );
    assert_eq!(fake.resource_version(), rv_after);

    // metadata.resourceVersion in the patch is a precondition.
    let stale =
        json!({"metadata": {"resourceVersion": rv_before.to_string()}, "status": {"phase": "X"}});
    assert_eq!(
        api_error(api.patch_status("e1", &pp, &merge(stale)).await),
        (409, "Conflict".into())
    );
    let fresh = json!({"metadata": {"resourceVersion": rv_after.to_string()}, "status": null});
    let cleared = api
        .patch_status("e1", &pp, &merge(fresh))
        .await
        .expect("patch_status with a current resourceVersion");
    assert_eq!(cleared.data.get("status"), None, "status: null removes it");

    // Upserting without a status keeps the stored one (the agent owns it).
    api.patch_status("e1", &pp, &merge(json!({"status": {"phase": "Active"}})))
        .await
        .expect("patch_status");
    let again = fake.upsert_elevation(elevation("default", "e1", json!({"tier": "web"})));
    assert_eq!(again["status"], json!({"phase": "Active"}));
    assert_eq!(again["metadata"]["generation"], 2, "spec changed");
}

#[tokio::test]
async fn missing_elevation_is_404_and_other_writes_are_refused() {
    let fake = FakeKube::start(NODE);
    fake.upsert_elevation(elevation("default", "e1", json!({})));
    let api = elevations_in(&fake, "default");
    let pp = PatchParams::default();
    assert_eq!(api_error(api.get("nope").await), (404, "NotFound".into()));
    let (code, reason) = api_error(
        api.patch_status("nope", &pp, &merge(json!({"status": {"phase": "Active"}})))
            .await,
    );
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let (code, body) = raw(
        &fake,
        "PATCH",
        "/apis/tiergate.io/v1alpha1/namespaces/other/tierelevations/e1/status",
        "Content-Type: application/merge-patch+json\r\n",
        r#"{"status":{}}"#,
    );
    assert_eq!(code, 404);
    let st: Value = serde_json::from_str(&body).expect("Status");
    assert_eq!(
        st["message"],
        r#"tierelevations.tiergate.io "e1" not found"#
    );
    assert_eq!(
        st["details"],
        json!({"name": "e1", "group": "tiergate.io", "kind": "tierelevations"})
    );

    // Other patch types: 415. Other methods, and patches of anything but
    // tierelevations/status: 405.
    let strategic = Patch::Strategic(json!({"status": {"phase": "Active"}}));
    assert_eq!(
        api_error(api.patch_status("e1", &pp, &strategic).await),
        (415, "UnsupportedMediaType".into())
    );
    let obj = api.get("e1").await.expect("get");
    assert_eq!(
        api_error(api.replace_status("e1", &PostParams::default(), &obj).await),
        (405, "MethodNotAllowed".into())
    );
    assert_eq!(
        api_error(api.patch("e1", &pp, &merge(json!({"spec": {}}))).await),
        (405, "MethodNotAllowed".into())
    );
    assert_eq!(
        api_error(api.delete("e1", &Default::default()).await).0,
        405
    );
    assert!(fake.get_elevation("default", "e1").is_some());
    let (code, _) = raw(
        &fake,
        "PATCH",
        "/apis/tiergate.io/v1alpha1/namespaces/default/tierelevations/e1/status",
        "Content-Type: application/merge-patch+json\r\n",
        "not json",
    );
    assert_eq!(code, 400);
}

#[tokio::test]
async fn kube_discovery_finds_tierelevations() {
    let fake = FakeKube::start(NODE);
    let gvk = GroupVersionKind::gvk("tiergate.io", "v1alpha1", "TierElevation");
    let (ar, caps) = ::kube::discovery::pinned_kind(&client(&fake), &gvk)
        .await
        .expect("pinned_kind");
    assert_eq!(ar.plural, "tierelevations");
    assert_eq!(caps.scope, ::kube::discovery::Scope::Namespaced);
    assert!(
        caps.subresources.iter().any(|(r, _)| r.plural == "status"),
        "{:?}",
        caps.subresources
    );
    let discovery = ::kube::Discovery::new(client(&fake))
        .run()
        .await
        .expect("discovery");
    assert!(discovery.has_group("tiergate.io"));
}

#[test]
fn upsert_elevation_fills_metadata() {
    let fake = FakeKube::start(NODE);
    let t0 = SystemTime::now();
    let e = fake.upsert_elevation(json!({"metadata": {"name": "e"}, "spec": {"tier": "db"}}));
    assert_eq!(e["apiVersion"], "tiergate.io/v1alpha1");
    assert_eq!(e["kind"], "TierElevation");
    assert_eq!(e["metadata"]["namespace"], "default");
    assert_eq!(e["metadata"]["generation"], 1);
    assert!(e.get("status").is_none());
    let created = e["metadata"]["creationTimestamp"]
        .as_str()
        .expect("timestamp");
    let (lo, hi) = (rfc3339_seconds(t0), rfc3339_seconds(SystemTime::now()));
    assert!(
        lo.as_str() <= created && created <= hi.as_str(),
        "{created}"
    );
    let uid = e["metadata"]["uid"].clone();
    assert!(uid.is_string());

    let again = fake.upsert_elevation(json!({"metadata": {"name": "e"}, "spec": {"tier": "db"}}));
    assert_eq!(again["metadata"]["uid"], uid, "uid stable across updates");
    assert_eq!(again["metadata"]["creationTimestamp"], created);
    assert_eq!(again["metadata"]["generation"], 1, "same spec");

    let old = "2020-01-01T00:00:00Z";
    let expired = fake.upsert_elevation(json!({
        "metadata": {"name": "old", "namespace": "ops", "creationTimestamp": old},
        "spec": {"tier": "db", "duration": "1h"},
    }));
    assert_eq!(expired["metadata"]["creationTimestamp"], old);
    assert_ne!(expired["metadata"]["uid"], uid);
    assert_eq!(fake.get_elevation("ops", "old"), Some(expired));
    assert_eq!(fake.get_elevation("default", "old"), None);
    assert_eq!(fake.get_pod("ops", "old"), None);
}

#[test]
fn wait_for_elevation_status_sees_a_patch() {
    let fake = FakeKube::start(NODE);
    fake.upsert_elevation(elevation("default", "e", json!({})));
    let none = fake
        .wait_for_elevation_status("default", "e", Duration::from_millis(200), |s| !s.is_null());
    assert_eq!(none, None);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            let (code, body) = raw(
                &fake,
                "PATCH",
                "/apis/tiergate.io/v1alpha1/namespaces/default/tierelevations/e/status",
                "Content-Type: application/merge-patch+json; charset=utf-8\r\n",
                r#"{"status":{"phase":"Active","expiresAt":"2030-01-01T00:00:00Z"}}"#,
            );
            assert_eq!(code, 200, "{body}");
        });
        let got = fake
            .wait_for_elevation_status("default", "e", WAIT, |s| s["phase"] == "Active")
            .expect("status within WAIT");
        assert_eq!(got["status"]["expiresAt"], "2030-01-01T00:00:00Z");
    });
    assert!(fake.requests().iter().any(
        |r| r == "PATCH /apis/tiergate.io/v1alpha1/namespaces/default/tierelevations/e/status"
    ));
}

#[test]
fn rfc3339_seconds_formats_utc() {
    let at = |s: u64| rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_735_689_600), "2025-01-01T00:00:00Z");
    assert_eq!(at(1_735_689_599), "2024-12-31T23:59:59Z");
    assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
}
