//! Elevation through Kubernetes on the real kernel: `TierElevation` objects
//! served by the fake API server (the real list/watch protocol) become
//! grants on the node that runs their pod, with the status written back;
//! deleting the object revokes; refused, foreign and already-ended objects
//! grant nothing; a grant survives an agent restart and an object deleted
//! while the agent was down is revoked when it comes back.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tiergate_tests::kubeapi::{FakeKube, on_node, pod};
use tiergate_tests::{Fixture, tg};

/// The harness starts every agent with `--node-name test-node`.
const NODE: &str = "test-node";
const UID_A: &str = "3ebf3f7a-6f3e-4d86-8c3b-9f6c5c6ecd44";
const UID_B: &str = "4fc04f8b-7f4f-4e97-9d4c-a07d6d7fde55";
const T2_ONLY: &str = "10.30.0.1:80";
const WAIT: Duration = Duration::from_secs(15);

fn policy() -> String {
    r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: e2e-kube
spec:
  defaultTier: locked
  elevation:
    - from: t0
      to: t2
      maxDuration: 1m
  tiers:
    - name: t0
      egress:
        - cidrs: ["10.20.0.0/16"]
          ports: ["80"]
    - name: t1
      egress: []
    - name: t2
      egress:
        - cidrs: ["10.20.0.0/16", "10.30.0.0/16"]
    - name: locked
      egress: []
  bindings:
    - tier: t0
      match:
        namespace: agents
"#
    .to_string()
}

struct World {
    f: Fixture,
    kube: FakeKube,
    kubeconfig: String,
    /// The tool pod's container cgroup (relative to the fixture).
    tool: String,
}

fn world(name: &str) -> World {
    let mut f = Fixture::new(name);
    f.cgroup("kubepods.slice/kubepods-besteffort.slice");
    let kube = FakeKube::start(NODE);
    let kubeconfig = kube.write_kubeconfig(&f.dir).to_str().unwrap().to_string();
    let cid = "ab".repeat(32);
    kube.upsert_pod(pod(
        "agents",
        "tool-0",
        UID_A,
        "tool",
        &[],
        &[("main", &cid)],
    ));
    // The same namespace's pod on another node: not this agent's business.
    kube.upsert_pod(on_node(
        pod(
            "agents",
            "far-0",
            UID_B,
            "tool",
            &[],
            &[("main", &"cd".repeat(32))],
        ),
        "other-node",
    ));
    let tool = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope",
        UID_A.replace('-', "_")
    );
    f.cgroup(&tool);
    f.start_agent_with(&policy(), &["--kubeconfig", &kubeconfig]);
    let w = World {
        f,
        kube,
        kubeconfig,
        tool,
    };
    w.wait_tcp("the tool pod is t0", T2_ONLY, "EPERM");
    w.wait_tcp("the tool pod is t0", "10.20.0.1:80", "ok");
    w
}

impl World {
    fn wait_tcp(&self, what: &str, target: &str, want: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.f.tcp(&self.tool, target);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {target} gives {got}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn create(&self, name: &str, pod: &str, to: &str, duration: &str) -> Value {
        self.kube.upsert_elevation(json!({
            "metadata": {"name": name, "namespace": "agents"},
            "spec": {
                "pod": pod, "to": to, "duration": duration,
                "ticket": "INC-77", "reason": "restore the index", "requestedBy": "alice"
            }
        }))
    }

    /// Waits for the object's `status.phase`; returns the status.
    fn status(&self, name: &str, phase: &str) -> Value {
        self.kube
            .wait_for_elevation_status("agents", name, WAIT, |s| s["phase"] == phase)
            .map(|o| o["status"].clone())
            .unwrap_or_else(|| {
                panic!(
                    "{name}: no status {phase} within {WAIT:?}; object: {:?}",
                    self.kube.get_elevation("agents", name)
                )
            })
    }

    fn grants(&self) -> Vec<Value> {
        let (code, v, err) = self.f.elevate(&["list"]);
        assert_eq!(code, 0, "{err}");
        v["grants"].as_array().cloned().unwrap_or_default()
    }
}

#[test]
fn an_object_elevates_its_pod_until_deleted_with_status_and_events() {
    let w = world("kelev");
    w.create("debug-1", "tool-0", "t2", "1m");
    let st = w.status("debug-1", "Active");
    assert_eq!(st["node"], NODE);
    assert_eq!(st["from"], "t0");
    let id = st["grantId"].as_str().expect("grantId").to_string();
    assert!(st["expiresAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    w.wait_tcp("elevated", T2_ONLY, "ok");

    let ev = w.f.wait_event("allowed under the object's grant", |e| {
        tg(e)["kind"] == "connection"
            && e["dst_endpoint"]["ip"] == "10.30.0.1"
            && tg(e)["verdict"] == "allow"
    });
    let el = &tg(&ev)["elevation"];
    assert_eq!(el["id"], id.as_str());
    assert_eq!(el["ticket"], "INC-77");
    assert_eq!(el["granted_by"]["type"], "kubernetes");
    assert_eq!(el["granted_by"]["uid"], "alice");
    assert_eq!(tg(&ev)["workload"]["pod"], "tool-0");
    let rec = w.f.wait_event("grant record", |e| {
        e["class_uid"] == 3005 && e["activity_id"] == 1
    });
    assert_eq!(rec["metadata"]["correlation_uid"], id.as_str());

    let grants = w.grants();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["object"]["name"], "debug-1");
    assert_eq!(grants[0]["granted_by"]["id"], "kubernetes:alice");
    // Ends at creation + duration, whoever applies it.
    let created =
        w.kube.get_elevation("agents", "debug-1").unwrap()["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .to_string();
    let expires = grants[0]["expires_ms"].as_u64().unwrap();
    let created_s = std::process::Command::new("date")
        .args(["-u", "-d", &created, "+%s"])
        .output()
        .unwrap();
    let created_s: u64 = String::from_utf8_lossy(&created_s.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(expires, created_s * 1000 + 60_000);

    // Deleting the object revokes.
    assert!(w.kube.delete_elevation("agents", "debug-1"));
    w.wait_tcp("revoked by deletion", T2_ONLY, "EPERM");
    w.wait_tcp("its own tier still applies", "10.20.0.1:80", "ok");
    let end = w.f.wait_event("revoke record", |e| {
        e["class_uid"] == 3005
            && e["metadata"]["correlation_uid"] == id.as_str()
            && e["activity_id"] == 2
    });
    assert_eq!(tg(&end)["elevation"]["end"], "deleted");
    assert!(w.grants().is_empty());
}

#[test]
fn refused_foreign_and_ended_objects_grant_nothing_and_expiry_is_written_back() {
    let w = world("kelevref");
    w.create("wrong-pair", "tool-0", "t1", "1m");
    let st = w.status("wrong-pair", "Refused");
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("no elevation from `t0` to `t1`"),
        "{st}"
    );
    w.create("too-long", "tool-0", "t2", "5m");
    let st = w.status("too-long", "Refused");
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the maximum of 1m"),
        "{st}"
    );
    // Already over when first seen: created two hours ago for one minute.
    w.kube.upsert_elevation(json!({
        "metadata": {"name": "stale", "namespace": "agents", "creationTimestamp": "2020-01-01T00:00:00Z"},
        "spec": {"pod": "tool-0", "to": "t2", "duration": "1m",
                 "ticket": "INC-1", "reason": "old", "requestedBy": "alice"}
    }));
    let st = w.status("stale", "Expired");
    assert!(
        st["message"].as_str().unwrap().contains("ended before"),
        "{st}"
    );
    w.create("elsewhere", "far-0", "t2", "1m");
    assert_eq!(w.f.tcp(&w.tool, T2_ONLY), "EPERM");
    assert!(w.grants().is_empty());
    // Short grant: active, then denied again and written back as Expired.
    w.create("short", "tool-0", "t2", "3s");
    w.status("short", "Active");
    w.wait_tcp("elevated", T2_ONLY, "ok");
    let st = w.status("short", "Expired");
    assert!(st["grantId"].as_str().is_some());
    assert_eq!(w.f.tcp(&w.tool, T2_ONLY), "EPERM");
    // An object for a pod of another node got no status from this agent.
    let far = w.kube.get_elevation("agents", "elsewhere").unwrap();
    assert!(
        far["status"].is_null() || far["status"]["node"] != NODE,
        "{far}"
    );
    // The expired object never grants again, also not after a relist.
    w.kube.expire_watches();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.f.tcp(&w.tool, T2_ONLY), "EPERM");
    assert!(w.grants().is_empty());
}

#[test]
fn a_grant_survives_a_restart_and_a_deletion_while_down_revokes_it() {
    let mut w = world("kelevrst");
    w.create("keep", "tool-0", "t2", "1m");
    let id = w.status("keep", "Active")["grantId"]
        .as_str()
        .unwrap()
        .to_string();
    w.wait_tcp("elevated", T2_ONLY, "ok");

    w.f.agent.as_mut().unwrap().kill9();
    w.f.start_agent_with(&policy(), &["--kubeconfig", &w.kubeconfig.clone()]);
    w.wait_tcp("still elevated after the restart", T2_ONLY, "ok");
    std::thread::sleep(Duration::from_secs(1));
    let grants = w.grants();
    assert_eq!(grants.len(), 1, "one grant, not a second one: {grants:?}");
    assert_eq!(grants[0]["id"], id.as_str());

    w.f.agent.as_mut().unwrap().kill9();
    assert!(w.kube.delete_elevation("agents", "keep"));
    assert_eq!(
        w.f.tcp(&w.tool, T2_ONLY),
        "ok",
        "the kernel entry outlives the agent"
    );
    w.f.start_agent_with(&policy(), &["--kubeconfig", &w.kubeconfig.clone()]);
    w.wait_tcp("revoked after the relist", T2_ONLY, "EPERM");
    let end = w.f.wait_event("revoke record", |e| {
        e["class_uid"] == 3005
            && e["metadata"]["correlation_uid"] == id.as_str()
            && e["activity_id"] == 2
    });
    assert_eq!(tg(&end)["elevation"]["end"], "deleted");
    assert!(w.grants().is_empty());
}
