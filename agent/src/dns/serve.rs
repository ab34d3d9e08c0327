//! The proxy's servers in each namespace it serves, and the registry of
//! those namespaces (`TG_DNS_NETNS`, which tells the hook where the DNS and
//! metadata proxies listen; a namespace not in it gets EPERM for its DNS
//! and its filtered metadata connections, never a bypass).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_common::ProxyNetns;
use aya::maps::{HashMap as BpfHashMap, MapData};
use hickory_proto::op::{Message, ResponseCode};
use tokio::io::unix::AsyncFd;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::netns::{self, Netns};
use super::pktinfo;
use super::proxy::{Engine, Forward, Transport, UPSTREAM_TIMEOUT};
use super::query;
use super::upstream::{self, MAX_UDP, TcpUpstream, UdpUpstream};

/// Queries in flight on the whole node; beyond it a query is answered
/// SERVFAIL at once (fast failure, counted), never dropped silently.
pub const MAX_IN_FLIGHT: usize = 4096;
/// A client TCP connection idle this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The cgroup slot of a proxy address (`None` for an address that is not a
/// slot: the packet was not sent by the hook).
pub fn slot_of(local: Ipv4Addr) -> Option<u32> {
    let v = u32::from(local);
    let slot = v & 0x00ff_ffff;
    (v >> 24 == 127 && (1..=0xff_fffe).contains(&slot)).then_some(slot)
}

/// Upstream sockets of one namespace, made on first use.
struct NsUpstreams {
    ns: Netns,
    udp: tokio::sync::Mutex<HashMap<IpAddr, Arc<UdpUpstream>>>,
}

impl NsUpstreams {
    async fn udp(&self, resolver: IpAddr) -> io::Result<Arc<UdpUpstream>> {
        let mut map = self.udp.lock().await;
        if let Some(u) = map.get(&resolver) {
            return Ok(u.clone());
        }
        let ns = self.ns.clone();
        // UdpUpstream::open registers with the runtime: enter it on the
        // blocking thread that makes the socket.
        let rt = tokio::runtime::Handle::current();
        let u = tokio::task::spawn_blocking(move || {
            let _g = rt.enter();
            UdpUpstream::open(&ns, resolver)
        })
        .await
        .map_err(|_| io::Error::other("the socket task failed"))??;
        let u = Arc::new(u);
        map.insert(resolver, u.clone());
        Ok(u)
    }
}

struct UdpForward<'a>(&'a NsUpstreams);

impl Forward for UdpForward<'_> {
    async fn forward(&mut self, resolver: IpAddr, query: &[u8]) -> io::Result<Vec<u8>> {
        self.0
            .udp(resolver)
            .await?
            .exchange(query, UPSTREAM_TIMEOUT)
            .await
    }
}

struct TcpForward {
    ns: Netns,
    conns: HashMap<IpAddr, TcpUpstream>,
}

impl Forward for TcpForward {
    async fn forward(&mut self, resolver: IpAddr, query: &[u8]) -> io::Result<Vec<u8>> {
        if !self.conns.contains_key(&resolver) {
            let c = TcpUpstream::connect(&self.ns, resolver, UPSTREAM_TIMEOUT).await?;
            self.conns.insert(resolver, c);
        }
        let conn = self.conns.get_mut(&resolver).expect("inserted");
        let r = conn.exchange(query, UPSTREAM_TIMEOUT).await;
        if r.is_err() {
            // A broken connection is not reused.
            self.conns.remove(&resolver);
        }
        r
    }
}

/// SERVFAIL for a query the node has no room for.
fn overload_reply(bytes: &[u8]) -> Option<Vec<u8>> {
    let m = Message::from_vec(bytes).ok()?;
    query::encode(&query::error_reply(&m, ResponseCode::ServFail))
}

/// Shared by the servers: the engine and the in-flight bound.
pub struct Shared {
    pub engine: Arc<Engine>,
    in_flight: Arc<Semaphore>,
    /// Queries answered SERVFAIL for want of room.
    pub overloaded: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn new(engine: Arc<Engine>) -> Arc<Self> {
        Arc::new(Self {
            engine,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            overloaded: Default::default(),
        })
    }
}

async fn udp_server(socket: std::net::UdpSocket, shared: Arc<Shared>, ups: Arc<NsUpstreams>) {
    // SAFETY: the UdpSocket owns its descriptor and keeps it open, unchanged,
    // for as long as it lives, which is as long as the AsyncFd that owns it.
    let fd = match unsafe { AsyncFd::register(socket) } {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the DNS proxy's UDP socket");
            return;
        }
    };
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        loop {
            let r = match pktinfo::recv(fd.get_ref().as_fd(), &mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS proxy receive error");
                    continue;
                }
            };
            let Some(slot) = slot_of(r.local) else {
                continue;
            };
            let data = buf[..r.len].to_vec();
            let (fd, shared, ups) = (fd.clone(), shared.clone(), ups.clone());
            let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
                shared
                    .overloaded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(reply) = overload_reply(&data) {
                    let _ = pktinfo::send(fd.get_ref().as_fd(), &reply, r.from, r.local);
                }
                continue;
            };
            tokio::spawn(async move {
                let _permit = permit;
                let out = shared
                    .engine
                    .answer(slot, &data, Transport::Udp, &mut UdpForward(&ups))
                    .await;
                if let Some(reply) = out.reply {
                    send_udp(&fd, &reply, r.from, r.local).await;
                }
            });
        }
    }
}

async fn send_udp(
    fd: &AsyncFd<std::net::UdpSocket>,
    data: &[u8],
    to: std::net::SocketAddrV4,
    local: Ipv4Addr,
) {
    loop {
        match pktinfo::send(fd.get_ref().as_fd(), data, to, local) {
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let Ok(mut g) = fd.writable().await else {
                    return;
                };
                g.clear_ready();
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a DNS answer");
                return;
            }
        }
    }
}

/// Polls a proxy's TCP listener (`None`, logged, if the runtime refuses it).
pub fn poll_listener(
    listener: std::net::TcpListener,
    what: &str,
) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the {what}'s TCP socket");
            None
        }
    }
}

/// The next connection accepted on a slot address, and its slot. Only the
/// hook sends connections to a slot; anything else (the node's own address,
/// from the network) is dropped unanswered.
pub async fn accept_on_slot(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, u32) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(std::net::SocketAddr::V4(local)) = stream.local_addr() else {
            continue;
        };
        if let Some(slot) = slot_of(*local.ip()) {
            return (stream, slot);
        }
    }
}

async fn tcp_server(listener: std::net::TcpListener, shared: Arc<Shared>, ns: Netns) {
    let Some(listener) = poll_listener(listener, "DNS proxy") else {
        return;
    };
    loop {
        let (stream, slot) = accept_on_slot(&listener).await;
        let (shared, ns) = (shared.clone(), ns.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            let mut fwd = TcpForward {
                ns,
                conns: HashMap::new(),
            };
            // Queries in order on one connection (RFC 7766 allows it).
            while let Ok(Ok(q)) =
                tokio::time::timeout(TCP_IDLE, upstream::read_frame(&mut stream)).await
            {
                let reply = match shared.in_flight.try_acquire() {
                    Ok(_permit) => {
                        shared
                            .engine
                            .answer(slot, &q, Transport::Tcp, &mut fwd)
                            .await
                            .reply
                    }
                    Err(_) => {
                        shared
                            .overloaded
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        overload_reply(&q)
                    }
                };
                let Some(reply) = reply else { break };
                if upstream::write_frame(&mut stream, &reply).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// A namespace the proxy serves.
struct Served {
    cookie: u64,
    tasks: Vec<JoinHandle<()>>,
    /// Sweeps in a row that found no enforced process in it.
    unused_sweeps: u32,
}

impl Drop for Served {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The metadata proxy, served beside the DNS proxy in each namespace.
pub struct MetadataServing {
    pub port: u16,
    pub server: Arc<crate::metadata::server::Server>,
}

/// The namespaces the proxies serve, and `TG_DNS_NETNS`.
pub struct Registry {
    shared: Arc<Shared>,
    port: u16,
    metadata: MetadataServing,
    map: Mutex<BpfHashMap<MapData, u64, ProxyNetns>>,
    served: tokio::sync::Mutex<HashMap<(u64, u64), Served>>,
}

impl Registry {
    pub fn new(
        shared: Arc<Shared>,
        port: u16,
        metadata: MetadataServing,
        map: BpfHashMap<MapData, u64, ProxyNetns>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared,
            port,
            metadata,
            map: Mutex::new(map),
            served: Default::default(),
        })
    }

    /// Namespaces served now.
    pub async fn count(&self) -> usize {
        self.served.lock().await.len()
    }

    /// Serves the network namespace of `pid` (nothing if already served).
    pub async fn serve_pid(&self, pid: u32) -> io::Result<()> {
        let ns = tokio::task::spawn_blocking(move || Netns::of_pid(pid))
            .await
            .map_err(|_| io::Error::other("the namespace task failed"))??;
        self.serve(ns).await
    }

    /// Serves `ns` (nothing if already served).
    pub async fn serve(&self, ns: Netns) -> io::Result<()> {
        let mut served = self.served.lock().await;
        if let Some(s) = served.get_mut(&ns.id) {
            s.unused_sweeps = 0;
            return Ok(());
        }
        let (port, metadata_port) = (self.port, self.metadata.port);
        let ns2 = ns.clone();
        let (l, m) = tokio::task::spawn_blocking(move || {
            ns2.run(move || {
                Ok((
                    netns::open_listeners(port)?,
                    netns::tcp_listener(metadata_port)?,
                ))
            })
        })
        .await
        .map_err(|_| io::Error::other("the namespace task failed"))??;
        let ups = Arc::new(NsUpstreams {
            ns: ns.clone(),
            udp: Default::default(),
        });
        let tasks = vec![
            tokio::spawn(udp_server(l.udp, self.shared.clone(), ups)),
            tokio::spawn(tcp_server(l.tcp, self.shared.clone(), ns.clone())),
            tokio::spawn(self.metadata.server.clone().serve(m)),
        ];
        // Listening first, then published: the hook never sends a query to
        // a port nobody holds yet.
        self.map
            .lock()
            .expect("netns map lock")
            .insert(
                l.cookie,
                ProxyNetns {
                    dns_port: port,
                    metadata_port,
                    _pad: [0; 4],
                },
                0,
            )
            .map_err(|e| io::Error::other(format!("TG_DNS_NETNS: {e}")))?;
        tracing::info!(netns = ?ns.id, cookie = l.cookie, port, metadata_port, "proxies serve a network namespace");
        served.insert(
            ns.id,
            Served {
                cookie: l.cookie,
                tasks,
                unused_sweeps: 0,
            },
        );
        Ok(())
    }

    /// Stops the hook sending anything here: every served namespace leaves
    /// `TG_DNS_NETNS`, so the tiers' DNS (and filtered metadata) connects
    /// fail at once with EPERM, then waits up to `limit` for the queries
    /// already taken, or queued on the sockets, to be answered. Returns how
    /// many were still unanswered at the limit. The servers keep running:
    /// the caller ends the process.
    pub async fn withdraw(&self, limit: Duration) -> usize {
        let started = tokio::time::Instant::now();
        {
            let served = self.served.lock().await;
            let mut map = self.map.lock().expect("netns map lock");
            for s in served.values() {
                let _ = map.remove(&s.cookie);
            }
        }
        // Datagrams queued before the withdrawal are still read and
        // answered: give the servers a moment to take them.
        tokio::time::sleep(Duration::from_millis(20)).await;
        loop {
            let busy = MAX_IN_FLIGHT - self.shared.in_flight.available_permits();
            if busy == 0 || started.elapsed() >= limit {
                return busy;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Serves the namespaces of `pids` (the processes of DNS-tier cgroups)
    /// and stops serving namespaces none of them has been in for two
    /// sweeps in a row (a served namespace is held open by our sockets, so
    /// a pod's would never go away otherwise).
    pub async fn sweep(&self, pids: Vec<u32>) {
        let ids: Vec<Netns> = tokio::task::spawn_blocking(move || {
            let mut seen = HashMap::new();
            for pid in pids {
                if let Ok(ns) = Netns::of_pid(pid) {
                    seen.entry(ns.id).or_insert(ns);
                }
            }
            seen.into_values().collect()
        })
        .await
        .unwrap_or_default();
        let live: std::collections::HashSet<(u64, u64)> = ids.iter().map(|n| n.id).collect();
        for ns in ids {
            if let Err(e) = self.serve(ns).await {
                tracing::warn!(error = %e, "cannot serve a network namespace");
            }
        }
        let mut served = self.served.lock().await;
        let mut gone = Vec::new();
        for (id, s) in served.iter_mut() {
            if live.contains(id) {
                s.unused_sweeps = 0;
            } else {
                s.unused_sweeps += 1;
                if s.unused_sweeps >= 2 {
                    gone.push(*id);
                }
            }
        }
        for id in gone {
            if let Some(s) = served.remove(&id) {
                let _ = self.map.lock().expect("netns map lock").remove(&s.cookie);
                tracing::info!(netns = ?id, "proxies no longer serve a network namespace");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slot_addresses_name_a_cgroup() {
        assert_eq!(slot_of(Ipv4Addr::new(127, 0, 0, 5)), Some(5));
        assert_eq!(slot_of(Ipv4Addr::new(127, 1, 2, 3)), Some(0x01_0203));
        assert_eq!(slot_of(Ipv4Addr::new(127, 255, 255, 254)), Some(0xff_fffe));
        assert_eq!(slot_of(Ipv4Addr::new(127, 0, 0, 0)), None);
        assert_eq!(slot_of(Ipv4Addr::new(127, 255, 255, 255)), None);
        assert_eq!(slot_of(Ipv4Addr::new(10, 0, 0, 5)), None);
        for id in [1u64, 77, 0xff_fffe, 0x1234_5678_9abc] {
            let a = Ipv4Addr::from((127u32 << 24) | agent_common::dns_slot(id));
            assert_eq!(slot_of(a), Some(agent_common::dns_slot(id)));
        }
    }
}
