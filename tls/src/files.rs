//! Reading the three PEM files, and rebuilding a configuration when they
//! change ([`Reloading`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{FLAG_CA, FLAG_CERT, FLAG_KEY, TlsError, TlsFiles, spiffe};

/// What the three files hold, checked: a non-empty trust bundle, and our own
/// chain with the private key that matches its first certificate.
pub(crate) struct Material {
    pub roots: Arc<RootCertStore>,
    pub key: Arc<CertifiedKey>,
}

impl Material {
    pub fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<Material, TlsError> {
        let roots = load_roots(&files.ca)?;
        let chain = load_chain(FLAG_CERT, &files.cert)?;
        let key = load_key(&files.key)?;
        let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert_flag: FLAG_CERT,
                cert: files.cert.clone(),
                key_flag: FLAG_KEY,
                key: files.key.clone(),
            },
            other => TlsError::BadKey {
                flag: FLAG_KEY,
                path: files.key.clone(),
                detail: other.to_string(),
            },
        })?;
        Ok(Material {
            roots: Arc::new(roots),
            key: Arc::new(key),
        })
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(flag: &'static str, path: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem {
        flag,
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

/// Every `CERTIFICATE` block of a PEM file, each parsed as X.509 (so that a
/// corrupt block is reported here, with its file, and not at the first
/// handshake). Our own chain is also refused once expired.
fn load_chain(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_owned(),
        });
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for (i, der) in certs.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::BadCertificate {
            flag,
            path: path.to_owned(),
            index: i + 1,
            detail: e.to_string(),
        })?;
        if flag != FLAG_CERT || i != 0 {
            continue;
        }
        let validity = cert.validity();
        let not_after = validity.not_after.timestamp();
        if not_after < now {
            return Err(TlsError::CertificateExpired {
                flag,
                path: path.to_owned(),
                not_after: validity.not_after.to_string(),
                not_after_unix: not_after,
            });
        }
        if validity.not_before.timestamp() > now {
            tracing::warn!(
                file = %path.display(),
                not_before = %validity.not_before,
                "{flag}: the certificate is not valid yet (is this host's clock right?); \
                 peers will refuse it until then"
            );
        }
        if spiffe::ids_for_log(der).is_empty() {
            tracing::warn!(
                file = %path.display(),
                "{flag}: the certificate has no spiffe:// URI SAN; \
                 peers that check SPIFFE IDs will refuse it"
            );
        }
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = load_chain(FLAG_CA, path)?;
    let mut roots = RootCertStore::empty();
    for (i, der) in certs.into_iter().enumerate() {
        if let Ok((_, cert)) = X509Certificate::from_der(&der)
            && !cert.is_ca()
        {
            tracing::warn!(
                file = %path.display(),
                subject = %cert.subject(),
                "{FLAG_CA}: certificate #{} is not a CA certificate (basicConstraints CA:FALSE \
                 or absent); is this a leaf certificate where the CA bundle belongs?",
                i + 1
            );
        }
        roots.add(der).map_err(|e| TlsError::BadCertificate {
            flag: FLAG_CA,
            path: path.to_owned(),
            index: i + 1,
            detail: format!("not usable as a trust anchor: {e}"),
        })?;
    }
    Ok(roots)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(FLAG_KEY, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            flag: FLAG_KEY,
            path: path.to_owned(),
        },
        other => pem_error(FLAG_KEY, path, other),
    })
}

/// Identity of one file's content as the file system shows it. Following
/// symlinks, so a Kubernetes secret volume's `..data` swap shows as a new
/// inode.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FileStamp {
    Present {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    /// `stat` failed (mid-rotation, removed...): the kind of error.
    Missing(std::io::ErrorKind),
}

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        match std::fs::metadata(path) {
            Ok(m) => FileStamp::Present {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            },
            Err(e) => FileStamp::Missing(e.kind()),
        }
    }
}

/// The stamps of ca, cert and key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamps([FileStamp; 3]);

impl Stamps {
    fn of(files: &TlsFiles) -> Stamps {
        Stamps([
            FileStamp::of(&files.ca),
            FileStamp::of(&files.cert),
            FileStamp::of(&files.key),
        ])
    }
}

struct State<T> {
    /// The configuration in use and the stamps of the files it was built from.
    current: T,
    /// Stamps of the last files tried, good or bad: the same bad files are
    /// not tried (and warned about) again until one of them changes.
    tried: Stamps,
}

/// A configuration built from [`TlsFiles`], rebuilt when one of the files
/// changes (device, inode, size, mtime or ctime) and kept as it was when the
/// new files do not build.
pub(crate) struct Reloading<T> {
    files: TlsFiles,
    role: &'static str,
    state: Mutex<State<T>>,
}

impl<T: Clone> Reloading<T> {
    /// Builds the first configuration; errors are returned, not logged.
    pub fn new(
        files: TlsFiles,
        role: &'static str,
        build: impl Fn(&TlsFiles) -> Result<T, TlsError>,
    ) -> Result<Self, TlsError> {
        // Stamp before reading: a change during the read shows as a change
        // next time, and the files are read again.
        let tried = Stamps::of(&files);
        let current = build(&files)?;
        tracing::info!(
            ca = %files.ca.display(),
            cert = %files.cert.display(),
            key = %files.key.display(),
            "{role} TLS configuration loaded"
        );
        Ok(Reloading {
            files,
            role,
            state: Mutex::new(State { current, tried }),
        })
    }

    /// The configuration for the next connection, rebuilt first if a file
    /// changed since the last try.
    pub fn get(&self, build: impl Fn(&TlsFiles) -> Result<T, TlsError>) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Stamps::of(&self.files);
        if now != state.tried {
            state.tried = now;
            match build(&self.files) {
                Ok(next) => {
                    state.current = next;
                    tracing::info!(
                        ca = %self.files.ca.display(),
                        cert = %self.files.cert.display(),
                        key = %self.files.key.display(),
                        "{} TLS files changed: new configuration in use for new connections",
                        self.role
                    );
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "{} TLS files changed but do not load; keeping the previous configuration \
                     until they are fixed (a rotation in progress is retried when the files \
                     change again)",
                    self.role
                ),
            }
        }
        state.current.clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}
