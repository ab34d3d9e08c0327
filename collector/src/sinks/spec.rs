//! `--sink` values: the scheme dispatch and the option syntax all sinks share.

use std::io;

use super::file::FileSink;
use super::stdout::WriterSink;
use super::syslog::SyslogTlsSink;
use super::{Sink, SinkError};

const SCHEMES: &str = "stdout, file:PATH[?max-bytes=N&keep=N], \
     syslog+tls://HOST[:PORT]?ca=PATH[&cert=PATH&key=PATH][&app-name=NAME]";

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
pub(super) fn redact(spec: &str) -> String {
    if let Some((scheme, rest)) = spec.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    spec.to_owned()
}

/// Splits `a=1&b=2` into decoded pairs, rejecting unknown and repeated keys.
pub(super) fn parse_options(
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

pub(super) fn percent_decode(s: &str) -> Option<String> {
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
