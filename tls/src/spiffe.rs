//! SPIFFE IDs of X.509-SVIDs, and why a peer was refused ([`Rejection`]).

use rustls::{CertificateError, Error};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::TlsError;
use crate::SpiffePattern;

/// Longest SPIFFE ID the SPIFFE spec allows, in bytes.
const MAX_SPIFFE_ID_LEN: usize = 2048;

/// SPIFFE IDs (URI SANs starting with `spiffe://`) of a DER certificate, in
/// the order of the certificate. Other URI SANs are ignored. The IDs are
/// returned as written; [`identity`] decides whether they are acceptable.
pub fn spiffe_ids(cert_der: &[u8]) -> Result<Vec<String>, TlsError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| TlsError::Der {
        detail: e.to_string(),
    })?;
    let san = cert.subject_alternative_name().map_err(|e| TlsError::Der {
        detail: format!("bad subjectAltName extension: {e}"),
    })?;
    Ok(san
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
            _ => None,
        })
        .collect())
}

/// Best effort for logs: the SPIFFE IDs of a certificate, none if it does not
/// parse.
pub(crate) fn ids_for_log(cert_der: &[u8]) -> Vec<String> {
    spiffe_ids(cert_der).unwrap_or_default()
}

/// Checks the syntax of a SPIFFE ID (SPIFFE-ID spec §2): `spiffe://`, a trust
/// domain of `[a-z0-9._-]`, then zero or more `/segment`s of
/// `[A-Za-z0-9._-]`, none empty, `.` or `..`; no query, fragment, port or
/// user info, no percent-encoding, no trailing `/`.
pub(crate) fn check_spiffe_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_SPIFFE_ID_LEN {
        return Err(format!("longer than {MAX_SPIFFE_ID_LEN} bytes"));
    }
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err("does not start with spiffe://".into());
    };
    let (td, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if td.is_empty() {
        return Err("has no trust domain".into());
    }
    if let Some(c) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(format!(
            "trust domain {td:?} has {c:?} (only lowercase letters, digits, `.`, `-`, `_`)"
        ));
    }
    if path.is_empty() {
        return Ok(());
    }
    for seg in path[1..].split('/') {
        match seg {
            "" => return Err("has an empty path segment (`//` or a trailing `/`)".into()),
            "." | ".." => return Err(format!("has a {seg:?} path segment")),
            _ => {
                if let Some(c) = seg
                    .chars()
                    .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
                {
                    return Err(format!(
                        "path segment {seg:?} has {c:?} (only letters, digits, `.`, `-`, `_`)"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Why an identity check failed, before it becomes a [`Rejection`].
pub(crate) struct IdentityRefusal {
    pub rejection: Rejection,
    pub detail: String,
}

/// The peer's one SPIFFE ID, if it is acceptable to `allowed`.
///
/// Rules: an X.509-SVID carries exactly one SPIFFE ID (more than one is
/// refused, whatever they are); it must be a syntactically valid SPIFFE ID;
/// and it must match one of the patterns (exact, case-sensitive, with the
/// glob wildcards of [`SpiffePattern`]).
pub(crate) fn identity<'p>(
    cert_der: &[u8],
    allowed: impl IntoIterator<Item = &'p SpiffePattern>,
) -> Result<String, IdentityRefusal> {
    let ids = spiffe_ids(cert_der).map_err(|e| IdentityRefusal {
        rejection: Rejection::BadChain(e.to_string()),
        detail: e.to_string(),
    })?;
    let not_allowed = |ids: &[String], detail: String| IdentityRefusal {
        rejection: Rejection::SpiffeNotAllowed { ids: ids.to_vec() },
        detail,
    };
    let id = match ids.as_slice() {
        [] => {
            return Err(IdentityRefusal {
                rejection: Rejection::NoSpiffeId,
                detail: "the certificate has no spiffe:// URI SAN".into(),
            });
        }
        [id] => id,
        _ => {
            return Err(not_allowed(
                &ids,
                "an X.509-SVID carries exactly one SPIFFE ID; this certificate has several".into(),
            ));
        }
    };
    if let Err(why) = check_spiffe_id(id) {
        return Err(not_allowed(&ids, format!("not a valid SPIFFE ID: {why}")));
    }
    let mut patterns = Vec::new();
    for p in allowed {
        if p.matches(id) {
            return Ok(id.clone());
        }
        patterns.push(p.as_str());
    }
    Err(not_allowed(
        &ids,
        format!("matches none of {}", patterns.join(", ")),
    ))
}

/// Why a peer was refused, for logs and a metric label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The client sent no certificate.
    NoCertificate,
    /// The certificate does not chain to a CA of the `--tls-ca` bundle.
    UnknownCa,
    /// The certificate (or one in its chain) is past its `notAfter`.
    Expired,
    /// The certificate (or one in its chain) is before its `notBefore`.
    NotYetValid,
    /// Any other reason the chain is unacceptable (encoding, key usage,
    /// a CA certificate used as a leaf, a handshake signature that does not
    /// verify, ...), with the detail.
    BadChain(String),
    /// A valid chain, but its SPIFFE ID is not allowed (or there are several,
    /// or it is not a valid SPIFFE ID).
    SpiffeNotAllowed { ids: Vec<String> },
    /// A valid chain without any SPIFFE ID (no `spiffe://` URI SAN).
    NoSpiffeId,
}

impl Rejection {
    /// A stable, short label (metric label values).
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::NoCertificate => "no-certificate",
            Rejection::UnknownCa => "unknown-ca",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not-yet-valid",
            Rejection::BadChain(_) => "bad-chain",
            Rejection::SpiffeNotAllowed { .. } => "spiffe-not-allowed",
            Rejection::NoSpiffeId => "no-spiffe-id",
        }
    }

    /// Every label, e.g. to pre-register metric series.
    pub const LABELS: [&'static str; 7] = [
        "no-certificate",
        "unknown-ca",
        "expired",
        "not-yet-valid",
        "bad-chain",
        "spiffe-not-allowed",
        "no-spiffe-id",
    ];

    /// Classifies an error of rustls's webpki verifier.
    pub(crate) fn from_webpki(err: &Error) -> Rejection {
        match err {
            Error::NoCertificatesPresented => Rejection::NoCertificate,
            Error::InvalidCertificate(ce) => match ce {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Rejection::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Rejection::NotYetValid
                }
                // BadSignature: an issuer of the same name is in the bundle,
                // but it did not sign this certificate, i.e. another CA that
                // happens to share the name (every demo CA is "tiergate demo
                // CA"). Same meaning for the operator: not our CA.
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Rejection::UnknownCa
                }
                other => Rejection::BadChain(other.to_string()),
            },
            other => Rejection::BadChain(other.to_string()),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::BadChain(detail) => write!(f, "bad-chain ({detail})"),
            Rejection::SpiffeNotAllowed { ids } => {
                write!(f, "spiffe-not-allowed ({})", ids.join(", "))
            }
            other => f.write_str(other.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_syntax() {
        for ok in [
            "spiffe://corp.example",
            "spiffe://corp.example/ns/tiergate/sa/agent",
            "spiffe://a_b-c.d/X.y-Z_9",
        ] {
            assert!(check_spiffe_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "spiffe://",
            "spiffe:///x",
            "spiffe://Corp.example/x",
            "spiffe://corp.example:443/x",
            "spiffe://user@corp.example/x",
            "spiffe://corp.example/",
            "spiffe://corp.example//x",
            "spiffe://corp.example/a/../b",
            "spiffe://corp.example/a/./b",
            "spiffe://corp.example/a?b",
            "spiffe://corp.example/a#b",
            "spiffe://corp.example/a%20b",
            "https://corp.example/a",
        ] {
            assert!(check_spiffe_id(bad).is_err(), "{bad}");
        }
        let long = format!("spiffe://corp.example/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(check_spiffe_id(&long).is_err());
    }

    #[test]
    fn labels_are_distinct_and_listed() {
        let all = [
            Rejection::NoCertificate,
            Rejection::UnknownCa,
            Rejection::Expired,
            Rejection::NotYetValid,
            Rejection::BadChain(String::new()),
            Rejection::SpiffeNotAllowed { ids: vec![] },
            Rejection::NoSpiffeId,
        ];
        let labels: Vec<_> = all.iter().map(Rejection::label).collect();
        assert_eq!(labels, Rejection::LABELS);
    }

    #[test]
    fn webpki_errors_are_classified() {
        use CertificateError as C;
        let cases = [
            (Error::InvalidCertificate(C::Expired), "expired"),
            (Error::InvalidCertificate(C::NotValidYet), "not-yet-valid"),
            (Error::InvalidCertificate(C::UnknownIssuer), "unknown-ca"),
            (Error::InvalidCertificate(C::BadSignature), "unknown-ca"),
            (Error::InvalidCertificate(C::BadEncoding), "bad-chain"),
            (Error::InvalidCertificate(C::InvalidPurpose), "bad-chain"),
            (Error::NoCertificatesPresented, "no-certificate"),
            (Error::DecryptError, "bad-chain"),
        ];
        for (err, want) in cases {
            assert_eq!(Rejection::from_webpki(&err).label(), want, "{err}");
        }
    }
}
