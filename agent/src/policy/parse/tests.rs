//! Unit tests of the policy parser: the contract example, defaults, and the table of malformed inputs with their messages.

use ipnet::IpNet;

use super::{load, parse_str};
use crate::policy::model::{DEFAULT_TRUST_DOMAIN, MetadataAccess, Mode, Protocols};

/// The example policy of CONTRACT section 2, verbatim.
pub(crate) const CONTRACT_EXAMPLE: &str = r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: ai-platform            # required; stamped on every event
spec:
  trustDomain: corp.example    # SPIFFE IDs of pods: spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>
  mode: enforce                # enforce | audit (audit: nothing is blocked, would-be denials are reported as such)
  defaultTier: unassigned      # tier of a pod that no binding matches, and of a pod not yet resolved
  tiers:
    - name: tier0              # unique; [a-z0-9-]{1,63}
      description: read-only tools
      mode: audit              # optional; overrides spec.mode for this tier
      metadata: deny           # deny | allow — cloud metadata endpoints (section 2.1); default deny
      egress:                  # allow-list; everything not listed is denied
        - cidrs: ["10.20.0.0/16", "fd00:20::/64"]
          ports: ["443", "8000-8100"]   # optional; default: all ports
          protocols: [tcp]              # tcp | udp; default: both
    - name: unassigned
      egress: []
  bindings:                    # evaluated in order, first match wins; all keys in one match must hold
    - tier: tier0
      match:
        cgroupPath: "/agents/tier0/**"  # glob on the cgroup v2 path as /proc/<pid>/cgroup shows it ("0::<path>"); * = one level, ** = any depth
    - tier: tier0
      match:
        namespace: agents
        serviceAccount: retriever
        podLabels: {app: retriever}
        container: tool                 # one container of the pod
    - tier: tier0
      match:
        spiffeId: "spiffe://corp.example/ns/ops/sa/*"
"#;

#[test]
fn contract_example_parses() {
    let p = match parse_str(CONTRACT_EXAMPLE, "policy.yaml") {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(p.name, "ai-platform");
    assert_eq!(p.trust_domain, "corp.example");
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.tiers.len(), 2);
    assert_eq!(p.default_tier, 1);
    let t0 = &p.tiers[0];
    assert_eq!(t0.name, "tier0");
    assert_eq!(t0.description.as_deref(), Some("read-only tools"));
    assert_eq!(t0.mode, Some(Mode::Audit));
    assert_eq!(t0.metadata, MetadataAccess::Deny);
    assert_eq!(t0.egress.len(), 1);
    let r = &t0.egress[0];
    assert_eq!(
        r.cidrs,
        vec![
            "10.20.0.0/16".parse::<IpNet>().expect("net"),
            "fd00:20::/64".parse().expect("net")
        ]
    );
    assert_eq!(r.ports, Some(vec![(443, 443), (8000, 8100)]));
    assert_eq!(
        r.protocols,
        Protocols {
            tcp: true,
            udp: false
        }
    );
    assert!(p.tiers[1].egress.is_empty());
    assert_eq!(p.bindings.len(), 3);
    assert_eq!(
        p.bindings[0]
            .matcher
            .cgroup_path
            .as_ref()
            .map(|g| g.as_str()),
        Some("/agents/tier0/**")
    );
    let m1 = &p.bindings[1].matcher;
    assert_eq!(m1.namespace.as_deref(), Some("agents"));
    assert_eq!(m1.service_account.as_deref(), Some("retriever"));
    assert_eq!(
        m1.pod_labels.get("app").map(String::as_str),
        Some("retriever")
    );
    assert_eq!(m1.container.as_deref(), Some("tool"));
    assert_eq!(
        p.bindings[2].matcher.spiffe_id.as_ref().map(|s| s.as_str()),
        Some("spiffe://corp.example/ns/ops/sa/*")
    );
    assert!(p.version.starts_with("sha256:"));
}

#[test]
fn defaults_apply() {
    let p = parse_str(
            "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata: {name: p}\nspec:\n  defaultTier: a\n  tiers:\n  - name: a\n    egress:\n    - cidrs: [10.0.0.1, \"::1\", \"::ffff:10.0.0.0/104\"]\n",
            "p.yaml",
        )
        .map_err(|e| e.to_string());
    let p = match p {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(p.trust_domain, DEFAULT_TRUST_DOMAIN);
    assert_eq!(p.mode, Mode::Enforce);
    assert!(p.bindings.is_empty());
    let r = &p.tiers[0].egress[0];
    assert_eq!(r.ports, None);
    assert_eq!(r.protocols, Protocols::default());
    let texts: Vec<String> = r.cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(texts, ["10.0.0.1/32", "::1/128", "10.0.0.0/8"]);
    assert_eq!(p.tiers[0].metadata, MetadataAccess::Deny);
}

/// A valid header; cases append a `spec`.
const HEAD: &str = "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: p\n";

/// A spec (lines 5..) with one tier `a`, a rule and a binding; cases edit it.
const SPEC: &str = "spec:
  defaultTier: a
  tiers:
    - name: a
      egress:
        - cidrs: [\"10.0.0.0/8\"]
          ports: [\"443\"]
          protocols: [tcp]
  bindings:
    - tier: a
      match:
        cgroupPath: /x/**
";

fn errors_of(src: &str) -> String {
    match parse_str(src, "policy.yaml") {
        Ok(_) => panic!("should be rejected:\n{src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_base_of_the_error_table_is_valid() {
    let src = format!("{HEAD}{SPEC}");
    if let Err(e) = parse_str(&src, "policy.yaml") {
        panic!("{e}");
    }
}

#[test]
fn malformed_inputs_report_position_and_fix() {
    // (description, source, expected substrings of the error output)
    let with_spec = |from: &str, to: &str| -> String {
        assert!(SPEC.contains(from), "edit {from:?} does not apply");
        format!("{HEAD}{}", SPEC.replacen(from, to, 1))
    };
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "yaml syntax error",
            "apiVersion: [a\nkind: b\n".into(),
            vec!["policy.yaml:2:5: YAML syntax error:"],
        ),
        (
            "empty file",
            String::new(),
            vec!["policy.yaml:1:1: the file is empty"],
        ),
        (
            "only comments",
            "# nothing\n".into(),
            vec!["policy.yaml:1:1: the file is empty"],
        ),
        (
            "empty document",
            "---\n".into(),
            vec!["the document is empty"],
        ),
        (
            "several documents",
            format!("{HEAD}{SPEC}---\n{HEAD}{SPEC}"),
            vec!["policy.yaml:18:1: the file holds 2 YAML documents"],
        ),
        (
            "top level not a mapping",
            "- a\n- b\n".into(),
            vec!["policy.yaml:1:1: expected a mapping, found a list"],
        ),
        (
            "unknown top-level key",
            format!("{HEAD}{SPEC}status: {{}}\n"),
            vec![
                "policy.yaml:17:1: status: unknown key (allowed keys: apiVersion, kind, metadata, spec)",
            ],
        ),
        (
            "missing spec",
            HEAD.into(),
            vec!["policy.yaml:1:1: spec: missing required key"],
        ),
        (
            "wrong apiVersion",
            format!("{}{SPEC}", HEAD.replace("v1alpha1", "v1")),
            vec![
                "policy.yaml:1:13: apiVersion: \"tiergate.io/v1\" is not supported (expected tiergate.io/v1alpha1)",
            ],
        ),
        (
            "wrong kind",
            format!("{}{SPEC}", HEAD.replace("kind: TierPolicy", "kind: Policy")),
            vec!["policy.yaml:2:7: kind: \"Policy\" is not supported (expected TierPolicy)"],
        ),
        (
            "missing metadata.name",
            format!(
                "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  labels: {{}}\n{SPEC}"
            ),
            vec![
                "policy.yaml:4:3: metadata.labels: unknown key (allowed keys: name)",
                "policy.yaml:4:3: metadata.name: missing required key",
            ],
        ),
        (
            "bad metadata.name",
            format!("{}{SPEC}", HEAD.replace("name: p", "name: Bad_Name")),
            vec!["policy.yaml:4:9: metadata.name: \"Bad_Name\" is not a valid name"],
        ),
        (
            "metadata not a mapping",
            format!("apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata: x\n{SPEC}"),
            vec!["policy.yaml:3:11: metadata: expected a mapping, found a string"],
        ),
        (
            "unknown spec key with suggestion",
            with_spec("  defaultTier: a\n", "  defaultTier: a\n  defaultTeir: a\n"),
            vec![
                "policy.yaml:7:3: spec.defaultTeir: unknown key (did you mean \"defaultTier\"? allowed keys: trustDomain, mode, defaultTier, tiers, bindings, dns, elevation)",
            ],
        ),
        (
            "bad trust domain",
            with_spec(
                "  defaultTier: a\n",
                "  defaultTier: a\n  trustDomain: Corp.Example\n",
            ),
            vec![
                "policy.yaml:7:16: spec.trustDomain: \"Corp.Example\" is not a SPIFFE trust domain",
            ],
        ),
        (
            "bad spec mode",
            with_spec("  defaultTier: a\n", "  defaultTier: a\n  mode: block\n"),
            vec!["policy.yaml:7:9: spec.mode: \"block\" is not a mode (expected enforce or audit)"],
        ),
        (
            "unknown defaultTier",
            with_spec("defaultTier: a", "defaultTier: nope"),
            vec!["policy.yaml:6:16: spec.defaultTier: unknown tier \"nope\" (known tiers: a)"],
        ),
        (
            "missing defaultTier and tiers",
            format!("{HEAD}spec:\n  mode: audit\n"),
            vec![
                "policy.yaml:6:3: spec.defaultTier: missing required key",
                "policy.yaml:6:3: spec.tiers: missing required key",
            ],
        ),
        (
            "empty tiers",
            format!("{HEAD}spec:\n  defaultTier: a\n  tiers: []\n"),
            vec![
                "policy.yaml:7:10: spec.tiers: must list at least one tier",
                "policy.yaml:6:16: spec.defaultTier: unknown tier \"a\" (none are defined)",
            ],
        ),
        (
            "tiers not a list",
            format!("{HEAD}spec:\n  defaultTier: a\n  tiers: {{name: a}}\n"),
            vec!["policy.yaml:7:10: spec.tiers: expected a list, found a mapping"],
        ),
        (
            "bad tier name",
            with_spec("- name: a\n", "- name: A_1\n"),
            vec!["policy.yaml:8:13: spec.tiers[0].name: \"A_1\" is not a valid tier name"],
        ),
        (
            "reserved tier name",
            with_spec("defaultTier: a", "defaultTier: host")
                .replace("- name: a\n", "- name: host\n")
                .replace("tier: a\n", "tier: host\n"),
            vec!["policy.yaml:8:13: spec.tiers[0].name: \"host\" is reserved"],
        ),
        (
            "tier name not a string",
            with_spec("- name: a\n", "- name: 7\n    - name: a\n"),
            vec![
                "policy.yaml:8:13: spec.tiers[0].name: expected a string, found an integer (quote it: \"7\")",
            ],
        ),
        (
            "duplicate tier",
            with_spec(
                "          protocols: [tcp]\n",
                "          protocols: [tcp]\n    - name: a\n",
            ),
            vec![
                "policy.yaml:13:13: spec.tiers[1].name: duplicate tier name \"a\" (first defined at line 8)",
            ],
        ),
        (
            "unknown tier key",
            with_spec("      egress:\n", "      egres:\n"),
            vec![
                "policy.yaml:9:7: spec.tiers[0].egres: unknown key (did you mean \"egress\"? allowed keys: name, description, mode, metadata, egress)",
            ],
        ),
        (
            "bad tier mode and metadata",
            with_spec(
                "- name: a\n",
                "- name: a\n      mode: Audit\n      metadata: open\n",
            ),
            vec![
                "policy.yaml:9:13: spec.tiers[0].mode: \"Audit\" is not a mode (expected enforce or audit)",
                "policy.yaml:10:17: spec.tiers[0].metadata: \"open\" is not a metadata access (expected deny or allow or filter)",
            ],
        ),
        (
            "egress null",
            with_spec(
                "      egress:\n        - cidrs: [\"10.0.0.0/8\"]\n          ports: [\"443\"]\n          protocols: [tcp]\n",
                "      egress:\n",
            ),
            vec!["policy.yaml:9:13: spec.tiers[0].egress: expected a list, found nothing (null)"],
        ),
        (
            "missing cidrs",
            with_spec(
                "        - cidrs: [\"10.0.0.0/8\"]\n          ports",
                "        - ports",
            ),
            vec!["policy.yaml:10:11: spec.tiers[0].egress[0]: a rule needs `cidrs` or `fqdns`"],
        ),
        (
            "empty cidrs",
            with_spec("[\"10.0.0.0/8\"]", "[]"),
            vec!["policy.yaml:10:18: spec.tiers[0].egress[0].cidrs: must not be empty"],
        ),
        (
            "bad cidr",
            with_spec("[\"10.0.0.0/8\"]", "[\"10.0.0.0/8\", \"10.0.0.300/8\"]"),
            vec![
                "policy.yaml:10:33: spec.tiers[0].egress[0].cidrs[1]: \"10.0.0.300/8\" is not a CIDR or IP address",
            ],
        ),
        (
            "host bits",
            with_spec("10.0.0.0/8", "10.0.0.1/8"),
            vec![
                "policy.yaml:10:19: spec.tiers[0].egress[0].cidrs[0]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
            ],
        ),
        (
            "ipv6 host bits",
            with_spec("10.0.0.0/8", "fd00::1/64"),
            vec!["fd00::1/64 has host bits set; did you mean fd00::/64?"],
        ),
        (
            "cidr not a string",
            with_spec("[\"10.0.0.0/8\"]", "[{a: b}]"),
            vec![
                "policy.yaml:10:19: spec.tiers[0].egress[0].cidrs[0]: expected a string, found a mapping",
            ],
        ),
        (
            "port out of range",
            with_spec("[\"443\"]", "[\"443\", 70000]"),
            vec![
                "policy.yaml:11:26: spec.tiers[0].egress[0].ports[1]: \"70000\" is not a port or range (expected 1-65535 or LO-HI)",
            ],
        ),
        (
            "port zero and garbage",
            with_spec("[\"443\"]", "[0, \"http\", \"1-\"]"),
            vec![
                "policy.yaml:11:19: spec.tiers[0].egress[0].ports[0]: \"0\" is not a port",
                "policy.yaml:11:22: spec.tiers[0].egress[0].ports[1]: \"http\" is not a port",
                "policy.yaml:11:30: spec.tiers[0].egress[0].ports[2]: \"1-\" is not a port",
            ],
        ),
        (
            "reversed range",
            with_spec("[\"443\"]", "[\"8100-8000\"]"),
            vec![
                "policy.yaml:11:19: spec.tiers[0].egress[0].ports[0]: \"8100-8000\" is a reversed range (8100 > 8000); write \"8000-8100\"",
            ],
        ),
        (
            "empty ports",
            with_spec("[\"443\"]", "[]"),
            vec![
                "policy.yaml:11:18: spec.tiers[0].egress[0].ports: must not be empty; omit `ports` to allow every port",
            ],
        ),
        (
            "port of wrong type",
            with_spec("[\"443\"]", "[true]"),
            vec![
                "policy.yaml:11:19: spec.tiers[0].egress[0].ports[0]: expected a port number or a \"LO-HI\" string, found a boolean",
            ],
        ),
        (
            "bad protocol",
            with_spec("[tcp]", "[icmp]"),
            vec![
                "policy.yaml:12:23: spec.tiers[0].egress[0].protocols[0]: \"icmp\" is not a protocol (expected tcp or udp)",
            ],
        ),
        (
            "duplicate protocol",
            with_spec("[tcp]", "[tcp, udp, tcp]"),
            vec![
                "policy.yaml:12:33: spec.tiers[0].egress[0].protocols[2]: \"tcp\" is listed twice",
            ],
        ),
        (
            "empty protocols",
            with_spec("[tcp]", "[]"),
            vec!["policy.yaml:12:22: spec.tiers[0].egress[0].protocols: must not be empty"],
        ),
        (
            "unknown rule key",
            with_spec(
                "          protocols: [tcp]\n",
                "          protocols: [tcp]\n          action: allow\n",
            ),
            vec![
                "policy.yaml:13:11: spec.tiers[0].egress[0].action: unknown key (allowed keys: cidrs, fqdns, allowPrivate, ports, protocols)",
            ],
        ),
        (
            "unknown tier in binding",
            with_spec("    - tier: a\n", "    - tier: b\n"),
            vec!["policy.yaml:14:13: spec.bindings[0].tier: unknown tier \"b\" (known tiers: a)"],
        ),
        (
            "binding missing match",
            with_spec("      match:\n        cgroupPath: /x/**\n", ""),
            vec!["policy.yaml:14:7: spec.bindings[0].match: missing required key"],
        ),
        (
            "empty match",
            with_spec(
                "      match:\n        cgroupPath: /x/**\n",
                "      match: {}\n",
            ),
            vec![
                "policy.yaml:15:14: spec.bindings[0].match: must have at least one of: cgroupPath, namespace, serviceAccount, podLabels, container, spiffeId",
            ],
        ),
        (
            "unknown match key",
            with_spec(
                "cgroupPath: /x/**",
                "cgroupPath: /x/**\n        nodeName: n1",
            ),
            vec![
                "policy.yaml:17:9: spec.bindings[0].match.nodeName: unknown key (allowed keys: cgroupPath, namespace, serviceAccount, podLabels, container, spiffeId)",
            ],
        ),
        (
            "relative cgroupPath",
            with_spec("/x/**", "x/**"),
            vec![
                "policy.yaml:16:21: spec.bindings[0].match.cgroupPath: \"x/**\" must start with `/`",
            ],
        ),
        (
            "bad glob",
            with_spec("/x/**", "/x/a**"),
            vec![
                "policy.yaml:16:21: spec.bindings[0].match.cgroupPath: \"/x/a**\": `**` must be a whole path segment",
            ],
        ),
        (
            "bad spiffeId",
            with_spec("cgroupPath: /x/**", "spiffeId: corp.example/ns/a/sa/b"),
            vec![
                "policy.yaml:16:19: spec.bindings[0].match.spiffeId: \"corp.example/ns/a/sa/b\" must start with `spiffe://`",
            ],
        ),
        (
            "label value not a string",
            with_spec("cgroupPath: /x/**", "podLabels: {app: x, tier: 1}"),
            vec![
                "policy.yaml:16:35: spec.bindings[0].match.podLabels.tier: expected a string, found an integer (quote it: \"1\")",
            ],
        ),
        (
            "empty namespace",
            with_spec("cgroupPath: /x/**", "namespace: \"\""),
            vec!["policy.yaml:16:20: spec.bindings[0].match.namespace: must not be empty"],
        ),
        (
            "bindings not a list",
            format!("{HEAD}spec:\n  defaultTier: a\n  tiers: [{{name: a}}]\n  bindings: {{}}\n"),
            vec!["policy.yaml:8:13: spec.bindings: expected a list, found a mapping"],
        ),
        (
            "duplicate yaml key",
            format!("{HEAD}{SPEC}")
                .replace("  defaultTier: a\n", "  defaultTier: a\n  defaultTier: a\n"),
            vec!["policy.yaml:7:3: YAML syntax error: duplicated key in mapping"],
        ),
        (
            "non-string key",
            with_spec("  defaultTier: a\n", "  defaultTier: a\n  1: x\n"),
            vec!["policy.yaml:7:3: spec: keys must be strings, found an integer"],
        ),
        (
            "yaml tag",
            with_spec("defaultTier: a", "defaultTier: !tier a"),
            vec![
                "policy.yaml:6:16: spec.defaultTier: expected a string, found a tagged value (YAML tags are not supported)",
            ],
        ),
    ];
    assert!(cases.len() >= 25);
    for (what, src, wants) in &cases {
        let got = errors_of(src);
        for want in wants {
            assert!(
                got.contains(want),
                "case {what:?}: expected {want:?} in:\n{got}\n--- source ---\n{src}"
            );
        }
    }
}

#[test]
fn every_error_is_reported_together_in_file_order() {
    let src = format!(
        "{HEAD}spec:
  defaultTier: missing
  mode: sometimes
  tiers:
    - name: a
      egress:
        - cidrs: [\"10.0.0.1/8\", \"fd00::/64\", nonsense]
          ports: [\"0\", \"9-1\"]
          protocols: [sctp]
    - name: a
  bindings:
    - tier: zzz
      match: {{}}
"
    );
    let e = match parse_str(&src, "f.yaml") {
        Ok(_) => panic!("should fail"),
        Err(e) => e,
    };
    let lines: Vec<String> = e.errors().iter().map(ToString::to_string).collect();
    let want = [
        "f.yaml:6:16: spec.defaultTier: unknown tier \"missing\"",
        "f.yaml:7:9: spec.mode: \"sometimes\" is not a mode",
        "f.yaml:11:19: spec.tiers[0].egress[0].cidrs[0]: 10.0.0.1/8 has host bits set",
        "f.yaml:11:46: spec.tiers[0].egress[0].cidrs[2]: \"nonsense\" is not a CIDR",
        "f.yaml:12:19: spec.tiers[0].egress[0].ports[0]: \"0\" is not a port",
        "f.yaml:12:24: spec.tiers[0].egress[0].ports[1]: \"9-1\" is a reversed range",
        "f.yaml:13:23: spec.tiers[0].egress[0].protocols[0]: \"sctp\" is not a protocol",
        "f.yaml:14:13: spec.tiers[1].name: duplicate tier name \"a\" (first defined at line 9)",
        "f.yaml:16:13: spec.bindings[0].tier: unknown tier \"zzz\"",
        "f.yaml:17:14: spec.bindings[0].match: must have at least one of",
    ];
    assert_eq!(lines.len(), want.len(), "{e}");
    for (got, want) in lines.iter().zip(want) {
        assert!(got.starts_with(want), "got {got:?}, want prefix {want:?}");
    }
    // Display: one error per line.
    assert_eq!(e.to_string().lines().count(), want.len());
}

/// Found by the `policy_parse` fuzz target: a file cut short inside a flow
/// collection, or ending in an empty key, made saphyr report the line after
/// the last one.
#[test]
fn errors_at_the_end_of_the_file_point_inside_it() {
    for (src, want) in [
        ("? ", "p.yaml:1:3: keys must be strings"),
        (
            "spec:\n  tiers: [\n   : {",
            "p.yaml:3:7: YAML syntax error:",
        ),
        (
            "spec:\r\n  tiers: [\r\n   : {",
            "p.yaml:3:7: YAML syntax error:",
        ),
        (
            "spec:\n  tiers: [\n   : {\n",
            "p.yaml:4:1: YAML syntax error:",
        ),
    ] {
        let e = match parse_str(src, "p.yaml") {
            Ok(_) => panic!("{src:?} should fail"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.lines().any(|l| l.starts_with(want)),
            "{src:?}: got {e:?}, want a line starting {want:?}"
        );
    }
}

#[test]
fn load_reports_missing_and_non_utf8_files() {
    let dir = std::env::temp_dir().join(format!("tiergate-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let missing = dir.join("missing.yaml");
    let e = load(&missing).expect_err("missing file");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "{}:1:1: cannot read the policy file:",
            missing.display()
        )),
        "{text}"
    );

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, b"apiVersion: \xff\n").expect("write");
    let text = load(&bad).expect_err("not utf-8").to_string();
    assert!(
        text.contains(":1:1: the policy file is not valid UTF-8"),
        "{text}"
    );

    let good = dir.join("good.yaml");
    std::fs::write(&good, CONTRACT_EXAMPLE).expect("write");
    let p = load(&good).map_err(|e| e.to_string());
    assert!(p.is_ok(), "{p:?}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn tier_limit_is_enforced() {
    let mut src = format!("{HEAD}spec:\n  defaultTier: t0\n  tiers:\n");
    for i in 0..=agent_common::MAX_TIERS {
        src.push_str(&format!("    - name: t{i}\n"));
    }
    let got = errors_of(&src);
    assert!(
        got.contains("policy.yaml:8:5: spec.tiers: 257 tiers, more than the limit of 256"),
        "{got}"
    );
}
