//! The validated, typed tier policy (CONTRACT section 2).
//!
//! Values of these types come out of [`crate::policy::parse_str`] already
//! checked; the other modules (assignment, compilation, explain) rely on that
//! and do not re-validate. `Serialize` gives the canonical form that the
//! policy version hashes (see `version.rs`): structs serialize in declaration
//! order and maps are `BTreeMap`s, so the output does not depend on how the
//! YAML was written.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Serialize, Serializer};

use tiergate_tls::SpiffePattern;

use super::fqdn::NamePattern;
use super::glob::Glob;
use crate::duration::Span;

/// The only `apiVersion` this agent understands.
pub const API_VERSION: &str = "tiergate.io/v1alpha1";
/// The only `kind` this agent understands.
pub const KIND: &str = "TierPolicy";
/// `spec.trustDomain` when the file does not say.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Name events use for cgroups that are not enforced; no tier may take it.
pub const HOST_TIER_NAME: &str = "host";
/// The longest `maxDuration` of an elevation: access needed for longer than
/// a week is a policy edit (a binding), not a break-glass grant.
pub const MAX_ELEVATION: Span = Span::from_millis(7 * 86_400_000);

/// A validated tier policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// `metadata.name`, stamped on every event.
    pub name: String,
    /// `spec.trustDomain`: the trust domain of pod SPIFFE IDs.
    pub trust_domain: String,
    /// `spec.mode`: the mode of tiers that do not set their own.
    pub mode: Mode,
    /// Index into `tiers` of `spec.defaultTier`.
    pub default_tier: usize,
    /// The tiers, in file order; a tier's index is its kernel tier id.
    pub tiers: Vec<Tier>,
    /// Bindings in file order (first match wins).
    pub bindings: Vec<Binding>,
    /// `spec.dns`: present when any tier has `fqdns` rules (validated).
    /// Absent from the canonical form when not set, so versions of
    /// policies without it did not change when it was added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSettings>,
    /// `spec.elevation`: the elevations that may be granted. Absent from
    /// the canonical form when empty, so versions of policies without it
    /// did not change when it was added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub elevation: Vec<Elevation>,
    /// `sha256:` + hex of the canonical form. Derived from the other fields,
    /// so it is not part of the canonical form itself.
    #[serde(skip)]
    pub version: String,
}

/// Enforcement mode of a policy or tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denied connections fail with EPERM.
    Enforce,
    /// Nothing is blocked; would-be denials are reported as `audit-deny`.
    Audit,
}

impl Mode {
    /// The spelling used in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// Access of a tier to the cloud metadata endpoints (CONTRACT 2.1).
/// `deny` and `allow` serialize as the plain words they always were, so
/// policies written before `filter` keep their version ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataAccess {
    /// Denied, whatever the egress rules say (the default).
    #[default]
    Deny,
    /// Allowed.
    Allow,
    /// Each HTTP request goes through the agent's metadata proxy, which
    /// forwards or refuses it by these rules.
    Filter(MetadataFilter),
}

impl MetadataAccess {
    /// The word the policy uses for this access (`deny`, `allow`, `filter`).
    pub fn as_str(&self) -> &'static str {
        match self {
            MetadataAccess::Deny => "deny",
            MetadataAccess::Allow => "allow",
            MetadataAccess::Filter(_) => "filter",
        }
    }
}

/// `metadata: {mode: filter, ...}`: the per-request rules. Patterns are
/// stored in their canonical form (dated version prefixes as `latest`), the
/// same form the proxy matches requests in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetadataFilter {
    /// `require: imdsv2`: AWS requests without a session token are refused.
    #[serde(rename = "requireIMDSv2")]
    pub require_imdsv2: bool,
    /// `allowPaths`: when not empty, only these paths are forwarded.
    #[serde(rename = "allowPaths")]
    pub allow_paths: Vec<String>,
    /// `denyPaths`: never forwarded (wins over `allowPaths`).
    #[serde(rename = "denyPaths")]
    pub deny_paths: Vec<String>,
}

/// One tool tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tier {
    /// Unique name, `[a-z0-9-]{1,63}`, never `host`.
    pub name: String,
    /// Free text for operators; part of the version like everything else.
    pub description: Option<String>,
    /// Overrides the policy mode when set.
    pub mode: Option<Mode>,
    /// Cloud metadata endpoint access.
    pub metadata: MetadataAccess,
    /// Allow-list; everything else is denied. Empty = deny all.
    pub egress: Vec<EgressRule>,
}

impl Tier {
    /// The mode this tier runs in: its own, else the policy's.
    pub fn effective_mode(&self, policy_mode: Mode) -> Mode {
        self.mode.unwrap_or(policy_mode)
    }
}

/// `spec.dns`: whose answers count, and how long learned addresses live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsSettings {
    /// `resolvers`: the DNS servers the proxy forwards to, in order; only
    /// their answers teach addresses.
    pub resolvers: Vec<IpAddr>,
    /// `minTTL`: a learned address lives at least this long (default 0s).
    #[serde(rename = "minTTL")]
    pub min_ttl: Span,
    /// `maxTTL`: and at most this long (default: the answer's TTL, uncapped).
    #[serde(rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<Span>,
    /// `scope`: whom an answer opens its addresses for. Left out of the
    /// canonical form when `workload` (versions of older policies stay).
    #[serde(skip_serializing_if = "DnsScope::is_workload")]
    pub scope: DnsScope,
}

/// `spec.dns.scope`: who may connect to the addresses an answer taught.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsScope {
    /// The cgroup that asked (a container, a service): the default.
    #[default]
    Workload,
    /// Every workload of the asking one's pod in the same tier (a sidecar
    /// resolver asks for its pod's containers).
    Pod,
    /// Every workload of the asking one's tier on the node (a shared
    /// resolver in the tier asks for all of it).
    Tier,
}

impl DnsScope {
    pub fn is_workload(&self) -> bool {
        *self == DnsScope::Workload
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DnsScope::Workload => "workload",
            DnsScope::Pod => "pod",
            DnsScope::Tier => "tier",
        }
    }
}

impl DnsSettings {
    /// How long an address with the answer TTL `ttl` (seconds) stays open.
    pub fn lifetime(&self, ttl: u32) -> std::time::Duration {
        let t = std::time::Duration::from_secs(u64::from(ttl)).max(self.min_ttl.get());
        self.max_ttl
            .map_or(t, |m| t.min(m.get().max(self.min_ttl.get())))
    }
}

/// One allow rule: destinations (addresses or DNS names), ports and protocols.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressRule {
    /// Destination networks, normalised (no host bits; IPv4-mapped IPv6
    /// networks of prefix ≥ 96 stored as IPv4). Empty in an `fqdns` rule.
    #[serde(serialize_with = "ser_cidrs")]
    pub cidrs: Vec<IpNet>,
    /// DNS name patterns (an `fqdns` rule); empty in a `cidrs` rule. Left
    /// out of the canonical form when empty (versions of older policies
    /// stay as they were).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fqdns: Vec<NamePattern>,
    /// `allowPrivate`: answers in RFC 1918, ULA and CGNAT ranges may be learned.
    #[serde(rename = "allowPrivate", skip_serializing_if = "is_false")]
    pub allow_private: bool,
    /// Inclusive port ranges; `None` = every port.
    pub ports: Option<Vec<(u16, u16)>>,
    /// Protocols the rule admits.
    pub protocols: Protocols,
}

/// Protocols of a rule. Default: both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Protocols {
    /// TCP admitted.
    pub tcp: bool,
    /// UDP admitted.
    pub udp: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols {
            tcp: true,
            udp: true,
        }
    }
}

/// One entry of `spec.elevation`: a workload in tier `from` may be granted
/// tier `to` for at most `max_duration`. Tiers are indexes into
/// `Policy::tiers`, like a binding's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Elevation {
    /// The tier the workload is in without the grant.
    pub from: usize,
    /// The tier it is judged by while the grant lasts.
    pub to: usize,
    /// The longest grant: more than 0s, at most [`MAX_ELEVATION`].
    #[serde(rename = "maxDuration")]
    pub max_duration: Span,
}

/// A binding: workloads matching `matcher` are in tier `tier`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// Index into `Policy::tiers`.
    pub tier: usize,
    /// What must hold (all keys) for the binding to apply.
    pub matcher: Match,
}

/// The keys of a binding's `match`. At least one is set; all set keys must
/// hold. Every key but `cgroup_path` needs pod identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    /// Glob on the cgroup v2 path.
    pub cgroup_path: Option<Glob>,
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Pod service account.
    pub service_account: Option<String>,
    /// Pod labels that must all be present with these values.
    pub pod_labels: BTreeMap<String, String>,
    /// Container name within the pod.
    pub container: Option<String>,
    /// Pattern on the pod's SPIFFE ID.
    pub spiffe_id: Option<SpiffePattern>,
}

impl Match {
    /// Whether any key needs pod identity (so it never matches a non-pod).
    pub fn has_pod_keys(&self) -> bool {
        self.namespace.is_some()
            || self.service_account.is_some()
            || !self.pod_labels.is_empty()
            || self.container.is_some()
            || self.spiffe_id.is_some()
    }
}

impl Policy {
    /// A policy known by its name and version only: what labels a record
    /// judged by a policy this process never loaded (a `tiergate proxy`
    /// record that reaches an agent restarted with another policy).
    pub fn label(name: &str, version: &str) -> Policy {
        Policy {
            name: name.to_string(),
            trust_domain: String::new(),
            mode: Mode::Enforce,
            default_tier: 0,
            tiers: Vec::new(),
            bindings: Vec::new(),
            dns: None,
            elevation: Vec::new(),
            version: version.to_string(),
        }
    }

    /// Index of the tier called `name`.
    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }
}

impl Tier {
    /// Whether the tier's metadata requests go through the metadata proxy.
    pub fn filters_metadata(&self) -> bool {
        matches!(self.metadata, MetadataAccess::Filter(_))
    }

    /// Whether the tier names destinations by DNS name (its DNS then goes
    /// through the proxy).
    pub fn has_fqdns(&self) -> bool {
        self.egress.iter().any(|r| !r.fqdns.is_empty())
    }
}

/// IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) become IPv4
/// (`10.0.0.0/8`), because destinations are judged by the IPv4 address they
/// map to; everything is truncated to its network address. Networks shorter
/// than /96 that merely contain the mapped range stay IPv6.
pub fn normalize_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net.trunc()
}

/// Destinations are judged as IPv4 when they are IPv4-mapped IPv6.
pub fn normalize_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// CIDRs serialize as their normalised text (`10.0.0.0/8`, `fd00::/64`).
fn ser_cidrs<S: Serializer>(cidrs: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(cidrs.iter().map(|c| c.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn mapped_networks_become_ipv4() {
        assert_eq!(normalize_net(net("::ffff:10.0.0.0/104")), net("10.0.0.0/8"));
        assert_eq!(normalize_net(net("::ffff:0.0.0.0/96")), net("0.0.0.0/0"));
        assert_eq!(normalize_net(net("::ffff:1.2.3.4/128")), net("1.2.3.4/32"));
        // Shorter than /96: it covers more than IPv4, so it stays IPv6.
        assert_eq!(normalize_net(net("::ffff:0:0/95")), net("::fffe:0:0/95"));
        assert_eq!(normalize_net(net("fd00::/64")), net("fd00::/64"));
    }

    #[test]
    fn effective_mode_prefers_the_tier() {
        let mut t = Tier {
            name: "a".into(),
            description: None,
            mode: None,
            metadata: MetadataAccess::Deny,
            egress: vec![],
        };
        assert_eq!(t.effective_mode(Mode::Audit), Mode::Audit);
        t.mode = Some(Mode::Enforce);
        assert_eq!(t.effective_mode(Mode::Audit), Mode::Enforce);
    }

    #[test]
    fn learned_lifetime_is_the_ttl_within_the_bounds() {
        let d = |min: u64, max: Option<u64>| DnsSettings {
            scope: DnsScope::Workload,
            resolvers: vec![],
            min_ttl: Span::from_millis(min * 1000),
            max_ttl: max.map(|m| Span::from_millis(m * 1000)),
        };
        let secs = |s: u64| std::time::Duration::from_secs(s);
        assert_eq!(d(0, None).lifetime(30), secs(30));
        assert_eq!(d(0, None).lifetime(0), secs(0));
        assert_eq!(d(5, None).lifetime(1), secs(5));
        assert_eq!(d(5, None).lifetime(60), secs(60));
        assert_eq!(d(5, Some(20)).lifetime(60), secs(20));
        assert_eq!(d(5, Some(20)).lifetime(1), secs(5));
        // A maximum below the minimum: the minimum wins (the floor is the
        // operator's promise to applications that cache answers).
        assert_eq!(d(30, Some(10)).lifetime(60), secs(30));
    }

    #[test]
    fn normalize_addr_unmaps() {
        let a: IpAddr = "::ffff:169.254.169.254".parse().expect("addr");
        assert_eq!(
            normalize_addr(a),
            "169.254.169.254".parse::<IpAddr>().expect("addr")
        );
        let b: IpAddr = "fd00::1".parse().expect("addr");
        assert_eq!(normalize_addr(b), b);
    }
}
