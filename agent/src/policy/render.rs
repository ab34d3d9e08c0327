//! A policy written back as a policy file (YAML), with optional comments
//! above tiers and rules. `tiergate advise` writes its proposed policy with
//! it, and renders the current policy the same way so the diff between the
//! two shows only what changed.
//!
//! Every string is written as a double-quoted scalar (JSON string syntax is
//! valid YAML), so no name, label or path can change the document's shape.
//! Reading the output back gives the same policy (the same version id):
//! tested below on every example policy of the parser's tests.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::model::{EgressRule, MetadataAccess, Mode, Policy, Tier};

/// Comment lines to write above a tier (`(tier, None)`) or a rule
/// (`(tier, Some(index))`), and a header for the whole file.
#[derive(Default)]
pub struct Comments {
    pub header: Vec<String>,
    pub at: BTreeMap<(usize, Option<usize>), Vec<String>>,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(|i| q(i.as_ref())).collect();
    format!("[{}]", v.join(", "))
}

fn comment(out: &mut String, indent: &str, lines: Option<&Vec<String>>) {
    for l in lines.into_iter().flatten() {
        for part in l.lines() {
            let _ = writeln!(out, "{indent}# {part}");
        }
    }
}

fn mode(m: Mode) -> &'static str {
    m.as_str()
}

/// The rule as it is written in `egress:` (without comments), indented for
/// a tier's list.
pub fn rule_yaml(r: &EgressRule) -> String {
    let mut out = String::new();
    let mut first = true;
    let mut field = |out: &mut String, text: String| {
        let lead = if first { "        - " } else { "          " };
        first = false;
        let _ = writeln!(out, "{lead}{text}");
    };
    if !r.fqdns.is_empty() {
        let names: Vec<String> = r.fqdns.iter().map(|p| p.to_string()).collect();
        field(&mut out, format!("fqdns: {}", list(&names)));
    } else {
        let nets: Vec<String> = r.cidrs.iter().map(|c| c.to_string()).collect();
        field(&mut out, format!("cidrs: {}", list(&nets)));
    }
    if r.allow_private {
        field(&mut out, "allowPrivate: true".into());
    }
    if let Some(ports) = &r.ports {
        let ps: Vec<String> = ports
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        field(&mut out, format!("ports: {}", list(&ps)));
    }
    let mut protos = Vec::new();
    if r.protocols.tcp {
        protos.push("tcp");
    }
    if r.protocols.udp {
        protos.push("udp");
    }
    field(&mut out, format!("protocols: [{}]", protos.join(", ")));
    out
}

fn tier_yaml(out: &mut String, t: &Tier, ti: usize, c: &Comments) {
    comment(out, "    ", c.at.get(&(ti, None)));
    let _ = writeln!(out, "    - name: {}", q(&t.name));
    if let Some(d) = &t.description {
        let _ = writeln!(out, "      description: {}", q(d));
    }
    if let Some(m) = t.mode {
        let _ = writeln!(out, "      mode: {}", mode(m));
    }
    match &t.metadata {
        MetadataAccess::Deny => {}
        MetadataAccess::Allow => {
            let _ = writeln!(out, "      metadata: allow");
        }
        MetadataAccess::Filter(f) => {
            let _ = writeln!(out, "      metadata:");
            let _ = writeln!(out, "        mode: filter");
            if f.require_imdsv2 {
                let _ = writeln!(out, "        require: imdsv2");
            }
            if !f.allow_paths.is_empty() {
                let _ = writeln!(out, "        allowPaths: {}", list(&f.allow_paths));
            }
            if !f.deny_paths.is_empty() {
                let _ = writeln!(out, "        denyPaths: {}", list(&f.deny_paths));
            }
        }
    }
    if t.egress.is_empty() {
        let _ = writeln!(out, "      egress: []");
        return;
    }
    let _ = writeln!(out, "      egress:");
    for (ri, r) in t.egress.iter().enumerate() {
        comment(out, "        ", c.at.get(&(ti, Some(ri))));
        out.push_str(&rule_yaml(r));
    }
}

/// The policy file for `p`.
pub fn to_yaml(p: &Policy, c: &Comments) -> String {
    let mut out = String::new();
    comment(&mut out, "", Some(&c.header));
    let _ = writeln!(out, "apiVersion: {}", super::model::API_VERSION);
    let _ = writeln!(out, "kind: {}", super::model::KIND);
    let _ = writeln!(out, "metadata:\n  name: {}", q(&p.name));
    let _ = writeln!(out, "spec:");
    let _ = writeln!(out, "  trustDomain: {}", q(&p.trust_domain));
    let _ = writeln!(out, "  mode: {}", mode(p.mode));
    let _ = writeln!(out, "  defaultTier: {}", q(&p.tiers[p.default_tier].name));
    if let Some(d) = &p.dns {
        let rs: Vec<String> = d.resolvers.iter().map(|r| r.to_string()).collect();
        let _ = writeln!(out, "  dns:\n    resolvers: {}", list(&rs));
        let _ = writeln!(out, "    minTTL: {}", d.min_ttl);
        if let Some(m) = d.max_ttl {
            let _ = writeln!(out, "    maxTTL: {m}");
        }
        if !d.scope.is_workload() {
            let _ = writeln!(out, "    scope: {}", d.scope.as_str());
        }
    }
    let _ = writeln!(out, "  tiers:");
    for (ti, t) in p.tiers.iter().enumerate() {
        tier_yaml(&mut out, t, ti, c);
    }
    if p.bindings.is_empty() {
        let _ = writeln!(out, "  bindings: []");
    } else {
        let _ = writeln!(out, "  bindings:");
    }
    for b in &p.bindings {
        let m = &b.matcher;
        let _ = writeln!(out, "    - tier: {}", q(&p.tiers[b.tier].name));
        let _ = writeln!(out, "      match:");
        if let Some(g) = &m.cgroup_path {
            let _ = writeln!(out, "        cgroupPath: {}", q(g.as_str()));
        }
        if let Some(n) = &m.namespace {
            let _ = writeln!(out, "        namespace: {}", q(n));
        }
        if let Some(s) = &m.service_account {
            let _ = writeln!(out, "        serviceAccount: {}", q(s));
        }
        if !m.pod_labels.is_empty() {
            let _ = writeln!(out, "        podLabels:");
            for (k, v) in &m.pod_labels {
                let _ = writeln!(out, "          {}: {}", q(k), q(v));
            }
        }
        if let Some(c) = &m.container {
            let _ = writeln!(out, "        container: {}", q(c));
        }
        if let Some(s) = &m.spiffe_id {
            let _ = writeln!(out, "        spiffeId: {}", q(s.as_str()));
        }
    }
    if !p.elevation.is_empty() {
        let _ = writeln!(out, "  elevation:");
    }
    for e in &p.elevation {
        let _ = writeln!(out, "    - from: {}", q(&p.tiers[e.from].name));
        let _ = writeln!(out, "      to: {}", q(&p.tiers[e.to].name));
        let _ = writeln!(out, "      maxDuration: {}", e.max_duration);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;

    const FULL: &str = r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: full-example
spec:
  trustDomain: corp.example
  mode: audit
  defaultTier: t0
  dns:
    resolvers: ["10.96.0.10", "fd00::53"]
    minTTL: 5s
    maxTTL: 1h
  tiers:
    - name: t0
      description: "read-only: \"quoted\""
      mode: enforce
      metadata:
        mode: filter
        require: imdsv2
        allowPaths: ["/latest/meta-data/placement/*"]
        denyPaths: ["/latest/meta-data/iam/**"]
      egress:
        - cidrs: ["10.0.0.0/8", "fd00::/8"]
          ports: ["443", "8000-8080"]
          protocols: [tcp]
        - fqdns: ["api.example.com", "*.s3.example.com", "**.googleapis.com"]
          allowPrivate: true
          ports: ["443"]
        - cidrs: ["192.0.2.1/32"]
    - name: t1
      metadata: allow
      egress: []
  bindings:
    - tier: t1
      match:
        namespace: agents
        serviceAccount: tool
        podLabels: {app: "x y", "tiergate.io/tier": t1}
        container: main
        spiffeId: "spiffe://corp.example/ns/agents/sa/*"
    - tier: t0
      match:
        cgroupPath: "/system.slice/*.service"
  elevation:
    - from: t0
      to: t1
      maxDuration: 90m
    - {from: t1, to: t0, maxDuration: 7d}
"#;

    #[test]
    fn reads_back_as_the_same_policy() {
        let p = parse_str(FULL, "full.yaml").expect("example parses");
        let mut c = Comments::default();
        c.header.push("proposed by a test\nsecond line".into());
        c.at.insert((0, Some(1)), vec!["used 3 times".into()]);
        c.at.insert((1, None), vec!["a tier comment".into()]);
        let text = to_yaml(&p, &c);
        let back = parse_str(&text, "back.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, p, "{text}");
        assert_eq!(back.version, p.version);
        assert_eq!(back.elevation.len(), 2);
        assert!(
            text.ends_with("  elevation:\n    - from: \"t0\"\n      to: \"t1\"\n      maxDuration: 90m\n    - from: \"t1\"\n      to: \"t0\"\n      maxDuration: 7d\n"),
            "{text}"
        );
        assert!(
            text.contains("        # used 3 times\n        - fqdns:"),
            "{text}"
        );
        assert!(text.starts_with("# proposed by a test\n# second line\n"));
    }

    #[test]
    fn minimal_policy_reads_back() {
        let src = "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: m\nspec:\n  defaultTier: a\n  tiers:\n    - name: a\n";
        let p = parse_str(src, "m.yaml").unwrap();
        let text = to_yaml(&p, &Comments::default());
        let back = parse_str(&text, "b.yaml").unwrap();
        assert_eq!(back.version, p.version);
        assert!(!text.contains("elevation"), "{text}");
    }
}
