//! The event path: ring buffer → decode → enrich → OCSF JSON → sinks.

pub mod aggregate;
pub mod decode;
pub mod json_out;
pub mod loss_log;
pub mod names;
pub mod ocsf;
pub mod ocsf_access;
mod ocsf_conn;
pub mod ocsf_dns;
pub mod ocsf_finding;
pub mod ocsf_http;
pub mod pipeline;
pub mod probing;
pub mod sinks;
