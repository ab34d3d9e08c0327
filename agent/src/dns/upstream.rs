//! Forwarding a query to the policy's resolvers from inside the workload's
//! network namespace, and taking only the answer that belongs to it.
//!
//! UDP: one connected socket per (namespace, resolver), so the kernel drops
//! datagrams from any other address; every forwarded query gets a fresh
//! random id, and an answer counts only if its id is pending and its
//! question is the one asked (a forger would need the id, the question and
//! the resolver's address and port). TCP: one connection per client
//! connection, made in the namespace, queries in order.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

use super::netns::{self, Netns};
use agent_common::DNS_PORT;

/// Largest DNS message over UDP with EDNS0 (and what we read).
pub const MAX_UDP: usize = 65_535;

/// A random 16-bit id from the kernel's generator.
pub fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom writes at most 2 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n == 2 {
        u16::from_ne_bytes(b)
    } else {
        // getrandom never fails for 2 bytes once the pool is initialised;
        // the time's nanoseconds are a poor but non-constant fallback.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u16)
    }
}

/// The question section of a message: the bytes after the 12-byte header
/// up to the end of the first question (name + type + class), lowercased,
/// for comparing an answer's question with the query's.
pub fn question_bytes(msg: &[u8]) -> Option<Vec<u8>> {
    let mut i = 12;
    loop {
        let len = *msg.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 != 0 {
            // A query's question is never compressed.
            return None;
        }
        i += 1 + len;
    }
    let end = i + 4;
    let mut q = msg.get(12..end)?.to_vec();
    q.make_ascii_lowercase();
    Some(q)
}

type Pending = Arc<Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>>;

/// One resolver reached over UDP from one namespace.
pub struct UdpUpstream {
    socket: Arc<UdpSocket>,
    pending: Pending,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for UdpUpstream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl UdpUpstream {
    /// Opens the socket in `ns` and starts its reader.
    pub fn open(ns: &Netns, resolver: IpAddr) -> io::Result<UdpUpstream> {
        let server = SocketAddr::new(resolver, DNS_PORT);
        let std_socket = ns.run(move || netns::connected_udp(server))?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_answers(socket.clone(), pending.clone()));
        Ok(UdpUpstream {
            socket,
            pending,
            reader,
        })
    }

    /// Sends `query` under a fresh id and waits up to `timeout` for its
    /// answer. The answer comes back with the id it was sent with; the
    /// caller restores the client's.
    pub async fn exchange(&self, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
        if query.len() < 12 {
            return Err(io::Error::other("query shorter than a DNS header"));
        }
        let question = question_bytes(query);
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = self.pending.lock().expect("pending lock");
            if pending.len() >= usize::from(u16::MAX) / 2 {
                return Err(io::Error::other(
                    "too many queries in flight to this resolver",
                ));
            }
            let id = loop {
                let id = random_id();
                if !pending.contains_key(&id) {
                    break id;
                }
            };
            pending.insert(id, tx);
            id
        };
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        let result = async {
            self.socket.send(&out).await?;
            let answer = rx
                .await
                .map_err(|_| io::Error::other("the upstream reader stopped"))?;
            if question_bytes(&answer) != question {
                return Err(io::Error::other("the answer is for another question"));
            }
            Ok(answer)
        };
        let r = match tokio::time::timeout(timeout, result).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the resolver did not answer",
            )),
        };
        self.pending.lock().expect("pending lock").remove(&id);
        r
    }
}

async fn read_answers(socket: Arc<UdpSocket>, pending: Pending) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            // ICMP unreachable from a resolver that is down: the waiting
            // query times out and tries the next resolver.
            Err(_) => continue,
        };
        if n < 12 {
            continue;
        }
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        // A datagram with an id nobody waits for (late, or forged) is dropped.
        if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
            let _ = tx.send(buf[..n].to_vec());
        }
    }
}

/// One TCP connection to a resolver, made in the client's namespace.
pub struct TcpUpstream {
    stream: TcpStream,
}

impl TcpUpstream {
    /// Connects to `resolver` from inside `ns`.
    pub async fn connect(ns: &Netns, resolver: IpAddr, timeout: Duration) -> io::Result<Self> {
        let ns = ns.clone();
        let server = SocketAddr::new(resolver, DNS_PORT);
        let std_stream =
            tokio::task::spawn_blocking(move || ns.run(move || netns::tcp_to(server, timeout)))
                .await
                .map_err(|_| io::Error::other("the connect task failed"))??;
        Ok(Self {
            stream: TcpStream::from_std(std_stream)?,
        })
    }

    /// Sends one query and reads its answer (RFC 7766 framing).
    pub async fn exchange(&mut self, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
        let exchange = async {
            let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long"))?;
            let mut framed = Vec::with_capacity(query.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(query);
            self.stream.write_all(&framed).await?;
            read_frame(&mut self.stream).await
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the resolver did not answer"))?
    }
}

/// Reads one length-prefixed DNS message.
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}

/// Writes one length-prefixed DNS message.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    w.write_all(&framed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_bytes_cover_name_type_and_class_case_folded() {
        let mut q = vec![0u8; 12];
        q.extend_from_slice(b"\x03API\x06GitHub\x03com\x00\x00\x01\x00\x01");
        q.extend_from_slice(b"trailing additional section");
        let got = question_bytes(&q).expect("question");
        assert_eq!(got, b"\x03api\x06github\x03com\x00\x00\x01\x00\x01");
        assert_eq!(question_bytes(&q[..20]), None);
        let mut compressed = vec![0u8; 12];
        compressed.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01");
        assert_eq!(question_bytes(&compressed), None);
    }

    #[test]
    fn ids_vary() {
        let ids: std::collections::HashSet<u16> = (0..64).map(|_| random_id()).collect();
        assert!(ids.len() > 32, "{}", ids.len());
    }
}
