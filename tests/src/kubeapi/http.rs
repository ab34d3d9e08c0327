//! The HTTP side: accepting connections, reading requests and writing
//! responses (plain and chunked).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use super::routes::handle;
use super::{Inner, POLL, lock};

pub(super) fn accept_loop(inner: &Arc<Inner>) {
    while !inner.stop.load(Ordering::SeqCst) {
        let accepted = {
            let listener = lock(&inner.listener);
            let generation = inner.generation.load(Ordering::SeqCst);
            listener
                .as_ref()
                .and_then(|l| l.accept().ok())
                .map(|(s, _)| (s, generation))
        };
        let Some((stream, generation)) = accepted else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = inner.next_conn.fetch_add(1, Ordering::SeqCst);
        let registered = stream.set_nonblocking(false).is_ok()
            && stream.set_read_timeout(Some(POLL)).is_ok()
            && stream
                .set_write_timeout(Some(Duration::from_secs(10)))
                .is_ok()
            && {
                let _ = stream.set_nodelay(true);
                let mut conns = lock(&inner.conns);
                match stream.try_clone() {
                    Ok(c) if inner.alive(generation) => {
                        conns.insert(id, c);
                        true
                    }
                    _ => false,
                }
            };
        if !registered {
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let for_thread = Arc::clone(inner);
        let spawned = thread::Builder::new()
            .name(format!("fake-kube-conn-{id}"))
            .spawn(move || {
                serve_conn(&for_thread, stream, generation);
                lock(&for_thread.conns).remove(&id);
            });
        let mut workers = lock(&inner.workers);
        workers.retain(|w| !w.is_finished());
        match spawned {
            Ok(w) => workers.push(w),
            Err(_) => {
                if let Some(c) = lock(&inner.conns).remove(&id) {
                    let _ = c.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

pub(super) struct Request {
    pub(super) method: String,
    target: String,
    pub(super) path: String,
    query: Vec<(String, String)>,
    /// The `Content-Type` header, lowercased; empty when absent.
    pub(super) content_type: String,
    pub(super) body: Vec<u8>,
    close: bool,
}

impl Request {
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn serve_conn(inner: &Inner, mut stream: TcpStream, generation: u64) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(inner, &mut stream, &mut buf, generation) {
        lock(&inner.requests).push(format!("{} {}", req.method, req.target));
        let keep = handle(inner, &mut stream, &req, generation);
        if !keep || req.close || !inner.alive(generation) {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Reads one request (head and `Content-Length` body); None when the peer
/// closed, the server stops or the request is malformed.
fn read_request(
    inner: &Inner,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    generation: u64,
) -> Option<Request> {
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        match stream.read(&mut tmp) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !inner.alive(generation) {
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let version = first.next().unwrap_or("HTTP/1.0");
    let mut close = version == "HTTP/1.0";
    let mut body_len = 0usize;
    let mut content_type = String::new();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => body_len = v.parse().ok()?,
            "content-type" => content_type = v,
            "connection" if v.contains("close") => close = true,
            "connection" if v.contains("keep-alive") => close = false,
            // Chunked request bodies are not supported (kube sends a
            // Content-Length with its patches).
            "transfer-encoding" => return None,
            _ => {}
        }
    }
    while buf.len() < body_len {
        match stream.read(&mut tmp) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !inner.alive(generation) {
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let body = buf.drain(..body_len).collect();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_query(q)),
        None => (target.clone(), Vec::new()),
    };
    Some(Request {
        method,
        target,
        path,
        query,
        content_type,
        body,
        close,
    })
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(kv), String::new()),
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        _ => "Internal Server Error",
    }
}

pub(super) fn respond(stream: &mut TcpStream, code: u16, content_type: &str, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-cache, private\r\nContent-Length: {}\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    stream.write_all(head.as_bytes()).is_ok()
        && stream.write_all(body).is_ok()
        && stream.flush().is_ok()
}

pub(super) fn respond_json(stream: &mut TcpStream, code: u16, body: &Value) -> bool {
    let bytes = serde_json::to_vec(body).expect("serialize");
    respond(stream, code, "application/json", &bytes)
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

pub(super) fn respond_status(
    stream: &mut TcpStream,
    code: u16,
    reason: &str,
    message: &str,
) -> bool {
    respond_json(stream, code, &status(code, reason, message))
}

fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> bool {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).is_ok() && stream.flush().is_ok()
}

pub(super) fn write_event(stream: &mut TcpStream, event: &Value) -> bool {
    let mut line = serde_json::to_vec(event).expect("serialize");
    line.push(b'\n');
    write_chunk(stream, &line)
}

pub(super) fn end_chunks(stream: &mut TcpStream) -> bool {
    stream.write_all(b"0\r\n\r\n").is_ok() && stream.flush().is_ok()
}

/// True when the client closed its end (or the socket broke).
pub(super) fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let r = stream.peek(&mut [0u8; 1]);
    let _ = stream.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
    }
}

pub(super) fn start_chunked(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    stream.flush()
}
