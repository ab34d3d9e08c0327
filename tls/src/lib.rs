//! Mutual TLS between agents and the collector (gRPC over HTTP/2), with
//! SPIFFE X.509-SVIDs as identities.
//!
//! - [`ServerTls`] (collector): requires a client certificate that chains to
//!   `--tls-ca` and whose one SPIFFE ID matches an allowed pattern; refusals
//!   are classified ([`Rejection`]), logged and passed to a callback.
//! - [`ClientTls`] (agent): presents its SVID, verifies the collector's
//!   chain, then either its SPIFFE ID (when a pattern is given; no host name
//!   check) or the host name / IP address dialled.
//! - Both: TLS 1.3 and 1.2 only through rustls with the *ring* provider
//!   installed explicitly, ALPN `h2`, no session resumption (every connection
//!   is verified in full against the files in force), and the three PEM files
//!   re-read for the next connection when they change on disk; files that do
//!   not load (a half-written rotation) leave the previous configuration in
//!   force, with a warning.
//!
//! There is no plaintext mode.
//!
//! SPIFFE ID patterns ([`SpiffePattern`]) and the segment glob they run on
//! ([`glob`]) live here too: the policy's `spiffeId` key uses the same ones.

mod client;
mod error;
mod files;
pub mod glob;
mod server;
mod spiffe;
mod spiffe_pattern;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

pub use client::ClientTls;
pub use error::TlsError;
pub use server::{OnReject, ServerTls};
pub use spiffe::{Rejection, spiffe_ids};
pub use spiffe_pattern::SpiffePattern;

/// Flag of the CA bundle (PEM, one or more CA certificates), named in errors.
pub const FLAG_CA: &str = "--tls-ca";
/// Flag of our own certificate chain (PEM, leaf first), named in errors.
pub const FLAG_CERT: &str = "--tls-cert";
/// Flag of our own private key (PEM), named in errors.
pub const FLAG_KEY: &str = "--tls-key";
/// Flag of the collector's allowed client SPIFFE ID patterns.
pub const FLAG_ALLOW: &str = "--allow-spiffe";
/// Flag of the agent's expected collector SPIFFE ID pattern.
pub const FLAG_SERVER_ID: &str = "--collector-spiffe-id";
/// Flag of the collector address (its host is verified in host-name mode).
pub const FLAG_COLLECTOR: &str = "--collector";

/// The one application protocol offered and accepted: gRPC's HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The three PEM files of one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Trust bundle: the CA certificate(s) the peer's chain must lead to.
    pub ca: PathBuf,
    /// Our certificate chain: the SVID first, then any intermediates.
    pub cert: PathBuf,
    /// The private key of the SVID.
    pub key: PathBuf,
}

/// The crypto provider of every configuration: *ring*, never a process-wide
/// default.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
