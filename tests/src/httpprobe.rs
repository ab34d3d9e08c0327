//! Raw HTTP/1.1 clients for the metadata proxy's tests, where curl cannot
//! say what the test needs: two requests on one kept-alive connection with
//! a pause between them, a flood of pipelined requests, an oversized head,
//! and a head that never ends (slowloris).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().expect("ADDR:PORT");
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    Ok(s)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{extra}\r\n")
}

/// Reads one response; its status, or `None` when the connection closed
/// (or failed) first.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(buf) {
            let status = resp.code?;
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            while buf.len() < head + len {
                if !fill(s, buf) {
                    return None;
                }
            }
            buf.drain(..head + len);
            return Some(status);
        }
        if !fill(s, buf) {
            return None;
        }
    }
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match s.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn status_word(s: Option<u16>) -> String {
    s.map_or_else(|| "closed".to_owned(), |c| c.to_string())
}

/// `GET first`, pause, `GET second` on the same connection: prints both
/// statuses (or `closed`).
pub fn pair(addr: &str, first: &str, second: &str, pause: Duration) -> String {
    let mut s = match connect(addr) {
        Ok(s) => s,
        Err(e) => return format!("connect-error {e}"),
    };
    let mut buf = Vec::new();
    let _ = s.write_all(get(first, "").as_bytes());
    let a = read_response(&mut s, &mut buf);
    std::thread::sleep(pause);
    let b = if s.write_all(get(second, "").as_bytes()).is_ok() {
        read_response(&mut s, &mut buf)
    } else {
        None
    };
    format!("{} {}", status_word(a), status_word(b))
}

/// `n` pipelined GETs in one write: prints how many responses came back
/// before the connection closed, and how long that took.
pub fn flood(addr: &str, n: usize, path: &str) -> String {
    let mut s = match connect(addr) {
        Ok(s) => s,
        Err(e) => return format!("connect-error {e}"),
    };
    let started = Instant::now();
    let req = get(path, "");
    let all: String = std::iter::repeat_n(req.as_str(), n).collect();
    let writer = {
        let mut w = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            let _ = w.write_all(all.as_bytes());
        })
    };
    let mut buf = Vec::new();
    let mut count = 0;
    while read_response(&mut s, &mut buf).is_some() {
        count += 1;
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    format!("responses {count} ms {}", started.elapsed().as_millis())
}

/// A GET whose head carries a header of `bytes` bytes: the status.
pub fn big_head(addr: &str, bytes: usize) -> String {
    let mut s = match connect(addr) {
        Ok(s) => s,
        Err(e) => return format!("connect-error {e}"),
    };
    let req = get(
        "/latest/meta-data/instance-id",
        &format!("X-Pad: {}\r\n", "a".repeat(bytes)),
    );
    let writer = {
        let mut w = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            let _ = w.write_all(req.as_bytes());
        })
    };
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    status_word(r)
}

/// A head that is never finished: how long until the server gives up.
pub fn slow_head(addr: &str) -> String {
    let mut s = match connect(addr) {
        Ok(s) => s,
        Err(e) => return format!("connect-error {e}"),
    };
    let started = Instant::now();
    let _ = s.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n");
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf);
    format!(
        "{} after-ms {}",
        status_word(r),
        started.elapsed().as_millis()
    )
}
