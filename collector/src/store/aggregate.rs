//! The in-memory aggregate: observations keyed like the store's table.
//!
//! The collector folds the records of about a second into one aggregate
//! and writes it in one transaction; `tiergate advise` without a store
//! reads JSON-lines files into one (see `jsonl.rs`).

use std::collections::HashMap;

use super::batch::Run;
use super::keys::{Classes, KeyRef, Map, Pair, Triple};
use super::observe::{
    ObservationKey, ObserveError, Observed, PolicySighting, Seen, Update, observe_ref,
};
use super::shape::Shape;
use super::{IdentityRow, ObservationRow, PolicyVersionRow, RuleRow};

/// Per (identity class, node): the inventory's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySeen {
    pub owner: Option<String>,
    pub first_ms: u64,
    pub last_ms: u64,
    pub attempts: u64,
    /// 0 when no connection attempt was seen (only DNS queries).
    pub last_attempt_ms: u64,
}

/// A rule uid as last seen in a policy record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSeen {
    pub tier: String,
    pub index: u32,
    pub policy_version: String,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// A policy version: its name and when records showed it in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySeen {
    pub name: String,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// Observations, identities, rules and policy versions, aggregated.
#[derive(Debug, Default)]
pub struct Aggregate {
    pub observations: Map<ObservationKey, Seen>,
    /// Keyed by (identity class, node).
    pub identities: Map<(String, String), IdentitySeen>,
    /// Keyed by (identity class, node, tier).
    pub identity_tiers: Map<(String, String, String), Seen>,
    /// Keyed by rule uid.
    pub rules: Map<String, RuleSeen>,
    /// Keyed by policy version.
    pub policies: Map<String, PolicySeen>,
    /// Updates folded in since the aggregate was made.
    pub updates: u64,
    /// The identity classes of the workloads seen (None while in use).
    classes: Option<Classes>,
    /// Shapes of records, kept for their buffers (see `batch.rs`).
    pub(super) shapes: Vec<Shape>,
}

/// [`Sighting`](super::Sighting), borrowed.
struct Who<'a> {
    node: &'a str,
    owner: Option<&'a str>,
    attempts: u64,
    /// The last of the attempts (0: none).
    last_attempt_ms: u64,
    policy_name: &'a str,
}

impl Aggregate {
    /// True when nothing was folded in.
    pub fn is_empty(&self) -> bool {
        self.updates == 0
    }

    /// Folds one update in.
    pub fn add(&mut self, update: Update) {
        self.updates += 1;
        match update {
            Update::Traffic { key, seen, who } => {
                let who = Who {
                    node: &who.node,
                    owner: who.owner.as_deref(),
                    attempts: who.attempts,
                    last_attempt_ms: if who.attempts > 0 { seen.last_ms } else { 0 },
                    policy_name: &who.policy_name,
                };
                self.traffic(&KeyRef::of(&key), seen, &who);
            }
            Update::Policy(p) => self.policy(p),
        }
    }

    /// Folds one record (one OCSF JSON object) in: what
    /// [`observe`](super::observe) says it adds, and the same error for a
    /// record that is not readable. Copies only what the aggregate does
    /// not hold yet (a new key), not every record's fields.
    pub fn add_record(&mut self, line: &[u8]) -> Result<(), ObserveError> {
        match observe_ref(line)? {
            None => {}
            Some(Observed::Policy(p)) => self.add(Update::Policy(p)),
            Some(Observed::Traffic(t)) => self.fold(Run::new(t)),
        }
        Ok(())
    }

    /// Folds in a run of records of one shape (see `batch.rs`).
    pub(super) fn fold(&mut self, r: Run<'_>) {
        self.updates += r.updates;
        let t = &r.traffic;
        let mut classes = self.classes.take().unwrap_or_default();
        let key = KeyRef {
            identity: classes.class(&t.workload),
            tier: &t.tier,
            policy_version: &t.policy_version,
            destination: &t.destination,
            port: t.port,
            protocol: &t.protocol,
            verdict: &t.verdict,
            rule_uid: &t.rule_uid,
        };
        let who = Who {
            node: &t.node,
            owner: t.owner.as_deref(),
            attempts: t.attempts,
            last_attempt_ms: r.last_attempt_ms,
            policy_name: &t.policy_name,
        };
        self.traffic(&key, t.seen, &who);
        self.classes = Some(classes);
    }

    fn traffic(&mut self, key: &KeyRef<'_>, seen: Seen, who: &Who<'_>) {
        if !key.policy_version.is_empty() {
            self.see_policy(key.policy_version, who.policy_name, seen);
        }
        self.identity_tiers
            .entry_ref(&Triple(key.identity, who.node, key.tier))
            .and_modify(|s| s.merge(seen))
            .or_insert(seen);
        let i = self
            .identities
            .entry_ref(&Pair(key.identity, who.node))
            .or_insert(IdentitySeen {
                owner: None,
                first_ms: seen.first_ms,
                last_ms: seen.last_ms,
                attempts: 0,
                last_attempt_ms: 0,
            });
        if let Some(owner) = who.owner
            && i.owner.as_deref() != Some(owner)
        {
            i.owner = Some(owner.to_string());
        }
        i.first_ms = i.first_ms.min(seen.first_ms);
        i.last_ms = i.last_ms.max(seen.last_ms);
        i.attempts += who.attempts;
        i.last_attempt_ms = i.last_attempt_ms.max(who.last_attempt_ms);
        self.observations
            .entry_ref(key)
            .and_modify(|s| s.merge(seen))
            .or_insert(seen);
    }

    fn see_policy(&mut self, version: &str, name: &str, seen: Seen) {
        let p = self.policies.entry_ref(version).or_insert(PolicySeen {
            name: String::new(),
            first_ms: seen.first_ms,
            last_ms: seen.last_ms,
        });
        if p.name.is_empty() {
            p.name = name.to_string();
        }
        p.first_ms = p.first_ms.min(seen.first_ms);
        p.last_ms = p.last_ms.max(seen.last_ms);
    }

    fn policy(&mut self, p: PolicySighting) {
        let seen = Seen::at(p.time_ms, 1);
        self.see_policy(&p.version, &p.name, seen);
        for r in p.rules {
            let new = RuleSeen {
                tier: r.tier,
                index: r.index,
                policy_version: p.version.clone(),
                first_ms: p.time_ms,
                last_ms: p.time_ms,
            };
            self.rules
                .entry(r.uid)
                .and_modify(|old| merge_rule(old, &new))
                .or_insert(new);
        }
    }

    /// Folds another aggregate in (what a failed write left behind).
    pub fn merge(&mut self, other: Aggregate) {
        self.updates += other.updates;
        for (k, s) in other.observations {
            self.observations
                .entry(k)
                .and_modify(|o| o.merge(s))
                .or_insert(s);
        }
        for (k, s) in other.identity_tiers {
            self.identity_tiers
                .entry(k)
                .and_modify(|o| o.merge(s))
                .or_insert(s);
        }
        for (k, s) in other.identities {
            self.identities
                .entry(k)
                .and_modify(|o| {
                    if s.owner.is_some() {
                        o.owner = s.owner.clone();
                    }
                    o.first_ms = o.first_ms.min(s.first_ms);
                    o.last_ms = o.last_ms.max(s.last_ms);
                    o.attempts += s.attempts;
                    o.last_attempt_ms = o.last_attempt_ms.max(s.last_attempt_ms);
                })
                .or_insert(s);
        }
        for (k, r) in other.rules {
            self.rules
                .entry(k)
                .and_modify(|o| merge_rule(o, &r))
                .or_insert(r);
        }
        for (k, p) in other.policies {
            self.see_policy(&k, &p.name, Seen::at(p.first_ms, 0));
            self.see_policy(&k, &p.name, Seen::at(p.last_ms, 0));
        }
    }

    /// Observations last seen at or after `since_ms`, sorted by key.
    pub fn observations(&self, since_ms: u64) -> Vec<ObservationRow> {
        let mut rows: Vec<ObservationRow> = self
            .observations
            .iter()
            .filter(|(_, s)| s.last_ms >= since_ms)
            .map(|(k, s)| ObservationRow {
                key: k.clone(),
                seen: *s,
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// Every rule uid seen in force, sorted by uid. A rule was in force as
    /// long as the policy version it was last listed in.
    pub fn rules(&self) -> Vec<RuleRow> {
        let mut rows: Vec<RuleRow> = self
            .rules
            .iter()
            .map(|(uid, r)| RuleRow {
                uid: uid.clone(),
                tier: r.tier.clone(),
                index: r.index,
                policy_version: r.policy_version.clone(),
                first_seen_ms: r.first_ms,
                last_seen_ms: self
                    .policies
                    .get(&r.policy_version)
                    .map_or(r.last_ms, |p| p.last_ms.max(r.last_ms)),
            })
            .collect();
        rows.sort_by(|a, b| a.uid.cmp(&b.uid));
        rows
    }

    /// The inventory: one row per (identity class, node), sorted.
    pub fn identities(&self) -> Vec<IdentityRow> {
        let mut tiers: HashMap<(&str, &str), Vec<String>> = HashMap::new();
        for (id, node, tier) in self.identity_tiers.keys() {
            tiers
                .entry((id.as_str(), node.as_str()))
                .or_default()
                .push(tier.clone());
        }
        let mut rows: Vec<IdentityRow> = self
            .identities
            .iter()
            .map(|((id, node), s)| {
                let mut t = tiers
                    .remove(&(id.as_str(), node.as_str()))
                    .unwrap_or_default();
                t.sort();
                IdentityRow {
                    identity: id.clone(),
                    node: node.clone(),
                    owner: s.owner.clone(),
                    tiers: t,
                    first_seen_ms: s.first_ms,
                    last_seen_ms: s.last_ms,
                    attempts: s.attempts,
                    last_attempt_ms: (s.last_attempt_ms > 0).then_some(s.last_attempt_ms),
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.identity, &a.node).cmp(&(&b.identity, &b.node)));
        rows
    }

    /// Every policy version seen, oldest first.
    pub fn policy_versions(&self) -> Vec<PolicyVersionRow> {
        let mut rows: Vec<PolicyVersionRow> = self
            .policies
            .iter()
            .map(|(v, p)| PolicyVersionRow {
                version: v.clone(),
                name: p.name.clone(),
                first_seen_ms: p.first_ms,
                last_seen_ms: p.last_ms,
            })
            .collect();
        rows.sort_by(|a, b| (a.first_seen_ms, &a.version).cmp(&(b.first_seen_ms, &b.version)));
        rows
    }
}

/// The later listing of a rule tells its tier, index and version.
fn merge_rule(old: &mut RuleSeen, new: &RuleSeen) {
    if new.last_ms >= old.last_ms {
        old.tier = new.tier.clone();
        old.index = new.index;
        old.policy_version = new.policy_version.clone();
    }
    old.first_ms = old.first_ms.min(new.first_ms);
    old.last_ms = old.last_ms.max(new.last_ms);
}

#[cfg(test)]
mod tests {
    use super::super::observe::observe;
    use super::super::observe::tests::connection;
    use super::*;
    use serde_json::json;

    fn update(v: &serde_json::Value) -> Update {
        observe(v.to_string().as_bytes()).unwrap().unwrap()
    }

    fn at(mut v: serde_json::Value, time: u64, uid: &str) -> serde_json::Value {
        v["time"] = json!(time);
        v["metadata"]["uid"] = json!(uid);
        v
    }

    #[test]
    fn counts_add_and_the_window_widens() {
        let mut agg = Aggregate::default();
        agg.add(update(&at(connection("allow", "10.0.0.1", 443), 20, "a")));
        agg.add(update(&at(connection("allow", "10.0.0.1", 443), 10, "b")));
        agg.add(update(&at(connection("deny", "10.0.0.2", 443), 30, "c")));
        let rows = agg.observations(0);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].seen,
            Seen {
                count: 2,
                first_ms: 10,
                last_ms: 20
            }
        );
        assert_eq!(rows[1].seen, Seen::at(30, 1));
        assert_eq!(agg.observations(25).len(), 1);
        let ids = agg.identities();
        assert_eq!(ids.len(), 1);
        assert_eq!((ids[0].attempts, ids[0].last_attempt_ms), (3, Some(30)));
        assert_eq!(ids[0].tiers, vec!["tier0".to_string()]);
        let pv = agg.policy_versions();
        assert_eq!(
            (pv[0].version.as_str(), pv[0].name.as_str()),
            ("sha256:ab", "p")
        );
        assert_eq!((pv[0].first_seen_ms, pv[0].last_seen_ms), (10, 30));
    }

    #[test]
    fn merging_is_adding() {
        let mut a = Aggregate::default();
        a.add(update(&at(connection("allow", "10.0.0.1", 443), 20, "a")));
        let mut b = Aggregate::default();
        b.add(update(&at(connection("allow", "10.0.0.1", 443), 5, "b")));
        b.add(update(&at(connection("allow", "10.0.0.9", 443), 50, "c")));
        a.merge(b);
        assert_eq!(a.updates, 3);
        let rows = a.observations(0);
        assert_eq!(
            rows[0].seen,
            Seen {
                count: 2,
                first_ms: 5,
                last_ms: 20
            }
        );
        assert_eq!(a.identities()[0].attempts, 3);
        assert_eq!(a.policy_versions()[0].first_seen_ms, 5);
        assert_eq!(a.policy_versions()[0].last_seen_ms, 50);
    }

    #[test]
    fn a_rule_is_in_force_while_its_version_is() {
        let mut agg = Aggregate::default();
        let policy = json!({"class_uid": 0, "time": 100,
            "unmapped": {"tiergate": {"kind": "policy", "action": "applied",
                "policy": {"name": "p", "version": "sha256:ab"},
                "rules": [{"tier": "tier0", "index": 0, "uid": "r-1"}]}}});
        agg.add(update(&policy));
        agg.add(update(&at(connection("allow", "10.0.0.1", 443), 900, "a")));
        let rules = agg.rules();
        assert_eq!(rules.len(), 1);
        assert_eq!((rules[0].first_seen_ms, rules[0].last_seen_ms), (100, 900));
    }

    /// A record folds in as its update does, by whichever reader and
    /// whether its key is new or not.
    #[test]
    fn a_record_folds_in_as_its_update() {
        let mut pod = at(connection("allow", "10.0.0.1", 443), 20, "a");
        pod["unmapped"]["tiergate"]["workload"]["owner"] = json!("team-a");
        let mut other_owner = pod.clone();
        other_owner["unmapped"]["tiergate"]["workload"]["owner"] = json!({"team": "b"});
        let mut dns = at(connection("deny", "10.0.0.53", 53), 5, "d");
        dns["class_uid"] = json!(4003);
        dns["unmapped"]["tiergate"]["kind"] = json!("dns");
        dns["query"] = json!({"hostname": "API.example.com."});
        let policy = json!({"class_uid": 0, "time": 1, "unmapped": {"tiergate": {
            "kind": "policy", "action": "applied", "policy": {"name": "p", "version": "sha256:ab"},
            "rules": [{"tier": "tier0", "index": 0, "uid": "r-1"}]}}});
        let lines = [
            policy,
            pod.clone(),
            at(connection("deny", "10.0.0.2", 80), 30, "b"),
            other_owner,
            dns,
            pod,
            json!({"class_uid": 0, "time": 1, "unmapped": {"tiergate": {"kind": "loss"}}}),
        ];
        let (mut by_record, mut by_update) = (Aggregate::default(), Aggregate::default());
        for v in &lines {
            let line = v.to_string();
            by_record.add_record(line.as_bytes()).unwrap();
            if let Some(u) = observe(line.as_bytes()).unwrap() {
                by_update.add(u);
            }
        }
        assert_eq!(by_record.updates, 6);
        assert_eq!(by_record.updates, by_update.updates);
        assert_eq!(by_record.observations(0), by_update.observations(0));
        assert_eq!(by_record.identities(), by_update.identities());
        assert_eq!(by_record.rules(), by_update.rules());
        assert_eq!(by_record.policy_versions(), by_update.policy_versions());
        assert_eq!(
            by_record.identities()[0].owner.as_deref(),
            Some("team-a"),
            "the last owner seen"
        );
        assert_eq!(
            by_record.add_record(b"not json"),
            observe(b"not json").map(|_| ())
        );
    }

    /// Escaped strings are read by serde_json, plain ones by the scanner:
    /// the same text either way is one key.
    #[test]
    fn records_that_differ_only_in_escapes_are_one_observation() {
        let plain = at(connection("allow", "10.0.0.1", 443), 20, "a").to_string();
        let escaped = plain
            .replace("\"tier0\"", "\"tier\\u0030\"")
            .replace("/agents/tier0/", "\\/agents\\/tier0\\/");
        assert_ne!(plain, escaped);
        let mut agg = Aggregate::default();
        agg.add_record(plain.as_bytes()).unwrap();
        agg.add_record(escaped.as_bytes()).unwrap();
        let rows = agg.observations(0);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].seen.count, 2);
        assert_eq!(rows[0].key.tier, "tier0");
        assert_eq!(agg.identities().len(), 1);
    }
}
