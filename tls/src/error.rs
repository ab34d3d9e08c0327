//! [`TlsError`]: what went wrong loading or using the TLS material, naming
//! the flag and file at fault and what to do about it.

use std::path::PathBuf;

/// An error loading the TLS files or building a TLS configuration.
///
/// Every message starts with the flag (and file) at fault, e.g.
/// `--tls-cert /x/agent.pem: no certificate found in the PEM file; ...`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read (missing, permissions, a directory...).
    #[error("{flag} {}: cannot read the file: {source}; check the path and that this process may read it", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not well-formed PEM (truncated, half-written, garbage).
    #[error("{flag} {}: not valid PEM ({detail}); the file may be truncated or half-written: write it completely (ideally to a temporary file renamed into place)", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        detail: String,
    },

    /// A certificate file with no `CERTIFICATE` block.
    #[error("{flag} {}: no certificate found in the PEM file; it must hold at least one `-----BEGIN CERTIFICATE-----` block", path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },

    /// A `CERTIFICATE` block that is not a usable X.509 certificate.
    #[error("{flag} {}: certificate #{index} is not a usable X.509 certificate: {detail}", path.display())]
    BadCertificate {
        flag: &'static str,
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        detail: String,
    },

    /// The certificate of `--tls-cert` is past its `notAfter`.
    #[error("{flag} {}: the certificate expired at {not_after} (unix time {not_after_unix}); install a renewed certificate", path.display())]
    CertificateExpired {
        flag: &'static str,
        path: PathBuf,
        not_after: String,
        not_after_unix: i64,
    },

    /// A key file with no private key block.
    #[error("{flag} {}: no private key found in the PEM file; it must hold a `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1) block", path.display())]
    NoKey { flag: &'static str, path: PathBuf },

    /// A private key the crypto provider cannot use.
    #[error("{flag} {}: the private key cannot be used: {detail}; use an ECDSA P-256/P-384, Ed25519 or RSA (2048+ bits) key", path.display())]
    BadKey {
        flag: &'static str,
        path: PathBuf,
        detail: String,
    },

    /// The private key does not belong to the certificate.
    #[error("{key_flag} {} does not match the certificate in {cert_flag} {}; a certificate and its key must be replaced together", key.display(), cert.display())]
    KeyMismatch {
        cert_flag: &'static str,
        cert: PathBuf,
        key_flag: &'static str,
        key: PathBuf,
    },

    /// No SPIFFE ID pattern to admit clients with.
    #[error(
        "{flag}: no SPIFFE ID pattern given, so every client would be refused; name the agents' IDs, e.g. spiffe://corp.example/ns/tiergate/sa/agent"
    )]
    NoAllowedIds { flag: &'static str },

    /// The host to dial is neither a DNS name nor an IP address.
    #[error(
        "{flag} {host:?}: not a valid DNS name or IP address to verify the collector's certificate against"
    )]
    ServerName { flag: &'static str, host: String },

    /// DER bytes that are not an X.509 certificate ([`super::spiffe_ids`]).
    #[error("not a valid DER X.509 certificate: {detail}")]
    Der { detail: String },

    /// rustls refused to build a configuration from otherwise valid files.
    #[error("{flags}: cannot build the TLS configuration: {detail}")]
    Config { flags: &'static str, detail: String },
}

impl TlsError {
    /// rustls refused to build a configuration from the `--tls-*` files.
    pub(super) fn config(e: &dyn std::fmt::Display) -> Self {
        TlsError::Config {
            flags: "--tls-ca/--tls-cert/--tls-key",
            detail: e.to_string(),
        }
    }
}
