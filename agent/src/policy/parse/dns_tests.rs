//! Parser tests of the DNS-name parts: `spec.dns`, `fqdns`, `allowPrivate`.

use std::net::IpAddr;
use std::time::Duration;

use super::parse_str;
use super::tests::CONTRACT_EXAMPLE;

const HEAD: &str = "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: p\n";

/// The example of the issue that introduced DNS names.
const DNS_EXAMPLE: &str = r#"spec:
  dns:
    resolvers: ["10.96.0.10", "127.0.0.53"]
    minTTL: 5s
  defaultTier: retrieval
  tiers:
    - name: retrieval
      egress:
        - fqdns: ["api.github.com", "*.s3.amazonaws.com", "**.googleapis.com"]
          ports: ["443"]
          protocols: [tcp]
        - fqdns: ["vault.vault.svc.cluster.local"]
          allowPrivate: true
          ports: ["8200"]
"#;

fn errors_of(spec: &str) -> String {
    match parse_str(&format!("{HEAD}{spec}"), "policy.yaml") {
        Ok(_) => panic!("should be rejected:\n{spec}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_dns_example_parses() {
    let p =
        parse_str(&format!("{HEAD}{DNS_EXAMPLE}"), "policy.yaml").unwrap_or_else(|e| panic!("{e}"));
    let dns = p.dns.as_ref().expect("spec.dns");
    let want: Vec<IpAddr> = vec![
        "10.96.0.10".parse().expect("a"),
        "127.0.0.53".parse().expect("a"),
    ];
    assert_eq!(dns.resolvers, want);
    assert_eq!(dns.min_ttl.get(), Duration::from_secs(5));
    assert_eq!(dns.max_ttl, None);
    let rules = &p.tiers[0].egress;
    let names: Vec<String> = rules[0].fqdns.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        names,
        ["api.github.com", "*.s3.amazonaws.com", "**.googleapis.com"]
    );
    assert!(rules[0].cidrs.is_empty() && !rules[0].allow_private);
    assert!(rules[1].allow_private);
    assert_eq!(rules[1].ports, Some(vec![(8200, 8200)]));
    assert!(p.tiers[0].has_fqdns());
    // The canonical form carries the new keys (so they change the version) ...
    let json = p.canonical_json();
    assert!(
        json.contains("\"fqdns\"") && json.contains("\"allowPrivate\":true"),
        "{json}"
    );
    assert!(json.contains("\"minTTL\":\"5s\""), "{json}");
}

#[test]
fn policies_without_names_keep_their_canonical_form() {
    // ... and leaves them out when unused, so the versions of policies
    // written before DNS names existed did not change.
    let p = parse_str(CONTRACT_EXAMPLE, "policy.yaml").unwrap_or_else(|e| panic!("{e}"));
    let json = p.canonical_json();
    for key in ["dns", "fqdns", "allowPrivate", "minTTL"] {
        assert!(!json.contains(key), "{key} in {json}");
    }
    assert!(!p.tiers[0].has_fqdns());
}

#[test]
fn dns_errors_report_position_and_fix() {
    let tier = |rule: &str| {
        format!("spec:\n  defaultTier: a\n  tiers:\n    - name: a\n      egress:\n{rule}")
    };
    let dns = |body: &str| {
        format!(
            "spec:\n  dns:\n{body}  defaultTier: a\n  tiers:\n    - name: a\n      egress:\n        - fqdns: [a.test]\n"
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "fqdns without spec.dns",
            tier("        - fqdns: [api.github.com]\n"),
            "policy.yaml:10:11: fqdns rules need spec.dns.resolvers",
        ),
        (
            "cidrs and fqdns together",
            tier("        - cidrs: [10.0.0.0/8]\n          fqdns: [a.test]\n"),
            "policy.yaml:11:18: spec.tiers[0].egress[0].fqdns: a rule names either cidrs or fqdns, not both",
        ),
        (
            "a wildcard inside a name",
            dns("    resolvers: [10.0.0.53]\n").replace("[a.test]", "[\"api.*.com\"]"),
            "spec.tiers[0].egress[0].fqdns[0]: `api.*.com`: `*` and `**` may only stand alone as the leftmost label",
        ),
        (
            "match-all name",
            dns("    resolvers: [10.0.0.53]\n").replace("[a.test]", "[\"*\"]"),
            "fqdns[0]: `*` would allow every name",
        ),
        (
            "unicode name",
            dns("    resolvers: [10.0.0.53]\n").replace("[a.test]", "[\"bücher.example\"]"),
            "xn--",
        ),
        (
            "empty fqdns",
            dns("    resolvers: [10.0.0.53]\n").replace("[a.test]", "[]"),
            "spec.tiers[0].egress[0].fqdns: must not be empty",
        ),
        (
            "allowPrivate on a cidrs rule",
            tier("        - cidrs: [10.0.0.0/8]\n          allowPrivate: true\n"),
            "policy.yaml:11:25: spec.tiers[0].egress[0].allowPrivate: only an fqdns rule learns addresses",
        ),
        (
            "allowPrivate not a boolean",
            dns("    resolvers: [10.0.0.53]\n").replace(
                "[a.test]\n",
                "[a.test]\n          allowPrivate: yes please\n",
            ),
            "spec.tiers[0].egress[0].allowPrivate: expected true or false",
        ),
        (
            "resolver with a port",
            dns("    resolvers: [\"10.0.0.53:53\"]\n"),
            "policy.yaml:7:17: spec.dns.resolvers[0]: \"10.0.0.53:53\" is not an IP address",
        ),
        (
            "unspecified resolver",
            dns("    resolvers: [\"0.0.0.0\"]\n"),
            "spec.dns.resolvers[0]: 0.0.0.0 cannot answer queries",
        ),
        (
            "no resolvers",
            dns("    minTTL: 5s\n"),
            "policy.yaml:7:5: spec.dns.resolvers: missing required key",
        ),
        (
            "empty resolvers",
            dns("    resolvers: []\n"),
            "spec.dns.resolvers: must not be empty",
        ),
        (
            "bad duration",
            dns("    resolvers: [10.0.0.53]\n    minTTL: 5 sec\n"),
            "policy.yaml:8:13: spec.dns.minTTL: `5 sec` is not a duration: write a whole number and one unit",
        ),
        (
            "duration as a number",
            dns("    resolvers: [10.0.0.53]\n    minTTL: 5\n"),
            "spec.dns.minTTL: expected a duration string such as \"5s\"",
        ),
        (
            "maxTTL below minTTL",
            dns("    resolvers: [10.0.0.53]\n    minTTL: 1m\n    maxTTL: 30s\n"),
            "policy.yaml:9:13: spec.dns.maxTTL: 30s is shorter than minTTL (1m)",
        ),
        (
            "unknown scope",
            dns("    resolvers: [10.0.0.53]\n    scope: node\n"),
            "policy.yaml:8:12: spec.dns.scope: \"node\" is not a scope: write workload",
        ),
        (
            "unknown dns key",
            dns("    resolvers: [10.0.0.53]\n    maxTtl: 30s\n"),
            "spec.dns.maxTtl: unknown key (did you mean \"maxTTL\"?",
        ),
    ];
    for (what, src, want) in &cases {
        let got = errors_of(src);
        assert!(
            got.contains(want),
            "case {what:?}: expected {want:?} in:\n{got}\n--- source ---\n{src}"
        );
    }
}

#[test]
fn scope_is_workload_unless_written_and_only_then_changes_the_version() {
    use crate::policy::model::DnsScope;
    let with = |scope: &str| {
        let src = DNS_EXAMPLE.replace("    minTTL: 5s\n", &format!("    minTTL: 5s\n{scope}"));
        parse_str(&format!("{HEAD}{src}"), "policy.yaml").unwrap_or_else(|e| panic!("{e}"))
    };
    let absent = with("");
    assert_eq!(absent.dns.as_ref().unwrap().scope, DnsScope::Workload);
    let explicit = with("    scope: workload\n");
    assert_eq!(
        explicit.version, absent.version,
        "the default is not in the canonical form"
    );
    for (word, want) in [("pod", DnsScope::Pod), ("tier", DnsScope::Tier)] {
        let p = with(&format!("    scope: {word}\n"));
        assert_eq!(p.dns.as_ref().unwrap().scope, want);
        assert_ne!(p.version, absent.version);
        // A rendered policy reads back to the same version (the view
        // `tiergate proxy` reads is a rendered policy).
        let back = parse_str(
            &crate::policy::render::to_yaml(&p, &Default::default()),
            "rendered.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.version, p.version);
    }
}
