//! Address classes for the rebinding guard: which answers a name rule may
//! learn (public; private ones only with `allowPrivate`) and which never
//! (loopback, link-local, metadata endpoints, and addresses no host serves).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::policy::is_metadata_endpoint;

/// Where an address points, as far as learning it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// Anything not below.
    Public,
    /// A cloud metadata endpoint (CONTRACT 2.1); never learned.
    Metadata,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 0.0.0.0/8, ::, multicast, 255.255.255.255, 240.0.0.0/4.
    Unroutable,
    /// RFC 1918.
    Rfc1918,
    /// fc00::/7.
    UniqueLocal,
    /// 100.64.0.0/10 (RFC 6598).
    Cgnat,
}

impl AddrClass {
    /// Learnable with `allowPrivate: true`.
    pub fn is_private(self) -> bool {
        matches!(
            self,
            AddrClass::Rfc1918 | AddrClass::UniqueLocal | AddrClass::Cgnat
        )
    }

    /// The event spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Metadata => "metadata-service",
            AddrClass::Loopback => "loopback",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Unroutable => "unroutable",
            AddrClass::Rfc1918 => "rfc1918",
            AddrClass::UniqueLocal => "unique-local",
            AddrClass::Cgnat => "cgnat",
        }
    }
}

/// The class of `addr`; IPv4-mapped IPv6 is judged as its IPv4 address.
pub fn classify(addr: IpAddr) -> AddrClass {
    // Metadata first: fd00:ec2::254 is also unique-local, 169.254.169.254
    // also link-local, and the metadata rule is the stricter one.
    if is_metadata_endpoint(addr) {
        return AddrClass::Metadata;
    }
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify(IpAddr::V4(v4)),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(a: Ipv4Addr) -> AddrClass {
    let o = a.octets();
    if a.is_loopback() {
        AddrClass::Loopback
    } else if a.is_link_local() {
        AddrClass::LinkLocal
    } else if o[0] == 0 || a.is_multicast() || a.is_broadcast() || o[0] >= 240 {
        AddrClass::Unroutable
    } else if a.is_private() {
        AddrClass::Rfc1918
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        AddrClass::Cgnat
    } else {
        AddrClass::Public
    }
}

fn classify_v6(a: Ipv6Addr) -> AddrClass {
    let s = a.segments();
    if a.is_loopback() {
        AddrClass::Loopback
    } else if a.is_unspecified() || a.is_multicast() {
        AddrClass::Unroutable
    } else if (s[0] & 0xffc0) == 0xfe80 {
        AddrClass::LinkLocal
    } else if (s[0] & 0xfe00) == 0xfc00 {
        AddrClass::UniqueLocal
    } else {
        AddrClass::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let cases = [
            ("93.184.216.34", AddrClass::Public),
            ("198.18.0.10", AddrClass::Public),
            ("2606:4700::1", AddrClass::Public),
            ("169.254.169.254", AddrClass::Metadata),
            ("::ffff:169.254.169.254", AddrClass::Metadata),
            ("fd00:ec2::254", AddrClass::Metadata),
            ("fd00:ec2::23", AddrClass::Metadata),
            ("169.254.170.2", AddrClass::Metadata),
            ("100.100.100.200", AddrClass::Metadata),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.9.9.9", AddrClass::Loopback),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::1", AddrClass::Loopback),
            ("169.254.1.1", AddrClass::LinkLocal),
            ("fe80::1", AddrClass::LinkLocal),
            ("febf::1", AddrClass::LinkLocal),
            ("0.0.0.0", AddrClass::Unroutable),
            ("0.1.2.3", AddrClass::Unroutable),
            ("::", AddrClass::Unroutable),
            ("224.0.0.1", AddrClass::Unroutable),
            ("ff02::1", AddrClass::Unroutable),
            ("255.255.255.255", AddrClass::Unroutable),
            ("240.0.0.1", AddrClass::Unroutable),
            ("10.1.2.3", AddrClass::Rfc1918),
            ("172.16.0.1", AddrClass::Rfc1918),
            ("172.31.255.255", AddrClass::Rfc1918),
            ("192.168.1.1", AddrClass::Rfc1918),
            ("::ffff:10.0.0.1", AddrClass::Rfc1918),
            ("fd12::1", AddrClass::UniqueLocal),
            ("fc00::1", AddrClass::UniqueLocal),
            ("100.64.0.1", AddrClass::Cgnat),
            ("100.127.255.255", AddrClass::Cgnat),
            ("100.128.0.1", AddrClass::Public),
            ("172.32.0.1", AddrClass::Public),
        ];
        for (a, want) in cases {
            let addr: IpAddr = a.parse().expect("test address");
            assert_eq!(classify(addr), want, "{a}");
        }
    }

    #[test]
    fn only_rfc1918_ula_and_cgnat_are_private() {
        let private = [AddrClass::Rfc1918, AddrClass::UniqueLocal, AddrClass::Cgnat];
        for c in [
            AddrClass::Public,
            AddrClass::Metadata,
            AddrClass::Loopback,
            AddrClass::LinkLocal,
            AddrClass::Unroutable,
        ]
        .into_iter()
        .chain(private)
        {
            assert_eq!(c.is_private(), private.contains(&c), "{c:?}");
        }
    }
}
