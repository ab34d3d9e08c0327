//! Closing a workload's sockets when an elevation ends (issue 14).
//!
//! When a time-boxed grant expires or is revoked, the hook stops allowing
//! new connections at once, but connections the workload opened under the
//! grant would live on. This module finds them and closes them: at expiry or
//! revoke, and at start for grants that expired while the agent was dead.
//!
//! # Why netlink sock_diag from user space
//!
//! It lists the namespace's TCP and connected UDP sockets with a
//! `SOCK_DIAG_BY_FAMILY` dump (one per address family and protocol) and
//! closes each one it must with `SOCK_DESTROY` naming the socket's exact
//! 4-tuple and cookie (`CONFIG_INET_DIAG_DESTROY`, Linux 4.5 for TCP, 4.9 for
//! UDP; TCP through `tcp_abort`, UDP through `udp_abort`). The alternative, a
//! BPF socket iterator calling the `bpf_sock_destroy` kfunc (6.5), is not
//! open to us: aya-ebpf cannot declare or call kfuncs, and the iterator would
//! add a program type, a load and an attach for an event that happens once
//! per grant. sock_diag needs nothing loaded, is what `ss -K` uses, and
//! returns per socket what the agent reports (5-tuple, state, inode, cookie).
//!
//! The cgroup of each socket comes from the `INET_DIAG_CGROUP_ID` attribute
//! (Linux 5.9, 2020; checked on this project's 6.18 by the e2e test): the
//! kernel adds it to every inet_diag message when built with
//! `CONFIG_SOCK_CGROUP_DATA` (every cgroup-v2 kernel); it cannot be asked for
//! through `idiag_ext`, whose 8 bits end at `INET_DIAG_SHUTDOWN`. A kernel
//! that does not send it is reported as an error, never read as "no match".
//! The id is the one the hook sees (`bpf_get_current_cgroup_id` at creation:
//! the socket keeps the cgroup it was created in).
//!
//! # What is in scope
//!
//! sock_diag answers for the network namespace of the netlink socket that
//! asks, so [`close_where`] opens that socket in the namespace of a workload
//! process (a thread that `setns`es, [`Netns::run`]) and uses it from the
//! calling thread. TCP sockets in `SYN_SENT`, `ESTABLISHED`, `SYN_RECV`,
//! `FIN_WAIT1`, `FIN_WAIT2` and `CLOSE_WAIT` are listed; listening sockets,
//! `TIME_WAIT` (no longer a socket, and nothing can be sent on it) and
//! closed ones are not. UDP sockets are listed only when connected (state
//! `ESTABLISHED`): an unconnected one has no destination, and each of its
//! datagrams goes through the hook (`sendmsg4/6`) anyway.
//!
//! The owner of a destroyed TCP socket gets `ECONNABORTED` from its next (or
//! pending) call and the peer gets a reset; a UDP socket's owner gets
//! `ECONNABORTED` and the socket is disconnected.
//!
//! A dump is not a snapshot: a socket created during it may be missed. The
//! caller therefore takes the grant out of the hook's maps first, so no new
//! socket to a destination the tier does not allow can appear.
//!
//! # Bounds and privileges
//!
//! At most [`MAX_SOCKETS`] sockets of the given cgroups are handled per call
//! (the rest of the dump is dropped, with a warning); a further call handles
//! the remainder, since the destroyed ones are gone. Listing needs no
//! privilege. `SOCK_DESTROY` needs CAP_NET_ADMIN in the user namespace that
//! owns the socket's network namespace (`sock_diag_destroy` checks
//! `ns_capable(net->user_ns, CAP_NET_ADMIN)`): CAP_SYS_ADMIN does not stand
//! in for it.
//!
//! # Message layouts (include/uapi/linux/{netlink,sock_diag,inet_diag}.h)
//!
//! ```text
//! nlmsghdr          16 B  len u32, type u16, flags u16, seq u32, pid u32 (host order)
//! inet_diag_req_v2  56 B  family u8, protocol u8, ext u8, pad u8, states u32, sockid
//! inet_diag_sockid  48 B  sport be16, dport be16, src [16]u8, dst [16]u8,
//!                         if u32, cookie [2]u32 (low word first, host order)
//! inet_diag_msg     72 B  family u8, state u8, timer u8, retrans u8, sockid,
//!                         expires u32, rqueue u32, wqueue u32, uid u32, inode u32
//! rtattr             4 B  len u16, type u16, then the value, padded to 4
//! nlmsgerr          20 B  error i32 (0 or -errno), then the request's nlmsghdr
//! ```
//! An IPv4 address sits in the first 4 bytes of `src`/`dst`. An IPv6
//! socket's addresses are as the kernel holds them, so a v4-mapped peer
//! (`::ffff:a.b.c.d`) is reported as such, and `SOCK_DESTROY` takes it back.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::dns::netns::Netns;

/// The most sockets of the given cgroups one call lists (and so closes).
pub const MAX_SOCKETS: usize = 65_536;

/// `NETLINK_SOCK_DIAG` message types (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// `INET_DIAG_CGROUP_ID` (`linux/inet_diag.h`, Linux 5.9): u64 cgroup v2 id.
const INET_DIAG_CGROUP_ID: u16 = 21;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;

const NLMSG_HDR_LEN: usize = 16;
const REQ_V2_LEN: usize = 56;
const DIAG_MSG_LEN: usize = 72;
/// Offset of the sockid in `inet_diag_req_v2` and in `inet_diag_msg`.
const REQ_ID_OFF: usize = 8;
const MSG_ID_OFF: usize = 4;

// TCP states (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE_WAIT: u8 = 8;

/// The TCP states listed: connecting or connected; not LISTEN, TIME_WAIT,
/// CLOSE, nor the states after the owner closed both directions.
const TCP_STATES: u32 = 1 << TCP_ESTABLISHED
    | 1 << TCP_SYN_SENT
    | 1 << TCP_SYN_RECV
    | 1 << TCP_FIN_WAIT1
    | 1 << TCP_FIN_WAIT2
    | 1 << TCP_CLOSE_WAIT;
/// A connected UDP socket is `TCP_ESTABLISHED`; an unconnected one `TCP_CLOSE`.
const UDP_STATES: u32 = 1 << TCP_ESTABLISHED;

/// How long one netlink read may block before the call fails.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// A transport protocol whose sockets can be listed and destroyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP as u8,
            Proto::Udp => libc::IPPROTO_UDP as u8,
        }
    }

    fn states(self) -> u32 {
        match self {
            Proto::Tcp => TCP_STATES,
            Proto::Udp => UDP_STATES,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A socket of a workload: 5-tuple, state, cgroup id, inode, cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSocket {
    /// The cgroup v2 id the socket was created in.
    pub cgroup_id: u64,
    pub protocol: Proto,
    /// Local address (an IPv6 socket's stay IPv6, v4-mapped included).
    pub src: SocketAddr,
    /// Peer address.
    pub dst: SocketAddr,
    /// Kernel state (`TCP_ESTABLISHED` = 1, ...; connected UDP is 1).
    pub state: u8,
    /// Inode of the socket file; 0 once no process holds it.
    pub inode: u32,
    /// The kernel's socket cookie (`SO_COOKIE`): tells a socket from a later
    /// one with the same 4-tuple.
    pub cookie: u64,
    /// Interface index the socket is bound to (0 if none); part of the id
    /// `SOCK_DESTROY` matches on.
    pub ifindex: u32,
}

impl fmt::Display for WorkloadSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} (cgroup {}, inode {})",
            self.protocol, self.src, self.dst, self.cgroup_id, self.inode
        )
    }
}

/// Every TCP and connected UDP socket in the *current* network namespace
/// whose cgroup id is in `cgroups` (at most [`MAX_SOCKETS`]).
pub fn list(cgroups: &HashSet<u64>) -> io::Result<Vec<WorkloadSocket>> {
    DiagSocket::open()?.list(cgroups)
}

/// Destroys one socket (`SOCK_DESTROY` with its exact id and cookie) in the
/// current network namespace; `Ok(false)` if it was already gone.
pub fn destroy(s: &WorkloadSocket) -> io::Result<bool> {
    DiagSocket::open()?.destroy(s)
}

/// In the network namespace of process `pid`, closes every socket of
/// `cgroups` that `keep` rejects; returns what it closed (not what was
/// already gone).
pub fn close_where(
    pid: u32,
    cgroups: &HashSet<u64>,
    keep: impl Fn(&WorkloadSocket) -> bool,
) -> io::Result<Vec<WorkloadSocket>> {
    let ns = Netns::of_pid(pid).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open the network namespace of process {pid} (/proc/{pid}/ns/net): {e}"),
        )
    })?;
    // The socket answers for the namespace it was created in, whichever
    // thread then uses it: only its creation needs the namespace thread.
    let diag = ns.run(DiagSocket::open).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot enter the network namespace of process {pid}: {e}"),
        )
    })?;
    let mut closed = Vec::new();
    for s in diag.list(cgroups)? {
        if keep(&s) {
            continue;
        }
        if diag.destroy(&s)? {
            closed.push(s);
        }
    }
    Ok(closed)
}

/// A `NETLINK_SOCK_DIAG` socket, bound to the namespace it was opened in.
#[derive(Debug)]
struct DiagSocket {
    fd: OwnedFd,
}

impl DiagSocket {
    fn open() -> io::Result<DiagSocket> {
        // SAFETY: socket() returns a new descriptor that we then own.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open a NETLINK_SOCK_DIAG socket: {e}"),
            ));
        }
        // SAFETY: fd is fresh and owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads one timeval we own.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DiagSocket { fd })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // The kernel is port 0; an unbound netlink socket is autobound.
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sendto reads `msg` and one sockaddr_nl we own.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the kernel did not answer a sock_diag request within {RECV_TIMEOUT:?}"
                    ),
                ));
            }
            return Err(e);
        }
        Ok(n as usize)
    }

    fn list(&self, cgroups: &HashSet<u64>) -> io::Result<Vec<WorkloadSocket>> {
        let mut out = Vec::new();
        let mut seq = 1;
        for proto in [Proto::Tcp, Proto::Udp] {
            for family in [libc::AF_INET, libc::AF_INET6] {
                let what = format!("{proto}/{}", family_name(family));
                self.send(&dump_request(seq, family as u8, proto))
                    .map_err(|e| {
                        annotate(e, &format!("sending the sock_diag dump of {what} sockets"))
                    })?;
                let full = self
                    .collect(seq, proto, cgroups, &mut out)
                    .map_err(|e| annotate(e, &format!("the sock_diag dump of {what} sockets")))?;
                if full {
                    tracing::warn!(
                        limit = MAX_SOCKETS,
                        "more workload sockets than one call handles; the rest are left for the next call"
                    );
                    return Ok(out);
                }
                seq += 1;
            }
        }
        Ok(out)
    }

    /// Reads one dump to its end; true if it stopped at [`MAX_SOCKETS`].
    fn collect(
        &self,
        seq: u32,
        proto: Proto,
        cgroups: &HashSet<u64>,
        out: &mut Vec<WorkloadSocket>,
    ) -> io::Result<bool> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n])? {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => return Ok(false),
                    NLMSG_ERROR => {
                        let errno = ack_errno(m.payload)?;
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        let s = parse_diag_msg(m.payload, proto)?;
                        if cgroups.contains(&s.cgroup_id) {
                            out.push(s);
                            if out.len() >= MAX_SOCKETS {
                                return Ok(true);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn destroy(&self, s: &WorkloadSocket) -> io::Result<bool> {
        let seq = 1;
        self.send(&destroy_request(seq, s))
            .map_err(|e| annotate(e, &format!("sending SOCK_DESTROY for {s}")))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self
                .recv(&mut buf)
                .map_err(|e| annotate(e, &format!("SOCK_DESTROY of {s}")))?;
            for m in messages(&buf[..n])? {
                if m.seq != seq || m.kind != NLMSG_ERROR {
                    continue;
                }
                return match ack_errno(m.payload)? {
                    0 => Ok(true),
                    // Gone, or its 4-tuple now belongs to a newer socket
                    // (the cookie differs): either way ours is closed.
                    libc::ENOENT | libc::ESTALE => Ok(false),
                    libc::EPERM => Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "SOCK_DESTROY of {s} was refused (EPERM): closing a socket needs \
                             CAP_NET_ADMIN in the user namespace that owns its network namespace \
                             (CAP_SYS_ADMIN does not stand in for it); give the agent CAP_NET_ADMIN"
                        ),
                    )),
                    libc::EOPNOTSUPP => Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "SOCK_DESTROY of {s} is not supported by this kernel: it needs \
                             CONFIG_INET_DIAG_DESTROY=y"
                        ),
                    )),
                    errno => {
                        let e = io::Error::from_raw_os_error(errno);
                        Err(io::Error::new(
                            e.kind(),
                            format!("SOCK_DESTROY of {s} failed: {e}"),
                        ))
                    }
                };
            }
        }
    }
}

fn family_name(family: i32) -> &'static str {
    if family == libc::AF_INET {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} failed: {e}"))
}

/// A `SOCK_DIAG_BY_FAMILY` dump request for every socket of `family` and
/// `proto` in the states that are listed.
fn dump_request(seq: u32, family: u8, proto: Proto) -> Vec<u8> {
    let mut req = [0u8; REQ_V2_LEN];
    req[0] = family;
    req[1] = proto.number();
    // idiag_ext (req[2]) stays 0: the cgroup id comes unasked, see above.
    req[4..8].copy_from_slice(&proto.states().to_ne_bytes());
    // A dump ignores the sockid, cookie included.
    message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, &req)
}

/// A `SOCK_DESTROY` request naming `s` exactly.
fn destroy_request(seq: u32, s: &WorkloadSocket) -> Vec<u8> {
    let mut req = [0u8; REQ_V2_LEN];
    req[0] = match s.src {
        SocketAddr::V4(_) => libc::AF_INET as u8,
        SocketAddr::V6(_) => libc::AF_INET6 as u8,
    };
    req[1] = s.protocol.number();
    req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    let id = &mut req[REQ_ID_OFF..];
    id[0..2].copy_from_slice(&s.src.port().to_be_bytes());
    id[2..4].copy_from_slice(&s.dst.port().to_be_bytes());
    put_ip(&mut id[4..20], s.src.ip());
    put_ip(&mut id[20..36], s.dst.ip());
    id[36..40].copy_from_slice(&s.ifindex.to_ne_bytes());
    id[40..44].copy_from_slice(&(s.cookie as u32).to_ne_bytes());
    id[44..48].copy_from_slice(&((s.cookie >> 32) as u32).to_ne_bytes());
    message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, &req)
}

fn put_ip(dst: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => dst[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => dst.copy_from_slice(&a.octets()),
    }
}

/// `nlmsghdr` + `body` (already a multiple of 4 bytes long).
fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in the sender's port.
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// One netlink message of a datagram.
#[derive(Debug)]
struct Message<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed sock_diag reply: {what}"),
    )
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Splits a datagram into its netlink messages.
fn messages(mut b: &[u8]) -> io::Result<Vec<Message<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < NLMSG_HDR_LEN {
            return Err(malformed("a message shorter than its header"));
        }
        let len = u32_at(b, 0) as usize;
        if len < NLMSG_HDR_LEN || len > b.len() {
            return Err(malformed("a message length outside the datagram"));
        }
        out.push(Message {
            kind: u16_at(b, 4),
            seq: u32_at(b, 8),
            payload: &b[NLMSG_HDR_LEN..len],
        });
        b = &b[align4(len).min(b.len())..];
    }
    Ok(out)
}

/// The errno of an `NLMSG_ERROR` (0 for an acknowledgement).
fn ack_errno(payload: &[u8]) -> io::Result<i32> {
    if payload.len() < 4 {
        return Err(malformed("an error message without its code"));
    }
    Ok(-(u32_at(payload, 0) as i32))
}

/// Reads one `inet_diag_msg` and its attributes.
fn parse_diag_msg(p: &[u8], protocol: Proto) -> io::Result<WorkloadSocket> {
    if p.len() < DIAG_MSG_LEN {
        return Err(malformed("an inet_diag_msg shorter than 72 bytes"));
    }
    let family = i32::from(p[0]);
    let id = &p[MSG_ID_OFF..MSG_ID_OFF + 48];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let ip = |b: &[u8]| -> io::Result<IpAddr> {
        if family == libc::AF_INET {
            Ok(Ipv4Addr::from(<[u8; 4]>::try_from(&b[..4]).expect("4 bytes")).into())
        } else if family == libc::AF_INET6 {
            Ok(Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")).into())
        } else {
            Err(malformed(&format!("address family {family}")))
        }
    };
    let src = SocketAddr::new(ip(&id[4..20])?, sport);
    let dst = SocketAddr::new(ip(&id[20..36])?, dport);
    let ifindex = u32_at(id, 36);
    let cookie = u64::from(u32_at(id, 40)) | u64::from(u32_at(id, 44)) << 32;
    let inode = u32_at(p, 68);
    let mut cgroup_id = None;
    let mut attrs = &p[DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0) as usize;
        let kind = u16_at(attrs, 2) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return Err(malformed("an attribute length outside the message"));
        }
        if kind == INET_DIAG_CGROUP_ID {
            let v: [u8; 8] = attrs[4..len]
                .try_into()
                .map_err(|_| malformed("an INET_DIAG_CGROUP_ID that is not 8 bytes"))?;
            cgroup_id = Some(u64::from_ne_bytes(v));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    let cgroup_id = cgroup_id.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel's sock_diag replies carry no INET_DIAG_CGROUP_ID: sockets cannot be \
             told apart by cgroup (it needs Linux 5.9 with CONFIG_SOCK_CGROUP_DATA)",
        )
    })?;
    Ok(WorkloadSocket {
        cgroup_id,
        protocol,
        src,
        dst,
        state: p[1],
        inode,
        cookie,
        ifindex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A u32 as the kernel writes it on this (little-endian) machine.
    fn ne(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    #[test]
    fn dump_request_bytes() {
        let m = dump_request(7, libc::AF_INET6 as u8, Proto::Tcp);
        let mut want = Vec::new();
        want.extend(ne(72)); // 16 + 56
        want.extend(20u16.to_ne_bytes()); // SOCK_DIAG_BY_FAMILY
        want.extend(0x301u16.to_ne_bytes()); // REQUEST | DUMP
        want.extend(ne(7));
        want.extend(ne(0));
        want.extend([10, 6, 0, 0]); // AF_INET6, IPPROTO_TCP, no ext
        want.extend(ne(0b1_0011_1110)); // ESTABLISHED..FIN_WAIT2, CLOSE_WAIT
        want.extend([0u8; 48]);
        assert_eq!(m, want);

        let m = dump_request(1, libc::AF_INET as u8, Proto::Udp);
        assert_eq!(&m[16..20], &[2, 17, 0, 0]);
        assert_eq!(&m[20..24], &ne(0b10), "connected UDP only");
    }

    fn v4_socket() -> WorkloadSocket {
        WorkloadSocket {
            cgroup_id: 0x1122_3344_5566_7788,
            protocol: Proto::Tcp,
            src: "10.1.2.3:40000".parse().unwrap(),
            dst: "192.0.2.9:443".parse().unwrap(),
            state: 1,
            inode: 4242,
            cookie: 0xaabb_ccdd_0000_0102,
            ifindex: 0,
        }
    }

    #[test]
    fn destroy_request_bytes_v4() {
        let m = destroy_request(3, &v4_socket());
        let mut want = Vec::new();
        want.extend(ne(72));
        want.extend(21u16.to_ne_bytes()); // SOCK_DESTROY
        want.extend(0x5u16.to_ne_bytes()); // REQUEST | ACK
        want.extend(ne(3));
        want.extend(ne(0));
        want.extend([2, 6, 0, 0]);
        want.extend(ne(u32::MAX));
        want.extend([0x9c, 0x40, 0x01, 0xbb]); // 40000, 443 big-endian
        want.extend([10, 1, 2, 3]);
        want.extend([0u8; 12]);
        want.extend([192, 0, 2, 9]);
        want.extend([0u8; 12]);
        want.extend(ne(0)); // ifindex
        want.extend(ne(0x0000_0102)); // cookie, low word first
        want.extend(ne(0xaabb_ccdd));
        assert_eq!(m, want);
    }

    #[test]
    fn destroy_request_keeps_v4_mapped_addresses() {
        let s = WorkloadSocket {
            src: "[::ffff:127.0.0.1]:5000".parse().unwrap(),
            dst: "[::ffff:127.0.0.2]:9000".parse().unwrap(),
            ..v4_socket()
        };
        let m = destroy_request(1, &s);
        assert_eq!(m[16], 10, "AF_INET6: the socket's own family");
        let id = &m[24..];
        assert_eq!(
            &id[4..20],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
        assert_eq!(
            &id[20..36],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 2]
        );
    }

    /// An `inet_diag_msg` as the kernel sends it for an IPv6 socket with a
    /// v4-mapped peer, then `INET_DIAG_PAD` and `INET_DIAG_CGROUP_ID`
    /// (nla_put_u64_64bit pads to 8) and an `INET_DIAG_SHUTDOWN` byte.
    fn v6_reply(seq: u32, with_cgroup: bool) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend([10, 1, 0, 0]); // AF_INET6, ESTABLISHED, timer, retrans
        p.extend([0xc3, 0x50, 0x23, 0x28]); // 50000 -> 9000
        p.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
        p.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 2]);
        p.extend(ne(3)); // ifindex
        p.extend(ne(0x0000_00ab));
        p.extend(ne(0x0000_0001));
        p.extend(ne(0)); // expires
        p.extend(ne(0)); // rqueue
        p.extend(ne(0)); // wqueue
        p.extend(ne(1000)); // uid
        p.extend(ne(777)); // inode
        assert_eq!(p.len(), 72);
        p.extend(4u16.to_ne_bytes()); // INET_DIAG_PAD, empty
        p.extend(14u16.to_ne_bytes());
        if with_cgroup {
            p.extend(12u16.to_ne_bytes());
            p.extend(21u16.to_ne_bytes());
            p.extend(0x0000_0001_0000_2a2au64.to_ne_bytes());
        }
        p.extend(5u16.to_ne_bytes()); // INET_DIAG_SHUTDOWN, 1 byte + 3 pad
        p.extend(8u16.to_ne_bytes());
        p.extend([0, 0, 0, 0]);
        let mut m = message(SOCK_DIAG_BY_FAMILY, 0x2, seq, &p);
        // NLMSG_DONE after it, in the same datagram.
        m.extend(message(NLMSG_DONE, 0x2, seq, &ne(0)));
        m
    }

    #[test]
    fn parses_a_v6_reply_with_cgroup_id() {
        let d = v6_reply(9, true);
        let ms = messages(&d).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!((ms[0].kind, ms[0].seq), (SOCK_DIAG_BY_FAMILY, 9));
        assert_eq!(ms[1].kind, NLMSG_DONE);
        let s = parse_diag_msg(ms[0].payload, Proto::Tcp).unwrap();
        assert_eq!(
            s,
            WorkloadSocket {
                cgroup_id: 0x0000_0001_0000_2a2a,
                protocol: Proto::Tcp,
                src: "[::ffff:127.0.0.1]:50000".parse().unwrap(),
                dst: "[::ffff:127.0.0.2]:9000".parse().unwrap(),
                state: 1,
                inode: 777,
                cookie: 0x1_0000_00ab,
                ifindex: 3,
            }
        );
        // What was listed is what SOCK_DESTROY names.
        let req = destroy_request(1, &s);
        assert_eq!(&req[24..72], &ms[0].payload[4..52]);
    }

    #[test]
    fn a_reply_without_cgroup_id_is_an_error() {
        let d = v6_reply(1, false);
        let ms = messages(&d).unwrap();
        let e = parse_diag_msg(ms[0].payload, Proto::Tcp).unwrap_err();
        assert!(e.to_string().contains("INET_DIAG_CGROUP_ID"), "{e}");
    }

    #[test]
    fn parses_an_ipv4_reply() {
        let mut p = vec![2, 2, 0, 0, 0x9c, 0x40, 0x01, 0xbb];
        p.extend([10, 1, 2, 3]);
        p.extend([0u8; 12]);
        p.extend([192, 0, 2, 9]);
        p.extend([0u8; 12]);
        p.extend([0u8; 12]);
        p.extend([0u8; 16]);
        p.extend(ne(4242));
        p.extend(12u16.to_ne_bytes());
        p.extend(21u16.to_ne_bytes());
        p.extend(55u64.to_ne_bytes());
        let s = parse_diag_msg(&p, Proto::Udp).unwrap();
        assert_eq!(s.src, "10.1.2.3:40000".parse().unwrap());
        assert_eq!(s.dst, "192.0.2.9:443".parse().unwrap());
        assert_eq!((s.state, s.inode, s.cgroup_id), (2, 4242, 55));
        assert_eq!(s.protocol, Proto::Udp);
    }

    #[test]
    fn error_and_ack_messages() {
        let mut e = Vec::new();
        e.extend((-libc::ENOENT).to_ne_bytes());
        e.extend(message(SOCK_DESTROY, 5, 1, &[0u8; 56])[..16].to_vec());
        let d = message(NLMSG_ERROR, 0, 1, &e);
        let ms = messages(&d).unwrap();
        assert_eq!(ms[0].kind, NLMSG_ERROR);
        assert_eq!(ack_errno(ms[0].payload).unwrap(), libc::ENOENT);
        assert_eq!(ack_errno(&ne(0)).unwrap(), 0);
    }

    #[test]
    fn truncated_input_is_rejected() {
        let d = v6_reply(1, true);
        assert!(messages(&d[..10]).is_err());
        assert!(messages(&d[..40]).is_err(), "length past the datagram");
        let ms = messages(&d).unwrap();
        assert!(parse_diag_msg(&ms[0].payload[..60], Proto::Tcp).is_err());
        let mut bad = ms[0].payload.to_vec();
        bad[72] = 200; // PAD attribute claims 200 bytes
        assert!(parse_diag_msg(&bad, Proto::Tcp).is_err());
    }
}
