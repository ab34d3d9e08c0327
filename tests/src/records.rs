//! Policies and events as the tests write and read them.

use serde_json::Value;

/// A policy with one enforced tier bound to `<root>/t0/**`.
pub fn policy(root_path: &str, tier_body: &str) -> String {
    format!(
        r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: e2e
spec:
  mode: enforce
  defaultTier: locked
  tiers:
    - name: t0
{tier_body}
    - name: locked
      egress: []
  bindings:
    - tier: t0
      match:
        cgroupPath: "{root_path}/t0/**"
    - tier: locked
      match:
        cgroupPath: "{root_path}/locked/**"
"#
    )
}

/// The `unmapped.tiergate` part of an event.
pub fn tg(e: &Value) -> &Value {
    &e["unmapped"]["tiergate"]
}

/// Is `e` a connection event to `ip:port` with `verdict`?
pub fn is_conn(e: &Value, ip: &str, port: u64, verdict: &str) -> bool {
    tg(e)["kind"] == "connection"
        && e["dst_endpoint"]["ip"] == ip
        && e["dst_endpoint"]["port"] == port
        && tg(e)["verdict"] == verdict
}
