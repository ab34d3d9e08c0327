//! Parser tests of `spec.elevation`: the happy path, every error with its
//! position, and the versions of policies that do not use it.

use std::time::Duration;

use super::parse_str;
use super::tests::CONTRACT_EXAMPLE;
use crate::duration::Span;
use crate::policy::model::Elevation;

const HEAD: &str = "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: p\n";

/// Lines 5 to 14 of every test file (HEAD is lines 1 to 4).
const SPEC: &str = "spec:
  defaultTier: a
  tiers: [{name: a}, {name: b}, {name: c}]
  elevation:
    - from: a
      to: b
      maxDuration: 1h
    - from: b
      to: c
      maxDuration: 10m
";

fn with_spec(from: &str, to: &str) -> String {
    assert!(SPEC.contains(from), "edit {from:?} does not apply");
    format!("{HEAD}{}", SPEC.replacen(from, to, 1))
}

fn errors_of(src: &str) -> String {
    match parse_str(src, "policy.yaml") {
        Ok(_) => panic!("should be rejected:\n{src}"),
        Err(e) => e.to_string(),
    }
}

fn valid(src: &str) -> crate::policy::Policy {
    parse_str(src, "policy.yaml").unwrap_or_else(|e| panic!("{e}\n--- source ---\n{src}"))
}

#[test]
fn elevations_parse_into_tier_indexes_and_spans() {
    let p = valid(&format!("{HEAD}{SPEC}"));
    assert_eq!(
        p.elevation,
        vec![
            Elevation {
                from: 0,
                to: 1,
                max_duration: Span::from_millis(3_600_000),
            },
            Elevation {
                from: 1,
                to: 2,
                max_duration: Span::from_millis(600_000),
            },
        ]
    );
    // In the canonical form, so granting more (or longer) is a new version.
    let json = p.canonical_json();
    assert!(
        json.ends_with(r#","elevation":[{"from":0,"to":1,"maxDuration":"1h"},{"from":1,"to":2,"maxDuration":"10m"}]}"#),
        "{json}"
    );
    let longer = valid(&with_spec("maxDuration: 10m", "maxDuration: 11m"));
    assert_ne!(longer.version, p.version);
    let reversed = valid(&with_spec("from: b\n      to: c", "from: c\n      to: b"));
    assert_ne!(reversed.version, p.version);
}

#[test]
fn the_limit_is_a_week_inclusive() {
    for d in ["7d", "168h", "604800s", "500ms"] {
        let p = valid(&with_spec("maxDuration: 1h", &format!("maxDuration: {d}")));
        assert!(
            p.elevation[0].max_duration <= Span::from_millis(7 * 86_400_000),
            "{d}"
        );
    }
    let got = errors_of(&with_spec("maxDuration: 1h", "maxDuration: 604800001ms"));
    assert!(got.contains("604800001ms is longer than 7d"), "{got}");
}

#[test]
fn flow_style_and_an_empty_list_are_fine() {
    let flow = valid(&format!(
        "{HEAD}spec:\n  defaultTier: a\n  tiers: [{{name: a}}, {{name: b}}]\n  elevation: [{{maxDuration: 30m, to: b, from: a}}]\n"
    ));
    assert_eq!(flow.elevation.len(), 1);
    assert_eq!(
        flow.elevation[0].max_duration.get(),
        Duration::from_secs(1800)
    );

    let without = format!("{HEAD}spec:\n  defaultTier: a\n  tiers: [{{name: a}}, {{name: b}}]\n");
    let empty = valid(&format!("{without}  elevation: []\n"));
    assert!(empty.elevation.is_empty());
    // Nothing granted, nothing in the canonical form: the same version as
    // the policy that never mentions it.
    assert_eq!(empty.version, valid(&without).version);
    assert!(!empty.canonical_json().contains("elevation"));
}

/// The versions of policies written before `spec.elevation` existed, as
/// the agent computed them before it: adding the key must not move them
/// (events, stores and `advise` diffs carry these ids).
#[test]
fn versions_of_policies_without_elevation_did_not_change() {
    assert_eq!(
        valid(CONTRACT_EXAMPLE).version,
        "sha256:6a04f85789610f5999ae5d77baac9610841c30f7c2d0074fb96c73c5a3590d22"
    );
    let bundled = super::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/policy/default.yaml"
    )))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bundled.version,
        "sha256:4b7a82911eb16f7900afe890247de3dd6766089de5bdd920164228fb1498a815"
    );
}

#[test]
fn elevation_errors_report_position_and_fix() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown tier in to",
            with_spec("to: b", "to: x"),
            "policy.yaml:10:11: spec.elevation[0].to: unknown tier \"x\" (known tiers: a, b, c)",
        ),
        (
            "unknown tier in from",
            with_spec("from: b", "from: z"),
            "policy.yaml:12:13: spec.elevation[1].from: unknown tier \"z\" (known tiers: a, b, c)",
        ),
        (
            "host is no tier",
            with_spec("to: c", "to: host"),
            "policy.yaml:13:11: spec.elevation[1].to: \"host\" is not a tier: host cgroups are not enforced",
        ),
        (
            "from and to the same",
            with_spec("to: b", "to: a"),
            "policy.yaml:10:11: spec.elevation[0].to: the same tier as `from`; an elevation moves a workload to another tier",
        ),
        (
            "tier name not a string",
            with_spec("from: a", "from: 1"),
            "policy.yaml:9:13: spec.elevation[0].from: expected a string, found an integer (quote it: \"1\")",
        ),
        (
            "maxDuration missing",
            with_spec("      maxDuration: 1h\n", ""),
            "policy.yaml:9:7: spec.elevation[0].maxDuration: missing required key",
        ),
        (
            "to missing",
            with_spec("      to: b\n", ""),
            "policy.yaml:9:7: spec.elevation[0].to: missing required key",
        ),
        (
            "zero maxDuration",
            with_spec("maxDuration: 1h", "maxDuration: 0s"),
            "policy.yaml:11:20: spec.elevation[0].maxDuration: must be longer than 0s",
        ),
        (
            "longer than a week",
            with_spec("maxDuration: 1h", "maxDuration: 8d"),
            "policy.yaml:11:20: spec.elevation[0].maxDuration: 8d is longer than 7d: a break-glass grant longer than a week is a policy edit, not an elevation",
        ),
        (
            "not a duration",
            with_spec("maxDuration: 10m", "maxDuration: 10 minutes"),
            "policy.yaml:14:20: spec.elevation[1].maxDuration: `10 minutes` is not a duration: write a whole number and one unit",
        ),
        (
            "a bare number",
            with_spec("maxDuration: 10m", "maxDuration: 600"),
            "policy.yaml:14:20: spec.elevation[1].maxDuration: expected a duration string such as \"5s\"",
        ),
        (
            "the same pair twice",
            with_spec("from: b\n      to: c", "from: a\n      to: b"),
            "policy.yaml:12:7: spec.elevation[1]: the same elevation as spec.elevation[0] (line 9); list each from/to pair once",
        ),
        (
            "misspelt key",
            with_spec("maxDuration: 1h", "maxduration: 1h"),
            "policy.yaml:11:7: spec.elevation[0].maxduration: unknown key (did you mean \"maxDuration\"? allowed keys: from, to, maxDuration)",
        ),
        (
            "misspelt section",
            with_spec("  elevation:", "  elevations:"),
            "policy.yaml:8:3: spec.elevations: unknown key (did you mean \"elevation\"?",
        ),
        (
            "not a list",
            format!(
                "{HEAD}spec:\n  defaultTier: a\n  tiers: [{{name: a}}]\n  elevation: {{from: a}}\n"
            ),
            "policy.yaml:8:14: spec.elevation: expected a list, found a mapping",
        ),
        (
            "left empty",
            format!("{HEAD}spec:\n  defaultTier: a\n  tiers: [{{name: a}}]\n  elevation:\n"),
            "spec.elevation: expected a list, found nothing (null)",
        ),
        (
            "an item not a mapping",
            with_spec(
                "    - from: a\n      to: b\n      maxDuration: 1h\n",
                "    - a\n",
            ),
            "policy.yaml:9:7: spec.elevation[0]: expected a mapping, found a string",
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
fn every_bad_elevation_is_reported_at_once() {
    let src = with_spec("to: b", "to: x")
        .replacen("10m", "9d", 1)
        .replacen("to: c", "to: b", 1)
        .replacen("from: b", "from: b\n      why: because", 1);
    let got = errors_of(&src);
    let lines: Vec<&str> = got.lines().collect();
    let want = [
        "policy.yaml:10:11: spec.elevation[0].to: unknown tier",
        "policy.yaml:13:7: spec.elevation[1].why: unknown key",
        "policy.yaml:14:11: spec.elevation[1].to: the same tier as `from`",
        "policy.yaml:15:20: spec.elevation[1].maxDuration: 9d is longer than 7d",
    ];
    assert_eq!(lines.len(), want.len(), "{got}");
    for (line, want) in lines.iter().zip(want) {
        assert!(line.starts_with(want), "{want:?} in:\n{got}");
    }
}

#[test]
fn one_bad_tier_is_one_message() {
    // A tier that failed its own checks is still known by name: the
    // elevation naming it adds no second message.
    let src = format!(
        "{HEAD}spec:\n  defaultTier: a\n  tiers: [{{name: a}}, {{name: B}}]\n  elevation: [{{from: a, to: B, maxDuration: 1h}}]\n"
    );
    let got = errors_of(&src);
    assert_eq!(got.lines().count(), 1, "{got}");
    assert!(got.contains("\"B\" is not a valid tier name"), "{got}");
}
