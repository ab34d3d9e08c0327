//! tiergate: an eBPF node agent that enforces per-workload egress tiers.
//!
//! Data flows kernel → ring buffer → enrichment → sinks; see ARCHITECTURE.md.

pub mod admin;
pub mod app;
pub mod cli;
pub mod collector;
pub mod commands;
pub mod control;
pub mod enforcement;
pub mod events;
pub mod export;
pub mod identity;
pub mod policy;
pub mod preflight;
pub mod state;
pub mod tls;
