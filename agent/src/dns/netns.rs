//! Sockets inside workloads' network namespaces.
//!
//! The hook sends a workload's DNS to 127.x.y.z (its cgroup's slot) on the
//! proxy port, and that address is routed inside the workload's own network
//! namespace: a pod's loopback, not the node's. So the proxy holds a UDP
//! and a TCP listener on that port in each namespace it serves, and makes
//! its upstream sockets there too, so a resolver is reached exactly as the
//! workload would reach it (a pod's kube-dns Service through the pod's
//! network). A socket belongs to the namespace it was created in for its
//! whole life; creating one elsewhere takes a thread that `setns`es first.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

/// `SO_NETNS_COOKIE` (Linux 5.14): the namespace's cookie, as
/// `bpf_get_netns_cookie` returns it to the hook.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A network namespace, held open.
#[derive(Clone, Debug)]
pub struct Netns {
    file: Arc<File>,
    /// (device, inode) of the namespace file: its identity.
    pub id: (u64, u64),
}

impl Netns {
    /// The namespace of process `pid`.
    pub fn of_pid(pid: u32) -> io::Result<Netns> {
        Self::open(&format!("/proc/{pid}/ns/net"))
    }

    /// The namespace at `path` (`/proc/PID/ns/net`, `/run/netns/NAME`).
    pub fn open(path: &str) -> io::Result<Netns> {
        let file = File::open(path)?;
        let m = file.metadata()?;
        Ok(Netns {
            id: (m.dev(), m.ino()),
            file: Arc::new(file),
        })
    }

    /// Runs `f` on a thread that has entered this namespace, and returns
    /// its result. Sockets `f` creates stay in the namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let file = self.file.clone();
        std::thread::Builder::new()
            .name("tiergate-netns".into())
            .spawn(move || {
                // SAFETY: setns on this thread only (CLONE_NEWNET never moves
                // the whole process); the thread ends after `f`.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
    }
}

/// The proxy's listeners in one namespace.
#[derive(Debug)]
pub struct Listeners {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
    /// The namespace's cookie (the key of `TG_DNS_NETNS`).
    pub cookie: u64,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int we own.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The network-namespace cookie of a socket.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

fn inet_socket(ty: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket() returns a new descriptor we then own.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd is a fresh descriptor no one else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind_any(fd: BorrowedFd<'_>, port: u16) -> io::Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: bind reads one sockaddr_in we own.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Opens the proxy's listeners on `port` in the calling thread's namespace.
/// They are bound to every address, because the slots span 127.0.0.0/8;
/// the proxy answers only packets that arrived on a slot address.
pub fn open_listeners(port: u16) -> io::Result<Listeners> {
    let udp = inet_socket(libc::SOCK_DGRAM)?;
    set_int(udp.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int(udp.as_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    bind_any(udp.as_fd(), port)?;
    let tcp = tcp_listener(port)?;
    let cookie = netns_cookie(udp.as_fd())?;
    Ok(Listeners {
        udp: UdpSocket::from(udp),
        tcp,
        cookie,
    })
}

/// A TCP listener on `port` of every address in the calling thread's
/// namespace (non-blocking; the server checks the slot of each connection).
pub fn tcp_listener(port: u16) -> io::Result<TcpListener> {
    let tcp = inet_socket(libc::SOCK_STREAM)?;
    set_int(tcp.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind_any(tcp.as_fd(), port)?;
    // SAFETY: listen on a bound socket we own.
    cvt(unsafe { libc::listen(tcp.as_raw_fd(), 1024) })?;
    Ok(TcpListener::from(tcp))
}

/// A UDP socket connected to `server`, made in the calling thread's
/// namespace: the kernel then accepts datagrams from `server` only.
pub fn connected_udp(server: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(server)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A TCP connection to `server` made in the calling thread's namespace.
pub fn tcp_to(server: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&server, timeout)?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    Ok(s)
}
