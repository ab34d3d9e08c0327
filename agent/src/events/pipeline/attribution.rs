//! Which rule allowed a connection (`unmapped.tiergate.rule`), named the way
//! `policy explain` names it (policy/rule_id.rs), under the policy of the
//! event's generation.
//!
//! Finding the rule is a scan of the tier's rules; the writer sees the same
//! destinations again and again, so answers are cached per generation slot
//! (cleared when the slot's policy changes, and when the cache is full:
//! memory stays bounded whatever the traffic).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::{Policy, Proto, rule_uid};

/// Entries per generation slot before the cache starts over.
const CACHE_CAP: usize = 16_384;

/// The rule that allowed an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleTag {
    pub uid: Arc<str>,
    pub index: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    tier: u32,
    addr: IpAddr,
    port: u16,
    tcp: bool,
}

#[derive(Default)]
struct Slot {
    /// The policy version the cached answers are for.
    version: String,
    /// Rule ids per tier, per rule.
    uids: Vec<Vec<Arc<str>>>,
    answers: HashMap<Key, Option<usize>>,
}

/// Rule attribution for the writer.
#[derive(Default)]
pub struct Attribution {
    slots: [Slot; 2],
}

impl Attribution {
    /// The rule of `policy` (the policy of `generation`) that allowed tier
    /// `tier` to reach the destination (address, port, protocol), or, with `fqdn`, the name rule whose
    /// learned address it was.
    pub fn rule(
        &mut self,
        policy: &Policy,
        generation: u32,
        tier: u32,
        (dst, port, proto): (IpAddr, u16, Proto),
        fqdn: Option<&str>,
    ) -> Option<RuleTag> {
        let slot = &mut self.slots[(generation & 1) as usize];
        if slot.version != policy.version {
            slot.version = policy.version.clone();
            slot.uids = policy
                .tiers
                .iter()
                .map(|t| {
                    t.egress
                        .iter()
                        .map(|r| rule_uid(&t.name, r).into())
                        .collect()
                })
                .collect();
            slot.answers.clear();
        }
        let index = match fqdn {
            // Few name rules, and the name varies: no cache.
            Some(name) => policy.rule_for_name(tier as usize, name, port, proto),
            None => {
                let key = Key {
                    tier,
                    addr: dst,
                    port,
                    tcp: proto == Proto::Tcp,
                };
                if let Some(hit) = slot.answers.get(&key) {
                    *hit
                } else {
                    if slot.answers.len() >= CACHE_CAP {
                        slot.answers.clear();
                    }
                    let found = policy.rule_for_addr(tier as usize, dst, port, proto);
                    slot.answers.insert(key, found);
                    found
                }
            }
        }?;
        let uid = slot.uids.get(tier as usize)?.get(index)?.clone();
        Some(RuleTag { uid, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::with_spec;

    #[test]
    fn names_the_rule_and_follows_the_slots_policy() {
        let a = with_spec(
            "spec:\n  defaultTier: t\n  tiers:\n    - name: t\n      egress:\n        - cidrs: [\"10.0.0.0/8\"]\n          ports: [\"443\"]\n        - cidrs: [\"10.1.0.0/16\"]\n",
        );
        let b = with_spec(
            "spec:\n  defaultTier: t\n  tiers:\n    - name: t\n      egress:\n        - cidrs: [\"10.1.0.0/16\"]\n",
        );
        let ip: IpAddr = "10.1.0.1".parse().unwrap();
        let mut at = Attribution::default();
        let r = at.rule(&a, 4, 0, (ip, 443, Proto::Tcp), None).unwrap();
        assert_eq!(r.index, 0);
        assert_eq!(&*r.uid, rule_uid("t", &a.tiers[0].egress[0]).as_str());
        // Cached, same answer.
        assert_eq!(at.rule(&a, 4, 0, (ip, 443, Proto::Tcp), None), Some(r));
        assert_eq!(
            at.rule(&a, 4, 0, (ip, 80, Proto::Tcp), None).unwrap().index,
            1
        );
        // The other slot keeps its own policy; a new policy in a slot clears it.
        assert_eq!(
            at.rule(&b, 5, 0, (ip, 443, Proto::Tcp), None)
                .unwrap()
                .index,
            0
        );
        let again = at.rule(&b, 4, 0, (ip, 80, Proto::Tcp), None).unwrap();
        assert_eq!(again.index, 0);
        assert_eq!(&*again.uid, rule_uid("t", &b.tiers[0].egress[0]).as_str());
        // Nothing admits it, or the tier is unknown: no rule.
        let far: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(at.rule(&b, 4, 0, (far, 80, Proto::Tcp), None), None);
        assert_eq!(at.rule(&b, 4, 9, (ip, 80, Proto::Tcp), None), None);
    }

    #[test]
    fn cache_stays_bounded() {
        let p = with_spec(
            "spec:\n  defaultTier: t\n  tiers:\n    - name: t\n      egress:\n        - cidrs: [\"0.0.0.0/0\"]\n",
        );
        let mut at = Attribution::default();
        for i in 0..(CACHE_CAP as u32 + 10) {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(at.rule(&p, 0, 0, (ip, 1, Proto::Udp), None).is_some());
        }
        assert!(at.slots[0].answers.len() <= CACHE_CAP);
    }
}
