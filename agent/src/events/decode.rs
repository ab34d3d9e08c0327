//! Ring-buffer records → typed kernel events.

use std::net::{IpAddr, Ipv6Addr};

use agent_common::{
    CONNECT_F_METADATA, ConnectEvent, EVENT_CONNECT, EVENT_SOCKET, EventHeader, SocketEvent,
    VERDICT_ALLOW,
};

/// One record as the kernel wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    Connect(ConnectEvent),
    Socket(SocketEvent),
}

/// Why a record could not be decoded (a version skew or a kernel bug; counted).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the event header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("kind {kind} record has {len} bytes, expected {want}")]
    Size { kind: u32, len: usize, want: usize },
}

fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let want = size_of::<T>();
    if bytes.len() < want {
        return Err(DecodeError::Size {
            kind,
            len: bytes.len(),
            want,
        });
    }
    // SAFETY: length checked; T is a #[repr(C)] integer-only Pod type, valid
    // for any bit pattern; read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let kind = u32::from_ne_bytes(bytes[0..4].try_into().expect("4 bytes"));
    match kind {
        EVENT_CONNECT => read(bytes, kind).map(KernelEvent::Connect),
        EVENT_SOCKET => read(bytes, kind).map(KernelEvent::Socket),
        k => Err(DecodeError::UnknownKind(k)),
    }
}

impl KernelEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            KernelEvent::Connect(e) => &e.header,
            KernelEvent::Socket(e) => &e.header,
        }
    }

    /// Denies, audit-denies and metadata accesses are never shed in user space.
    pub fn is_priority(&self) -> bool {
        match self {
            KernelEvent::Connect(e) => {
                e.verdict != VERDICT_ALLOW || e.flags & CONNECT_F_METADATA != 0
            }
            KernelEvent::Socket(_) => true,
        }
    }
}

/// The destination as the policy judged it: IPv4-mapped addresses as IPv4.
pub fn destination(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The process name from a NUL-padded comm.
pub fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a Pod value's bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
    }

    #[test]
    fn decodes_connect_and_socket_records() {
        let c = ConnectEvent {
            header: EventHeader {
                kind: EVENT_CONNECT,
                ..Default::default()
            },
            port: 443,
            verdict: 1,
            ..Default::default()
        };
        let KernelEvent::Connect(back) = decode(&bytes_of(&c)).unwrap() else {
            panic!("kind")
        };
        assert_eq!(back, c);
        assert!(KernelEvent::Connect(back).is_priority());

        let s = SocketEvent {
            header: EventHeader {
                kind: EVENT_SOCKET,
                ..Default::default()
            },
            family: 17,
            ..Default::default()
        };
        assert!(matches!(decode(&bytes_of(&s)).unwrap(), KernelEvent::Socket(x) if x.family == 17));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[0u8; 8]), Err(DecodeError::Short(8)));
        let mut h = EventHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(99)));
        h.kind = EVENT_CONNECT;
        assert!(matches!(
            decode(&bytes_of(&h)),
            Err(DecodeError::Size { .. })
        ));
    }

    #[test]
    fn allowed_plain_connects_are_not_priority() {
        let mut c = ConnectEvent {
            header: EventHeader {
                kind: EVENT_CONNECT,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!KernelEvent::Connect(c).is_priority());
        c.flags = CONNECT_F_METADATA;
        assert!(KernelEvent::Connect(c).is_priority());
    }

    #[test]
    fn mapped_destinations_are_ipv4() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[10, 20, 0, 1]);
        assert_eq!(destination(a).to_string(), "10.20.0.1");
        a[10] = 0;
        a[11] = 0;
        assert_eq!(destination(a).to_string(), "::a14:1");
        assert_eq!(comm(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
    }
}
