//! `policy explain --to NAME:PORT`: the static verdict for a destination
//! named by DNS, as the proxy and the hook would reach it for an address
//! the name's answer teaches (a public one; private answers need the rule's
//! `allowPrivate`, metadata and loopback answers are never learned).

use super::assign::TierRef;
use super::explain::{Proto, Verdict};
use super::fqdn::normalize;
use super::model::{Mode, Policy};

/// The verdict on a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameDecision {
    pub verdict: Verdict,
    /// `fqdn` (a rule admits it), `port-not-allowed` (a rule names it, none
    /// admits this port/protocol), `name-not-allowed` (no rule names it: the
    /// proxy answers NXDOMAIN), `no-name-rules` (the tier has none: its DNS
    /// is not filtered and the answer's addresses are judged by `cidrs`
    /// rules alone), `host`.
    pub reason: &'static str,
    /// (tier index, rule index) of the admitting rule.
    pub rule: Option<(usize, usize)>,
    /// Whether answers in private ranges may be learned under that rule.
    pub allow_private: bool,
}

impl Policy {
    /// The verdict for `tier` reaching `name` on `port`/`proto`; `Err` when
    /// `name` is not a DNS name.
    pub fn evaluate_name(
        &self,
        tier: TierRef,
        name: &str,
        port: u16,
        proto: Proto,
    ) -> Result<NameDecision, String> {
        let name = normalize(name)?;
        let decision = |verdict, reason, rule, allow_private| {
            Ok(NameDecision {
                verdict,
                reason,
                rule,
                allow_private,
            })
        };
        let index = match tier {
            TierRef::Host => return decision(Verdict::Allow, "host", None, false),
            TierRef::Tier(i) => i,
        };
        let Some(t) = self.tiers.get(index) else {
            return decision(Verdict::Deny, "name-not-allowed", None, false);
        };
        let deny = if t.effective_mode(self.mode) == Mode::Audit {
            Verdict::AuditDeny
        } else {
            Verdict::Deny
        };
        if !t.has_fqdns() {
            return decision(deny, "no-name-rules", None, false);
        }
        let named: Vec<usize> = t
            .egress
            .iter()
            .enumerate()
            .filter(|(_, r)| r.fqdns.iter().any(|p| p.matches(&name)))
            .map(|(i, _)| i)
            .collect();
        if named.is_empty() {
            return decision(deny, "name-not-allowed", None, false);
        }
        let admits = |ri: usize| {
            let r = &t.egress[ri];
            let proto_ok = match proto {
                Proto::Tcp => r.protocols.tcp,
                Proto::Udp => r.protocols.udp,
            };
            proto_ok
                && r.ports
                    .as_ref()
                    .is_none_or(|ps| ps.iter().any(|&(lo, hi)| lo <= port && port <= hi))
        };
        match named.iter().copied().find(|&ri| admits(ri)) {
            Some(ri) => decision(
                Verdict::Allow,
                "fqdn",
                Some((index, ri)),
                t.egress[ri].allow_private,
            ),
            None => decision(deny, "port-not-allowed", None, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::with_spec;

    const SPEC: &str = r#"spec:
  dns: {resolvers: [10.0.0.53]}
  defaultTier: names
  tiers:
    - name: names
      egress:
        - cidrs: ["10.0.0.0/8"]
        - fqdns: ["api.github.com", "*.s3.amazonaws.com"]
          ports: ["443"]
          protocols: [tcp]
        - fqdns: ["vault.svc.test"]
          allowPrivate: true
    - name: watched
      mode: audit
      egress:
        - fqdns: ["api.github.com"]
    - name: plain
      egress:
        - cidrs: ["0.0.0.0/0"]
"#;

    #[test]
    fn names_are_judged_like_the_proxy_and_the_hook_would() {
        let p = with_spec(SPEC);
        let t = |i| TierRef::Tier(i);
        let e = |tier, name: &str, port, proto| {
            let d = p.evaluate_name(tier, name, port, proto).expect("name");
            (d.verdict, d.reason, d.rule, d.allow_private)
        };
        assert_eq!(
            e(t(0), "API.GitHub.com.", 443, Proto::Tcp),
            (Verdict::Allow, "fqdn", Some((0, 1)), false)
        );
        assert_eq!(
            e(t(0), "bucket.s3.amazonaws.com", 443, Proto::Tcp),
            (Verdict::Allow, "fqdn", Some((0, 1)), false)
        );
        assert_eq!(
            e(t(0), "evils3.amazonaws.com", 443, Proto::Tcp),
            (Verdict::Deny, "name-not-allowed", None, false)
        );
        assert_eq!(
            e(t(0), "api.github.com", 22, Proto::Tcp),
            (Verdict::Deny, "port-not-allowed", None, false)
        );
        assert_eq!(
            e(t(0), "api.github.com", 443, Proto::Udp),
            (Verdict::Deny, "port-not-allowed", None, false)
        );
        assert_eq!(
            e(t(0), "vault.svc.test", 8200, Proto::Udp),
            (Verdict::Allow, "fqdn", Some((0, 2)), true)
        );
        assert_eq!(
            e(t(1), "example.org", 443, Proto::Tcp),
            (Verdict::AuditDeny, "name-not-allowed", None, false)
        );
        assert_eq!(
            e(t(2), "api.github.com", 443, Proto::Tcp),
            (Verdict::Deny, "no-name-rules", None, false)
        );
        assert_eq!(
            e(TierRef::Host, "api.github.com", 443, Proto::Tcp),
            (Verdict::Allow, "host", None, false)
        );
        assert!(p.evaluate_name(t(0), "bad name", 443, Proto::Tcp).is_err());
    }

    #[test]
    fn dns_queries_of_name_tiers_go_to_the_proxy() {
        use super::super::explain::Reason;
        let p = with_spec(SPEC);
        let any = "127.0.0.53".parse().expect("addr");
        let d = p.evaluate(TierRef::Tier(0), any, 53, Proto::Udp);
        assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::DnsProxy));
        let d = p.evaluate(
            TierRef::Tier(0),
            "8.8.8.8".parse().expect("a"),
            53,
            Proto::Tcp,
        );
        assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::DnsProxy));
        // A tier without names: port 53 is ordinary egress.
        let d = p.evaluate(TierRef::Tier(2), any, 53, Proto::Udp);
        assert_eq!(d.reason, Reason::Loopback);
    }
}
