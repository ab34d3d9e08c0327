//! UDP with the local address of each datagram (`IP_PKTINFO`): the proxy
//! reads which slot address (hence which cgroup) a query was sent to, and
//! answers from that same address, as a connected client socket requires.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Room for one `in_pktinfo` control message.
const CMSG_SPACE: usize = 64;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE]);

/// One datagram: its length, sender, and the local address it arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    pub local: Ipv4Addr,
}

/// Receives one datagram without blocking (`WouldBlock` when none waits).
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero is a valid sockaddr_in / msghdr.
    let mut from: libc::sockaddr_in = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; CMSG_SPACE]);
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE as _;
    // SAFETY: msg points at buffers we own for the duration of the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut local = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info = libc::CMSG_DATA(c)
                    .cast::<libc::in_pktinfo>()
                    .read_unaligned();
                local = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let local = local.ok_or_else(|| io::Error::other("datagram without IP_PKTINFO"))?;
    Ok(Received {
        len: n as usize,
        from: SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
            u16::from_be(from.sin_port),
        ),
        local,
    })
}

/// Sends `data` to `to` with `local` as its source address.
pub fn send(
    fd: BorrowedFd<'_>,
    data: &[u8],
    to: SocketAddrV4,
    local: Ipv4Addr,
) -> io::Result<usize> {
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cbuf = CmsgBuf([0; CMSG_SPACE]);
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&dst as *const libc::sockaddr_in as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations; the header is
    // written inside the buffer we own, sized for one in_pktinfo.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_PKTINFO;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(local).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        libc::CMSG_DATA(c)
            .cast::<libc::in_pktinfo>()
            .write_unaligned(info);
    }
    // SAFETY: msg points at buffers we own for the duration of the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    use super::*;

    /// Loopback in the test's own namespace: 127.0.0.0/8 is local, so a
    /// socket bound to 0.0.0.0 receives for 127.1.2.3 and can answer from it.
    #[test]
    fn local_address_is_read_and_used_as_source() {
        let server = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let one = 1i32;
        // SAFETY: setsockopt reads one int we own.
        let r = unsafe {
            libc::setsockopt(
                server.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                (&one as *const i32).cast(),
                4,
            )
        };
        assert_eq!(r, 0);
        let port = server.local_addr().expect("addr").port();
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        let slot = Ipv4Addr::new(127, 1, 2, 3);
        client.connect((slot, port)).expect("connect");
        client.send(b"query").expect("send");
        let mut buf = [0u8; 64];
        let got = loop {
            match recv(server.as_fd(), &mut buf) {
                Ok(r) => break r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(&buf[..got.len], b"query");
        assert_eq!(got.local, slot);
        assert_eq!(
            got.from,
            client
                .local_addr()
                .map(|a| match a {
                    std::net::SocketAddr::V4(v) => v,
                    _ => panic!("v4"),
                })
                .expect("client addr")
        );
        // The connected client accepts the answer only from the slot address.
        send(server.as_fd(), b"answer", got.from, got.local).expect("send");
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        let n = client.recv(&mut buf).expect("answer arrives");
        assert_eq!(&buf[..n], b"answer");
    }
}
