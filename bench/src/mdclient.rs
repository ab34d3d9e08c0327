//! The metadata section's processes: an HTTP/1.1 GET loop (std `TcpStream`
//! and a small response reader) and the fake metadata service
//! (tiergate-tests' `FakeImds`). Each joins its cgroup and namespace first.
//!
//!   tiergate-bench http --cgroup DIR --netns NS --to IP:PORT --path P --want STATUS
//!                       --per-conn K --secs S
//!   tiergate-bench imds-serve [--netns NS] --addr IP:PORT --stats FILE
//!
//! `--per-conn 1` opens a new connection for every request and times
//! connect + request + response; `--per-conn K` sends K requests one after
//! the other on one kept-alive connection and times each request (write to
//! last byte of the answer), the connect not included. Every request is
//! counted by its outcome, none is dropped from the figures silently.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tiergate_tests::enter;
use tiergate_tests::imds::{FakeImds, INSTANCE_ID};

use crate::client::arg;
use crate::dnsclient::stdin_closed;

/// A request (or a connect) that takes longer than this fails.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What one response said.
struct Answer {
    status: u16,
    body_ok: bool,
    /// It carries `X-Tiergate-Verdict` (the proxy answered or forwarded it).
    proxied: bool,
    /// The server will close the connection after it.
    close: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (`Content-Length` framed) from `s`; what is left of
/// `buf` afterwards belongs to the next one.
fn read_answer(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    want_body: Option<&str>,
) -> std::io::Result<Answer> {
    let mut chunk = [0u8; 4096];
    let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| match s.read(&mut chunk) {
        Ok(0) => Err(std::io::Error::from(ErrorKind::UnexpectedEof)),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(e),
    };
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "bad status line"))?;
    let (mut len, mut proxied, mut close) = (0usize, false, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "content-length" => len = v.parse().unwrap_or(0),
            "x-tiergate-verdict" => proxied = true,
            "connection" => close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    while buf.len() < head_end + len {
        fill(s, buf)?;
    }
    let body_ok = want_body.is_none_or(|b| &buf[head_end..head_end + len] == b.as_bytes());
    buf.drain(..head_end + len);
    Ok(Answer {
        status,
        body_ok,
        proxied,
        close,
    })
}

fn open(to: &SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(to, TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    Ok(s)
}

/// Outcome counts of one run.
#[derive(Default)]
struct Counts {
    /// Responses read (any status).
    n: u64,
    /// Of which with the wanted status (and, for 200, the instance id).
    ok: u64,
    bad_status: u64,
    bad_body: u64,
    /// Responses carrying `X-Tiergate-Verdict`.
    via_proxy: u64,
    connect_err: u64,
    /// Requests whose answer did not arrive (reset, timeout, closed).
    io_err: u64,
    conns: u64,
}

/// The GET loop; prints one JSON line with the counts and every request's µs.
pub fn http(args: &[String]) {
    enter(
        arg(args, "--cgroup").as_deref(),
        arg(args, "--netns").as_deref(),
    );
    let to: SocketAddr = arg(args, "--to").expect("--to").parse().expect("IP:PORT");
    let path = arg(args, "--path").expect("--path");
    let want: u16 = arg(args, "--want")
        .expect("--want")
        .parse()
        .expect("status");
    let per_conn: usize = arg(args, "--per-conn").map_or(1, |k| k.parse().expect("K"));
    let secs: f64 = arg(args, "--secs").expect("--secs").parse().expect("secs");
    // A 200 must carry the instance id; other answers are told by their status.
    let want_body = (want == 200).then_some(INSTANCE_ID);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: tiergate-bench\r\nAccept: */*\r\n\r\n"
    );
    let mut c = Counts::default();
    let mut lat_us: Vec<f64> = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < end {
        let t_conn = Instant::now();
        let mut s = match open(&to) {
            Ok(s) => s,
            Err(_) => {
                c.connect_err += 1;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        c.conns += 1;
        buf.clear();
        for _ in 0..per_conn {
            let t = if per_conn == 1 {
                t_conn
            } else {
                Instant::now()
            };
            let got = s
                .write_all(req.as_bytes())
                .and_then(|_| read_answer(&mut s, &mut buf, want_body));
            let a = match got {
                Ok(a) => a,
                Err(_) => {
                    c.io_err += 1;
                    break;
                }
            };
            lat_us.push((t.elapsed().as_nanos() as f64 / 100.0).round() / 10.0);
            c.n += 1;
            c.via_proxy += u64::from(a.proxied);
            match (a.status == want, a.body_ok) {
                (true, true) => c.ok += 1,
                (true, false) => c.bad_body += 1,
                (false, _) => c.bad_status += 1,
            }
            if a.close || Instant::now() >= end {
                break;
            }
        }
        drop(s);
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"n": c.n, "ok": c.ok, "bad_status": c.bad_status,
            "bad_body": c.bad_body, "via_proxy": c.via_proxy, "connect_err": c.connect_err,
            "io_err": c.io_err, "conns": c.conns, "secs": el, "rate": c.n as f64 / el,
            "lat_us": lat_us})
    );
}

/// The fake metadata service until stdin closes. Every 200 ms it takes its
/// request log (a long run would otherwise grow it without bound) and
/// counts it into `--stats`: `{"requests", "connections"}` so far (a
/// connection is a client address:port not seen in the previous 200 ms).
pub fn imds_serve(args: &[String]) {
    enter(None, arg(args, "--netns").as_deref());
    let addr: SocketAddr = arg(args, "--addr").expect("--addr").parse().expect("addr");
    let stats = arg(args, "--stats").expect("--stats");
    let imds = FakeImds::start(addr).unwrap_or_else(|e| panic!("imds-serve {addr}: {e}"));
    let stop = stdin_closed();
    println!("ready");
    let _ = std::io::stdout().flush();
    let (mut requests, mut conns) = (0u64, 0u64);
    let mut prev: HashSet<String> = HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let log = imds.take_requests();
        let peers: HashSet<String> = log
            .iter()
            .filter_map(|r| r["peer"].as_str().map(str::to_string))
            .collect();
        requests += log.len() as u64;
        conns += peers.difference(&prev).count() as u64;
        prev = peers;
        let tmp = format!("{stats}.tmp");
        let text = serde_json::json!({"requests": requests, "connections": conns});
        if std::fs::write(&tmp, text.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &stats);
        }
    }
}
