//! Unprivileged tests of the analysis and the proposal on synthetic
//! evidence; the end-to-end run on real agents is tests/tests/advise.rs.

use std::net::IpAddr;

use tiergate_collector::store::{IdentityRow, ObservationKey, ObservationRow, RuleRow, Seen};

use super::analyze::{Evidence, Status, Window, analyze};
use super::propose::propose;
use crate::policy::render::{Comments, to_yaml};
use crate::policy::{Policy, Proto, parse_str};

const DAY: u64 = 86_400_000;
const NOW: u64 = 1_800_000_000_000;

const POLICY: &str = r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: evidence
spec:
  defaultTier: tools
  dns:
    resolvers: ["10.96.0.10"]
  tiers:
    - name: tools
      egress:
        - cidrs: ["10.0.0.0/8"]
          ports: ["443", "8000-8100"]
        - cidrs: ["0.0.0.0/0"]
          ports: ["443"]
          protocols: [tcp]
        - fqdns: ["*.github.example", "api.model.example"]
          ports: ["443"]
          protocols: [tcp]
        - cidrs: ["192.0.2.0/24"]
    - name: idle
      egress:
        - cidrs: ["198.51.100.0/24"]
  bindings:
    - tier: idle
      match:
        namespace: idle
"#;

fn policy() -> Policy {
    parse_str(POLICY, "p.yaml").unwrap()
}

fn window(days: u64) -> Window {
    Window {
        start_ms: NOW - days * DAY,
        now_ms: NOW,
        stale_ms: 7 * DAY,
    }
}

// One argument per column of the row the fixtures spell out.
#[allow(clippy::too_many_arguments)]
fn obs(
    identity: &str,
    tier: &str,
    dest: &str,
    port: u16,
    proto: &str,
    verdict: &str,
    rule: &str,
    count: u64,
    last: u64,
) -> ObservationRow {
    ObservationRow {
        key: ObservationKey {
            identity: identity.into(),
            tier: tier.into(),
            policy_version: "sha256:old".into(),
            destination: dest.into(),
            port,
            protocol: proto.into(),
            verdict: verdict.into(),
            rule_uid: rule.into(),
        },
        seen: Seen {
            count,
            first_ms: last.saturating_sub(DAY),
            last_ms: last,
        },
    }
}

fn ident(identity: &str, tier: &str, owner: Option<&str>, first: u64, last: u64) -> IdentityRow {
    IdentityRow {
        identity: identity.into(),
        node: "node-1".into(),
        owner: owner.map(str::to_string),
        tiers: vec![tier.into()],
        first_seen_ms: first,
        last_seen_ms: last,
        attempts: 1,
        last_attempt_ms: Some(last),
    }
}

/// Every rule of `p` in force since `since`.
fn rules_since(p: &Policy, since: u64) -> Vec<RuleRow> {
    p.rule_refs()
        .into_iter()
        .map(|r| RuleRow {
            uid: r.uid,
            tier: r.tier,
            index: r.index as u32,
            policy_version: p.version.clone(),
            first_seen_ms: since,
            last_seen_ms: NOW,
        })
        .collect()
}

fn uid(p: &Policy, tier: usize, rule: usize) -> String {
    crate::policy::rule_uid(&p.tiers[tier].name, &p.tiers[tier].egress[rule])
}

#[test]
fn index_counts_judged_rules_and_denials_are_never_use() {
    let p = policy();
    let a = "k8s:agents/retriever";
    let ev = Evidence {
        observations: vec![
            obs(
                a,
                "tools",
                "10.1.2.3",
                443,
                "tcp",
                "allow",
                &uid(&p, 0, 0),
                40,
                NOW - DAY,
            ),
            // Rule 1 last used before the window: unused, with that date.
            obs(
                a,
                "tools",
                "203.0.113.9",
                443,
                "tcp",
                "allow",
                &uid(&p, 0, 1),
                2,
                NOW - 40 * DAY,
            ),
            // Denials of rule 3's range say nothing about its use.
            obs(a, "tools", "192.0.2.7", 22, "tcp", "deny", "", 9, NOW - DAY),
        ],
        rules: rules_since(&p, NOW - 60 * DAY),
        identities: vec![ident(a, "tools", None, NOW - 50 * DAY, NOW - DAY)],
    };
    let r = analyze(&p, &ev, window(30));
    let i = &r.identities[0];
    let status: Vec<Status> = i.rules.iter().map(|r| r.status).collect();
    assert_eq!(
        status,
        [Status::Used, Status::Unused, Status::Unused, Status::Unused]
    );
    assert_eq!(i.judged_rules, 4);
    assert_eq!(i.over_privilege_index, Some(0.75));
    assert_eq!(i.rules[1].last_used_ms, Some(NOW - 40 * DAY));
    assert_eq!(i.rules[3].last_used_ms, None);
    assert_eq!(i.observed.allowed, 40);
    assert_eq!(i.observed.denied, 9);
    assert_eq!(i.denied[0].destination, "192.0.2.7");
    assert!(i.owner.is_none() && !i.stale);
}

#[test]
fn rules_and_identities_younger_than_the_window_are_not_judged() {
    let p = policy();
    let mut rules = rules_since(&p, NOW - 60 * DAY);
    rules[3].first_seen_ms = NOW - 2 * DAY; // rule 3 came with a recent reload
    rules.retain(|r| r.index != 2 || r.tier != "tools"); // no record of rule 2
    let ev = Evidence {
        observations: vec![],
        rules,
        identities: vec![
            ident(
                "old",
                "tools",
                Some("team-a"),
                NOW - 50 * DAY,
                NOW - 10 * DAY,
            ),
            ident("young", "tools", Some("team-a"), NOW - 3 * DAY, NOW),
        ],
    };
    let r = analyze(&p, &ev, window(30));
    let old = r.identities.iter().find(|i| i.identity == "old").unwrap();
    let st: Vec<Status> = old.rules.iter().map(|r| r.status).collect();
    assert_eq!(
        st,
        [Status::Unused, Status::Unused, Status::New, Status::New]
    );
    assert_eq!(old.over_privilege_index, Some(1.0));
    assert!(old.stale, "last seen 10 days ago with a 7-day threshold");
    let young = r.identities.iter().find(|i| i.identity == "young").unwrap();
    assert!(young.rules.iter().all(|r| r.status == Status::New));
    assert_eq!(young.over_privilege_index, None);
}

/// A tiny deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Property: replaying every observed allowed attempt against the proposal
/// through `policy explain`'s evaluator allows it; nothing granted but
/// unused survives; nothing proposed is wider than the current grant.
#[test]
fn proposal_allows_every_observation_and_nothing_wider() {
    let p = policy();
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut rows = Vec::new();
        let identities = ["a", "b", "c"];
        for _ in 0..rng.below(60) + 1 {
            let who = identities[rng.below(3) as usize];
            let (dest, port, proto, rule) = match rng.below(4) {
                0 => (
                    format!("10.{}.{}.{}", rng.below(3), rng.below(4), rng.below(8)),
                    [443, 8000, 8080, 8100][rng.below(4) as usize],
                    if rng.below(2) == 0 { "tcp" } else { "udp" },
                    0,
                ),
                1 => (
                    format!("203.0.{}.{}", rng.below(2), rng.below(200)),
                    443,
                    "tcp",
                    1,
                ),
                2 => (
                    ["api.model.example", "x.github.example", "y.github.example"]
                        [rng.below(3) as usize]
                        .to_string(),
                    443,
                    "tcp",
                    2,
                ),
                _ => (
                    format!("192.0.2.{}", rng.below(6)),
                    rng.below(65535) as u16 + 1,
                    "udp",
                    3,
                ),
            };
            let last = NOW - rng.below(29) * DAY;
            rows.push(obs(
                who,
                "tools",
                &dest,
                port,
                proto,
                "allow",
                &uid(&p, 0, rule),
                rng.below(5) + 1,
                last,
            ));
        }
        let ev = Evidence {
            observations: rows.clone(),
            rules: rules_since(&p, NOW - 90 * DAY),
            identities: identities
                .iter()
                .map(|i| ident(i, "tools", None, NOW - 80 * DAY, NOW))
                .collect(),
        };
        let a = analyze(&p, &ev, window(30));
        let prop = propose(&p, &a, &ev.observations, seed % 2 == 0);
        let text = to_yaml(&prop.policy, &prop.comments);
        let q = parse_str(&text, "proposed.yaml")
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
        q.compile().unwrap();
        let tools = q.tier_index("tools").unwrap();
        for o in &rows {
            let proto = if o.key.protocol == "tcp" {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            let allowed = match o.key.destination.parse::<IpAddr>() {
                Ok(ip) => q.rule_for_addr(tools, ip, o.key.port, proto).is_some(),
                Err(_) => q
                    .rule_for_name(tools, &o.key.destination, o.key.port, proto)
                    .is_some(),
            };
            assert!(allowed, "seed {seed}: {:?} not allowed by\n{text}", o.key);
        }
        // Never wider: every proposed rule's networks and names lie inside
        // the original rule it came from, ports and protocols too.
        for r in &q.tiers[tools].egress {
            let inside = p.tiers[0].egress.iter().any(|orig| {
                r.cidrs
                    .iter()
                    .all(|c| orig.cidrs.iter().any(|o| o.contains(c)))
                    && r.fqdns
                        .iter()
                        .all(|n| orig.fqdns.iter().any(|o| *o == *n || o.matches(&n.suffix)))
                    && (r.fqdns.is_empty() == orig.fqdns.is_empty())
                    && r.ports.iter().flatten().all(|&(lo, hi)| {
                        (lo..=hi).all(|port| {
                            orig.admits_port(port, Proto::Tcp) || orig.admits_port(port, Proto::Udp)
                        })
                    })
                    && (!r.protocols.tcp || orig.protocols.tcp)
                    && (!r.protocols.udp || orig.protocols.udp)
            });
            assert!(inside, "seed {seed}: {r:?} is wider than the grant");
        }
        // The idle tier had nobody: its rule is kept (nothing to judge).
        assert_eq!(q.tiers[1].egress, p.tiers[1].egress);
    }
}

#[test]
fn unused_rules_leave_the_proposal_with_a_comment_and_prefixes_stay_inside() {
    let p = policy();
    let a = "spiffe://cluster.local/ns/agents/sa/tool";
    let mut rows = vec![];
    for host in 1..=5 {
        rows.push(obs(
            a,
            "tools",
            &format!("10.9.9.{host}"),
            443,
            "tcp",
            "allow",
            &uid(&p, 0, 0),
            10,
            NOW - DAY,
        ));
    }
    rows.push(obs(
        a,
        "tools",
        "10.7.0.1",
        8080,
        "tcp",
        "allow",
        &uid(&p, 0, 0),
        1,
        NOW - DAY,
    ));
    rows.push(obs(
        a,
        "tools",
        "x.github.example",
        443,
        "tcp",
        "allow",
        &uid(&p, 0, 2),
        3,
        NOW - DAY,
    ));
    let ev = Evidence {
        observations: rows,
        rules: rules_since(&p, NOW - 90 * DAY),
        identities: vec![ident(a, "tools", Some("team-a"), NOW - 80 * DAY, NOW)],
    };
    let an = analyze(&p, &ev, window(30));
    let prop = propose(&p, &an, &ev.observations, false);
    let t = &prop.policy.tiers[0];
    assert_eq!(t.egress.len(), 2, "{:?}", t.egress);
    let nets: Vec<String> = t.egress[0].cidrs.iter().map(|c| c.to_string()).collect();
    assert_eq!(nets, ["10.7.0.1/32", "10.9.9.0/24"]);
    assert_eq!(t.egress[0].ports, Some(vec![(443, 443), (8080, 8080)]));
    assert!(t.egress[0].protocols.tcp && !t.egress[0].protocols.udp);
    assert_eq!(
        t.egress[1]
            .fqdns
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["x.github.example"]
    );
    let text = to_yaml(&prop.policy, &prop.comments);
    assert!(text.contains("removed egress[1]"), "{text}");
    assert!(text.contains("last used never"), "{text}");
    assert!(text.contains("51 allowed attempts by 1 identity"), "{text}");
    assert!(text.contains("rare path"), "{text}");
    let _ = Comments::default();
}
