//! The user-space replica of the kernel verdict, for `tiergate policy
//! explain` and for tests that check the compiled maps.
//!
//! The order of the checks is the kernel's and is part of the contract:
//! IPv4-mapped destinations are unmapped first; host cgroups are allowed;
//! loopback (and the unspecified address, which connects locally) is
//! allowed; metadata endpoints are decided by `metadata:` alone, before any
//! egress rule (so `0.0.0.0/0` never opens them); then the egress rules; a
//! would-be deny in an audit tier is reported as `audit-deny`.

use std::net::IpAddr;

use agent_common::{
    DNS_PORT, METADATA_V4, METADATA_V6, REASON_DNS_PROXY, REASON_EGRESS_RULE, REASON_FQDN,
    REASON_HOST, REASON_LOOPBACK, REASON_METADATA_PROXY, REASON_METADATA_SERVICE,
    REASON_METADATA_UNFILTERED, REASON_NO_MATCHING_RULE, VERDICT_ALLOW, VERDICT_AUDIT_DENY,
    VERDICT_DENY, metadata_filterable, metadata_v4, metadata_v6,
};

use super::assign::TierRef;
use super::model::{EgressRule, MetadataAccess, Mode, Policy, normalize_addr};

/// Transport protocol of a connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP (`connect()` on a stream socket).
    Tcp,
    /// UDP (`connect()` or `sendmsg()` on a datagram socket).
    Udp,
}

impl Proto {
    /// `tcp` or `udp`, as in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The outcome for a connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let through.
    Allow,
    /// Refused with EPERM.
    Deny,
    /// Would be refused, let through because the tier is in audit mode.
    AuditDeny,
}

impl Verdict {
    /// `allow`, `deny` or `audit-deny`, as in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::AuditDeny => "audit-deny",
        }
    }

    /// The kernel's `VERDICT_*` value.
    pub fn kernel(self) -> u8 {
        match self {
            Verdict::Allow => VERDICT_ALLOW,
            Verdict::Deny => VERDICT_DENY,
            Verdict::AuditDeny => VERDICT_AUDIT_DENY,
        }
    }

    /// Decodes a kernel `VERDICT_*` value.
    pub fn from_kernel(v: u8) -> Option<Verdict> {
        [Verdict::Allow, Verdict::Deny, Verdict::AuditDeny]
            .into_iter()
            .find(|x| x.kernel() == v)
    }
}

/// Why a verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Loopback or unspecified destination: always allowed.
    Loopback,
    /// An egress rule of the tier admits it.
    EgressRule,
    /// No egress rule of the tier admits it.
    NoMatchingRule,
    /// A cloud metadata endpoint, decided by the tier's `metadata:`.
    MetadataService,
    /// The workload is host (not enforced).
    Host,
    /// An address a DNS answer taught this workload, under a name rule.
    Fqdn,
    /// A DNS query of a tier with name rules: it goes to the DNS proxy,
    /// which answers allowed names and NXDOMAIN for the rest.
    DnsProxy,
    /// A metadata connection of a `filter` tier: it goes to the metadata
    /// proxy, which decides each request.
    MetadataProxy,
    /// A metadata connection of a `filter` tier that the proxy cannot
    /// filter (not HTTP to an instance metadata service, or no proxy).
    MetadataUnfiltered,
}

impl Reason {
    /// The event spelling (`egress-rule`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Loopback => "loopback",
            Reason::EgressRule => "egress-rule",
            Reason::NoMatchingRule => "no-matching-rule",
            Reason::MetadataService => "metadata-service",
            Reason::Host => "host",
            Reason::Fqdn => "fqdn",
            Reason::DnsProxy => "dns-proxy",
            Reason::MetadataProxy => "metadata-proxy",
            Reason::MetadataUnfiltered => "metadata-unfiltered",
        }
    }

    /// The kernel's `REASON_*` value.
    pub fn kernel(self) -> u8 {
        match self {
            Reason::Loopback => REASON_LOOPBACK,
            Reason::EgressRule => REASON_EGRESS_RULE,
            Reason::NoMatchingRule => REASON_NO_MATCHING_RULE,
            Reason::MetadataService => REASON_METADATA_SERVICE,
            Reason::Host => REASON_HOST,
            Reason::Fqdn => REASON_FQDN,
            Reason::DnsProxy => REASON_DNS_PROXY,
            Reason::MetadataProxy => REASON_METADATA_PROXY,
            Reason::MetadataUnfiltered => REASON_METADATA_UNFILTERED,
        }
    }

    /// Decodes a kernel `REASON_*` value (those this module produces).
    pub fn from_kernel(v: u8) -> Option<Reason> {
        [
            Reason::Loopback,
            Reason::EgressRule,
            Reason::NoMatchingRule,
            Reason::MetadataService,
            Reason::Host,
            Reason::Fqdn,
            Reason::DnsProxy,
            Reason::MetadataProxy,
            Reason::MetadataUnfiltered,
        ]
        .into_iter()
        .find(|x| x.kernel() == v)
    }
}

/// The verdict on one connection attempt and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allow, deny or audit-deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// (tier index, rule index within the tier) of the admitting rule.
    pub rule: Option<(usize, usize)>,
    /// The destination is a cloud metadata endpoint (reported either way).
    pub metadata_service: bool,
}

/// Whether `addr` (already unmapped) is one of the built-in cloud metadata
/// endpoints of CONTRACT 2.1.
pub fn is_metadata_endpoint(addr: IpAddr) -> bool {
    match normalize_addr(addr) {
        IpAddr::V4(a) => METADATA_V4.contains(&a.octets()),
        IpAddr::V6(a) => METADATA_V6.contains(&a.octets()),
    }
}

/// The metadata endpoint `addr:port` reaches, as the kernel sees it:
/// (in the IPv4 list, index). Some endpoints are metadata only on some
/// ports (Azure's WireServer).
fn metadata_endpoint_at(addr: IpAddr, port: u16) -> Option<(bool, usize)> {
    match normalize_addr(addr) {
        IpAddr::V4(a) => metadata_v4(a.octets(), port).map(|i| (true, i)),
        IpAddr::V6(a) => metadata_v6(&a.octets()).map(|i| (false, i)),
    }
}

/// Loopback (127.0.0.0/8, ::1) or unspecified (0.0.0.0, ::): connecting to
/// the unspecified address reaches the local host, so it is treated alike.
pub fn is_loopback(addr: IpAddr) -> bool {
    let a = normalize_addr(addr);
    a.is_loopback() || a.is_unspecified()
}

impl EgressRule {
    /// Whether this rule admits the (unmapped) destination, port and protocol.
    pub fn admits(&self, dst: IpAddr, port: u16, proto: Proto) -> bool {
        self.admits_port(port, proto) && self.cidrs.iter().any(|c| c.contains(&dst))
    }
}

impl Policy {
    /// The verdict the kernel reaches for `tier` connecting to `dst:port`.
    /// A tier index outside the policy is judged like a tier without rules
    /// in the policy mode (fail closed); callers take tiers from
    /// [`Policy::assign`], which never produces one.
    pub fn evaluate(&self, tier: TierRef, dst: IpAddr, port: u16, proto: Proto) -> Decision {
        let dst = normalize_addr(dst);
        let endpoint = metadata_endpoint_at(dst, port);
        let metadata_service = endpoint.is_some();
        let decision = |verdict, reason, rule| Decision {
            verdict,
            reason,
            rule,
            metadata_service,
        };
        let index = match tier {
            TierRef::Host => return decision(Verdict::Allow, Reason::Host, None),
            TierRef::Tier(i) => i,
        };
        // The kernel's order: a tier with name rules sends all its DNS to
        // the proxy, whatever the address (127.0.0.53 included).
        if port == DNS_PORT && self.tiers.get(index).is_some_and(|t| t.has_fqdns()) {
            return decision(Verdict::Allow, Reason::DnsProxy, None);
        }
        if is_loopback(dst) {
            return decision(Verdict::Allow, Reason::Loopback, None);
        }
        let t = self.tiers.get(index);
        let mode = t.map_or(self.mode, |t| t.effective_mode(self.mode));
        let deny = if mode == Mode::Audit {
            Verdict::AuditDeny
        } else {
            Verdict::Deny
        };
        let Some(t) = t else {
            return decision(deny, Reason::NoMatchingRule, None);
        };
        if let Some((v4, index)) = endpoint {
            return match &t.metadata {
                MetadataAccess::Allow => decision(Verdict::Allow, Reason::MetadataService, None),
                MetadataAccess::Deny => decision(deny, Reason::MetadataService, None),
                MetadataAccess::Filter(_)
                    if proto == Proto::Tcp && metadata_filterable(v4, index, port) =>
                {
                    decision(Verdict::Allow, Reason::MetadataProxy, None)
                }
                MetadataAccess::Filter(_) => decision(deny, Reason::MetadataUnfiltered, None),
            };
        }
        match t.egress.iter().position(|r| r.admits(dst, port, proto)) {
            Some(ri) => decision(Verdict::Allow, Reason::EgressRule, Some((index, ri))),
            None => decision(deny, Reason::NoMatchingRule, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::with_spec;

    const SPEC: &str = r#"
spec:
  defaultTier: closed
  tiers:
    - name: web
      egress:
        - cidrs: ["0.0.0.0/0"]
          ports: ["443"]
          protocols: [tcp]
        - cidrs: ["10.0.0.0/8", "fd00::/8"]
          ports: ["53"]
          protocols: [udp]
        - cidrs: ["10.1.0.0/16"]
    - name: meta
      metadata: allow
      egress:
        - cidrs: ["192.0.2.0/24"]
    - name: audited
      mode: audit
      egress:
        - cidrs: ["192.0.2.0/24"]
          ports: ["80-90"]
    - name: closed
"#;

    fn policy() -> Policy {
        with_spec(SPEC)
    }

    /// (tier, destination, port, protocol, verdict, reason, rule, metadata).
    type Case = (
        TierRef,
        &'static str,
        u16,
        Proto,
        Verdict,
        Reason,
        Option<(usize, usize)>,
        bool,
    );

    #[test]
    fn evaluate_table() {
        use Proto::{Tcp, Udp};
        use Reason as R;
        use Verdict::{Allow, AuditDeny, Deny};
        let p = policy();
        let t = |n: &str| TierRef::Tier(p.tier_index(n).expect("tier"));
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (t("web"),          "93.184.216.34",          443, Tcp, Allow,     R::EgressRule,      Some((0, 0)), false),
            (t("web"),          "93.184.216.34",          443, Udp, Deny,      R::NoMatchingRule,  None,         false),
            (t("web"),          "93.184.216.34",          80,  Tcp, Deny,      R::NoMatchingRule,  None,         false),
            (t("web"),          "10.2.3.4",               53,  Udp, Allow,     R::EgressRule,      Some((0, 1)), false),
            (t("web"),          "fd12::1",                53,  Udp, Allow,     R::EgressRule,      Some((0, 1)), false),
            // 0.0.0.0/0 is IPv4 only.
            (t("web"),          "2001:db8::1",            443, Tcp, Deny,      R::NoMatchingRule,  None,         false),
            // Mapped destination judged as IPv4.
            (t("web"),          "::ffff:93.184.216.34",   443, Tcp, Allow,     R::EgressRule,      Some((0, 0)), false),
            (t("web"),          "10.1.2.3",               22,  Tcp, Allow,     R::EgressRule,      Some((0, 2)), false),
            // Metadata: deny wins over 0.0.0.0/0.
            (t("web"),          "169.254.169.254",        443, Tcp, Deny,      R::MetadataService, None,         true),
            (t("web"),          "::ffff:169.254.169.254", 443, Tcp, Deny,      R::MetadataService, None,         true),
            (t("web"),          "fd00:ec2::254",          53,  Udp, Deny,      R::MetadataService, None,         true),
            (t("meta"),         "169.254.170.2",          80,  Tcp, Allow,     R::MetadataService, None,         true),
            (t("meta"),         "fd00:ec2::23",           80,  Tcp, Allow,     R::MetadataService, None,         true),
            (t("meta"),         "100.100.100.200",        80,  Tcp, Allow,     R::MetadataService, None,         true),
            // Loopback and unspecified.
            (t("closed"),       "127.0.0.1",              1,   Tcp, Allow,     R::Loopback,        None,         false),
            (t("closed"),       "127.255.0.9",            1,   Udp, Allow,     R::Loopback,        None,         false),
            (t("closed"),       "::1",                    1,   Tcp, Allow,     R::Loopback,        None,         false),
            (t("closed"),       "::ffff:127.0.0.1",       1,   Tcp, Allow,     R::Loopback,        None,         false),
            (t("closed"),       "0.0.0.0",                1,   Tcp, Allow,     R::Loopback,        None,         false),
            (t("closed"),       "::",                     1,   Tcp, Allow,     R::Loopback,        None,         false),
            (t("closed"),       "192.0.2.1",              80,  Tcp, Deny,      R::NoMatchingRule,  None,         false),
            // Audit.
            (t("audited"),      "192.0.2.1",              85,  Tcp, Allow,     R::EgressRule,      Some((2, 0)), false),
            (t("audited"),      "192.0.2.1",              22,  Tcp, AuditDeny, R::NoMatchingRule,  None,         false),
            (t("audited"),      "169.254.169.254",        80,  Tcp, AuditDeny, R::MetadataService, None,         true),
            // Host: allowed, metadata still flagged.
            (TierRef::Host,     "169.254.169.254",        80,  Tcp, Allow,     R::Host,            None,         true),
            (TierRef::Host,     "8.8.8.8",                53,  Udp, Allow,     R::Host,            None,         false),
            // Out-of-range tier: fail closed.
            (TierRef::Tier(99), "8.8.8.8",                53,  Udp, Deny,      R::NoMatchingRule,  None,         false),
        ];
        for (tier, dst, port, proto, verdict, reason, rule, md) in cases {
            let dst: IpAddr = dst.parse().expect("addr");
            let d = p.evaluate(tier, dst, port, proto);
            assert_eq!(
                d,
                Decision {
                    verdict,
                    reason,
                    rule,
                    metadata_service: md
                },
                "{tier:?} {dst} {port} {proto:?}"
            );
        }
    }

    #[test]
    fn spellings_and_kernel_values() {
        assert_eq!(Verdict::AuditDeny.as_str(), "audit-deny");
        assert_eq!(Verdict::Allow.as_str(), "allow");
        assert_eq!(Verdict::Deny.as_str(), "deny");
        assert_eq!(Reason::NoMatchingRule.as_str(), "no-matching-rule");
        assert_eq!(Reason::EgressRule.as_str(), "egress-rule");
        assert_eq!(Reason::MetadataService.as_str(), "metadata-service");
        assert_eq!(Reason::Loopback.as_str(), "loopback");
        assert_eq!(Reason::Host.as_str(), "host");
        for v in [Verdict::Allow, Verdict::Deny, Verdict::AuditDeny] {
            assert_eq!(Verdict::from_kernel(v.kernel()), Some(v));
        }
        for r in [
            Reason::Loopback,
            Reason::EgressRule,
            Reason::NoMatchingRule,
            Reason::MetadataService,
            Reason::Host,
            Reason::Fqdn,
            Reason::DnsProxy,
            Reason::MetadataProxy,
            Reason::MetadataUnfiltered,
        ] {
            assert_eq!(Reason::from_kernel(r.kernel()), Some(r));
        }
        assert_eq!(Verdict::from_kernel(200), None);
        assert_eq!(Proto::Udp.as_str(), "udp");
    }
}
