//! A tiny blocking client for the running agent's admin endpoint (no TLS:
//! the endpoint listens on loopback by default).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Why the agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {addr} answered {status} for {path}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
    },
    #[error("the agent at {addr} sent a malformed answer")]
    Malformed { addr: SocketAddr },
}

/// GET `path` (with its query) and return the body.
pub fn get(addr: SocketAddr, path: &str) -> Result<String, ClientError> {
    let io = |source| ClientError::Connect { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(io)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(io)?;
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(ClientError::Malformed { addr })?;
    if status != 200 {
        return Err(ClientError::Status {
            addr,
            path: path.to_string(),
            status,
        });
    }
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .ok_or(ClientError::Malformed { addr })
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
