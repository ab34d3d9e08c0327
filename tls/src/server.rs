//! Collector side: [`ServerTls`] and its client-certificate verifier.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use super::files::{Material, Reloading};
use super::spiffe::{self, Rejection};
use super::{ALPN_H2, FLAG_ALLOW, TlsError, TlsFiles, VERSIONS};
use crate::SpiffePattern;

/// The rejection callback of [`ServerTls::new`].
pub type OnReject = Arc<dyn Fn(&Rejection) + Send + Sync>;

/// Collector side: requires a client certificate chaining to `files.ca`
/// whose SPIFFE ID matches one of the allowed patterns; presents
/// `files.cert`/`files.key`.
pub struct ServerTls {
    reload: Reloading<TlsAcceptor>,
    allow: Arc<[SpiffePattern]>,
    on_reject: OnReject,
    provider: Arc<CryptoProvider>,
}

impl ServerTls {
    /// Loads the files (every problem is an error naming its flag and file)
    /// and builds the first configuration.
    ///
    /// `on_reject` is called exactly once for each refused client, with the
    /// reason, after a `warn!` naming it and the client's SPIFFE IDs.
    /// A client that sends *no* certificate is refused by rustls before any
    /// verifier runs, so that case is reported by [`ServerTls::accept`] (not
    /// when a bare [`ServerTls::acceptor`] is used).
    pub fn new(
        files: TlsFiles,
        allow: Vec<SpiffePattern>,
        on_reject: Arc<dyn Fn(&Rejection) + Send + Sync>,
    ) -> Result<Self, TlsError> {
        if allow.is_empty() {
            return Err(TlsError::NoAllowedIds { flag: FLAG_ALLOW });
        }
        let allow: Arc<[SpiffePattern]> = allow.into();
        let provider = super::provider();
        let reload = Reloading::new(files, "server", |files| {
            build(files, &provider, &allow, &on_reject)
        })?;
        Ok(ServerTls {
            reload,
            allow,
            on_reject,
            provider,
        })
    }

    /// The acceptor for the next connection: re-reads ca/cert/key if any of
    /// the three files changed (device, inode, size, mtime or ctime) since the
    /// last try; if the new files are bad, logs a warning and keeps the
    /// previous configuration (a half-written rotation must not break the
    /// collector). The same bad files are not retried until they change.
    ///
    /// This stats three files and may read them: call it once per accepted
    /// connection, not per byte. Connections already open keep the
    /// configuration they were accepted with.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.reload
            .get(|files| build(files, &self.provider, &self.allow, &self.on_reject))
    }

    /// Handshakes `io` with [`ServerTls::acceptor`] and reports a client that
    /// sent no certificate as [`Rejection::NoCertificate`] (every other
    /// refusal is reported by the verifier during the handshake). Put a
    /// timeout around it: a peer that stalls the handshake holds it open.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = self.acceptor().accept(io).await;
        if let Err(e) = &result
            && is_no_certificate(e)
        {
            let rejection = Rejection::NoCertificate;
            tracing::warn!(
                reason = rejection.label(),
                peer_spiffe_ids = ?Vec::<String>::new(),
                "refused a client: it presented no certificate"
            );
            (self.on_reject)(&rejection);
        }
        result
    }

    /// The verified client's SPIFFE ID after a handshake (`None` before the
    /// handshake completed).
    pub fn peer_spiffe_id(conn: &rustls::ServerConnection) -> Option<String> {
        let leaf = conn.peer_certificates()?.first()?;
        match spiffe::spiffe_ids(leaf).ok()?.as_slice() {
            [id] => Some(id.clone()),
            _ => None,
        }
    }

    /// The allowed client SPIFFE ID patterns.
    pub fn allowed(&self) -> &[SpiffePattern] {
        &self.allow
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", self.reload.files())
            .field(
                "allow",
                &self.allow.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn is_no_certificate(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|e| matches!(e, Error::NoCertificatesPresented))
}

fn build(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
    allow: &Arc<[SpiffePattern]>,
    on_reject: &OnReject,
) -> Result<TlsAcceptor, TlsError> {
    let material = Material::load(files, provider)?;
    let inner =
        WebPkiClientVerifier::builder_with_provider(material.roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::config(&e))?;
    let verifier = Arc::new(ClientVerifier {
        inner,
        allow: allow.clone(),
        on_reject: on_reject.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::config(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(material.key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: every connection presents and has verified a client
    // certificate against the files (and allow list) in force, and each
    // refusal reaches the callback.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// rustls's webpki client verifier, then the SPIFFE ID check; every refusal
/// classified, logged and reported once.
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Arc<[SpiffePattern]>,
    on_reject: OnReject,
}

impl ClientVerifier {
    fn reject(&self, rejection: &Rejection, end_entity: &CertificateDer<'_>, detail: &str) {
        tracing::warn!(
            reason = rejection.label(),
            peer_spiffe_ids = ?spiffe::ids_for_log(end_entity),
            detail,
            "refused a client certificate"
        );
        (self.on_reject)(rejection);
    }
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("inner", &self.inner)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            self.reject(&Rejection::from_webpki(&e), end_entity, &e.to_string());
            return Err(e);
        }
        match spiffe::identity(end_entity, self.allow.iter()) {
            Ok(id) => {
                tracing::debug!(peer_spiffe_id = %id, "client certificate accepted");
                Ok(ClientCertVerified::assertion())
            }
            Err(refusal) => {
                self.reject(&refusal.rejection, end_entity, &refusal.detail);
                // Sent to the client as an `access_denied` alert.
                Err(Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signature_checked(cert, self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signature_checked(cert, self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl ClientVerifier {
    /// A handshake signature's check, reported when it failed: the
    /// certificate passed, but the client did not prove it holds its key.
    fn signature_checked(
        &self,
        cert: &CertificateDer<'_>,
        checked: Result<HandshakeSignatureValid, Error>,
    ) -> Result<HandshakeSignatureValid, Error> {
        checked.inspect_err(|e| {
            let rejection = Rejection::BadChain(format!(
                "the client's handshake signature does not verify with its certificate's key: {e}"
            ));
            self.reject(&rejection, cert, &e.to_string());
        })
    }
}
