//! Kubernetes workload identity on the real kernel: cgroup trees laid out
//! exactly as kubelet does (both cgroup drivers), pod metadata from a fake
//! API server that speaks the real list/watch protocol, and real verdicts.

use std::time::{Duration, Instant};

use serde_json::Value;
use tiergate_tests::kubeapi::{FakeKube, pod};
use tiergate_tests::{Fixture, is_conn, tg};

const NODE: &str = "test-node";
const UID_A: &str = "0b8c0d47-3c0b-4a53-9f0e-6c3f2f3b9a11";
const UID_B: &str = "1c9d1e58-4d1c-4b64-8a1f-7d4a3a4cab22";
const UID_C: &str = "2dae2f69-5e2d-4c75-9b2a-8e5b4b5dbc33";

fn cid(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

fn policy(root: &str) -> String {
    format!(
        r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: pods
spec:
  trustDomain: corp.example
  defaultTier: unassigned
  tiers:
    - name: web
      egress:
        - cidrs: ["10.20.0.0/16"]
    - name: meta
      metadata: allow
      egress:
        - cidrs: ["10.30.0.0/16"]
    - name: ops
      egress:
        - cidrs: ["10.20.0.0/16", "10.30.0.0/16"]
    - name: hosttier
      egress: []
    - name: unassigned
      egress: []
  bindings:
    - tier: meta
      match:
        namespace: agents
        serviceAccount: retriever
        container: tool
    - tier: web
      match:
        spiffeId: "spiffe://corp.example/ns/agents/sa/*"
    - tier: ops
      match:
        namespace: ops
        podLabels: {{app: fetcher}}
    - tier: hosttier
      match:
        cgroupPath: "{root}/system.slice/**"
"#
    )
}

/// systemd-driver container cgroup (relative to the fixture root).
fn systemd_cg(qos: &str, uid: &str, cid: &str) -> String {
    let u = uid.replace('-', "_");
    match qos {
        "guaranteed" => format!("kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{cid}.scope"),
        q => format!(
            "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{u}.slice/cri-containerd-{cid}.scope"
        ),
    }
}

/// cgroupfs-driver container cgroup.
fn cgroupfs_cg(qos: &str, uid: &str, cid: &str) -> String {
    format!("kubepods/{qos}/pod{uid}/{cid}")
}

struct World {
    f: Fixture,
    kube: FakeKube,
}

fn world(name: &str) -> World {
    let mut f = Fixture::new(name);
    // kubelet creates the QoS levels at start, before any pod.
    for d in [
        "kubepods.slice/kubepods-burstable.slice",
        "kubepods.slice/kubepods-besteffort.slice",
        "kubepods/besteffort",
        "kubepods/burstable",
        "system.slice",
    ] {
        f.cgroup(d);
    }
    let kube = FakeKube::start(NODE);
    let kc = kube.write_kubeconfig(&f.dir);
    let p = policy(&f.cg_path.clone());
    f.start_agent_with(&p, &["--kubeconfig", kc.to_str().unwrap()]);
    World { f, kube }
}

impl World {
    fn inventory(&self) -> Value {
        let (status, body) = self
            .f
            .agent
            .as_ref()
            .unwrap()
            .get("/inventory")
            .expect("inventory");
        assert_eq!(status, 200);
        serde_json::from_str(&body).expect("inventory json")
    }

    fn row(&self, rel: &str) -> Option<Value> {
        let path = self.f.cg(rel);
        self.inventory()["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["cgroup_path"] == path.as_str())
            .cloned()
    }

    /// Waits until the agent lists `rel` with `pred` true.
    fn wait_row(&self, rel: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(r) = self.row(rel)
                && pred(&r)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{rel}: not {what} within 15 s; row: {:?}",
                self.row(rel)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resolved(&self, rel: &str) -> Value {
        self.wait_row(rel, "resolved", |r| r["pod_state"] == "resolved")
    }
}

#[test]
fn container_service_account_and_spiffe_bindings_with_identity_in_events() {
    let w = world("k8sbind");
    w.kube.upsert_pod(pod(
        "agents",
        "retriever-0",
        UID_A,
        "retriever",
        &[("app", "retriever")],
        &[("tool", &cid(1)), ("helper", &cid(2))],
    ));
    let tool = systemd_cg("burstable", UID_A, &cid(1));
    let helper = systemd_cg("burstable", UID_A, &cid(2));
    w.f.cgroup(&tool);
    w.f.cgroup(&helper);
    let r = w.resolved(&tool);
    assert_eq!(r["tier"], "meta");
    assert_eq!(r["container"], "tool");
    assert_eq!(
        r["spiffe_id"],
        "spiffe://corp.example/ns/agents/sa/retriever"
    );
    assert_eq!(w.resolved(&helper)["tier"], "web");

    // Per-container tiers inside one pod.
    assert_eq!(w.f.tcp(&tool, "10.30.0.1:80"), "ok");
    assert_eq!(w.f.tcp(&tool, "10.20.0.1:80"), "EPERM");
    assert_eq!(w.f.tcp(&tool, "169.254.169.254:80"), "ok");
    assert_eq!(w.f.tcp(&helper, "10.20.0.1:80"), "ok");
    assert_eq!(w.f.tcp(&helper, "10.30.0.1:80"), "EPERM");
    assert_eq!(w.f.tcp(&helper, "169.254.169.254:80"), "EPERM");

    let e = w.f.wait_event("tool deny", |e| {
        is_conn(e, "10.20.0.1", 80, "deny") && tg(e)["tier"] == "meta"
    });
    let wl = &tg(&e)["workload"];
    assert_eq!(wl["namespace"], "agents");
    assert_eq!(wl["pod"], "retriever-0");
    assert_eq!(wl["pod_uid"], UID_A);
    assert_eq!(wl["service_account"], "retriever");
    assert_eq!(wl["container"], "tool");
    assert_eq!(wl["container_id"], cid(1));
    assert_eq!(
        wl["spiffe_id"],
        "spiffe://corp.example/ns/agents/sa/retriever"
    );
    assert_eq!(wl["cgroup_path"], w.f.cg(&tool));
    let m = w.f.wait_event("helper metadata deny", |e| {
        is_conn(e, "169.254.169.254", 80, "deny")
    });
    assert_eq!(tg(&m)["workload"]["container"], "helper");
    assert_eq!(tg(&m)["tier"], "web");
}

#[test]
fn cgroupfs_driver_label_binding_guaranteed_and_host_network_pods() {
    let w = world("k8sfs");
    let mut p = pod(
        "ops",
        "fetcher-1",
        UID_B,
        "default",
        &[("app", "fetcher")],
        &[("main", &cid(3))],
    );
    p["spec"]["hostNetwork"] = true.into();
    w.kube.upsert_pod(p);
    w.kube
        .upsert_pod(pod("agents", "g-0", UID_C, "other", &[], &[("c", &cid(4))]));
    let fetcher = cgroupfs_cg("besteffort", UID_B, &cid(3));
    let guaranteed = systemd_cg("guaranteed", UID_C, &cid(4));
    w.f.cgroup(&fetcher);
    w.f.cgroup(&guaranteed);
    assert_eq!(w.resolved(&fetcher)["tier"], "ops");
    assert_eq!(w.resolved(&guaranteed)["tier"], "web");
    assert_eq!(w.f.tcp(&fetcher, "10.30.0.1:80"), "ok");
    assert_eq!(w.f.tcp(&fetcher, "169.254.169.254:80"), "EPERM");
    assert_eq!(w.f.tcp(&guaranteed, "10.20.0.1:80"), "ok");
    assert_eq!(w.f.tcp(&guaranteed, "10.30.0.1:80"), "EPERM");
    // A pod-level process (no container segment) has the pod's identity.
    let pod_level = format!("kubepods/besteffort/pod{UID_B}");
    assert_eq!(w.resolved(&pod_level)["tier"], "ops");
    // A cgroupPath binding still places host services.
    w.f.known_cgroup("system.slice/agentd.service");
    assert_eq!(
        w.f.tcp("system.slice/agentd.service", "10.20.0.1:80"),
        "EPERM"
    );
}

#[test]
fn unresolved_pod_is_in_default_tier_until_its_identity_arrives() {
    let w = world("k8sunres");
    let cg = systemd_cg("besteffort", UID_A, &cid(5));
    w.f.cgroup(&cg);
    let r = w.wait_row(&cg, "listed", |_| true);
    assert_eq!(r["pod_state"], "unresolved");
    assert_eq!(r["tier"], "unassigned");
    // From its first connect: the default tier (fail closed).
    assert_eq!(w.f.tcp(&cg, "10.20.0.1:80"), "EPERM");
    let e =
        w.f.wait_event("unresolved deny", |e| is_conn(e, "10.20.0.1", 80, "deny"));
    assert_eq!(tg(&e)["tier"], "unassigned");
    assert_eq!(tg(&e)["workload"]["pod_state"], "unresolved");
    // The pod appears while traffic runs: its tier applies on the next connect.
    w.kube.upsert_pod(pod(
        "agents",
        "late-0",
        UID_A,
        "late",
        &[],
        &[("c", &cid(5))],
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.f.tcp(&cg, "10.20.0.1:80") != "ok" {
        assert!(
            Instant::now() < deadline,
            "pod identity not applied within 15 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(w.row(&cg).unwrap()["tier"], "web");
    // A new container cgroup of a known pod created while the agent is dead
    // is judged by the kernel alone: defaultTier, never open.
    let mut w = w;
    w.f.agent.as_mut().unwrap().kill9();
    let fresh = systemd_cg("besteffort", UID_A, &cid(6));
    assert_eq!(w.f.tcp(&fresh, "10.20.0.1:80"), "EPERM");
}

#[test]
fn deleted_pods_leave_no_entries_and_relists_apply_changes() {
    let w = world("k8sdel");
    w.kube
        .upsert_pod(pod("agents", "a-0", UID_A, "a", &[], &[("c", &cid(7))]));
    let cg = systemd_cg("burstable", UID_A, &cid(7));
    w.f.cgroup(&cg);
    assert_eq!(w.resolved(&cg)["tier"], "web");
    let agent = w.f.agent.as_ref().unwrap();
    let before = agent.metric("tiergate_cgroups_known").unwrap();

    // A relist after 410 Gone carries a change made meanwhile.
    w.kube.expire_watches();
    let mut p = pod(
        "ops",
        "a-0",
        UID_A,
        "a",
        &[("app", "fetcher")],
        &[("c", &cid(7))],
    );
    p["metadata"]["namespace"] = "ops".into();
    w.kube.upsert_pod(p);
    w.wait_row(&cg, "moved to tier ops", |r| r["tier"] == "ops");

    // Pod deleted and its cgroups removed (as kubelet does): entries gone.
    w.kube.delete_pod("ops", "a-0");
    w.wait_row(&cg, "unresolved after delete", |r| {
        r["pod_state"] == "unresolved"
    });
    let pod_dir = w.f.cg_root.join(&cg);
    std::fs::remove_dir(&pod_dir).unwrap();
    std::fs::remove_dir(pod_dir.parent().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.row(&cg).is_some() || agent.metric("tiergate_cgroups_known").unwrap() > before - 2.0 {
        assert!(
            Instant::now() < deadline,
            "deleted pod's cgroups still known"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn api_server_down_keeps_what_is_known_and_opens_nothing() {
    let w = world("k8sdown");
    w.kube
        .upsert_pod(pod("agents", "k-0", UID_A, "k", &[], &[("c", &cid(8))]));
    let known = systemd_cg("burstable", UID_A, &cid(8));
    w.f.cgroup(&known);
    assert_eq!(w.resolved(&known)["tier"], "web");
    w.kube.go_down();
    std::thread::sleep(Duration::from_millis(500));
    // Known pods keep their tier; a new pod stays in the default tier.
    assert_eq!(w.f.tcp(&known, "10.20.0.1:80"), "ok");
    assert_eq!(w.f.tcp(&known, "10.30.0.1:80"), "EPERM");
    let newcomer = systemd_cg("burstable", UID_B, &cid(9));
    w.f.cgroup(&newcomer);
    assert_eq!(
        w.wait_row(&newcomer, "listed", |_| true)["tier"],
        "unassigned"
    );
    assert_eq!(w.f.tcp(&newcomer, "10.20.0.1:80"), "EPERM");
    // The API returns: the newcomer resolves.
    w.kube
        .upsert_pod(pod("agents", "n-0", UID_B, "n", &[], &[("c", &cid(9))]));
    w.kube.come_back();
    assert_eq!(w.resolved(&newcomer)["tier"], "web");
    assert!(
        w.f.agent
            .as_ref()
            .unwrap()
            .metric("tiergate_pod_watch_errors_total")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn explain_and_inventory_name_the_pod_identity() {
    let w = world("k8scli");
    w.kube.upsert_pod(pod(
        "agents",
        "retriever-0",
        UID_A,
        "retriever",
        &[],
        &[("tool", &cid(1))],
    ));
    let tool = systemd_cg("burstable", UID_A, &cid(1));
    let dir = w.f.cgroup(&tool);
    w.resolved(&tool);
    let mut child = tiergate_tests::hold(&dir);
    let admin = format!("127.0.0.1:{}", w.f.agent.as_ref().unwrap().port);
    let policy = w.f.dir.join("policy.yaml");
    let pid = child.id().to_string();
    let (code, out, err) = w.f.tiergate(&[
        "policy",
        "explain",
        "--policy",
        policy.to_str().unwrap(),
        "--pid",
        &pid,
        "--to",
        "10.20.0.1:80",
        "--agent",
        &admin,
        "--json",
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["tier"], "meta");
    assert_eq!(j["binding"], 0);
    assert_eq!(j["pod"]["namespace"], "agents");
    assert_eq!(j["pod"]["container"], "tool");
    assert_eq!(
        j["spiffe_id"],
        "spiffe://corp.example/ns/agents/sa/retriever"
    );
    assert_eq!(j["verdict"], "deny");

    let (code, out, err) = w.f.tiergate(&["inventory", "--admin-addr", &admin]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains(&w.f.cg(&tool)))
        .unwrap_or_else(|| panic!("no row:\n{out}"));
    assert!(
        line.contains("meta")
            && line.contains("yes")
            && line.contains("spiffe://corp.example/ns/agents/sa/retriever container=tool"),
        "{line}"
    );
    let (code, out, _) =
        w.f.tiergate(&["inventory", "--admin-addr", &admin, "--json", "--enforced"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        doc["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["enforced"] == true)
    );
    assert_eq!(doc["policy"]["name"], "pods");
}
