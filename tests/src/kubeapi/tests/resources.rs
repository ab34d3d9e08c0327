//! Pods as before, and pods and TierElevations not seeing each other.

use ::kube::api::{Api, ListParams};
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;
use crate::kubeapi::{FakeKube, add_ephemeral_container, add_init_container, on_node, pod};

#[tokio::test]
async fn pods_and_elevations_do_not_see_each_other() {
    let fake = FakeKube::start(NODE);
    let sa = "default";
    fake.upsert_pod(pod("default", "x", "uid-x", sa, &[], &[("c", "c0")]));
    fake.upsert_elevation(elevation("default", "x", json!({"tier": "db"})));
    let rv = fake.resource_version().to_string();

    let pods: Api<Pod> = Api::all(client(&fake));
    let lp = ListParams::default();
    let pod_list = pods.list(&lp).await.expect("list pods");
    assert_eq!(pod_list.items.len(), 1);
    assert_eq!(
        pod_list.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    let el_list = elevations(&fake).list(&lp).await.expect("list elevations");
    assert_eq!(el_list.items.len(), 1);
    assert_eq!(el_list.items[0].data["spec"]["tier"], "db");
    assert_eq!(
        el_list.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    let one_pod: Api<Pod> = Api::namespaced(client(&fake), "default");
    assert!(one_pod.get("x").await.expect("get pod").spec.is_some());
    let e = elevations_in(&fake, "default").get("x").await.expect("get");
    assert_eq!(e.types.expect("type").kind, "TierElevation");

    // Field selectors: pods' labels as before; custom resources only
    // metadata.name and metadata.namespace (else 400, as a real server).
    let on_node = format!("spec.nodeName={NODE}");
    let by_node = pods.list(&fields(&on_node)).await;
    assert_eq!(by_node.expect("pods by node").items.len(), 1);
    let els = elevations(&fake);
    let named = els.list(&fields("metadata.name=x")).await;
    assert_eq!(named.expect("by name").items.len(), 1);
    let elsewhere = els.list(&fields("metadata.namespace=ops")).await;
    assert_eq!(elsewhere.expect("by namespace").items.len(), 0);
    let by_spec = els.list(&fields("spec.tier=db")).await;
    assert_eq!(api_error(by_spec), (400, "BadRequest".into()));
    let by_node = els.list(&fields(&on_node)).await;
    assert_eq!(api_error(by_node), (400, "BadRequest".into()));

    let pod_cfg = watcher::Config::default().fields(&format!("spec.nodeName={NODE}"));
    let mut pod_stream = watcher::watcher(pods, pod_cfg).boxed();
    let mut el_stream = watcher::watcher(elevations(&fake), watcher::Config::default()).boxed();
    assert_eq!(
        next_n(&mut pod_stream, 3).await,
        ["Init", "InitApply default/x", "InitDone"]
    );
    assert_eq!(
        next_n(&mut el_stream, 3).await,
        ["Init", "InitApply default/x", "InitDone"]
    );
    fake.upsert_elevation(elevation("default", "e2", json!({})));
    fake.upsert_pod(pod("default", "p2", "uid-p2", sa, &[], &[("c", "c2")]));
    assert_eq!(next_n(&mut pod_stream, 1).await, ["Apply default/p2"]);
    assert_eq!(next_n(&mut el_stream, 1).await, ["Apply default/e2"]);
    assert!(fake.delete_pod("default", "x"));
    assert!(fake.get_elevation("default", "x").is_some());
    assert!(fake.delete_elevation("default", "e2"));
    assert!(fake.get_pod("default", "p2").is_some());
    assert_eq!(next_n(&mut pod_stream, 1).await, ["Delete default/x"]);
    assert_eq!(next_n(&mut el_stream, 1).await, ["Delete default/e2"]);
}

#[tokio::test]
async fn pod_watch_behaves_as_before() {
    let fake = FakeKube::start(NODE);
    let sa = "default";
    fake.upsert_pod(pod(
        "ops",
        "a-0",
        "uid-a0",
        sa,
        &[("app", "a")],
        &[("c", "c0")],
    ));
    fake.upsert_pod(on_node(
        pod("ops", "b-0", "uid-b0", sa, &[("app", "b")], &[("c", "c1")]),
        "node-b",
    ));
    let pods: Api<Pod> = Api::all(client(&fake));
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={NODE}"));
    let mut stream = watcher::watcher(pods.clone(), cfg)
        .default_backoff()
        .boxed();
    assert_eq!(
        next_n(&mut stream, 3).await,
        ["Init", "InitApply ops/a-0", "InitDone"]
    );
    // Leaving the node is a DELETED, arriving an ADDED.
    let mut a = fake.get_pod("ops", "a-0").expect("a-0");
    a["spec"]["nodeName"] = "node-b".into();
    fake.upsert_pod(a);
    assert_eq!(next_n(&mut stream, 1).await, ["Delete ops/a-0"]);
    let mut b = fake.get_pod("ops", "b-0").expect("b-0");
    b["spec"]["nodeName"] = NODE.into();
    fake.upsert_pod(b);
    assert_eq!(next_n(&mut stream, 1).await, ["Apply ops/b-0"]);
    // Elevation changes in between move the resourceVersion only.
    fake.upsert_elevation(elevation("ops", "e", json!({})));
    fake.upsert_pod(add_init_container(
        pod("ops", "c-0", "uid-c0", sa, &[], &[("c", "c3")]),
        "init",
        "c4",
        true,
    ));
    match next(&mut stream).await {
        Event::Apply(p) => {
            assert_eq!(p.metadata.name.as_deref(), Some("c-0"));
            let st = p.status.expect("status");
            assert!(
                st.init_container_statuses.expect("init")[0].ready,
                "sidecar ready"
            );
        }
        ev => panic!("expected Apply ops/c-0, got {}", describe(&ev)),
    }
    fake.expire_watches();
    assert_eq!(
        next_n(&mut stream, 4).await,
        ["Init", "InitApply ops/b-0", "InitApply ops/c-0", "InitDone"]
    );
    fake.go_down();
    fake.come_back();
    fake.upsert_pod(add_ephemeral_container(
        pod("ops", "d-0", "uid-d0", sa, &[], &[("c", "c5")]),
        "debug",
        "c6",
    ));
    assert_eq!(next_n(&mut stream, 1).await, ["Apply ops/d-0"]);
    let labelled = pods
        .list(&ListParams::default().labels("app in (a,b)"))
        .await
        .expect("list by label");
    assert_eq!(labelled.items.len(), 2);
    assert_eq!(api_error(pods.list(&fields("spec.bogus=1")).await).0, 400);
}

#[test]
fn bookmarks_lists_and_discovery_name_their_resource() {
    let fake = FakeKube::start(NODE);
    fake.upsert_pod(pod("default", "p", "uid-p", "default", &[], &[("c", "c0")]));
    let rv = fake.resource_version();
    let (code, body) = raw(
        &fake,
        "GET",
        "/apis/tiergate.io/v1alpha1/tierelevations",
        "",
        "",
    );
    assert_eq!(code, 200);
    let list: Value = serde_json::from_str(&body).expect("list");
    assert_eq!(list["kind"], "TierElevationList");
    assert_eq!(list["apiVersion"], "tiergate.io/v1alpha1");
    assert_eq!(list["items"], json!([]));
    assert_eq!(list["metadata"]["resourceVersion"], rv.to_string());

    fake.upsert_elevation(elevation("default", "e", json!({})));
    fake.send_bookmarks();
    let target = format!(
        "/apis/tiergate.io/v1alpha1/namespaces/default/tierelevations?watch=true&\
         resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"
    );
    let (code, body) = raw(&fake, "GET", &target, "", "");
    assert_eq!(code, 200);
    let events = json_lines(&body);
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["ADDED", "BOOKMARK"], "{events:?}");
    for e in &events {
        assert_eq!(e["object"]["kind"], "TierElevation");
        assert_eq!(e["object"]["apiVersion"], "tiergate.io/v1alpha1");
    }
    let target = format!(
        "/api/v1/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"
    );
    let events = json_lines(&raw(&fake, "GET", &target, "", "").1);
    assert_eq!(events.len(), 1, "the elevation is not a pod: {events:?}");
    assert_eq!(events[0]["type"], "BOOKMARK");
    assert_eq!(events[0]["object"]["kind"], "Pod");

    let (_, body) = raw(&fake, "GET", "/apis", "", "");
    let groups: Value = serde_json::from_str(&body).expect("APIGroupList");
    assert_eq!(groups["groups"][0]["name"], "tiergate.io");
    assert_eq!(
        groups["groups"][0]["preferredVersion"]["groupVersion"],
        "tiergate.io/v1alpha1"
    );
    let (_, body) = raw(&fake, "GET", "/apis/tiergate.io/v1alpha1", "", "");
    let resources: Value = serde_json::from_str(&body).expect("APIResourceList");
    let names: Vec<&str> = resources["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["tierelevations", "tierelevations/status"]);
}
