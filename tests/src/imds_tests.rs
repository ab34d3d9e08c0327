//! Unit tests of the fake metadata service, on 127.0.0.1 port 0 only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

fn server() -> FakeImds {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    FakeImds::start(addr).expect("start fake imds")
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 client on one connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn new(imds: &FakeImds) -> Client {
        let stream = TcpStream::connect(imds.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("write");
    }

    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 8192];
        let n = self.stream.read(&mut tmp).expect("read");
        self.buf.extend_from_slice(&tmp[..n]);
        n
    }

    fn response(&mut self) -> Response {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("response head") {
                let status = r.code.expect("status");
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_string(), v)
                    })
                    .collect();
                let resp = Response {
                    status,
                    headers,
                    body: String::new(),
                };
                let len: usize = resp
                    .header("content-length")
                    .expect("content-length")
                    .parse()
                    .expect("length");
                while self.buf.len() < n + len {
                    assert!(self.fill() > 0, "closed inside a body");
                }
                let body = String::from_utf8(self.buf[n..n + len].to_vec()).expect("utf-8");
                self.buf.drain(..n + len);
                return Response { body, ..resp };
            }
            assert!(self.fill() > 0, "closed before a response");
        }
    }

    /// True when the server closed the connection with nothing left unread.
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
    }
}

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: metadata.test\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r + "\r\n"
}

fn call(imds: &FakeImds, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut c = Client::new(imds);
    c.send(request(method, target, headers).as_bytes());
    c.response()
}

fn get(imds: &FakeImds, target: &str, headers: &[(&str, &str)]) -> Response {
    call(imds, "GET", target, headers)
}

fn token(imds: &FakeImds, ttl: &str) -> String {
    let r = call(imds, "PUT", "/latest/api/token", &[(TTL_HEADER, ttl)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header(TTL_HEADER), Some(ttl));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    r.body
}

#[test]
fn binds_the_given_address() {
    let imds = server();
    assert_eq!(imds.addr().ip().to_string(), "127.0.0.1");
    assert_ne!(imds.addr().port(), 0);
    assert_eq!(imds.url(), format!("http://{}", imds.addr()));
}

#[test]
fn aws_token_flow() {
    let imds = server();
    let t = token(&imds, "60");
    assert_eq!(t.len(), 48);
    assert!(t.bytes().all(|b| b.is_ascii_hexdigit()), "{t}");
    assert_ne!(t, token(&imds, "60"), "tokens are fresh");

    let id = "/latest/meta-data/instance-id";
    let r = get(&imds, id, &[(TOKEN_HEADER, &t)]);
    assert_eq!((r.status, r.body.as_str()), (200, INSTANCE_ID));
    assert_eq!(r.header("server"), Some(SERVER));
    assert_eq!(get(&imds, id, &[(TOKEN_HEADER, "0badc0de")]).status, 401);
    assert_eq!(get(&imds, id, &[(TOKEN_HEADER, "")]).status, 401);
    // IMDSv1 stays enabled: no token is fine.
    assert_eq!(get(&imds, id, &[]).status, 200);

    let put = |h: &[(&str, &str)]| call(&imds, "PUT", "/latest/api/token", h).status;
    assert_eq!(put(&[]), 400);
    for bad in ["0", "21601", "abc", "-5", ""] {
        assert_eq!(put(&[(TTL_HEADER, bad)]), 400, "ttl {bad:?}");
    }
    assert_eq!(put(&[(TTL_HEADER, "21600")]), 200);
    assert_eq!(
        put(&[(TTL_HEADER, "60"), ("X-Forwarded-For", "10.0.0.1")]),
        403
    );
    assert_eq!(get(&imds, "/latest/api/token", &[]).status, 405);
    assert_eq!(call(&imds, "POST", id, &[]).status, 405);
    assert_eq!(
        call(&imds, "PUT", "/2021-07-15/api/token", &[(TTL_HEADER, "5")]).status,
        200
    );
}

#[test]
fn aws_token_expires() {
    let imds = server();
    let t = token(&imds, "1");
    let id = "/latest/meta-data/instance-id";
    assert_eq!(get(&imds, id, &[(TOKEN_HEADER, &t)]).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&imds, id, &[(TOKEN_HEADER, &t)]).status, 401);
}

#[test]
fn aws_paths() {
    let imds = server();
    let ok = |target: &str| {
        let r = get(&imds, target, &[]);
        assert_eq!(r.status, 200, "{target}");
        r.body
    };
    assert_eq!(ok("/latest/meta-data/"), "instance-id\nplacement/\niam/");
    assert_eq!(ok("/latest/meta-data"), "instance-id\nplacement/\niam/");
    assert_eq!(
        ok("/latest/meta-data/placement/availability-zone"),
        AVAILABILITY_ZONE
    );
    assert_eq!(ok("/latest/meta-data/iam/security-credentials/"), ROLE);
    assert_eq!(ok("/latest/meta-data/iam/security-credentials"), ROLE);
    let creds: Value = serde_json::from_str(&ok(&format!(
        "/latest/meta-data/iam/security-credentials/{ROLE}"
    )))
    .expect("credential JSON");
    assert_eq!(creds["AccessKeyId"], ACCESS_KEY_ID);
    assert_eq!(creds["SecretAccessKey"], SECRET_ACCESS_KEY);
    assert_eq!(creds["Token"], SESSION_TOKEN);
    assert_eq!(creds["Code"], "Success");
    assert!(creds["Expiration"].is_string());
    assert_eq!(ok("/latest/user-data"), USER_DATA);
    assert_eq!(ok("/2021-07-15/meta-data/instance-id"), INSTANCE_ID);
    assert_eq!(ok("/1.0/meta-data/instance-id"), INSTANCE_ID);
    assert_eq!(ok("/latest/meta-data/instance-id?x=1"), INSTANCE_ID);
    for missing in [
        "/latest/meta-data/nope",
        "/latest/meta-data/iam/security-credentials/other-role",
        "/nope",
        "/",
        "/2021-7-15/meta-data/instance-id",
        // Not normalized: a proxy must forward the canonical path.
        "/latest/meta-data/../meta-data/instance-id",
        "/latest//meta-data/instance-id",
        "/latest/meta-data/instance%2Did",
    ] {
        assert_eq!(get(&imds, missing, &[]).status, 404, "{missing}");
    }
}

#[test]
fn head_has_no_body() {
    let imds = server();
    let mut c = Client::new(&imds);
    c.send(request("HEAD", "/latest/meta-data/instance-id", &[]).as_bytes());
    c.send(request("GET", "/latest/meta-data/instance-id", &[]).as_bytes());
    let mut raw = String::new();
    while !raw.contains(INSTANCE_ID) {
        c.fill();
        raw = String::from_utf8_lossy(&c.buf).into_owned();
    }
    assert_eq!(raw.matches("HTTP/1.1 200 OK").count(), 2, "{raw}");
    assert_eq!(raw.matches(INSTANCE_ID).count(), 1, "{raw}");
    assert!(raw.contains(&format!("Content-Length: {}", INSTANCE_ID.len())));
}

#[test]
fn keep_alive_pipelined() {
    let imds = server();
    let mut c = Client::new(&imds);
    let batch = request("GET", "/latest/meta-data/instance-id", &[])
        + &request("PUT", "/latest/api/token", &[(TTL_HEADER, "60")])
        + &request("GET", "/latest/meta-data/placement/availability-zone", &[]);
    c.send(batch.as_bytes());
    let r = c.response();
    assert_eq!((r.status, r.body.as_str()), (200, INSTANCE_ID));
    assert_eq!(r.header("connection"), None);
    let t = c.response();
    assert_eq!((t.status, t.body.len()), (200, 48));
    let r = c.response();
    assert_eq!((r.status, r.body.as_str()), (200, AVAILABILITY_ZONE));
    // The token works on the same connection, which then closes on request.
    c.send(
        request(
            "GET",
            "/latest/user-data",
            &[(TOKEN_HEADER, &t.body), ("Connection", "close")],
        )
        .as_bytes(),
    );
    let r = c.response();
    assert_eq!((r.status, r.body.as_str()), (200, USER_DATA));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed());
    let log = imds.requests();
    let targets: Vec<&str> = log.iter().map(|e| e["target"].as_str().unwrap()).collect();
    assert_eq!(
        targets,
        [
            "/latest/meta-data/instance-id",
            "/latest/api/token",
            "/latest/meta-data/placement/availability-zone",
            "/latest/user-data"
        ]
    );
    assert!(
        log.iter().all(|e| e["peer"] == log[0]["peer"]),
        "one connection"
    );
}

#[test]
fn http10_closes_unless_keep_alive() {
    let imds = server();
    let mut c = Client::new(&imds);
    c.send(b"GET /latest/meta-data/instance-id HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.response().body, INSTANCE_ID);
    c.send(b"GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(c.closed());
}

#[test]
fn request_bodies() {
    let imds = server();
    let mut c = Client::new(&imds);
    let put = format!("PUT /latest/api/token HTTP/1.1\r\n{TTL_HEADER}: 60\r\n");
    let batch = format!(
        "{put}Content-Length: 5\r\n\r\nhello\
         {put}Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n\
         GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n"
    );
    c.send(batch.as_bytes());
    assert_eq!(c.response().status, 200);
    assert_eq!(c.response().status, 200);
    assert_eq!(c.response().body, INSTANCE_ID);
    for (framing, status) in [
        ("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n", 400),
        ("Content-Length: 1\r\nContent-Length: 2\r\n", 400),
        ("Content-Length: +1\r\n", 400),
        ("Transfer-Encoding: gzip\r\n", 501),
        ("Content-Length: 2000000\r\n", 413),
    ] {
        let mut c = Client::new(&imds);
        c.send(format!("{put}{framing}\r\n").as_bytes());
        let r = c.response();
        assert_eq!(r.status, status, "{framing}");
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed());
    }
    let mut c = Client::new(&imds);
    c.send(b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(c.response().status, 400);
    assert!(c.closed());
}

#[test]
fn gcp_header_rules() {
    let imds = server();
    let zone = "/computeMetadata/v1/instance/zone";
    let flavor = ("Metadata-Flavor", "Google");
    let r = get(&imds, zone, &[]);
    assert_eq!(
        (r.status, r.header("metadata-flavor")),
        (403, Some("Google"))
    );
    assert_eq!(
        get(&imds, zone, &[("Metadata-Flavor", "google")]).status,
        403
    );
    assert_eq!(
        get(&imds, zone, &[flavor, ("X-Forwarded-For", "10.0.0.1")]).status,
        403
    );
    let r = get(&imds, zone, &[flavor]);
    assert_eq!((r.status, r.body.as_str()), (200, GCP_ZONE));
    assert_eq!(r.header("metadata-flavor"), Some("Google"));
    let r = get(
        &imds,
        "/computeMetadata/v1/instance/service-accounts/default/token",
        &[flavor],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let tok: Value = serde_json::from_str(&r.body).expect("token JSON");
    assert_eq!(tok["access_token"], GCP_ACCESS_TOKEN);
    assert_eq!(
        get(&imds, "/computeMetadata/v1/nope", &[flavor]).status,
        404
    );
}

#[test]
fn azure_header_rules() {
    let imds = server();
    let inst = "/metadata/instance?api-version=2021-02-01";
    let md = ("Metadata", "true");
    assert_eq!(get(&imds, inst, &[]).status, 400);
    assert_eq!(get(&imds, inst, &[("Metadata", "false")]).status, 400);
    assert_eq!(
        get(&imds, inst, &[md, ("X-Forwarded-For", "10.0.0.1")]).status,
        400
    );
    assert_eq!(get(&imds, "/metadata/instance", &[md]).status, 400);
    let r = get(&imds, inst, &[md]);
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_str(&r.body).expect("instance JSON");
    assert_eq!(doc["compute"]["name"], "tiergate-test-vm");
    let tok = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
    let r = get(&imds, tok, &[md]);
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_str(&r.body).expect("token JSON");
    assert_eq!(doc["access_token"], AZURE_ACCESS_TOKEN);
    assert_eq!(
        get(&imds, "/metadata/nope?api-version=1", &[md]).status,
        404
    );
}

/// A GET whose head is exactly `len` bytes long.
fn head_of(len: usize) -> String {
    let base = request("GET", "/latest/meta-data/instance-id", &[("X-Pad", "")]);
    let pad = "a".repeat(len - base.len());
    let r = request("GET", "/latest/meta-data/instance-id", &[("X-Pad", &pad)]);
    assert_eq!(r.len(), len);
    r
}

#[test]
fn head_bound() {
    let imds = server();
    let mut c = Client::new(&imds);
    c.send(head_of(MAX_HEAD).as_bytes());
    assert_eq!(c.response().status, 200);
    c.send(head_of(MAX_HEAD + 1).as_bytes());
    let r = c.response();
    assert_eq!((r.status, r.header("connection")), (431, Some("close")));
    assert!(c.closed());

    // A huge head is cut off at the bound, not read whole.
    let mut c = Client::new(&imds);
    c.send(head_of(200_000).as_bytes());
    assert_eq!(c.response().status, 431);
    assert!(c.closed());

    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect();
    let mut c = Client::new(&imds);
    c.send(format!("GET /latest/meta-data/instance-id HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert_eq!(c.response().status, 431);

    let log = imds.requests();
    let statuses: Vec<u64> = log.iter().map(|e| e["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 431, 431, 431]);
    assert_eq!(log[1]["target"], "/latest/meta-data/instance-id");
    assert_eq!(log[1]["headers"], json!({}));
}

#[test]
fn log_content() {
    let dir = std::env::temp_dir().join(format!("tg-imds-log-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let imds = FakeImds::start_with_log(addr, &dir).expect("start");
    let mut c = Client::new(&imds);
    let local = c.stream.local_addr().expect("local addr");
    c.send(
        b"GET /latest/meta-data/instance-id?x=1 HTTP/1.1\r\nHost: h\r\nX-Custom-Header: Value\r\n\
          X-Dup: a\r\nx-dup: b\r\n\r\n",
    );
    assert_eq!(c.response().status, 200);
    c.send(b"PUT /latest/api/token HTTP/1.1\r\n\r\n");
    assert_eq!(c.response().status, 400);
    let log = imds.requests();
    assert_eq!(
        log,
        [
            json!({
                "method": "GET",
                "target": "/latest/meta-data/instance-id?x=1",
                "headers": {"host": "h", "x-custom-header": "Value", "x-dup": "a, b"},
                "status": 200,
                "peer": local.to_string(),
            }),
            json!({
                "method": "PUT",
                "target": "/latest/api/token",
                "headers": {},
                "status": 400,
                "peer": local.to_string(),
            }),
        ]
    );
    let text = std::fs::read_to_string(&dir).expect("log file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines, log);
    imds.clear();
    assert!(imds.requests().is_empty());
    let _ = get(&imds, "/nope", &[]);
    assert_eq!(imds.requests().len(), 1);
    assert_eq!(
        std::fs::read_to_string(&dir).expect("log").lines().count(),
        3
    );
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn drop_stops_serving() {
    let imds = server();
    let addr = imds.addr();
    let mut c = Client::new(&imds);
    c.send(request("GET", "/latest/meta-data/instance-id", &[]).as_bytes());
    assert_eq!(c.response().status, 200);
    drop(imds);
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
    assert!(c.closed(), "open connection not closed");
}

#[test]
fn curl_against_it() {
    let curl = Path::new("/usr/bin/curl");
    if !curl.exists() {
        println!("note: /usr/bin/curl not present, curl check skipped");
        return;
    }
    let imds = server();
    let run = |args: &[&str]| {
        // -q: no ~/.curlrc; --noproxy: never through a proxy from the env.
        let out = Command::new(curl)
            .args(["-q", "-sS", "--noproxy", "*", "--max-time", "5"])
            .args(args)
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let url = |p: &str| format!("{}{p}", imds.url());
    let ttl = format!("{TTL_HEADER}: 60");
    let t = run(&["-X", "PUT", "-H", &ttl, &url("/latest/api/token")]);
    assert_eq!(t.len(), 48, "{t}");
    let with = format!("{TOKEN_HEADER}: {t}");
    assert_eq!(
        run(&["-H", &with, &url("/latest/meta-data/instance-id")]),
        INSTANCE_ID
    );
    let (bad, id) = (
        format!("{TOKEN_HEADER}: nope"),
        url("/latest/meta-data/instance-id"),
    );
    let code = ["-o", "/dev/null", "-w", "%{http_code}", "-H", &bad, &id];
    assert_eq!(run(&code), "401");
    // Two URLs in one run share a kept-alive connection.
    imds.clear();
    let zone = url("/computeMetadata/v1/instance/zone");
    let twice = run(&["-H", "Metadata-Flavor: Google", &zone, &zone]);
    assert_eq!(twice, format!("{GCP_ZONE}{GCP_ZONE}"));
    let log = imds.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["peer"], log[1]["peer"], "curl reused the connection");
    assert_eq!(log[0]["headers"]["metadata-flavor"], "Google");
}
