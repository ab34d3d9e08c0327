//! The collector's SIEM-facing sinks.
//!
//! The collector receives OCSF JSON records from agents and hands each batch
//! to every configured sink. It acknowledges the batch to the agent only after
//! every sink's [`Sink::write_batch`] returned `Ok`, so a sink either takes a
//! batch durably or fails: a failed batch is written again later, whole
//! (duplicates are fine, losses are not).
//!
//! Sinks are synchronous and run on a dedicated thread: no async runtime.
//!
//! | `--sink`                          | durable when                                   |
//! | --------------------------------- | ---------------------------------------------- |
//! | `stdout` (or `-`)                 | the lines are flushed to file descriptor 1     |
//! | `file:PATH[?max-bytes=N&keep=N]`  | the lines are written and `fdatasync`ed        |
//! | `syslog+tls://HOST[:PORT]?ca=...` | the frames are written and TCP-acknowledged    |
//!
//! See [`parse_sink`] for the syntax and each sink's details.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where records go. Implementations are driven by one thread.
pub trait Sink: Send {
    /// The sink as the operator named it, without secrets (`stdout`,
    /// `file:/var/log/tiergate/events.jsonl`, `syslog+tls://siem:6514`).
    fn name(&self) -> &str;

    /// Writes a batch of records (each one OCSF JSON object, no newline)
    /// durably or fails; on `Err` nothing is acknowledged and the batch will
    /// be written again (duplicates are fine, losses are not).
    fn write_batch(&mut self, records: &[Record<'_>]) -> Result<(), SinkError>;
}

/// One event record, as the collector hands it to the sinks.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The OCSF JSON object, without a trailing newline.
    pub json: &'a [u8],
    /// The event's time, milliseconds since the Unix epoch (OCSF `time`).
    pub time_ms: u64,
    pub severity: Severity,
    /// `connection`, `socket`, `policy`, `loss` or `gap`.
    pub kind: &'a str,
    /// The agent's node name.
    pub agent: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    /// The RFC 5424 severity code.
    pub fn syslog_code(self) -> u8 {
        match self {
            Severity::Info => 6,
            Severity::Warning => 4,
            Severity::Error => 3,
        }
    }
}

/// Every message starts with `--sink NAME:` and says what failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The `--sink` value is invalid, or a file it names (CA, certificate,
    /// key) cannot be used.
    #[error("--sink {spec}: {reason}")]
    Config { spec: String, reason: String },
    /// An I/O operation failed (open, write, fsync, rename, connect, send).
    #[error("--sink {sink}: {action}: {error}")]
    Io {
        sink: String,
        action: String,
        error: io::Error,
    },
    /// TLS failed: handshake (certificate verification, alerts) or protocol.
    #[error("--sink {sink}: {action}: {error}")]
    Tls {
        sink: String,
        action: String,
        error: rustls::Error,
    },
}

impl SinkError {
    fn config(spec: &str, reason: impl Into<String>) -> SinkError {
        SinkError::Config {
            spec: spec.to_owned(),
            reason: reason.into(),
        }
    }

    /// An I/O error; one that carries a TLS error becomes [`SinkError::Tls`].
    fn io(sink: &str, action: impl Into<String>, error: io::Error) -> SinkError {
        let sink = sink.to_owned();
        let action = action.into();
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            let inner = error.into_inner().expect("checked above");
            let tls = inner.downcast::<rustls::Error>().expect("checked above");
            return SinkError::Tls {
                sink,
                action,
                error: *tls,
            };
        }
        SinkError::Io {
            sink,
            action,
            error,
        }
    }
}

const SCHEMES: &str = "stdout, file:PATH[?max-bytes=N&keep=N], \
     syslog+tls://HOST[:PORT]?ca=PATH[&cert=PATH&key=PATH][&app-name=NAME]";
const FILE_OPTIONS: &[&str] = &["max-bytes", "keep"];
const SYSLOG_OPTIONS: &[&str] = &["ca", "cert", "key", "app-name"];

/// Default `max-bytes` of a file sink: 100 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Default `keep` of a file sink.
pub const DEFAULT_KEEP: u32 = 10;
/// Default port of `syslog+tls://` (RFC 5425).
pub const DEFAULT_SYSLOG_TLS_PORT: u16 = 6514;
/// Default APP-NAME of syslog messages.
pub const DEFAULT_APP_NAME: &str = "tiergate";
/// Syslog facility local0.
const FACILITY_LOCAL0: u8 = 16;
const MAX_KEEP: u32 = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds each socket read/write and the wait for the server's TCP
/// acknowledgement of a batch.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses a `--sink` value:
///
/// - `stdout` (or `-`): JSON lines on standard output, flushed after each
///   batch.
/// - `file:PATH[?max-bytes=104857600&keep=10]`: JSON lines appended to PATH
///   (created with mode 0640 if missing; its directory must exist),
///   `fdatasync`ed after each batch. Before a line would take the file past
///   `max-bytes`, the file is rotated: `PATH.keep` is dropped, `PATH.N`
///   becomes `PATH.N+1`, `PATH` becomes `PATH.1`, a new `PATH` is created and
///   the directory is fsynced. A file exceeds `max-bytes` only when it holds
///   a single longer line. `max-bytes=0` turns rotation off; `keep=0` drops
///   the full file. The file is opened here, so a path that cannot be opened
///   fails at startup. `file:///abs/path` is accepted too; PATH cannot
///   contain `?`.
/// - `syslog+tls://HOST[:PORT]?ca=PATH[&cert=PATH&key=PATH][&app-name=NAME]`:
///   RFC 5424 messages over TLS (RFC 5425, octet-counted framing), port 6514
///   by default, IPv6 hosts in brackets. The server certificate must chain to
///   a certificate in `ca` and name HOST; `cert` and `key` (PEM, PKCS#8,
///   PKCS#1 or SEC1) give a client certificate. The files are checked here
///   and read again at every (re)connection, so renewed certificates are
///   picked up. The connection is made on the first batch and made again on
///   the batch after any error, or when the server has closed it. Option
///   values may be percent-encoded.
pub fn parse_sink(spec: &str) -> Result<Box<dyn Sink>, SinkError> {
    let spec = spec.trim();
    if spec == "stdout" || spec == "-" {
        return Ok(Box::new(WriterSink {
            name: "stdout".to_owned(),
            out: io::stdout(),
            buf: Vec::new(),
        }));
    }
    if let Some(rest) = spec.strip_prefix("file:") {
        return Ok(Box::new(FileSink::parse(spec, rest)?));
    }
    if let Some(rest) = spec.strip_prefix("syslog+tls://") {
        return Ok(Box::new(SyslogTlsSink::parse(spec, rest)?));
    }
    let shown = redact(spec);
    let reason = match spec.split_once("://").map(|(scheme, _)| scheme) {
        Some(scheme) if scheme.starts_with("syslog") => format!(
            "unsupported scheme {scheme}:// (only syslog+tls:// is supported; \
             plain TCP or UDP syslog would send events unprotected); valid sinks: {SCHEMES}"
        ),
        _ => format!("unknown sink; valid sinks: {SCHEMES}"),
    };
    Err(SinkError::config(&shown, reason))
}

/// The spec with any `user:password@` replaced, for messages.
fn redact(spec: &str) -> String {
    if let Some((scheme, rest)) = spec.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    spec.to_owned()
}

/// Splits `a=1&b=2` into decoded pairs, rejecting unknown and repeated keys.
fn parse_options(
    spec: &str,
    query: &str,
    valid: &[&str],
) -> Result<Vec<(String, String)>, SinkError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !valid.contains(&key) {
            return Err(SinkError::config(
                spec,
                format!(
                    "unknown option {key:?}; valid options: {}",
                    valid.join(", ")
                ),
            ));
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err(SinkError::config(spec, format!("option {key} given twice")));
        }
        let value = percent_decode(value).ok_or_else(|| {
            SinkError::config(spec, format!("option {key}: invalid percent-encoding"))
        })?;
        if value.is_empty() {
            return Err(SinkError::config(
                spec,
                format!("option {key} needs a value ({key}=...)"),
            ));
        }
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------- stdout

/// JSON lines to a stream (standard output), flushed after each batch.
struct WriterSink<W: Write + Send> {
    name: String,
    out: W,
    buf: Vec<u8>,
}

impl<W: Write + Send> Sink for WriterSink<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_batch(&mut self, records: &[Record<'_>]) -> Result<(), SinkError> {
        self.buf.clear();
        for record in records {
            self.buf.extend_from_slice(record.json);
            self.buf.push(b'\n');
        }
        self.out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
            .map_err(|e| SinkError::io(&self.name, "cannot write", e))
    }
}

// ---------------------------------------------------------------- file

/// JSON lines in a file with size-based rotation.
struct FileSink {
    name: String,
    path: PathBuf,
    dir: PathBuf,
    /// 0: no rotation.
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    /// Length of the open file up to its last complete line.
    size: u64,
    buf: Vec<u8>,
    /// Successful file fsyncs, directory fsyncs and rotations, for tests.
    syncs: u64,
    dir_syncs: u64,
    rotations: u64,
}

impl FileSink {
    fn parse(spec: &str, rest: &str) -> Result<FileSink, SinkError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = match path.strip_prefix("//") {
            // file:///abs/path
            Some(abs) if abs.starts_with('/') => abs,
            Some(_) => {
                return Err(SinkError::config(
                    spec,
                    "a file:// URL needs an absolute path (file:///var/log/tiergate/events.jsonl \
                     or file:/var/log/tiergate/events.jsonl)",
                ));
            }
            None => path,
        };
        if path.is_empty() {
            return Err(SinkError::config(
                spec,
                "missing path (file:/var/log/tiergate/events.jsonl)",
            ));
        }
        let mut max_bytes = DEFAULT_MAX_BYTES;
        let mut keep = DEFAULT_KEEP;
        for (key, value) in parse_options(spec, query, FILE_OPTIONS)? {
            match key.as_str() {
                "max-bytes" => {
                    max_bytes = value.parse().map_err(|_| {
                        SinkError::config(
                            spec,
                            format!("max-bytes={value}: expected a number of bytes"),
                        )
                    })?;
                }
                _ => {
                    keep = value
                        .parse()
                        .ok()
                        .filter(|k| *k <= MAX_KEEP)
                        .ok_or_else(|| {
                            SinkError::config(
                                spec,
                                format!("keep={value}: expected a number from 0 to {MAX_KEEP}"),
                            )
                        })?;
                }
            }
        }
        FileSink::open(Path::new(path), max_bytes, keep)
    }

    fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<FileSink, SinkError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut sink = FileSink {
            name: format!("file:{}", path.display()),
            path: path.to_owned(),
            dir,
            max_bytes,
            keep,
            file: None,
            size: 0,
            buf: Vec::new(),
            syncs: 0,
            dir_syncs: 0,
            rotations: 0,
        };
        sink.ensure_open()?;
        Ok(sink)
    }

    fn io_error(&self, action: String, error: io::Error) -> SinkError {
        SinkError::io(&self.name, action, error)
    }

    /// Opens (creating) the file if it is not open. A last line left without
    /// its newline (a write cut short) is terminated so the next line starts
    /// on a line of its own.
    fn ensure_open(&mut self) -> Result<(), SinkError> {
        if self.file.is_some() {
            return Ok(());
        }
        let path = &self.path;
        let cannot_open = |e| self.io_error(format!("cannot open {}", path.display()), e);
        let (mut file, created) = match OpenOptions::new().read(true).append(true).open(path) {
            Ok(file) => (file, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(cannot_open)?;
                (file, true)
            }
            Err(e) => return Err(cannot_open(e)),
        };
        let mut size = file.metadata().map_err(cannot_open)?.len();
        if size > 0 {
            let mut last = [0u8];
            file.read_exact_at(&mut last, size - 1)
                .map_err(cannot_open)?;
            if last[0] != b'\n' {
                tracing::warn!(sink = %self.name, "the file's last line is incomplete (an earlier write was cut short); terminating it");
                file.write_all(b"\n").map_err(|e| {
                    self.io_error(format!("cannot write to {}", self.path.display()), e)
                })?;
                size += 1;
            }
        }
        if created {
            self.sync_dir()?;
        }
        self.file = Some(file);
        self.size = size;
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), SinkError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                self.io_error(format!("cannot fsync directory {}", self.dir.display()), e)
            })?;
        self.dir_syncs += 1;
        Ok(())
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = OsString::from(self.path.as_os_str());
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Appends `self.buf` (complete lines) to the open file and fsyncs it.
    fn commit(&mut self) -> Result<(), SinkError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let file = self.file.as_mut().expect("commit: file is open");
        if let Err(e) = file.write_all(&self.buf) {
            return Err(self.io_error(format!("cannot write to {}", self.path.display()), e));
        }
        self.size += self.buf.len() as u64;
        self.buf.clear();
        // fdatasync: flushes the data and the file size (all an appended
        // line needs), not the timestamps.
        if let Err(e) = file.sync_data() {
            return Err(self.io_error(format!("cannot fsync {}", self.path.display()), e));
        }
        self.syncs += 1;
        Ok(())
    }

    /// Shifts the numbered files, moves the (synced) current file to `.1` and
    /// opens a new one; the directory fsync in `ensure_open` makes the
    /// renames durable with it.
    fn rotate(&mut self) -> Result<(), SinkError> {
        self.file = None;
        if self.keep == 0 {
            match fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(self.io_error(format!("cannot remove {}", self.path.display()), e));
                }
            }
        } else {
            for n in (1..=self.keep).rev() {
                let from = if n == 1 {
                    self.path.clone()
                } else {
                    self.numbered(n - 1)
                };
                let to = self.numbered(n);
                match fs::rename(&from, &to) {
                    Ok(()) => {}
                    // A gap in the numbered files (fewer than `keep` so far,
                    // or a rotation cut short).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(self.io_error(
                            format!(
                                "cannot rotate: cannot rename {} to {}",
                                from.display(),
                                to.display()
                            ),
                            e,
                        ));
                    }
                }
            }
        }
        self.rotations += 1;
        tracing::info!(sink = %self.name, keep = self.keep, "rotated");
        self.ensure_open()
    }

    fn write_records(&mut self, records: &[Record<'_>]) -> Result<(), SinkError> {
        self.ensure_open()?;
        self.buf.clear();
        for record in records {
            let line = record.json.len() as u64 + 1;
            let pending = self.size + self.buf.len() as u64;
            if self.max_bytes > 0 && pending > 0 && pending + line > self.max_bytes {
                self.commit()?;
                self.rotate()?;
            }
            self.buf.extend_from_slice(record.json);
            self.buf.push(b'\n');
        }
        self.commit()
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_batch(&mut self, records: &[Record<'_>]) -> Result<(), SinkError> {
        let result = self.write_records(records);
        if result.is_err() {
            self.buf.clear();
            // Cut a partial line off and reopen on the next batch (a fresh
            // descriptor also gets a fresh fsync error state).
            if let Some(file) = self.file.take()
                && let Err(e) = file.set_len(self.size)
            {
                tracing::warn!(sink = %self.name, error = %e, "cannot truncate a partly written line; it will be terminated on reopen");
            }
        }
        result
    }
}

// ---------------------------------------------------------------- syslog over TLS

/// RFC 5424 messages over TLS (RFC 5425) with octet-counted framing.
struct SyslogTlsSink {
    name: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
    app_name: String,
    conn: Option<Connection>,
    buf: Vec<u8>,
}

impl SyslogTlsSink {
    fn parse(spec: &str, rest: &str) -> Result<SyslogTlsSink, SinkError> {
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

/// Socket timeouts surface as `WouldBlock` ("Resource temporarily
/// unavailable"): say what happened instead.
fn timed_out(e: io::Error, after: Duration) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {}s", after.as_secs()),
        ),
        _ => e,
    }
}

struct Connection {
    tls: ClientConnection,
    sock: TcpStream,
    peer: SocketAddr,
    /// Batches sent successfully.
    batches: u64,
}

impl Connection {
    /// Reads, without blocking, what the server sent. A syslog server sends
    /// no application data, so anything but TLS housekeeping (session
    /// tickets, key updates) means the connection is over.
    fn check_open(&mut self) -> io::Result<()> {
        self.sock.set_nonblocking(true)?;
        let result = self.read_pending();
        self.sock.set_nonblocking(false)?;
        result
    }

    fn read_pending(&mut self) -> io::Result<()> {
        loop {
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ));
                }
                Ok(_) => {
                    let state = self
                        .tls
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    let unexpected = state.plaintext_bytes_to_read();
                    if unexpected > 0 {
                        let mut discard = vec![0; unexpected];
                        self.tls.reader().read_exact(&mut discard)?;
                    }
                    if state.peer_has_closed() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection (close_notify)",
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `data` and returns once the server's TCP has acknowledged
    /// every byte and the connection is still up: a batch sitting in our
    /// send queue when the connection dies would otherwise be lost
    /// silently. (Syslog has no application-level acknowledgement: a server
    /// that dies after its kernel acknowledged the batch can still lose it.)
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        while sent < data.len() {
            let n = self.tls.writer().write(&data[sent..])?;
            sent += n;
            self.write_tls()?;
            if n == 0 && !self.tls.wants_write() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "TLS refused the data",
                ));
            }
        }
        self.write_tls()?;
        self.sock.flush()?;
        self.wait_acknowledged()?;
        self.check_open()
    }

    fn write_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the connection took no data",
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timed_out(e, IO_TIMEOUT)),
            }
        }
        Ok(())
    }

    /// Waits until the socket's send queue (unsent plus unacknowledged
    /// bytes, `SIOCOUTQ`) is empty, watching for the server closing or
    /// resetting the connection meanwhile (after which the queue would never
    /// drain).
    fn wait_acknowledged(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut pause_ms: libc::c_int = 1;
        loop {
            let fd = self.sock.as_raw_fd();
            let mut queued: libc::c_int = 0;
            // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one c_int
            // through the pointer, which points to a live c_int.
            if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if queued == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the server has not acknowledged {queued} bytes after {}s",
                        IO_TIMEOUT.as_secs()
                    ),
                ));
            }
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, pause_ms) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            } else if ready > 0 {
                // Data (TLS housekeeping or an alert), end of stream or an
                // error (reset): check_open fails on all but housekeeping.
                self.check_open()?;
            }
            pause_ms = (pause_ms * 2).min(50);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Best effort, without blocking on a dead peer.
        self.tls.send_close_notify();
        if self.sock.set_nonblocking(true).is_ok() {
            let _ = self.tls.write_tls(&mut self.sock);
        }
    }
}

/// Appends one octet-counted RFC 5425 frame, `LEN SP SYSLOG-MSG`, with
/// `SYSLOG-MSG` = `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID - JSON`.
fn encode_frame(out: &mut Vec<u8>, record: &Record<'_>, app_name: &str) {
    let pri = FACILITY_LOCAL0 * 8 + record.severity.syslog_code();
    let mut header = format!("<{pri}>1 ");
    push_timestamp(&mut header, record.time_ms);
    header.push(' ');
    push_field(&mut header, record.agent, 255);
    header.push(' ');
    header.push_str(app_name);
    header.push_str(" - ");
    push_field(&mut header, record.kind, 32);
    header.push_str(" - ");
    let len = header.len() + record.json.len();
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(record.json);
}

/// A header field: printable ASCII without spaces (others become `_`), at
/// most `max` characters, `-` (NILVALUE) when empty.
fn push_field(out: &mut String, value: &str, max: usize) {
    let start = out.len();
    out.extend(
        value
            .chars()
            .take(max)
            .map(|c| if c.is_ascii_graphic() { c } else { '_' }),
    );
    if out.len() == start {
        out.push('-');
    }
}

/// RFC 3339 UTC with milliseconds (`2026-11-24T08:00:00.123Z`); NILVALUE
/// past year 9999.
fn push_timestamp(out: &mut String, time_ms: u64) {
    let secs = time_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    if year > 9999 {
        out.push('-');
        return;
    }
    let s = secs % 86_400;
    out.push_str(&format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        time_ms % 1000
    ));
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_795_507_200_123; // 2026-11-24T08:00:00.123Z

    fn rec<'a>(json: &'a str, severity: Severity, kind: &'a str, agent: &'a str) -> Record<'a> {
        Record {
            json: json.as_bytes(),
            time_ms: T,
            severity,
            kind,
            agent,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tiergate-sinks-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn file_sink(spec: &str) -> FileSink {
        FileSink::parse(spec, spec.strip_prefix("file:").unwrap()).unwrap()
    }

    fn err(spec: &str) -> String {
        match parse_sink(spec) {
            Ok(sink) => panic!("{spec} parsed as {}", sink.name()),
            Err(e) => e.to_string(),
        }
    }

    // ---- syslog frames

    #[test]
    fn frame_is_byte_exact() {
        let json =
            r#"{"class_uid":4001,"unmapped":{"tiergate":{"kind":"connection","verdict":"deny"}}}"#;
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            &rec(json, Severity::Info, "connection", "node-1"),
            "tiergate",
        );
        // 63 header bytes + 81 JSON bytes.
        let expected = r#"144 <134>1 2026-11-24T08:00:00.123Z node-1 tiergate - connection - {"class_uid":4001,"unmapped":{"tiergate":{"kind":"connection","verdict":"deny"}}}"#;
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn frame_counts_octets_not_characters() {
        let json = r#"{"name":"é€😀"}"#; // 11 ASCII + 2 + 3 + 4 bytes
        assert_eq!(json.len(), 20);
        let mut out = Vec::new();
        encode_frame(&mut out, &rec(json, Severity::Error, "policy", "n"), "tg");
        let expected = "68 <131>1 2026-11-24T08:00:00.123Z n tg - policy - {\"name\":\"é€😀\"}";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn frames_concatenate_and_pri_follows_severity() {
        let mut out = Vec::new();
        for (severity, kind) in [
            (Severity::Info, "connection"),
            (Severity::Warning, "socket"),
            (Severity::Error, "loss"),
        ] {
            encode_frame(&mut out, &rec("{}", severity, kind, "node-1"), "tiergate");
        }
        let text = String::from_utf8(out).unwrap();
        let mut rest = text.as_str();
        let mut got = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest.split_once(' ').unwrap();
            let len: usize = len.parse().unwrap();
            got.push(&tail[..len]);
            rest = &tail[len..];
        }
        assert_eq!(
            got,
            [
                "<134>1 2026-11-24T08:00:00.123Z node-1 tiergate - connection - {}",
                "<132>1 2026-11-24T08:00:00.123Z node-1 tiergate - socket - {}",
                "<131>1 2026-11-24T08:00:00.123Z node-1 tiergate - loss - {}",
            ]
        );
    }

    #[test]
    fn header_fields_are_sanitized() {
        let mut out = Vec::new();
        let long = "x".repeat(300);
        encode_frame(
            &mut out,
            &rec("{}", Severity::Info, "", "nöde 1"),
            "tiergate",
        );
        encode_frame(
            &mut out,
            &rec("{}", Severity::Info, &long, &long),
            "tiergate",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("56 <134>1 2026-11-24T08:00:00.123Z n_de_1 tiergate - - - {}"),
            "{text}"
        );
        let x255 = "x".repeat(255);
        let x32 = "x".repeat(32);
        assert!(
            text.ends_with(&format!("T08:00:00.123Z {x255} tiergate - {x32} - {{}}")),
            "{text}"
        );
    }

    #[test]
    fn timestamps() {
        let ts = |ms| {
            let mut s = String::new();
            push_timestamp(&mut s, ms);
            s
        };
        assert_eq!(ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ts(T), "2026-11-24T08:00:00.123Z");
        assert_eq!(ts(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(ts(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(ts(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
        assert_eq!(ts(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(ts(253_402_300_800_000), "-");
        assert_eq!(ts(u64::MAX), "-");
    }

    // ---- parsing

    #[test]
    fn parses_specs() {
        assert_eq!(parse_sink("stdout").unwrap().name(), "stdout");
        assert_eq!(parse_sink("-").unwrap().name(), "stdout");
        let dir = scratch("parse");
        let ca = write_ca(&dir);
        let path = dir.join("e.jsonl");
        let f = file_sink(&format!("file:{}?max-bytes=1000&keep=3", path.display()));
        assert_eq!(
            (f.max_bytes, f.keep, f.name.clone()),
            (1000, 3, format!("file:{}", path.display()))
        );
        let f = file_sink(&format!("file://{}", path.display()));
        assert_eq!(
            (f.max_bytes, f.keep, f.path.clone()),
            (DEFAULT_MAX_BYTES, DEFAULT_KEEP, path.clone())
        );

        let s = SyslogTlsSink::parse(
            "x",
            &format!("siem.example:1514?ca={}&app-name=tg", ca.display()),
        )
        .unwrap();
        assert_eq!(
            (s.name.as_str(), s.port, s.app_name.as_str()),
            ("syslog+tls://siem.example:1514", 1514, "tg")
        );
        let s = SyslogTlsSink::parse("x", &format!("[::1]?ca={}", ca.display())).unwrap();
        assert_eq!(
            (s.name.as_str(), s.host.as_str()),
            ("syslog+tls://[::1]:6514", "::1")
        );
        let s = SyslogTlsSink::parse(
            "x",
            &format!(
                "10.0.0.1:6514/?ca={}",
                ca.to_str().unwrap().replace('/', "%2F")
            ),
        )
        .unwrap();
        assert_eq!(
            (s.name.as_str(), s.ca.clone()),
            ("syslog+tls://10.0.0.1:6514", ca.clone())
        );
        assert!(parse_sink(&format!("syslog+tls://localhost:6514?ca={}", ca.display())).is_ok());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rejects_bad_specs_precisely() {
        let dir = scratch("bad");
        let ca = write_ca(&dir);
        let ca = ca.display().to_string();
        let key = dir.join("key.pem");
        fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBieXRlcw==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let key = key.display().to_string();

        let e = err("kafka://broker:9092");
        assert!(
            e.starts_with(
                "--sink kafka://broker:9092: unknown sink; valid sinks: stdout, file:PATH"
            ),
            "{e}"
        );
        assert!(e.contains("syslog+tls://HOST[:PORT]?ca=PATH"), "{e}");
        let e = err("syslog://siem:514");
        assert!(e.contains("unsupported scheme syslog://"), "{e}");
        let e = err("file:/tmp/x?max-bytes=1&rotate=2");
        assert_eq!(
            e,
            r#"--sink file:/tmp/x?max-bytes=1&rotate=2: unknown option "rotate"; valid options: max-bytes, keep"#
        );
        let e = err("file:/tmp/x?max-bytes=10M");
        assert_eq!(
            e,
            "--sink file:/tmp/x?max-bytes=10M: max-bytes=10M: expected a number of bytes"
        );
        let e = err("file:/tmp/x?keep=1&keep=2");
        assert!(e.ends_with("option keep given twice"), "{e}");
        let e = err("file:/tmp/x?keep=");
        assert!(e.ends_with("option keep needs a value (keep=...)"), "{e}");
        let e = err("file:/tmp/x?keep=%+1");
        assert!(e.ends_with("option keep: invalid percent-encoding"), "{e}");
        assert_eq!(percent_decode("a%20b%2Fc%c3%A9"), Some("a b/cé".to_owned()));
        assert_eq!(percent_decode("%4"), None);
        let e = err("file:");
        assert!(e.contains("missing path"), "{e}");
        let e = err("file://relative/x");
        assert!(e.contains("absolute path"), "{e}");
        let e = err("syslog+tls://siem:6514");
        assert!(
            e.starts_with("--sink syslog+tls://siem:6514: missing ca=PATH"),
            "{e}"
        );
        let e = err(&format!("syslog+tls://siem:6514?ca={ca}&verify=no"));
        assert!(
            e.ends_with(r#"unknown option "verify"; valid options: ca, cert, key, app-name"#),
            "{e}"
        );
        let e = err(&format!("syslog+tls://siem:99999?ca={ca}"));
        assert!(e.ends_with(r#"invalid port "99999""#), "{e}");
        let e = err(&format!("syslog+tls://::1:6514?ca={ca}"));
        assert!(e.contains("IPv6 addresses go in brackets"), "{e}");
        let e = err(&format!("syslog+tls://admin:hunter2@siem:6514?ca={ca}"));
        assert!(!e.contains("hunter2") && !e.contains("admin"), "{e}");
        assert!(
            e.contains("credentials in the address are not supported"),
            "{e}"
        );
        let e = err(&format!("syslog+tls://siem?ca={ca}&app-name=tier gate"));
        assert!(e.contains("app-name=tier gate: RFC 5424 allows"), "{e}");
        let e = err(&format!("syslog+tls://siem?ca={ca}&cert={ca}"));
        assert!(e.ends_with("cert= and key= go together"), "{e}");
        let e = err("syslog+tls://siem?ca=/nonexistent/ca.pem");
        assert_eq!(
            e,
            "--sink syslog+tls://siem:6514: cannot read CA file /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
        let e = err(&format!("syslog+tls://siem?ca={key}"));
        assert!(
            e.ends_with(&format!("CA file {key}: no CERTIFICATE found")),
            "{e}"
        );
        // A key that is not what it claims: the message names the file, not its contents.
        let e = err(&format!("syslog+tls://siem?ca={ca}&cert={ca}&key={key}"));
        assert!(e.contains(&format!("with key {key}")), "{e}");
        assert!(!e.contains("c2VjcmV0") && !e.contains("secret"), "{e}");
        let e = err(&format!("syslog+tls://siem?ca={ca}&cert={ca}&key={ca}"));
        assert!(
            e.contains(&format!("client key {ca}: no private key found")),
            "{e}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    // ---- stdout

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn stdout_writes_lines() {
        let mut sink = WriterSink {
            name: "stdout".to_owned(),
            out: Vec::new(),
            buf: Vec::new(),
        };
        sink.write_batch(&[
            rec("{\"a\":1}", Severity::Info, "connection", "n"),
            rec("{\"b\":2}", Severity::Error, "loss", "n"),
        ])
        .unwrap();
        sink.write_batch(&[]).unwrap();
        sink.write_batch(&[rec("{\"c\":3}", Severity::Info, "policy", "n")])
            .unwrap();
        assert_eq!(sink.out, b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");

        let mut broken = WriterSink {
            name: "stdout".to_owned(),
            out: Broken,
            buf: Vec::new(),
        };
        let e = broken
            .write_batch(&[rec("{}", Severity::Info, "connection", "n")])
            .unwrap_err();
        assert_eq!(e.to_string(), "--sink stdout: cannot write: broken pipe");
        // The real one.
        parse_sink("stdout").unwrap().write_batch(&[]).unwrap();
    }

    // ---- file

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn numbered_json(i: usize) -> String {
        format!("{{\"seq\":{i:04}}}") // 12 bytes, 13 with the newline
    }

    #[test]
    fn file_appends_lines_and_fsyncs_each_batch() {
        let dir = scratch("append");
        let path = dir.join("events.jsonl");
        let spec = format!("file:{}", path.display());
        let mut sink = file_sink(&spec);
        assert_eq!(sink.dir_syncs, 1, "creating the file fsyncs its directory");
        sink.write_batch(&[
            rec("{\"a\":1}", Severity::Info, "connection", "n"),
            rec("{\"é\":\"€\"}", Severity::Info, "connection", "n"),
        ])
        .unwrap();
        sink.write_batch(&[]).unwrap();
        sink.write_batch(&[rec("{\"b\":2}", Severity::Warning, "socket", "n")])
            .unwrap();
        assert_eq!(sink.syncs, 2, "one fsync per non-empty batch");
        drop(sink);
        // A new sink (collector restart) appends.
        let mut sink = file_sink(&spec);
        assert_eq!(
            sink.dir_syncs, 0,
            "opening an existing file needs no directory fsync"
        );
        sink.write_batch(&[rec("{\"c\":3}", Severity::Info, "policy", "n")])
            .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"é\":\"€\"}\n{\"b\":2}\n{\"c\":3}\n"
        );
        assert_eq!(sink.syncs, 1);
        assert_eq!(sink.rotations, 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_terminates_a_torn_last_line() {
        let dir = scratch("torn");
        let path = dir.join("events.jsonl");
        fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let mut sink = file_sink(&format!("file:{}", path.display()));
        sink.write_batch(&[rec("{\"c\":3}", Severity::Info, "connection", "n")])
            .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":\n{\"c\":3}\n"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_rotation_keeps_exactly_keep_files_in_order() {
        let dir = scratch("rotate");
        let path = dir.join("events.jsonl");
        // 13-byte lines, 3 per file (39 <= 40 < 52).
        let mut sink = file_sink(&format!("file:{}?max-bytes=40&keep=3", path.display()));
        let all: Vec<String> = (0..20).map(numbered_json).collect();
        // Batches of 1, 2, 3, 4, 5, 5 records: rotation happens inside batches too.
        let mut start = 0;
        for size in [1, 2, 3, 4, 5, 5] {
            let batch: Vec<Record<'_>> = all[start..start + size]
                .iter()
                .map(|j| rec(j, Severity::Info, "connection", "n"))
                .collect();
            sink.write_batch(&batch).unwrap();
            start += size;
        }
        assert_eq!(start, 20);
        // Files of 3 records: 0-2, 3-5, 6-8, 9-11, 12-14, 15-17, then 18-19 current.
        assert_eq!(lines(&path), all[18..20]);
        assert_eq!(lines(&dir.join("events.jsonl.1")), all[15..18]);
        assert_eq!(lines(&dir.join("events.jsonl.2")), all[12..15]);
        assert_eq!(lines(&dir.join("events.jsonl.3")), all[9..12]);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "events.jsonl",
                "events.jsonl.1",
                "events.jsonl.2",
                "events.jsonl.3"
            ]
        );
        for name in &names {
            assert!(fs::metadata(dir.join(name)).unwrap().len() <= 40, "{name}");
        }
        assert_eq!(sink.rotations, 6);
        // One directory fsync at creation and one per rotation. One file
        // fsync per batch, plus one before each rotation inside a batch
        // (records 9, 12 and 18; those at 3, 6 and 15 start a batch, after
        // the previous batch's fsync).
        assert_eq!(sink.dir_syncs, 7);
        assert_eq!(sink.syncs, 6 + 3);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_rotation_edge_cases() {
        let dir = scratch("rotate-edge");
        let path = dir.join("events.jsonl");
        // A line longer than max-bytes gets a file of its own.
        let mut sink = file_sink(&format!("file:{}?max-bytes=20&keep=2", path.display()));
        let long = format!("{{\"x\":\"{}\"}}", "y".repeat(30));
        sink.write_batch(&[
            rec("{\"a\":1}", Severity::Info, "connection", "n"),
            rec(&long, Severity::Info, "connection", "n"),
            rec("{\"b\":2}", Severity::Info, "connection", "n"),
        ])
        .unwrap();
        assert_eq!(lines(&dir.join("events.jsonl.2")), ["{\"a\":1}"]);
        assert_eq!(lines(&dir.join("events.jsonl.1")), [long.as_str()]);
        assert_eq!(lines(&path), ["{\"b\":2}"]);
        drop(sink);
        // keep=0 drops the full file; max-bytes=0 never rotates.
        let mut sink = file_sink(&format!("file:{}?max-bytes=20&keep=0", path.display()));
        sink.write_batch(&[
            rec("{\"c\":3}", Severity::Info, "connection", "n"),
            rec("{\"d\":4}", Severity::Info, "connection", "n"),
        ])
        .unwrap();
        assert_eq!(lines(&path), ["{\"d\":4}"]);
        assert_eq!(
            lines(&dir.join("events.jsonl.1")),
            [long.as_str()],
            "keep=0 leaves numbered files alone"
        );
        drop(sink);
        let mut sink = file_sink(&format!("file:{}?max-bytes=0", path.display()));
        sink.write_batch(&[
            rec(&long, Severity::Info, "connection", "n"),
            rec(&long, Severity::Info, "connection", "n"),
        ])
        .unwrap();
        assert_eq!(lines(&path).len(), 3);
        assert_eq!(sink.rotations, 0);
        fs::remove_dir_all(dir).unwrap();
    }

    /// Runs `f` where directory permissions apply: as root, on a thread whose
    /// filesystem uid/gid are `nobody` (which drops CAP_DAC_OVERRIDE for
    /// that thread), with `dir` owned by `nobody`.
    fn without_root<R: Send + 'static>(dir: &Path, f: impl FnOnce() -> R + Send + 'static) -> R {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
        }
        std::thread::spawn(move || {
            if root {
                // SAFETY: setfsuid/setfsgid change only this thread's
                // filesystem ids; the thread ends with the closure.
                unsafe {
                    libc::setfsgid(65534);
                    libc::setfsuid(65534);
                }
            }
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn file_read_only_directory_fails_with_the_path_and_recovers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("readonly");
        let ro = dir.join("logs");
        fs::create_dir(&ro).unwrap();
        let path = ro.join("events.jsonl");
        let all: Vec<String> = (0..6).map(numbered_json).collect();
        let (remaining, first_error, second_error) = without_root(&ro, {
            let (ro, path, all) = (ro.clone(), path.clone(), all.clone());
            move || {
                let set_mode =
                    |mode| fs::set_permissions(&ro, fs::Permissions::from_mode(mode)).unwrap();
                let spec = format!("file:{}?max-bytes=40&keep=2", path.display());
                let batch = |r: std::ops::Range<usize>| -> Vec<Record<'_>> {
                    all[r]
                        .iter()
                        .map(|j| rec(j, Severity::Info, "connection", "n"))
                        .collect()
                };
                // Cannot even create the file.
                set_mode(0o555);
                let first_error = parse_sink(&spec).err().map(|e| e.to_string());
                set_mode(0o755);
                let mut sink = file_sink(&spec);
                sink.write_batch(&batch(0..2)).unwrap();
                // Rotation (renames) needs a writable directory.
                set_mode(0o555);
                let second_error = sink.write_batch(&batch(2..4)).err().map(|e| e.to_string());
                let still_failing = sink.write_batch(&batch(2..4)).is_err();
                set_mode(0o755);
                sink.write_batch(&batch(2..4)).unwrap();
                sink.write_batch(&batch(4..6)).unwrap();
                (still_failing, first_error, second_error)
            }
        });
        assert!(
            remaining,
            "the sink kept failing while the directory was read-only"
        );
        let first_error = first_error.expect("creating a file in a read-only directory failed");
        assert_eq!(
            first_error,
            format!(
                "--sink file:{}: cannot open {}: Permission denied (os error 13)",
                path.display(),
                path.display()
            )
        );
        let second_error = second_error.expect("rotating in a read-only directory failed");
        assert_eq!(
            second_error,
            format!(
                "--sink file:{p}: cannot rotate: cannot rename {p} to {p}.1: Permission denied (os error 13)",
                p = path.display()
            )
        );
        // Records 0-2 filled the first file (record 2 was written before the
        // failed rotation and again on retry: a duplicate, no loss).
        assert_eq!(lines(&ro.join("events.jsonl.2")), all[0..3]);
        assert_eq!(lines(&ro.join("events.jsonl.1")), all[2..5]);
        assert_eq!(lines(&path), all[5..6]);
        fs::remove_dir_all(dir).unwrap();
    }

    /// The fsync is real: a FIFO takes the write but cannot be fsynced.
    #[test]
    fn file_fsync_failure_fails_the_batch() {
        let dir = scratch("fifo");
        let path = dir.join("events.fifo");
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut sink = file_sink(&format!("file:{}", path.display()));
        let e = sink
            .write_batch(&[rec("{}", Severity::Info, "connection", "n")])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--sink file:{p}: cannot fsync {p}: Invalid argument (os error 22)",
                p = path.display()
            )
        );
        assert_eq!(sink.syncs, 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_write_failure_fails_the_batch() {
        let mut sink = file_sink("file:/dev/full");
        let e = sink
            .write_batch(&[rec("{}", Severity::Info, "connection", "n")])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--sink file:/dev/full: cannot write to /dev/full: No space left on device (os error 28)"
        );
        assert!(sink.file.is_none(), "reopened on the next batch");
        assert!(
            sink.write_batch(&[rec("{}", Severity::Info, "connection", "n")])
                .is_err()
        );
    }

    #[test]
    fn file_open_errors_name_the_path() {
        let dir = scratch("openerr");
        let missing = dir.join("no-such-dir").join("events.jsonl");
        let e = err(&format!("file:{}", missing.display()));
        assert_eq!(
            e,
            format!(
                "--sink file:{m}: cannot open {m}: No such file or directory (os error 2)",
                m = missing.display()
            )
        );
        let e = err(&format!("file:{}", dir.display()));
        assert!(e.ends_with("Is a directory (os error 21)"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn syslog_connect_error_is_clear() {
        let dir = scratch("refused");
        let ca = write_ca(&dir);
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut sink = parse_sink(&format!(
            "syslog+tls://127.0.0.1:{port}?ca={}",
            ca.display()
        ))
        .unwrap();
        let e = sink
            .write_batch(&[rec("{}", Severity::Info, "connection", "n")])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--sink syslog+tls://127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}: Connection refused (os error 111)"
            )
        );
        assert!(
            sink.write_batch(&[]).is_ok(),
            "an empty batch needs no connection"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    /// Writes a self-signed CA certificate to `dir/ca.pem`.
    fn write_ca(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let path = dir.join("ca.pem");
        fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
        path
    }
}
