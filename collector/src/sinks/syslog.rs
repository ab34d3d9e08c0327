//! The `syslog+tls://` sink: its options, TLS client setup and (re)connection.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::spec::{parse_options, redact};
use super::syslog_conn::{Connection, IO_TIMEOUT, timed_out};
use super::syslog_frame::encode_frame;
use super::{Record, Sink, SinkError};

const SYSLOG_OPTIONS: &[&str] = &["ca", "cert", "key", "app-name"];
/// Default port of `syslog+tls://` (RFC 5425).
pub const DEFAULT_SYSLOG_TLS_PORT: u16 = 6514;
/// Default APP-NAME of syslog messages.
pub const DEFAULT_APP_NAME: &str = "tiergate";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// RFC 5424 messages over TLS (RFC 5425) with octet-counted framing.
pub(super) struct SyslogTlsSink {
    pub(super) name: String,
    pub(super) host: String,
    pub(super) port: u16,
    server_name: ServerName<'static>,
    pub(super) ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
    pub(super) app_name: String,
    conn: Option<Connection>,
    buf: Vec<u8>,
}

impl SyslogTlsSink {
    pub(super) fn parse(spec: &str, rest: &str) -> Result<SyslogTlsSink, SinkError> {
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains('@') {
            return Err(SinkError::config(
                &redact(spec),
                "credentials in the address are not supported (use cert= and key=)",
            ));
        }
        if authority.contains('/') {
            return Err(SinkError::config(spec, "unexpected path after HOST:PORT"));
        }
        let (host, port) =
            split_host_port(authority).map_err(|reason| SinkError::config(spec, reason))?;
        let name = if host.contains(':') {
            format!("syslog+tls://[{host}]:{port}")
        } else {
            format!("syslog+tls://{host}:{port}")
        };
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| SinkError::config(spec, format!("invalid host name {host:?}")))?;
        let mut ca = None;
        let mut cert = None;
        let mut key = None;
        let mut app_name = DEFAULT_APP_NAME.to_owned();
        for (k, value) in parse_options(spec, query, SYSLOG_OPTIONS)? {
            match k.as_str() {
                "ca" => ca = Some(PathBuf::from(value)),
                "cert" => cert = Some(PathBuf::from(value)),
                "key" => key = Some(PathBuf::from(value)),
                _ => {
                    if value.is_empty()
                        || value.len() > 48
                        || !value.bytes().all(|b| (33..=126).contains(&b))
                    {
                        return Err(SinkError::config(
                            spec,
                            format!(
                                "app-name={value}: RFC 5424 allows 1 to 48 printable ASCII characters without spaces"
                            ),
                        ));
                    }
                    app_name = value;
                }
            }
        }
        let ca = ca.ok_or_else(|| {
            SinkError::config(
                spec,
                "missing ca=PATH (the PEM file of the CA that signed the server's certificate)",
            )
        })?;
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(SinkError::config(spec, "cert= and key= go together")),
        };
        let sink = SyslogTlsSink {
            name,
            host: host.to_owned(),
            port,
            server_name,
            ca,
            client,
            app_name,
            conn: None,
            buf: Vec::new(),
        };
        // Fail at startup on unusable CA, certificate or key files.
        sink.client_config()?;
        Ok(sink)
    }

    /// Reads the CA, certificate and key files into a client configuration
    /// (ring provider, TLS 1.2 and 1.3). Never puts key material in errors.
    fn client_config(&self) -> Result<Arc<ClientConfig>, SinkError> {
        let err = |reason: String| SinkError::config(&self.name, reason);
        let mut roots = RootCertStore::empty();
        let ca = self.ca.display();
        let certs = CertificateDer::pem_file_iter(&self.ca)
            .map_err(|e| err(pem_error("CA file", &self.ca, e)))?;
        for (i, cert) in certs.enumerate() {
            let cert = cert.map_err(|e| err(pem_error("CA file", &self.ca, e)))?;
            roots
                .add(cert)
                .map_err(|e| err(format!("CA file {ca}: certificate {} unusable: {e}", i + 1)))?;
        }
        if roots.is_empty() {
            return Err(err(format!("CA file {ca}: no CERTIFICATE found")));
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| err(format!("TLS setup: {e}")))?
                .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| err(pem_error("client certificate", cert, e)))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(pem_error("client certificate", cert, e)))?;
                if chain.is_empty() {
                    return Err(err(format!(
                        "client certificate {}: no CERTIFICATE found",
                        cert.display()
                    )));
                }
                let private =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| err(key_error(key, e)))?;
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    err(format!(
                        "client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
        };
        Ok(Arc::new(config))
    }

    fn connect(&self) -> Result<Connection, SinkError> {
        let config = self.client_config()?;
        let endpoint = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| SinkError::io(&self.name, format!("cannot resolve {}", self.host), e))?
            .collect();
        let mut last = None;
        let mut sock = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    sock = Some((s, addr));
                    break;
                }
                Err(e) => last = Some((addr, timed_out(e, CONNECT_TIMEOUT))),
            }
        }
        let (mut sock, peer) = match (sock, last) {
            (Some(found), _) => found,
            (None, Some((addr, e))) if addr.to_string() == endpoint => {
                return Err(SinkError::io(
                    &self.name,
                    format!("cannot connect to {endpoint}"),
                    e,
                ));
            }
            (None, Some((addr, e))) => {
                return Err(SinkError::io(
                    &self.name,
                    format!("cannot connect to {endpoint} ({addr})"),
                    e,
                ));
            }
            (None, None) => {
                return Err(SinkError::io(
                    &self.name,
                    format!("cannot resolve {}", self.host),
                    io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                ));
            }
        };
        let setup = |e| {
            SinkError::io(
                &self.name,
                format!("cannot set up the connection to {peer}"),
                e,
            )
        };
        sock.set_nodelay(true).map_err(setup)?;
        sock.set_read_timeout(Some(IO_TIMEOUT)).map_err(setup)?;
        sock.set_write_timeout(Some(IO_TIMEOUT)).map_err(setup)?;
        let mut tls = ClientConnection::new(config, self.server_name.clone()).map_err(|error| {
            SinkError::Tls {
                sink: self.name.clone(),
                action: "cannot start TLS".to_owned(),
                error,
            }
        })?;
        while tls.is_handshaking() {
            if let Err(e) = tls.complete_io(&mut sock) {
                let e = match e.kind() {
                    io::ErrorKind::UnexpectedEof => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection (is it a TLS syslog port, and does it accept this client?)",
                    ),
                    _ => timed_out(e, IO_TIMEOUT),
                };
                return Err(SinkError::io(
                    &self.name,
                    format!("TLS handshake with {peer} failed"),
                    e,
                ));
            }
        }
        tracing::info!(sink = %self.name, %peer, protocol = ?tls.protocol_version(), "connected");
        Ok(Connection {
            tls,
            sock,
            peer,
            batches: 0,
        })
    }
}

impl Sink for SyslogTlsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_batch(&mut self, records: &[Record<'_>]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for record in records {
            encode_frame(&mut self.buf, record, &self.app_name);
        }
        // A connection the server closed meanwhile (restart, idle timeout)
        // would take the batch into the kernel and lose it: replace it first.
        if let Some(conn) = &mut self.conn
            && let Err(e) = conn.check_open()
        {
            tracing::info!(sink = %self.name, peer = %conn.peer, error = %e, "connection lost; reconnecting");
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.connect()?),
        };
        if let Err(e) = conn.send(&self.buf) {
            let hint = if conn.batches == 0
                && matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                ) {
                " right after the handshake (does the server require a client certificate, or reject this one?)"
            } else {
                ""
            };
            let action = format!(
                "cannot send {} records ({} bytes) to {}{hint}",
                records.len(),
                self.buf.len(),
                conn.peer
            );
            tracing::warn!(sink = %self.name, error = %e, "send failed; reconnecting on the next batch");
            self.conn = None;
            return Err(SinkError::io(&self.name, action, e));
        }
        conn.batches += 1;
        Ok(())
    }
}

fn split_host_port(authority: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the address".to_owned())?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected {after:?} after the address")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            Some(_) => {
                return Err("IPv6 addresses go in brackets: syslog+tls://[::1]:6514".to_owned());
            }
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host (syslog+tls://HOST:PORT?ca=PATH)".to_owned());
    }
    let port = match port {
        None => DEFAULT_SYSLOG_TLS_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {p:?}"))?,
    };
    Ok((host, port))
}

fn pem_error(what: &str, path: &Path, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read {what} {}: {e}", path.display()),
        pem::Error::NoItemsFound => format!("{what} {}: no CERTIFICATE found", path.display()),
        e => format!("{what} {}: invalid PEM: {e}", path.display()),
    }
}

/// Like [`pem_error`] but never shows what the file holds.
fn key_error(path: &Path, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read client key {}: {e}", path.display()),
        pem::Error::NoItemsFound => format!(
            "client key {}: no private key found (expected PEM: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        ),
        _ => format!("client key {}: invalid PEM", path.display()),
    }
}
