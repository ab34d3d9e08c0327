//! `spec.dns.scope: pod` on the real kernel, with pods laid out as kubelet
//! does (cgroupfs driver) and their identity from a fake API server: an
//! answer one container asked for opens its address for the other
//! containers of its pod in the same tier, and for nobody else (another
//! pod of the tier, a container of the pod in another tier, a workload of
//! the tier that is no pod).

use serde_json::Value;
use tiergate_tests::dns_world::{NAMES, RESOLVER, World, dns_policy, eventually};
use tiergate_tests::kubeapi::{FakeKube, pod};

const NODE: &str = "test-node";
const UID_A: &str = "0b8c0d47-3c0b-4a53-9f0e-6c3f2f3b9a11";
const UID_B: &str = "1c9d1e58-4d1c-4b64-8a1f-7d4a3a4cab22";

fn cid(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn container(uid: &str, n: u8) -> String {
    format!("kubepods/besteffort/pod{uid}/{}", cid(n))
}

/// The DNS tests' policy with `scope: pod`; the `agents` namespace's pods
/// are in `t0`, except their `side` containers (in `locked`).
fn policy(root: &str) -> String {
    dns_policy(root, "enforce", NAMES)
        .replace(
            &format!("resolvers: [\"{RESOLVER}\"]"),
            &format!("resolvers: [\"{RESOLVER}\"]\n    scope: pod"),
        )
        .replace(
            "  bindings:\n",
            "  bindings:\n    - tier: locked\n      match:\n        namespace: agents\n        \
             container: side\n    - tier: t0\n      match:\n        namespace: agents\n",
        )
}

#[test]
fn pod_scope_opens_an_answer_for_the_askers_pod_in_its_tier_only() {
    let mut w = World::new("dnspod");
    w.f.cgroup("kubepods/besteffort");
    w.f.cgroup("t0/b");
    let kube = FakeKube::start(NODE);
    let kc = kube.write_kubeconfig(&w.f.dir);
    let root = w.f.cg_path.clone();
    w.f.start_agent_with(
        &policy(&root),
        &["--kubeconfig", kc.to_str().expect("utf-8")],
    );
    kube.upsert_pod(pod(
        "agents",
        "p1",
        UID_A,
        "default",
        &[],
        &[("tool", &cid(1)), ("helper", &cid(2)), ("side", &cid(3))],
    ));
    kube.upsert_pod(pod(
        "agents",
        "p2",
        UID_B,
        "default",
        &[],
        &[("x", &cid(4))],
    ));
    let (tool, helper, side, other) = (
        container(UID_A, 1),
        container(UID_A, 2),
        container(UID_A, 3),
        container(UID_B, 4),
    );
    for c in [&tool, &helper, &side, &other] {
        w.f.cgroup(c);
    }
    // Each container known with its pod and tier before the lookup.
    for (c, tier) in [
        (&tool, "t0"),
        (&helper, "t0"),
        (&side, "locked"),
        (&other, "t0"),
    ] {
        let path = w.f.cg(c);
        eventually(&format!("{c} resolved in {tier}"), || {
            let Some((200, body)) = w.f.agent.as_ref().expect("agent").get("/inventory") else {
                return false;
            };
            let inv: Value = serde_json::from_str(&body).unwrap_or_default();
            inv["workloads"].as_array().is_some_and(|ws| {
                ws.iter().any(|r| {
                    r["cgroup_path"] == path.as_str()
                        && r["pod_state"] == "resolved"
                        && r["tier"] == tier
                })
            })
        });
    }
    w.warm_up("t0/a");

    assert_eq!(
        w.resolve_connect(&tool, "www.example.test", 443),
        "ok 198.18.0.12"
    );
    // The pod-mate of the tier never asked: the answer opened it for it,
    // on the rule's ports only.
    assert_eq!(w.f.tcp(&helper, "198.18.0.12:443"), "ok");
    assert_eq!(w.f.tcp(&helper, "198.18.0.12:80"), "EPERM");
    // Not for the pod's container in another tier, another pod of the
    // tier, or a workload of the tier that is no pod.
    assert_eq!(w.f.tcp(&side, "198.18.0.12:443"), "EPERM");
    assert_eq!(w.f.tcp(&other, "198.18.0.12:443"), "EPERM");
    assert_eq!(w.f.tcp("t0/b", "198.18.0.12:443"), "EPERM");
}
