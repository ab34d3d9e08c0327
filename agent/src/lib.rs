//! tiergate: an eBPF node agent that enforces per-workload egress tiers.
//!
//! Data flows kernel → ring buffer → enrichment → sinks; see ARCHITECTURE.md.

pub mod admin;
pub mod app;
pub mod cli;
pub mod commands;
pub mod control;
pub mod dns;
pub mod duration;
pub mod elevation;
pub mod enforcement;
pub mod events;
pub mod export;
pub mod identity;
pub mod inventory;
pub mod metadata;
pub mod metrics;
pub mod policy;
pub mod preflight;
pub mod proxies;
pub mod state;
pub mod static_str;

/// An error with its causes, `outer: inner: root`, for log lines and
/// messages that must name what actually failed.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
