//! `spec`: its keys, trustDomain, mode and defaultTier, with the tiers, bindings, dns and elevation handed to their readers.

use super::dns::first_fqdns_key;
use super::tiers::TierNames;
use super::walker::{KeyPath, Walker};
use crate::policy::model::{DEFAULT_TRUST_DOMAIN, Mode, Policy};
use crate::policy::yaml::Node;

const SPEC_KEYS: &[&str] = &[
    "trustDomain",
    "mode",
    "defaultTier",
    "tiers",
    "bindings",
    "dns",
    "elevation",
];

fn is_trust_domain(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
        })
}

impl Walker<'_> {
    /// The policy as far as `spec` decides it: `name` (from metadata) and
    /// `version` (computed last) are left empty for the caller.
    pub(super) fn spec(&mut self, node: &Node<'_>) -> Option<Policy> {
        let f = self.mapping(
            node,
            KeyPath::At("spec"),
            SPEC_KEYS,
            &["defaultTier", "tiers"],
        )?;

        let trust_domain = match f.get("trustDomain") {
            None => Some(DEFAULT_TRUST_DOMAIN.to_owned()),
            Some(n) => self.string(n, KeyPath::At("spec.trustDomain")).and_then(|s| {
                if is_trust_domain(s) {
                    Some(s.to_owned())
                } else {
                    self.fail(
                        n,
                        KeyPath::At("spec.trustDomain"),
                        &format!(
                            "{s:?} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-' and '_' only, e.g. corp.example)"
                        ),
                    );
                    None
                }
            }),
        };

        let mode = match f.get("mode") {
            None => Some(Mode::Enforce),
            Some(n) => self.mode(n, KeyPath::At("spec.mode")),
        };

        let mut names = TierNames::default();
        let tiers = f.get("tiers").and_then(|n| self.tiers(n, &mut names));

        let default_tier = f
            .get("defaultTier")
            .and_then(|n| self.tier_ref(n, KeyPath::At("spec.defaultTier"), &names));

        let bindings = match f.get("bindings") {
            None => Some(Vec::new()),
            Some(n) => self.bindings(n, KeyPath::At("spec.bindings"), &names),
        };

        let elevation = match f.get("elevation") {
            None => Some(Vec::new()),
            Some(n) => self.elevation(n, &names),
        };

        let dns = match f.get("dns") {
            Some(n) => self.dns(n).map(Some),
            None => match f.get("tiers").and_then(first_fqdns_key) {
                Some(k) => {
                    self.error(
                        k.start,
                        "fqdns rules need spec.dns.resolvers: the DNS servers whose answers may open addresses".into(),
                    );
                    None
                }
                None => Some(None),
            },
        };

        Some(Policy {
            name: String::new(),
            trust_domain: trust_domain?,
            mode: mode?,
            default_tier: default_tier?,
            tiers: tiers?,
            bindings: bindings?,
            dns: dns?,
            elevation: elevation?,
            version: String::new(),
        })
    }
}
