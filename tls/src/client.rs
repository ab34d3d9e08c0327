//! Agent side: [`ClientTls`] and its server-certificate verifier.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, OtherError, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use super::files::{Material, Reloading};
use super::spiffe::{self, Rejection};
use super::{ALPN_H2, FLAG_COLLECTOR, FLAG_SERVER_ID, TlsError, TlsFiles, VERSIONS};
use crate::SpiffePattern;

/// Agent side: presents `files.cert`/`files.key`, trusts `files.ca`;
/// verifies the collector's chain; if `expect_server` is set, requires its
/// SPIFFE ID to match (SPIFFE-style: no host name check); otherwise requires
/// the certificate to be valid for the host name or IP address dialled.
pub struct ClientTls {
    reload: Reloading<TlsConnector>,
    expect_server: Option<SpiffePattern>,
    provider: Arc<CryptoProvider>,
}

impl ClientTls {
    /// Loads the files (every problem is an error naming its flag and file)
    /// and builds the first configuration.
    pub fn new(files: TlsFiles, expect_server: Option<SpiffePattern>) -> Result<Self, TlsError> {
        let provider = super::provider();
        let reload = Reloading::new(files, "client", |files| {
            build(files, &provider, expect_server.as_ref())
        })?;
        Ok(ClientTls {
            reload,
            expect_server,
            provider,
        })
    }

    /// The connector for the next connection, with the same reload semantics
    /// as [`super::ServerTls::acceptor`]: changed files are re-read, bad ones
    /// leave the previous configuration in force with a warning.
    pub fn connector(&self) -> TlsConnector {
        self.reload
            .get(|files| build(files, &self.provider, self.expect_server.as_ref()))
    }

    /// The name to verify (and send as SNI) for the host part of the
    /// collector address: a DNS name, an IPv4 address, or an IPv6 address
    /// with or without `[]`.
    pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::ServerName {
            flag: FLAG_COLLECTOR,
            host: host.to_owned(),
        })
    }

    /// The collector SPIFFE ID pattern, if verifying SPIFFE-style.
    pub fn expected_server(&self) -> Option<&SpiffePattern> {
        self.expect_server.as_ref()
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", self.reload.files())
            .field(
                "expect_server",
                &self.expect_server.as_ref().map(SpiffePattern::as_str),
            )
            .finish_non_exhaustive()
    }
}

fn build(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
    expect_server: Option<&SpiffePattern>,
) -> Result<TlsConnector, TlsError> {
    let material = Material::load(files, provider)?;
    let inner =
        WebPkiServerVerifier::builder_with_provider(material.roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::config(&e))?;
    let verifier = Arc::new(ServerVerifier {
        inner,
        expect: expect_server.cloned(),
    });
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::config(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(material.key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Every connection verifies the collector in full against the files in
    // force (and presents the current SVID).
    config.resumption = Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The collector's SPIFFE ID was refused (SPIFFE-style verification).
/// rustls shows it with `Debug`, hence the plain `Debug`.
#[derive(thiserror::Error)]
#[error("{0}")]
struct CollectorIdRefused(String);

impl fmt::Debug for CollectorIdRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// rustls's webpki server verifier; in SPIFFE mode a certificate that is
/// valid except for the host name is accepted on its SPIFFE ID instead.
#[derive(Debug)]
struct ServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expect: Option<SpiffePattern>,
}

impl ServerVerifier {
    fn refuse(&self, rejection: &Rejection, end_entity: &CertificateDer<'_>, detail: &str) {
        tracing::warn!(
            reason = rejection.label(),
            peer_spiffe_ids = ?spiffe::ids_for_log(end_entity),
            detail,
            "refused the collector's certificate"
        );
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let webpki = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let Some(expect) = &self.expect else {
            return webpki.inspect_err(|e| {
                self.refuse(&Rejection::from_webpki(e), end_entity, &e.to_string())
            });
        };
        match webpki {
            // The name is checked only after the chain: a name error means
            // the chain is good.
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => {
                self.refuse(&Rejection::from_webpki(&e), end_entity, &e.to_string());
                return Err(e);
            }
        }
        match spiffe::identity(end_entity, [expect]) {
            Ok(id) => {
                tracing::debug!(peer_spiffe_id = %id, "collector certificate accepted");
                Ok(ServerCertVerified::assertion())
            }
            Err(refusal) => {
                self.refuse(&refusal.rejection, end_entity, &refusal.detail);
                let ids = spiffe::ids_for_log(end_entity);
                let ids = if ids.is_empty() {
                    "none".to_owned()
                } else {
                    ids.join(", ")
                };
                Err(Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(CollectorIdRefused(format!(
                        "the collector's SPIFFE ID is refused ({FLAG_SERVER_ID} {}): {} \
                         (SPIFFE IDs in its certificate: {ids})",
                        expect.as_str(),
                        refusal.detail,
                    )))),
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
