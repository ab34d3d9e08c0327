//! Tier assignment: which tier a workload (a cgroup, maybe a pod container)
//! is in, and which tier the kernel should give a cgroup's descendants that
//! user space has not seen yet.
//!
//! The guiding rule is CONTRACT section 2's "fail closed": a pod is always in
//! a tier (its binding's, else `defaultTier`), including while its identity is
//! unknown, and a cgroup that a binding covers is enforced from its first
//! connect. Where the answer cannot be known yet, the answer is `defaultTier`,
//! never "not enforced".

use std::collections::BTreeMap;

use super::glob::Coverage;
use super::model::{HOST_TIER_NAME, Match, Policy};

/// The tier of a workload: a tier of the policy, or host (not enforced).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TierRef {
    /// Not a pod and no binding: not enforced, metadata accesses reported.
    Host,
    /// Index into `Policy::tiers` (also the kernel tier id).
    Tier(usize),
}

impl TierRef {
    /// The kernel's tier id: the index, or `agent_common::TIER_HOST`.
    pub fn kernel_id(self) -> u32 {
        match self {
            TierRef::Host => agent_common::TIER_HOST,
            // Tier indices are < MAX_TIERS (validated), so this never truncates.
            TierRef::Tier(i) => i as u32,
        }
    }
}

/// Kubernetes identity of the pod (and container) a cgroup belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Pod service account.
    pub service_account: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Container name, when the cgroup is one container's.
    pub container: Option<String>,
    /// Container runtime id, when known.
    pub container_id: Option<String>,
}

/// What assignment looks at: the cgroup path and, for a resolved pod, its
/// identity.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    /// cgroup v2 path as `/proc/PID/cgroup` shows it after `0::`.
    pub cgroup_path: &'a str,
    /// Pod identity, once resolved; `None` for host cgroups and unresolved pods.
    pub pod: Option<&'a PodIdentity>,
}

/// The result of [`Policy::assign`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The workload's tier.
    pub tier: TierRef,
    /// Index of the binding that decided it, if one matched.
    pub binding: Option<usize>,
}

/// A cgroup at or under kubelet's pod hierarchy (`/kubepods.slice/...`,
/// `/kubepods/burstable/...`, kind's `/kubelet.slice/kubelet-kubepods.slice/...`)
/// belongs to a pod; see `identity::kubepods` for the layouts.
pub fn is_pod_cgroup(path: &str) -> bool {
    crate::identity::kubepods::is_under_kubepods(path)
}

impl Policy {
    /// `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`: the SPIFFE ID of a pod.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        )
    }

    /// The name events use for a tier: the tier's name, or `host`.
    pub fn tier_name(&self, tier: TierRef) -> &str {
        match tier {
            TierRef::Host => HOST_TIER_NAME,
            TierRef::Tier(i) => self
                .tiers
                .get(i)
                .map_or(HOST_TIER_NAME, |t| t.name.as_str()),
        }
    }

    /// The tier of a workload. Bindings are tried in order and the first
    /// whose keys all hold wins. Pod keys never match a workload without pod
    /// identity. Without a binding, a pod, or a cgroup under `kubepods*`
    /// whose identity is not resolved yet, is in `defaultTier` (fail closed);
    /// anything else is host.
    pub fn assign(&self, w: &Workload<'_>) -> Assignment {
        for (i, b) in self.bindings.iter().enumerate() {
            if self.binding_matches(&b.matcher, w) {
                return Assignment {
                    tier: TierRef::Tier(b.tier),
                    binding: Some(i),
                };
            }
        }
        let tier = if w.pod.is_some() || is_pod_cgroup(w.cgroup_path) {
            TierRef::Tier(self.default_tier)
        } else {
            TierRef::Host
        };
        Assignment {
            tier,
            binding: None,
        }
    }

    fn binding_matches(&self, m: &Match, w: &Workload<'_>) -> bool {
        if let Some(g) = &m.cgroup_path
            && !g.matches(w.cgroup_path)
        {
            return false;
        }
        if !m.has_pod_keys() {
            return true;
        }
        let Some(pod) = w.pod else {
            return false;
        };
        m.namespace.as_ref().is_none_or(|ns| *ns == pod.namespace)
            && m.service_account
                .as_ref()
                .is_none_or(|sa| *sa == pod.service_account)
            && m.pod_labels
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
            && m.container
                .as_ref()
                .is_none_or(|c| pod.container.as_ref() == Some(c))
            && m.spiffe_id
                .as_ref()
                .is_none_or(|p| p.matches(&self.spiffe_id(&pod.namespace, &pod.service_account)))
    }

    /// The tier the kernel gives a descendant of `cgroup_path` that user
    /// space has not learned yet (`CgroupTier::child_tier`).
    ///
    /// Bindings are walked in order, as [`Policy::assign`] would for the
    /// unknown descendant, but all that is known is that its path is under
    /// `cgroup_path`:
    /// - a `cgroupPath`-only binding that matches no descendant is skipped;
    ///   one that matches every descendant decides (no earlier binding could
    ///   have matched one); one that matches only some makes the answer
    ///   depend on names we do not have, so the answer is `defaultTier`.
    /// - a binding with pod keys could match a descendant only if it is a
    ///   pod. Under a `kubepods*` cgroup it might or might not (identity is
    ///   not known), so the answer is `defaultTier`; elsewhere, or when its
    ///   `cgroupPath` matches no descendant, it is skipped.
    /// - when no binding can apply, descendants of a pod cgroup are pods
    ///   (`defaultTier`) and other descendants are host.
    ///
    /// Fail closed: every ambiguous case yields `defaultTier`, which is what
    /// an unresolved pod gets anyway, so a process never runs unenforced in
    /// a cgroup a binding might cover. The price is that a host cgroup
    /// created under an ambiguous path is enforced with `defaultTier` until
    /// user space learns its path and assigns it properly.
    pub fn child_tier(&self, cgroup_path: &str) -> TierRef {
        let pod_path = is_pod_cgroup(cgroup_path);
        let ambiguous = TierRef::Tier(self.default_tier);
        for b in &self.bindings {
            let cover = b
                .matcher
                .cgroup_path
                .as_ref()
                .map_or(Coverage::All, |g| g.descendants(cgroup_path));
            if cover == Coverage::None {
                continue;
            }
            if b.matcher.has_pod_keys() {
                if pod_path {
                    return ambiguous;
                }
                continue;
            }
            match cover {
                Coverage::All => return TierRef::Tier(b.tier),
                _ => return ambiguous,
            }
        }
        if pod_path {
            TierRef::Tier(self.default_tier)
        } else {
            TierRef::Host
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::with_spec;

    const SPEC: &str = r#"
spec:
  trustDomain: corp.example
  defaultTier: unassigned
  tiers:
    - name: t0
    - name: t1
    - name: t2
    - name: t3
    - name: unassigned
  bindings:
    - tier: t0                                  # 0
      match: {cgroupPath: "/agents/tier0/**"}
    - tier: t1                                  # 1
      match:
        namespace: agents
        serviceAccount: retriever
        podLabels: {app: retriever}
        container: tool
    - tier: t2                                  # 2
      match: {spiffeId: "spiffe://corp.example/ns/ops/sa/*"}
    - tier: t3                                  # 3
      match: {cgroupPath: "/kubepods.slice/**/sandboxed-*.scope"}
    - tier: t1                                  # 4
      match: {cgroupPath: "/jobs/*/**"}
    - tier: t2                                  # 5
      match: {cgroupPath: "/mixed/**", namespace: ci}
"#;

    fn policy() -> Policy {
        with_spec(SPEC)
    }

    fn pod(ns: &str, sa: &str, labels: &[(&str, &str)], container: Option<&str>) -> PodIdentity {
        PodIdentity {
            namespace: ns.into(),
            pod: "p-1".into(),
            pod_uid: "uid-1".into(),
            service_account: sa.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            container: container.map(str::to_owned),
            container_id: None,
        }
    }

    #[test]
    fn assign_table() {
        let p = policy();
        let tier = |n: &str| TierRef::Tier(p.tier_index(n).expect("tier"));
        let retriever = pod(
            "agents",
            "retriever",
            &[("app", "retriever"), ("x", "y")],
            Some("tool"),
        );
        let retriever_other_container =
            pod("agents", "retriever", &[("app", "retriever")], Some("side"));
        let retriever_no_label = pod("agents", "retriever", &[], Some("tool"));
        let ops = pod("ops", "deployer", &[], None);
        let ci = pod("ci", "builder", &[], None);
        let plain = pod("default", "default", &[], None);
        let kp = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope";
        let cases: Vec<(&str, Option<&PodIdentity>, TierRef, Option<usize>)> = vec![
            ("/agents/tier0", None, tier("t0"), Some(0)),
            ("/agents/tier0/job-1/x", None, tier("t0"), Some(0)),
            ("/agents/tier1", None, TierRef::Host, None),
            ("/system.slice/sshd.service", None, TierRef::Host, None),
            ("/", None, TierRef::Host, None),
            // Pod keys need every key to hold.
            (kp, Some(&retriever), tier("t1"), Some(1)),
            (
                kp,
                Some(&retriever_other_container),
                tier("unassigned"),
                None,
            ),
            (kp, Some(&retriever_no_label), tier("unassigned"), None),
            // SPIFFE ID built from the trust domain.
            (kp, Some(&ops), tier("t2"), Some(2)),
            // Unresolved pod: fail closed to defaultTier ...
            (kp, None, tier("unassigned"), None),
            // ... unless a cgroupPath-only binding matches it.
            (
                "/kubepods.slice/kubepods-pod9.slice/sandboxed-1.scope",
                None,
                tier("t3"),
                Some(3),
            ),
            // A pod with no binding: defaultTier even outside kubepods.
            (
                "/custom/runtime/pod",
                Some(&plain),
                tier("unassigned"),
                None,
            ),
            // Pod keys never match a non-pod workload.
            ("/mixed/a", None, TierRef::Host, None),
            ("/mixed/a", Some(&ci), tier("t2"), Some(5)),
            ("/jobs/42", None, tier("t1"), Some(4)),
            // First match wins: binding 0 precedes the pod binding.
            ("/agents/tier0/x", Some(&retriever), tier("t0"), Some(0)),
        ];
        for (path, pod, want_tier, want_binding) in cases {
            let got = p.assign(&Workload {
                cgroup_path: path,
                pod,
            });
            assert_eq!(got.tier, want_tier, "{path} {pod:?}");
            assert_eq!(got.binding, want_binding, "{path} {pod:?}");
        }
    }

    #[test]
    fn spiffe_id_format() {
        let p = policy();
        assert_eq!(
            p.spiffe_id("ops", "deployer"),
            "spiffe://corp.example/ns/ops/sa/deployer"
        );
    }

    #[test]
    fn child_tier_table() {
        let p = policy();
        let tier = |n: &str| TierRef::Tier(p.tier_index(n).expect("tier"));
        let default = tier("unassigned");
        let cases: &[(&str, TierRef)] = &[
            // Fully covered by binding 0.
            ("/agents/tier0", tier("t0")),
            ("/agents/tier0/deep/er", tier("t0")),
            // Only some descendants of /agents are under tier0: ambiguous.
            ("/agents", default),
            // Root: binding 0 covers some descendants -> fail closed.
            ("/", default),
            // Untouched host path.
            ("/system.slice", TierRef::Host),
            // /jobs/*/** matches every descendant of /jobs (any name, any depth).
            ("/jobs", tier("t1")),
            ("/jobs/7", tier("t1")),
            // Pod keys under kubepods: ambiguous.
            ("/kubepods.slice", default),
            ("/kubepods.slice/kubepods-pod1.slice", default),
            // Pod-key binding whose cgroupPath covers nothing here is skipped,
            // and outside kubepods pod keys are skipped.
            ("/mixed", TierRef::Host),
            ("/other", TierRef::Host),
        ];
        for (path, want) in cases {
            assert_eq!(p.child_tier(path), *want, "{path}");
        }
    }

    #[test]
    fn child_tier_without_pod_bindings() {
        let p = with_spec(
            r#"
spec:
  defaultTier: d
  tiers: [{name: a}, {name: d}]
  bindings:
    - tier: a
      match: {cgroupPath: "/kubepods.slice/kubepods-besteffort.slice/**"}
"#,
        );
        // Covered kubepods subtree: the binding's tier.
        assert_eq!(
            p.child_tier("/kubepods.slice/kubepods-besteffort.slice"),
            TierRef::Tier(0)
        );
        // Another kubepods subtree, no binding touches it: pods -> default.
        assert_eq!(
            p.child_tier("/kubepods.slice/kubepods-burstable.slice"),
            TierRef::Tier(1)
        );
        // /kubepods.slice: some descendants covered -> ambiguous -> default.
        assert_eq!(p.child_tier("/kubepods.slice"), TierRef::Tier(1));
        assert_eq!(p.child_tier("/system.slice"), TierRef::Host);
        // child_tier must agree with assign for every descendant it claims.
        for path in [
            "/kubepods.slice/kubepods-besteffort.slice/pod1/c1",
            "/kubepods.slice/kubepods-burstable.slice/pod1/c1",
        ] {
            let parent = &path[..path.rfind('/').expect("slash")];
            let got = p
                .assign(&Workload {
                    cgroup_path: path,
                    pod: None,
                })
                .tier;
            assert_eq!(p.child_tier(parent), got, "{path}");
        }
    }

    #[test]
    fn pod_key_bindings_make_pod_subtrees_ambiguous() {
        let p = with_spec(
            r#"
spec:
  defaultTier: d
  tiers: [{name: a}, {name: b}, {name: d}]
  bindings:
    - tier: b
      match: {namespace: privileged}
    - tier: a
      match: {cgroupPath: "/**"}
"#,
        );
        // A new pod under kubepods might be in namespace "privileged" (tier b)
        // or not (tier a): unknown until resolved, so fail closed.
        assert_eq!(
            p.child_tier("/kubepods.slice/kubepods-pod1.slice"),
            TierRef::Tier(2)
        );
        // Outside kubepods the pod binding cannot apply: /** decides.
        assert_eq!(p.child_tier("/system.slice"), TierRef::Tier(0));
        assert_eq!(p.child_tier("/"), TierRef::Tier(0));
    }

    #[test]
    fn kernel_ids_and_names() {
        let p = policy();
        assert_eq!(TierRef::Host.kernel_id(), agent_common::TIER_HOST);
        assert_eq!(TierRef::Tier(3).kernel_id(), 3);
        assert_eq!(p.tier_name(TierRef::Host), "host");
        assert_eq!(p.tier_name(TierRef::Tier(0)), "t0");
        assert!(is_pod_cgroup("/kubepods/burstable/pod1/abc"));
        assert!(!is_pod_cgroup("/system.slice/kubelet.service"));
    }
}
