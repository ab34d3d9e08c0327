//! Tier policy: parsing and validation of the policy file (CONTRACT section
//! 2), tier assignment of workloads, compilation to kernel map entries, the
//! user-space replica of the kernel verdict, and the policy version id.
//!
//! Everything here is pure (no I/O except [`load`]), so it is tested without
//! privileges and reused by `tiergate policy check` / `explain`.

// Submodules are public for path imports; the re-exports below are the API.
pub mod assign;
pub mod compile;
pub mod elevation;
pub mod explain;
pub mod explain_names;
pub mod fqdn;
pub mod glob;
pub mod model;
pub mod names;
pub mod parse;
pub mod render;
pub mod rule_id;
#[cfg(test)]
pub(crate) mod testing;
pub mod version;
pub mod yaml;

pub use assign::{Assignment, PodIdentity, TierRef, Workload, is_pod_cgroup};
pub use compile::{CompileError, Compiled, CompiledRule, MAX_RULES};
pub use explain::{Decision, Proto, Reason, Verdict, is_loopback, is_metadata_endpoint};
pub use glob::{Coverage, Glob, MAX_GLOB_SEGMENTS};
pub use model::{
    API_VERSION, Binding, DEFAULT_TRUST_DOMAIN, EgressRule, Elevation, HOST_TIER_NAME, KIND,
    MAX_ELEVATION, Match, MetadataAccess, Mode, Policy, Protocols, Tier, normalize_addr,
    normalize_net,
};
pub use parse::{PolicyError, PolicyErrors, load, parse_str};
pub use rule_id::{RuleRef, rule_uid};
pub use tiergate_tls::SpiffePattern;
