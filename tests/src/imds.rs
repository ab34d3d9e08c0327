//! A fake cloud metadata service for the end-to-end tests of the metadata
//! proxy (issue 11), so that those tests own the upstream the proxy talks to
//! and the machine's real 169.254.169.254 never sees a packet: [`FakeImds`]
//! binds only the address it is given (the tests use a namespace's `lo`, or
//! `127.0.0.1:0`) and never connects anywhere.
//!
//! It is a small real HTTP/1.1 server on std (one thread per connection,
//! keep-alive, pipelined requests answered in order, `Content-Length` and
//! chunked request bodies, request heads over [`MAX_HEAD`] bytes refused with
//! 431 and the connection closed) that plays three providers by path:
//!
//! * **AWS IMDS**, v1 and v2 both enabled as on a default EC2 instance (so a
//!   test shows that the *proxy* refused a token-less request):
//!   `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds`
//!   (1..=21600, else 400), refuses `X-Forwarded-For` (403) and answers a
//!   fresh random token; a GET that carries `X-aws-ec2-metadata-token` must
//!   carry an unexpired token issued here (else 401). Serves `meta-data/`
//!   (listing, `instance-id`, `placement/availability-zone`,
//!   `iam/security-credentials/` and the role's fake credentials) and
//!   `user-data`, under `/latest/`, `/1.0/` or a dated version
//!   (`/2021-07-15/`).
//! * **GCP** under `/computeMetadata/`: needs `Metadata-Flavor: Google` and
//!   no `X-Forwarded-For` (else 403), answers with `Metadata-Flavor: Google`;
//!   serves `v1/instance/zone` and
//!   `v1/instance/service-accounts/default/token`.
//! * **Azure** under `/metadata/`: needs `Metadata: true`, no
//!   `X-Forwarded-For` and an `api-version` query parameter (else 400);
//!   serves `instance` and `identity/oauth2/token`.
//!
//! Anything else is 404; other methods than GET and HEAD (PUT for the
//! token) are 405. Paths are matched exactly as received (no
//! percent-decoding, no dot-segment removal, origin-form only), so a
//! non-canonical path that reaches the fake is a 404 and shows in the log.
//!
//! Every request received (refused ones included) is recorded, before its
//! answer is written, as one JSON object: `{"method", "target" (raw, as
//! received), "headers" (lowercased names; repeated ones joined with ", "),
//! "status" (what it answered), "peer"}` ([`FakeImds::requests`]), and
//! optionally appended as a line to a file ([`FakeImds::start_with_log`],
//! `tg-probe imds-serve ADDR:PORT --log FILE`). Method and target are null
//! when the request line could not be read.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// Longest request head (request line, headers and the blank line) served;
/// a longer one is answered 431 and the connection closed.
pub const MAX_HEAD: usize = 16 * 1024;
/// Headers per request; more is answered 431.
pub const MAX_HEADERS: usize = 128;
/// Longest request body; a longer one is answered 413.
pub const MAX_BODY: usize = 1 << 20;
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

pub const INSTANCE_ID: &str = "i-0123456789tiergate";
pub const AVAILABILITY_ZONE: &str = "eu-test-1a";
pub const ROLE: &str = "tiergate-test-role";
pub const ACCESS_KEY_ID: &str = "ASIATESTTIERGATE";
pub const SECRET_ACCESS_KEY: &str = "fake-secret-for-tests";
pub const SESSION_TOKEN: &str = "fake-session-token";
pub const USER_DATA: &str = "#!/bin/sh\necho tiergate fake user-data\n";
pub const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
pub const GCP_ZONE: &str = "projects/123/zones/europe-test1-a";
pub const GCP_ACCESS_TOKEN: &str = "fake-gcp-access-token";
pub const AZURE_ACCESS_TOKEN: &str = "fake-azure-access-token";
/// The `Server` header of every answer, so a test can tell the fake's
/// answers from the proxy's own.
pub const SERVER: &str = "tiergate-fake-imds";

/// A running fake metadata service; dropping it stops it (the listener is
/// closed before `drop` returns, open connections within [`POLL`]).
pub struct FakeImds {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    log: Mutex<Log>,
    /// Issued IMDSv2 tokens and when they expire.
    tokens: Mutex<HashMap<String, Instant>>,
}

struct Log {
    entries: Vec<Value>,
    file: Option<File>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeImds {
    /// Binds `addr` (port 0 allowed) and serves on background threads.
    pub fn start(addr: SocketAddr) -> std::io::Result<FakeImds> {
        FakeImds::serve(addr, None)
    }

    /// As [`FakeImds::start`], also appending each log entry to `path` as
    /// one JSON line (written whole and flushed per line).
    pub fn start_with_log(addr: SocketAddr, path: &Path) -> std::io::Result<FakeImds> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        FakeImds::serve(addr, Some(file))
    }

    fn serve(addr: SocketAddr, file: Option<File>) -> std::io::Result<FakeImds> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            log: Mutex::new(Log {
                entries: Vec::new(),
                file,
            }),
            tokens: Mutex::new(HashMap::new()),
        });
        let for_thread = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("fake-imds-accept".into())
            .spawn(move || accept_loop(&for_thread, listener))?;
        Ok(FakeImds {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The bound address (with the real port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests received so far, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.log).entries.clone()
    }

    /// The requests received so far, oldest first, forgotten at once (a
    /// long-running server's log stays small; none is lost in between).
    pub fn take_requests(&self) -> Vec<Value> {
        std::mem::take(&mut lock(&self.shared.log).entries)
    }

    /// Forgets the requests received so far (not those in the log file).
    pub fn clear(&self) {
        lock(&self.shared.log).entries.clear();
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn record(&self, entry: Value) {
        let mut log = lock(&self.log);
        if let Some(f) = log.file.as_mut() {
            let _ = f.write_all(format!("{entry}\n").as_bytes());
            let _ = f.flush();
        }
        log.entries.push(entry);
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !shared.stopped() {
        // SAFETY: one pollfd, for a listener that outlives the call.
        unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as i32) };
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let for_thread = Arc::clone(shared);
                    let _ = thread::Builder::new()
                        .name("fake-imds-conn".into())
                        .spawn(move || serve_conn(&for_thread, stream, peer));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        thread::sleep(POLL); // out of descriptors, say
                    }
                    break;
                }
            }
        }
    }
}

/// One received request (its body read and dropped).
struct Req {
    /// Empty when the request line could not be read.
    method: String,
    target: String,
    /// Names as received, values as text.
    headers: Vec<(String, String)>,
    close: bool,
}

impl Req {
    fn all(&self, name: &str) -> Vec<&str> {
        let named = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name));
        named.map(|(_, v)| v.as_str()).collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn is_get(&self) -> bool {
        matches!(self.method.as_str(), "GET" | "HEAD")
    }

    /// The log entry for this request answered with `status`.
    fn entry(&self, status: u16, peer: SocketAddr) -> Value {
        let mut headers = Map::new();
        for (k, v) in &self.headers {
            let k = k.to_ascii_lowercase();
            let joined = match headers.get(&k) {
                Some(Value::String(old)) => format!("{old}, {v}"),
                _ => v.clone(),
            };
            headers.insert(k, Value::String(joined));
        }
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        json!({
            "method": opt(&self.method),
            "target": opt(&self.target),
            "headers": headers,
            "status": status,
            "peer": peer.to_string(),
        })
    }

    fn from_parsed(r: &httparse::Request) -> Req {
        let headers = r
            .headers
            .iter()
            .map(|h| {
                let v = String::from_utf8_lossy(h.value);
                (h.name.to_string(), v.trim().to_string())
            })
            .collect();
        let mut req = Req {
            method: r.method.unwrap_or("").to_string(),
            target: r.path.unwrap_or("").to_string(),
            headers,
            close: false,
        };
        let conn = req.all("connection").join(",");
        let has = |t: &str| conn.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        req.close = if r.version == Some(0) {
            !has("keep-alive")
        } else {
            has("close")
        };
        req
    }

    /// What can be read of a request whose head was refused.
    fn from_line(buf: &[u8]) -> Req {
        let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(&line[..line.len().min(MAX_HEAD)]);
        let mut words = line.split_whitespace().map(str::to_string);
        let (method, target) = (words.next(), words.next());
        Req {
            method: method.unwrap_or_default(),
            target: target.unwrap_or_default(),
            headers: Vec::new(),
            close: true,
        }
    }
}

enum Next {
    /// The peer closed (or the server stops) between or within requests.
    Closed,
    /// Answer this status and close.
    Refused(u16, Req),
    Request(Req),
}

enum Body {
    None,
    Length(usize),
    Chunked,
}

fn serve_conn(shared: &Shared, mut stream: TcpStream, peer: SocketAddr) {
    let set = (stream.set_nonblocking(false))
        .and(stream.set_read_timeout(Some(POLL)))
        .and(stream.set_write_timeout(Some(Duration::from_secs(5))));
    if set.is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let (req, resp, close) = match next_request(shared, &mut stream, &mut buf) {
            Next::Closed => break,
            Next::Refused(status, req) => (req, Resp::error(status), true),
            Next::Request(req) => {
                let resp = handle(shared, &req);
                let close = req.close;
                (req, resp, close)
            }
        };
        shared.record(req.entry(resp.status, peer));
        let head_only = req.method == "HEAD";
        if write_response(&mut stream, &resp, head_only, close).is_err() || close {
            break;
        }
    }
    linger_close(shared, &mut stream);
}

/// Reads the next request, answering `Refused` for one that breaks a bound
/// or cannot be parsed.
fn next_request(shared: &Shared, stream: &mut TcpStream, buf: &mut Vec<u8>) -> Next {
    let (req, head_len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Request::new(&mut headers);
        let refused = match r.parse(buf.as_slice()) {
            Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => break (Req::from_parsed(&r), n),
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => None,
            Ok(_) | Err(httparse::Error::TooManyHeaders) => Some(431),
            Err(_) => Some(400),
        };
        if let Some(status) = refused {
            return Next::Refused(status, Req::from_line(buf));
        }
        if !read_more(shared, stream, buf) {
            return Next::Closed;
        }
    };
    buf.drain(..head_len);
    let body = match framing(&req) {
        Ok(b) => b,
        Err(status) => return Next::Refused(status, req),
    };
    match read_body(shared, stream, buf, body) {
        Ok(()) => Next::Request(req),
        Err(Some(status)) => Next::Refused(status, req),
        Err(None) => Next::Closed,
    }
}

/// How the request's body is delimited (RFC 9112 section 6.3).
fn framing(req: &Req) -> Result<Body, u16> {
    let lengths = req.all("content-length");
    match (req.header("transfer-encoding"), lengths.first()) {
        (Some(_), Some(_)) => Err(400),
        (Some(te), None) if te.eq_ignore_ascii_case("chunked") => Ok(Body::Chunked),
        (Some(_), None) => Err(501),
        (None, Some(first)) => {
            if lengths.iter().any(|l| l != first) || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(400);
            }
            match first.parse::<usize>() {
                Ok(n) if n <= MAX_BODY => Ok(Body::Length(n)),
                Ok(_) => Err(413),
                Err(_) => Err(400),
            }
        }
        (None, None) => Ok(Body::None),
    }
}

/// Reads and drops the body. Err(None): the peer closed; Err(Some(status)):
/// refuse the request.
fn read_body(
    shared: &Shared,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    body: Body,
) -> Result<(), Option<u16>> {
    let mut more = |buf: &mut Vec<u8>| {
        if read_more(shared, stream, buf) {
            Ok(())
        } else {
            Err(None)
        }
    };
    let end = match body {
        Body::None => 0,
        Body::Length(n) => {
            while buf.len() < n {
                more(buf)?;
            }
            n
        }
        Body::Chunked => {
            let (mut pos, mut total) = (0usize, 0u64);
            loop {
                match httparse::parse_chunk_size(&buf[pos..]) {
                    Ok(httparse::Status::Complete((n, 0))) => {
                        pos += n;
                        break;
                    }
                    Ok(httparse::Status::Complete((n, size))) => {
                        total += size;
                        if total > MAX_BODY as u64 {
                            return Err(Some(413));
                        }
                        let data_end = pos + n + size as usize;
                        while buf.len() < data_end + 2 {
                            more(buf)?;
                        }
                        if &buf[data_end..data_end + 2] != b"\r\n" {
                            return Err(Some(400));
                        }
                        pos = data_end + 2;
                    }
                    Ok(httparse::Status::Partial) if buf.len() - pos <= 1024 => more(buf)?,
                    _ => return Err(Some(400)),
                }
            }
            // The trailer section: lines up to an empty one.
            let trailers = pos;
            loop {
                match buf[pos..].windows(2).position(|w| w == b"\r\n") {
                    Some(0) => break pos + 2,
                    Some(i) => pos += i + 2,
                    None if buf.len() - trailers > MAX_HEAD => return Err(Some(431)),
                    None => more(buf)?,
                }
            }
        }
    };
    buf.drain(..end);
    Ok(())
}

/// Appends what the peer sends next; false when it closed, the read failed
/// or the server stops.
fn read_more(shared: &Shared, stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 8192];
    while !shared.stopped() {
        if let Some(n) = read_once(stream, &mut tmp) {
            buf.extend_from_slice(&tmp[..n]);
            return n > 0;
        }
    }
    false
}

/// One read: Some(0) when the peer closed or the read failed, None when it
/// timed out.
fn read_once(stream: &mut TcpStream, tmp: &mut [u8]) -> Option<usize> {
    match stream.read(tmp) {
        Ok(n) => Some(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) if e.kind() == ErrorKind::Interrupted => None,
        Err(_) => Some(0),
    }
}

/// Closes after the last answer without losing it to a reset: stops
/// writing, then reads (and drops) what the peer still sends, for a while.
fn linger_close(shared: &Shared, stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let (mut tmp, mut total) = ([0u8; 8192], 0usize);
    while Instant::now() < deadline && total < MAX_BODY && !shared.stopped() {
        match read_once(stream, &mut tmp) {
            Some(0) => break,
            Some(n) => total += n,
            None => {}
        }
    }
}

struct Resp {
    status: u16,
    content_type: &'static str,
    body: String,
    headers: Vec<(&'static str, String)>,
}

impl Resp {
    fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Resp {
        Resp {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    fn text(status: u16, body: impl Into<String>) -> Resp {
        Resp::new(status, "text/plain", body)
    }

    fn json(status: u16, body: &Value) -> Resp {
        let text = serde_json::to_string_pretty(body).unwrap_or_default();
        Resp::new(status, "application/json", text)
    }

    fn error(status: u16) -> Resp {
        Resp::text(status, format!("{status} {}\n", reason(status)))
    }

    fn with(mut self, name: &'static str, value: impl ToString) -> Resp {
        self.headers.push((name, value.to_string()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Internal Server Error",
    }
}

fn write_response(
    stream: &mut TcpStream,
    resp: &Resp,
    head_only: bool,
    close: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: {SERVER}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&resp.body);
    }
    stream.write_all(out.as_bytes())
}

fn handle(shared: &Shared, req: &Req) -> Resp {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    if path.starts_with("/computeMetadata/") {
        gcp(req, path)
    } else if path == "/metadata" || path.starts_with("/metadata/") {
        azure(req, path, query)
    } else if let Some(rest) = aws_rest(path) {
        aws(shared, req, rest)
    } else {
        Resp::error(404)
    }
}

/// The part of an IMDS path after its version (`latest`, `1.0` or a date):
/// `/2021-07-15/meta-data/` gives `meta-data/`.
fn aws_rest(path: &str) -> Option<&str> {
    let p = path.strip_prefix('/')?;
    let (version, rest) = p.split_once('/').unwrap_or((p, ""));
    let dated = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    (version == "latest" || version == "1.0" || dated).then_some(rest)
}

fn aws(shared: &Shared, req: &Req, rest: &str) -> Resp {
    if rest == "api/token" {
        if req.method != "PUT" {
            return Resp::error(405).with("Allow", "PUT");
        }
        if req.header("x-forwarded-for").is_some() {
            return Resp::error(403);
        }
        let ttl = req
            .header(TTL_HEADER)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|t| (1..=21600).contains(t));
        let Some(ttl) = ttl else {
            return Resp::error(400);
        };
        let Ok(token) = random_token() else {
            return Resp::error(500);
        };
        let now = Instant::now();
        let mut tokens = lock(&shared.tokens);
        tokens.retain(|_, expiry| *expiry > now);
        tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        return Resp::text(200, token).with(TTL_HEADER, ttl);
    }
    if !req.is_get() {
        return Resp::error(405).with("Allow", "GET, HEAD");
    }
    if let Some(token) = req.header(TOKEN_HEADER) {
        let now = Instant::now();
        if lock(&shared.tokens).get(token).is_none_or(|e| *e <= now) {
            return Resp::error(401);
        }
    }
    if rest == format!("meta-data/iam/security-credentials/{ROLE}") {
        return Resp::text(200, credentials());
    }
    let body = match rest {
        "meta-data" | "meta-data/" => "instance-id\nplacement/\niam/",
        "meta-data/instance-id" => INSTANCE_ID,
        "meta-data/placement" | "meta-data/placement/" => "availability-zone",
        "meta-data/placement/availability-zone" => AVAILABILITY_ZONE,
        "meta-data/iam" | "meta-data/iam/" => "security-credentials/",
        "meta-data/iam/security-credentials" | "meta-data/iam/security-credentials/" => ROLE,
        "user-data" => USER_DATA,
        _ => return Resp::error(404),
    };
    Resp::text(200, body)
}

/// The role's credential document, in IMDS's format, with fake values.
fn credentials() -> String {
    let doc = json!({
        "Code": "Success", "LastUpdated": "2025-01-01T00:00:00Z", "Type": "AWS-HMAC",
        "AccessKeyId": ACCESS_KEY_ID, "SecretAccessKey": SECRET_ACCESS_KEY,
        "Token": SESSION_TOKEN, "Expiration": "2099-01-01T00:00:00Z",
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// 24 bytes from /dev/urandom, in hex.
fn random_token() -> std::io::Result<String> {
    let mut b = [0u8; 24];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn gcp(req: &Req, path: &str) -> Resp {
    let resp = if req.header("x-forwarded-for").is_some() {
        Resp::error(403)
    } else if req.header("metadata-flavor") != Some("Google") {
        Resp::text(403, "Missing Metadata-Flavor:Google header.\n")
    } else if !req.is_get() {
        Resp::error(405).with("Allow", "GET, HEAD")
    } else {
        match path {
            "/computeMetadata/v1/instance/zone" => Resp::new(200, "application/text", GCP_ZONE),
            "/computeMetadata/v1/instance/service-accounts/default/token" => {
                let token = json!({
                    "access_token": GCP_ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer",
                });
                Resp::json(200, &token)
            }
            _ => Resp::error(404),
        }
    };
    resp.with("Metadata-Flavor", "Google")
}

fn azure(req: &Req, path: &str, query: &str) -> Resp {
    let bad = |why: &str| Resp::json(400, &json!({ "error": why }));
    if req.header("x-forwarded-for").is_some() {
        return bad("Requests with an X-Forwarded-For header are not allowed.");
    }
    if !req
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return bad("Required metadata header not specified");
    }
    let versioned = query.split('&').any(|kv| {
        kv.strip_prefix("api-version=")
            .is_some_and(|v| !v.is_empty())
    });
    if !versioned {
        return bad("Required parameter api-version is missing");
    }
    if !req.is_get() {
        return Resp::error(405).with("Allow", "GET, HEAD");
    }
    let doc = match path {
        "/metadata/instance" => json!({
            "compute": {
                "azEnvironment": "AzurePublicCloud", "location": "testeurope",
                "name": "tiergate-test-vm", "resourceGroupName": "tiergate-test-rg",
                "subscriptionId": "00000000-0000-0000-0000-000000000000",
                "vmId": "11111111-2222-3333-4444-555555555555",
            },
            "network": {"interface": []},
        }),
        "/metadata/identity/oauth2/token" => json!({
            "access_token": AZURE_ACCESS_TOKEN, "expires_in": "3599",
            "expires_on": "4102444800", "resource": "https://management.azure.com/",
            "token_type": "Bearer",
        }),
        _ => return Resp::error(404),
    };
    Resp::json(200, &doc)
}

#[cfg(test)]
#[path = "imds_tests.rs"]
mod tests;
