//! `cargo xtask certs DIR [--trust-domain corp.example]`: a demo PKI for the
//! agent ↔ collector mutual TLS: a CA and two SPIFFE X.509-SVIDs.
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the CA (`--tls-ca` of both sides); its key signs nothing else |
//! | `collector.pem`, `collector-key.pem` | `spiffe://TD/tiergate/collector`, DNS `localhost`, IP `127.0.0.1` |
//! | `agent.pem`, `agent-key.pem` | `spiffe://TD/ns/tiergate/sa/agent` |
//!
//! Keys are ECDSA P-256 (PKCS#8), mode 0600; everything is valid for 30 days
//! (from 5 minutes ago, for clock skew). For demos and tests only: production
//! SVIDs come from SPIRE or another SPIFFE issuer and rotate on their own.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// How long every certificate is valid.
pub const VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// Backdating of `notBefore`, for hosts whose clocks differ a little.
const SKEW: Duration = Duration::from_secs(300);

/// The files, in the order they are written and returned.
pub const FILES: [&str; 6] = [
    "ca.pem",
    "ca-key.pem",
    "collector.pem",
    "collector-key.pem",
    "agent.pem",
    "agent-key.pem",
];

/// `cargo xtask certs DIR [--trust-domain TD]`.
pub fn run(args: &[String]) -> Result<()> {
    const USAGE: &str = "usage: cargo xtask certs DIR [--trust-domain corp.example]";
    let mut dir = None;
    let mut trust_domain = "corp.example".to_owned();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--trust-domain" => match it.next() {
                Some(td) => trust_domain = td.clone(),
                None => bail!("--trust-domain needs a value\n{USAGE}"),
            },
            s if s.starts_with("--trust-domain=") => {
                trust_domain = s["--trust-domain=".len()..].to_owned();
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            s if dir.is_none() => dir = Some(PathBuf::from(s)),
            s => bail!("unexpected argument {s}\n{USAGE}"),
        }
    }
    let Some(dir) = dir else {
        bail!("{USAGE}");
    };
    write_demo_pki(&dir, &trust_domain)?;
    Ok(())
}

/// Writes the demo PKI into `dir` (created if needed) and returns the paths
/// of [`FILES`].
///
/// Refuses to overwrite: when all six files already exist it says so and
/// does nothing (returning their paths); when only some exist it fails,
/// naming them. A failure half-way removes what this call wrote.
pub fn write_demo_pki(dir: &Path, trust_domain: &str) -> Result<Vec<PathBuf>> {
    check_trust_domain(trust_domain)?;
    let paths: Vec<PathBuf> = FILES.iter().map(|f| dir.join(f)).collect();
    let existing: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    if existing.len() == paths.len() {
        eprintln!(
            "xtask: {} already holds a demo PKI ({}): nothing done (remove the files for a new one)",
            dir.display(),
            FILES.join(", ")
        );
        return Ok(paths);
    }
    if !existing.is_empty() {
        bail!(
            "{}: refusing to overwrite {} (a partial demo PKI?): remove {} or choose another directory",
            dir.display(),
            existing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if existing.len() == 1 { "it" } else { "them" }
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let pki = DemoPki::generate(trust_domain)?;
    let contents = [
        (pki.ca_cert.as_str(), false),
        (pki.ca_key.as_str(), true),
        (pki.collector_cert.as_str(), false),
        (pki.collector_key.as_str(), true),
        (pki.agent_cert.as_str(), false),
        (pki.agent_key.as_str(), true),
    ];
    let mut written = Vec::new();
    for (path, (pem, secret)) in paths.iter().zip(contents) {
        if let Err(e) = write_new(path, pem, secret) {
            for p in &written {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        written.push(path.clone());
    }
    eprintln!(
        "xtask: wrote a demo PKI for trust domain {trust_domain} to {} (valid {} days): \
         collector spiffe://{trust_domain}/tiergate/collector, agent spiffe://{trust_domain}/ns/tiergate/sa/agent",
        dir.display(),
        VALIDITY.as_secs() / 86_400
    );
    Ok(paths)
}

/// The PEM texts of a demo PKI.
struct DemoPki {
    ca_cert: String,
    ca_key: String,
    collector_cert: String,
    collector_key: String,
    agent_cert: String,
    agent_key: String,
}

impl DemoPki {
    fn generate(trust_domain: &str) -> Result<DemoPki> {
        let now = SystemTime::now();
        let not_before = now - SKEW;
        let not_after = now + VALIDITY;

        let mut ca = CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("tiergate demo CA ({trust_domain})"),
        );
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = not_before.into();
        ca.not_after = not_after.into();
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca, ca_key).context("signing the CA certificate")?;

        let svid = |id: String, dns: &[&str], ips: &[IpAddr]| -> Result<(String, String)> {
            let mut p = CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(DnType::OrganizationName, "tiergate demo");
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p.use_authority_key_identifier_extension = true;
            p.not_before = not_before.into();
            p.not_after = not_after.into();
            p.subject_alt_names.push(SanType::URI(
                id.clone()
                    .try_into()
                    .with_context(|| format!("{id} is not an IA5 string"))?,
            ));
            for d in dns {
                p.subject_alt_names
                    .push(SanType::DnsName((*d).try_into().context("DNS SAN")?));
            }
            for ip in ips {
                p.subject_alt_names.push(SanType::IpAddress(*ip));
            }
            let key = KeyPair::generate().context("generating a key")?;
            let cert = p
                .signed_by(&key, &ca)
                .with_context(|| format!("signing the certificate of {id}"))?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (collector_cert, collector_key) = svid(
            format!("spiffe://{trust_domain}/tiergate/collector"),
            &["localhost"],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )?;
        let (agent_cert, agent_key) = svid(
            format!("spiffe://{trust_domain}/ns/tiergate/sa/agent"),
            &[],
            &[],
        )?;
        Ok(DemoPki {
            ca_cert: ca.pem(),
            ca_key: ca_key_pem,
            collector_cert,
            collector_key,
            agent_cert,
            agent_key,
        })
    }
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`.
fn check_trust_domain(td: &str) -> Result<()> {
    if td.is_empty()
        || !td
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        bail!(
            "--trust-domain {td:?}: a SPIFFE trust domain is lowercase letters, digits, `.`, `-` and `_` (e.g. corp.example)"
        );
    }
    Ok(())
}

/// Creates `path` (never overwriting) with `pem`; keys get mode 0600 from
/// the start, certificates 0644.
fn write_new(path: &Path, pem: &str, secret: bool) -> Result<()> {
    let mode = if secret { 0o600 } else { 0o644 };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // The umask may have removed bits; set exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            TempDir(std::env::temp_dir().join(format!(
                "tiergate-certs-{tag}-{}-{nanos}",
                std::process::id()
            )))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn writes_six_files_with_private_keys() {
        let tmp = TempDir::new("write");
        let dir = tmp.0.join("pki");
        let paths = write_demo_pki(&dir, "corp.example").expect("write");
        assert_eq!(paths.len(), 6);
        for (path, name) in paths.iter().zip(FILES) {
            assert_eq!(path, &dir.join(name));
            let text = fs::read_to_string(path).expect("read");
            let mode = fs::metadata(path).expect("stat").permissions().mode() & 0o777;
            if name.ends_with("-key.pem") {
                assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{name}");
                assert_eq!(mode, 0o600, "{name}");
            } else {
                assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{name}");
                assert_eq!(mode, 0o644, "{name}");
            }
        }
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let tmp = TempDir::new("exists");
        let paths = write_demo_pki(&tmp.0, "corp.example").expect("write");
        let before: Vec<String> = paths
            .iter()
            .map(|p| fs::read_to_string(p).expect("read"))
            .collect();

        // All present: nothing done, same paths.
        assert_eq!(
            write_demo_pki(&tmp.0, "corp.example").expect("again"),
            paths
        );
        let after: Vec<String> = paths
            .iter()
            .map(|p| fs::read_to_string(p).expect("read"))
            .collect();
        assert_eq!(before, after);

        // Some present: refused, naming them, nothing written.
        fs::remove_file(&paths[3]).expect("rm");
        fs::remove_file(&paths[5]).expect("rm");
        let err = write_demo_pki(&tmp.0, "corp.example")
            .expect_err("partial")
            .to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert!(err.contains(&paths[0].display().to_string()), "{err}");
        assert!(!err.contains(&paths[3].display().to_string()), "{err}");
        assert!(!paths[3].exists() && !paths[5].exists());
        assert_eq!(fs::read_to_string(&paths[0]).expect("read"), before[0]);
    }

    #[test]
    fn bad_arguments() {
        let tmp = TempDir::new("args");
        for td in [
            "",
            "Corp.example",
            "corp.example/x",
            "spiffe://corp.example",
        ] {
            let err = write_demo_pki(&tmp.0, td).expect_err(td).to_string();
            assert!(err.starts_with("--trust-domain"), "{err}");
        }
        assert!(!tmp.0.exists(), "nothing created");
        assert!(run(&[]).is_err());
        assert!(run(&["--bogus".into()]).is_err());
        assert!(run(&["a".into(), "b".into()]).is_err());
        assert!(run(&["a".into(), "--trust-domain".into()]).is_err());
    }
}
