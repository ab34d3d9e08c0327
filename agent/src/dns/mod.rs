//! DNS names in tier policies (`egress[].fqdns`).
//!
//! The hook sends every DNS query of a tier with name rules to this proxy
//! (see ARCHITECTURE.md, "DNS names"). Per query: `serve` receives it in the
//! workload's network namespace, `proxy` decides (`query`: what was asked;
//! the tier's names), forwards through `upstream`, reads the answer
//! (`answer`, `addr_class`: the CNAME chain and the rebinding guard),
//! commits learned addresses to the kernel (`learn`) and only then replies;
//! `record` is what gets reported.

pub mod addr_class;
pub mod answer;
pub mod learn;
pub mod netns;
pub mod origins;
pub mod pktinfo;
pub mod proxy;
pub mod query;
pub mod record;
pub mod serve;
pub mod upstream;

pub use addr_class::{AddrClass, classify};
pub use answer::{MAX_CHAIN, Offered, Rejection, name_key, read};
