//! Test PKI for the end-to-end tests: CAs and SPIFFE SVIDs made with rcgen
//! (the same helper the agent's TLS unit tests use).

#![allow(clippy::new_without_default)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// The three PEM files of one identity.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub const TD: &str = "corp.example";
pub const COLLECTOR_ID: &str = "spiffe://corp.example/tiergate/collector";
pub const AGENT_ID: &str = "spiffe://corp.example/ns/tiergate/sa/agent";
pub const OTHER_ID: &str = "spiffe://corp.example/ns/default/sa/intruder";

const DAY: Duration = Duration::from_secs(86_400);

/// A CA that issues SVIDs.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// An issued certificate with its key, PEM encoded.
pub struct Svid {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: u64,
}

/// What to put in a leaf certificate.
pub struct Leaf {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: u64,
}

impl Leaf {
    /// Valid from a day ago for 30 days, serial 1, no SANs.
    pub fn new() -> Leaf {
        let now = SystemTime::now();
        Leaf {
            uris: Vec::new(),
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: now - DAY,
            not_after: now + 30 * DAY,
            serial: 1,
        }
    }

    pub fn uri(mut self, uri: &str) -> Leaf {
        self.uris.push(uri.to_owned());
        self
    }

    pub fn serial(mut self, serial: u64) -> Leaf {
        self.serial = serial;
        self
    }

    /// The collector's SVID: its SPIFFE ID, DNS `localhost`, IP 127.0.0.1.
    pub fn collector() -> Leaf {
        let mut l = Leaf::new().uri(COLLECTOR_ID);
        l.dns.push("localhost".into());
        l.ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        l
    }

    pub fn agent() -> Leaf {
        Leaf::new().uri(AGENT_ID)
    }

    pub fn expired(mut self) -> Leaf {
        let now = SystemTime::now();
        self.not_before = now - 10 * DAY;
        self.not_after = now - DAY;
        self
    }

    pub fn not_yet_valid(mut self) -> Leaf {
        let now = SystemTime::now();
        self.not_before = now + DAY;
        self.not_after = now + 10 * DAY;
        self
    }
}

impl Ca {
    /// A self-signed CA whose subject is `CN=<name>`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - 30 * DAY).into();
        params.not_after = (now + 365 * DAY).into();
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn issue(&self, leaf: Leaf) -> Svid {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "tiergate tests");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(leaf.serial));
        params.not_before = leaf.not_before.into();
        params.not_after = leaf.not_after.into();
        for uri in leaf.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().expect("ia5 uri")));
        }
        for dns in leaf.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into().expect("ia5 dns")));
        }
        for ip in leaf.ips {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Svid {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: leaf.serial,
        }
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "tiergate-tls-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `<name>-ca.pem` (the bundle), `<name>.pem` and
    /// `<name>-key.pem`; returns the three paths.
    pub fn write(&self, name: &str, ca_pem: &str, svid: &Svid) -> TlsFiles {
        let files = self.files(name);
        std::fs::write(&files.ca, ca_pem).expect("write ca");
        write_svid(&files, svid);
        files
    }

    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.0.join(format!("{name}-ca.pem")),
            cert: self.0.join(format!("{name}.pem")),
            key: self.0.join(format!("{name}-key.pem")),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Overwrites cert and key in place (same inodes).
pub fn write_svid(files: &TlsFiles, svid: &Svid) {
    std::fs::write(&files.cert, &svid.cert_pem).expect("write cert");
    std::fs::write(&files.key, &svid.key_pem).expect("write key");
}
