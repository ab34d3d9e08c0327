//! Real handshakes over loopback TCP between [`ServerTls`] and [`ClientTls`]
//! (or bare rustls clients where a misbehaving one is needed), with
//! certificates made by rcgen in the test.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use tiergate_testpki::{
    AGENT_ID, COLLECTOR_ID, Ca, Leaf, OTHER_ID, Svid, TD, TempDir, TlsFiles, write_svid,
};

// ---------------------------------------------------------------- harness

/// Events logged while a [`Logs`] guard is alive on this thread.
struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    fn capture() -> Logs {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let guard = tracing::subscriber::set_default(Capture(lines.clone()));
        Logs {
            lines,
            _guard: guard,
        }
    }

    fn warnings(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("WARN "))
            .cloned()
            .collect()
    }

    fn clear(&self) {
        self.lines.lock().unwrap().clear();
    }
}

struct Capture(Arc<Mutex<Vec<String>>>);

struct Visitor(String);

impl tracing::field::Visit for Visitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut v = Visitor(event.metadata().level().to_string());
        event.record(&mut v);
        self.0.lock().unwrap().push(v.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

type Recorded = Arc<Mutex<Vec<Rejection>>>;

fn recorder() -> (OnReject, Recorded) {
    let seen: Recorded = Arc::default();
    let s = seen.clone();
    (
        Arc::new(move |r: &Rejection| s.lock().unwrap().push(r.clone())),
        seen,
    )
}

fn labels(rec: &Recorded) -> Vec<&'static str> {
    rec.lock().unwrap().iter().map(Rejection::label).collect()
}

fn pattern(p: &str) -> SpiffePattern {
    SpiffePattern::parse(p).expect("pattern")
}

/// A CA, the collector's files (serial 1) and the agent's files (serial 1).
struct Pki {
    dir: TempDir,
    ca: Ca,
    collector: TlsFiles,
    agent: TlsFiles,
}

fn pki() -> Pki {
    let dir = TempDir::new();
    let ca = Ca::new("tiergate test CA");
    let collector = dir.write("collector", &ca.pem(), &ca.issue(Leaf::collector()));
    let agent = dir.write("agent", &ca.pem(), &ca.issue(Leaf::agent()));
    Pki {
        dir,
        ca,
        collector,
        agent,
    }
}

fn start_server(files: &TlsFiles) -> (ServerTls, Recorded) {
    let (on_reject, rec) = recorder();
    let allow = vec![pattern(&format!("spiffe://{TD}/ns/tiergate/sa/*"))];
    (
        ServerTls::new(files.clone().into(), allow, on_reject).expect("server tls"),
        rec,
    )
}

fn name(host: &str) -> ServerName<'static> {
    ClientTls::server_name(host).expect("server name")
}

fn serial(der: &[u8]) -> u64 {
    let (_, cert) = X509Certificate::from_der(der).expect("x509");
    let digits = cert.serial.to_u64_digits();
    assert!(digits.len() <= 1, "serial fits u64");
    digits.first().copied().unwrap_or(0)
}

#[derive(Debug)]
struct ServerSeen {
    peer_id: Option<String>,
    peer_serial: u64,
    alpn: Option<Vec<u8>>,
}

#[derive(Debug)]
struct ClientSeen {
    server_serial: u64,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
}

struct Outcome {
    server: Result<ServerSeen, String>,
    client: Result<ClientSeen, String>,
}

impl Outcome {
    fn ok(self) -> (ServerSeen, ClientSeen) {
        match (self.server, self.client) {
            (Ok(s), Ok(c)) => (s, c),
            (s, c) => panic!("handshake failed: server {s:?}, client {c:?}"),
        }
    }

    /// Both sides failed; the client's error.
    fn refused(self) -> String {
        assert!(self.server.is_err(), "server accepted: {:?}", self.server);
        self.client.expect_err("client should fail")
    }
}

/// One connection over loopback: the server accepts with
/// [`ServerTls::accept`] and sends "ok"; the client connects and reads it
/// (with TLS 1.3 a client learns that the server refused its certificate
/// only when it reads).
async fn exchange(
    server: &ServerTls,
    connector: TlsConnector,
    name: ServerName<'static>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let srv = async {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = server.accept(tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let seen = ServerSeen {
            peer_id: ServerTls::peer_spiffe_id(conn),
            peer_serial: serial(&conn.peer_certificates().expect("client certificate")[0]),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(seen)
    };
    let cli = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ok");
        let (_, conn) = tls.get_ref();
        Ok::<_, String>(ClientSeen {
            server_serial: serial(&conn.peer_certificates().expect("server certificate")[0]),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: conn.protocol_version(),
        })
    };
    let (server, client) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(srv, cli) })
            .await
            .expect("handshake timed out");
    Outcome { server, client }
}

/// A bare rustls client trusting `ca_pem`, presenting `cert` (or nothing),
/// for clients [`ClientTls`] will not be (expired, no certificate, TLS 1.2
/// only, a key that does not match).
fn raw_client(
    ca_pem: &str,
    cert: Option<Arc<dyn ResolvesClientCert>>,
    versions: &[&'static SupportedProtocolVersion],
) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
    let mut config = match cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// `svid`'s chain, signing with `key_pem` (its own key unless overridden).
fn resolver(svid: &Svid, key_pem: &str) -> Arc<dyn ResolvesClientCert> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(svid.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key pem");
    let key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .expect("key");
    Arc::new(SingleCertAndKey::from(CertifiedKey::new(chain, key)))
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn mutual_tls_succeeds_and_server_sees_the_agent_id() {
    let p = pki();
    let (server, rec) = start_server(&p.collector);
    let client = ClientTls::new(p.agent.clone().into(), None).expect("client tls");

    for host in ["localhost", "127.0.0.1"] {
        let (s, c) = exchange(&server, client.connector(), name(host)).await.ok();
        assert_eq!(s.peer_id.as_deref(), Some(AGENT_ID));
        assert_eq!(s.peer_serial, 1);
        assert_eq!(c.server_serial, 1);
        assert_eq!(s.alpn.as_deref(), Some(ALPN_H2));
        assert_eq!(c.alpn.as_deref(), Some(ALPN_H2));
        assert_eq!(c.version, Some(rustls::ProtocolVersion::TLSv1_3));
    }

    // SPIFFE-style client: same result.
    let spiffe_client =
        ClientTls::new(p.agent.clone().into(), Some(pattern(COLLECTOR_ID))).expect("client tls");
    let (s, _) = exchange(&server, spiffe_client.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(s.peer_id.as_deref(), Some(AGENT_ID));
    assert!(labels(&rec).is_empty());
}

#[tokio::test]
async fn tls12_is_accepted() {
    let p = pki();
    let (server, rec) = start_server(&p.collector);
    let agent = p.ca.issue(Leaf::agent().serial(7));
    let tls12 = raw_client(
        &p.ca.pem(),
        Some(resolver(&agent, &agent.key_pem)),
        &[&rustls::version::TLS12],
    );
    let (s, c) = exchange(&server, tls12, name("localhost")).await.ok();
    assert_eq!(c.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(s.peer_id.as_deref(), Some(AGENT_ID));
    assert_eq!(s.peer_serial, 7);
    assert_eq!(s.alpn.as_deref(), Some(ALPN_H2));
    assert!(labels(&rec).is_empty());
}

#[tokio::test]
async fn bad_clients_are_refused_with_the_right_reason() {
    let p = pki();
    let other_ca = Ca::new("another CA");
    // Same subject as ours, different key: its certificates name our CA as
    // issuer but are not signed by it.
    let lookalike_ca = Ca::new("tiergate test CA");
    let mut two_ids = Leaf::agent();
    two_ids.uris.push(OTHER_ID.into());
    let cases: Vec<(&str, Svid, &str)> = vec![
        (
            "other SPIFFE ID",
            p.ca.issue(Leaf::new().uri(OTHER_ID)),
            "spiffe-not-allowed",
        ),
        (
            "other trust domain",
            p.ca.issue(Leaf::new().uri("spiffe://evil.example/ns/tiergate/sa/agent")),
            "spiffe-not-allowed",
        ),
        ("two SPIFFE IDs", p.ca.issue(two_ids), "spiffe-not-allowed"),
        (
            "invalid SPIFFE ID",
            p.ca.issue(Leaf::new().uri("spiffe://corp.example/ns/tiergate/sa/agent/")),
            "spiffe-not-allowed",
        ),
        ("expired", p.ca.issue(Leaf::agent().expired()), "expired"),
        (
            "not yet valid",
            p.ca.issue(Leaf::agent().not_yet_valid()),
            "not-yet-valid",
        ),
        ("other CA", other_ca.issue(Leaf::agent()), "unknown-ca"),
        (
            "CA with our CA's name",
            lookalike_ca.issue(Leaf::agent()),
            "unknown-ca",
        ),
        ("no URI SAN", p.ca.issue(Leaf::new()), "no-spiffe-id"),
        (
            "https URI SAN only",
            p.ca.issue(Leaf::new().uri("https://corp.example/agent")),
            "no-spiffe-id",
        ),
    ];
    let (server, rec) = start_server(&p.collector);
    let logs = Logs::capture();
    for (what, svid, want) in cases {
        rec.lock().unwrap().clear();
        logs.clear();
        let client = raw_client(&p.ca.pem(), Some(resolver(&svid, &svid.key_pem)), BOTH);
        let err = exchange(&server, client, name("localhost")).await.refused();
        assert_eq!(labels(&rec), [want], "{what}: callback once with {want}");
        let warnings = logs.warnings();
        assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
        assert!(
            warnings[0].contains(&format!("reason={want}")),
            "{what}: {}",
            warnings[0]
        );
        assert!(
            warnings[0].contains("peer_spiffe_ids="),
            "{what}: {}",
            warnings[0]
        );
        assert!(!warnings[0].contains("PRIVATE KEY"), "{what}");
        // The client is told why (a TLS alert).
        assert!(err.contains("alert"), "{what}: {err}");
    }
    // The refused SPIFFE IDs are in the rejection.
    rec.lock().unwrap().clear();
    let svid = p.ca.issue(Leaf::new().uri(OTHER_ID));
    let client = raw_client(&p.ca.pem(), Some(resolver(&svid, &svid.key_pem)), BOTH);
    exchange(&server, client, name("localhost")).await.refused();
    assert_eq!(
        *rec.lock().unwrap(),
        [Rejection::SpiffeNotAllowed {
            ids: vec![OTHER_ID.to_owned()]
        }]
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let p = pki();
    let (server, rec) = start_server(&p.collector);
    let logs = Logs::capture();
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        rec.lock().unwrap().clear();
        let client = raw_client(&p.ca.pem(), None, versions);
        let err = exchange(&server, client, name("localhost")).await.refused();
        assert_eq!(labels(&rec), ["no-certificate"], "{err}");
    }
    assert!(
        logs.warnings()
            .iter()
            .all(|w| w.contains("reason=no-certificate")),
        "{:?}",
        logs.warnings()
    );
}

#[tokio::test]
async fn client_that_cannot_prove_its_key_is_refused() {
    let p = pki();
    let (server, rec) = start_server(&p.collector);
    let agent = p.ca.issue(Leaf::agent());
    let stranger = p.ca.issue(Leaf::agent());
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        rec.lock().unwrap().clear();
        // The agent's certificate, signing with another key.
        let client = raw_client(
            &p.ca.pem(),
            Some(resolver(&agent, &stranger.key_pem)),
            versions,
        );
        exchange(&server, client, name("localhost")).await.refused();
        assert_eq!(labels(&rec), ["bad-chain"]);
    }
}

#[tokio::test]
async fn client_refuses_a_collector_from_an_unknown_ca() {
    let p = pki();
    let other_ca = Ca::new("another CA");
    // The collector trusts our CA (so it would accept the agent) but presents
    // a certificate from another CA.
    let files = p
        .dir
        .write("rogue", &p.ca.pem(), &other_ca.issue(Leaf::collector()));
    let (server, rec) = start_server(&files);
    let logs = Logs::capture();
    for expect in [None, Some(pattern(COLLECTOR_ID))] {
        let client = ClientTls::new(p.agent.clone().into(), expect).expect("client tls");
        let err = exchange(&server, client.connector(), name("localhost"))
            .await
            .refused();
        assert!(
            err.contains("UnknownIssuer") || err.contains("unknown"),
            "{err}"
        );
    }
    // The agent refused; that is not a refusal of a client by the collector.
    assert!(labels(&rec).is_empty());
    assert!(
        logs.warnings()
            .iter()
            .any(|w| w.contains("refused the collector's certificate")
                && w.contains("reason=unknown-ca")),
        "{:?}",
        logs.warnings()
    );
}

#[tokio::test]
async fn expected_collector_spiffe_id_replaces_the_host_name_check() {
    let p = pki();
    let spiffe_client =
        ClientTls::new(p.agent.clone().into(), Some(pattern(COLLECTOR_ID))).expect("client tls");
    let hostname_client = ClientTls::new(p.agent.clone().into(), None).expect("client tls");

    // Right SPIFFE ID, dialled by a name the certificate does not carry.
    let (server, _) = start_server(&p.collector);
    let (s, c) = exchange(
        &server,
        spiffe_client.connector(),
        name("collector.internal"),
    )
    .await
    .ok();
    assert_eq!(s.peer_id.as_deref(), Some(AGENT_ID));
    assert_eq!(c.server_serial, 1);
    // ... which the host-name mode refuses.
    let err = exchange(
        &server,
        hostname_client.connector(),
        name("collector.internal"),
    )
    .await
    .refused();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for"),
        "{err}"
    );

    // Wrong SPIFFE ID, although valid for the host name dialled.
    let impostor = p.dir.write(
        "impostor",
        &p.ca.pem(),
        &p.ca.issue({
            let mut l = Leaf::collector();
            l.uris = vec![format!("spiffe://{TD}/tiergate/not-the-collector")];
            l
        }),
    );
    let (server, _) = start_server(&impostor);
    let err = exchange(&server, spiffe_client.connector(), name("localhost"))
        .await
        .refused();
    assert!(err.contains("the collector's SPIFFE ID is refused (--collector-spiffe-id spiffe://corp.example/tiergate/collector)"), "{err}");
    assert!(err.contains("not-the-collector"), "{err}");
    // Host-name mode does not look at SPIFFE IDs.
    exchange(&server, hostname_client.connector(), name("localhost"))
        .await
        .ok();

    // A collector without any SPIFFE ID.
    let anonymous = p.dir.write(
        "anonymous",
        &p.ca.pem(),
        &p.ca.issue({
            let mut l = Leaf::collector();
            l.uris.clear();
            l
        }),
    );
    let (server, _) = start_server(&anonymous);
    let err = exchange(&server, spiffe_client.connector(), name("localhost"))
        .await
        .refused();
    assert!(err.contains("no spiffe:// URI SAN"), "{err}");
    assert!(err.contains("SPIFFE IDs in its certificate: none"), "{err}");
}

#[tokio::test]
async fn server_rotation_takes_effect_on_the_next_handshake() {
    let p = pki();
    let (server, _) = start_server(&p.collector);
    let client =
        ClientTls::new(p.agent.clone().into(), Some(pattern(COLLECTOR_ID))).expect("client");
    let (_, c) = exchange(&server, client.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(c.server_serial, 1);

    // File timestamps are as coarse as the kernel clock tick: make sure the
    // rewrite does not land in the tick of the first write.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_svid(&p.collector, &p.ca.issue(Leaf::collector().serial(2)));
    let (_, c) = exchange(&server, client.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(c.server_serial, 2);

    // Atomic rotation (write elsewhere, rename over): new inodes.
    let next = p.ca.issue(Leaf::collector().serial(3));
    let staged = p.dir.files("staged");
    write_svid(&staged, &next);
    std::fs::rename(&staged.key, &p.collector.key).expect("rename key");
    std::fs::rename(&staged.cert, &p.collector.cert).expect("rename cert");
    let (_, c) = exchange(&server, client.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(c.server_serial, 3);
}

#[tokio::test]
async fn client_rotation_takes_effect_on_the_next_handshake() {
    let p = pki();
    let (server, _) = start_server(&p.collector);
    let client = ClientTls::new(p.agent.clone().into(), None).expect("client");
    let (s, _) = exchange(&server, client.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(s.peer_serial, 1);

    tokio::time::sleep(Duration::from_millis(20)).await;
    write_svid(&p.agent, &p.ca.issue(Leaf::agent().serial(2)));
    let (s, _) = exchange(&server, client.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(s.peer_serial, 2);
    assert_eq!(s.peer_id.as_deref(), Some(AGENT_ID));
}

#[tokio::test]
async fn bad_files_during_rotation_keep_the_previous_configuration() {
    let p = pki();
    let (server, rec) = start_server(&p.collector);
    let client = ClientTls::new(p.agent.clone().into(), None).expect("client");
    let logs = Logs::capture();

    let next = p.ca.issue(Leaf::collector().serial(2));
    let half = &next.cert_pem[..next.cert_pem.len() / 2];
    let steps: [(&str, &str, &str, &str); 4] = [
        // (what, cert file, key file, expected warning text)
        ("half-written cert", half, &next.key_pem, "not valid PEM"),
        (
            "garbage cert",
            "this is not a certificate\n",
            &next.key_pem,
            "no certificate found in the PEM file",
        ),
        ("empty key", &next.cert_pem, "", "no private key found"),
        (
            "new cert, old key",
            &next.cert_pem,
            &std::fs::read_to_string(&p.collector.key).expect("old key"),
            "does not match the certificate",
        ),
    ];
    for (what, cert, key, warning) in steps {
        logs.clear();
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(&p.collector.cert, cert).expect("write");
        std::fs::write(&p.collector.key, key).expect("write");
        let (_, c) = exchange(&server, client.connector(), name("localhost"))
            .await
            .ok();
        assert_eq!(c.server_serial, 1, "{what}: previous configuration kept");
        let warnings = logs.warnings();
        assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
        assert!(warnings[0].contains(warning), "{what}: {}", warnings[0]);
        assert!(
            warnings[0].contains(&p.collector.cert.display().to_string())
                || warnings[0].contains(&p.collector.key.display().to_string()),
            "{what}: names the file: {}",
            warnings[0]
        );
        assert!(warnings[0].contains("keeping the previous"), "{what}");

        // The same bad files are not retried (nor warned about) again.
        logs.clear();
        let _ = server.acceptor();
        assert!(logs.warnings().is_empty(), "{what}: {:?}", logs.warnings());
    }

    // The rotation completes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_svid(&p.collector, &next);
    let (_, c) = exchange(&server, client.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(c.server_serial, next.serial);

    // A file that disappears mid-rotation.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::remove_file(&p.collector.key).expect("rm");
    logs.clear();
    let (_, c) = exchange(&server, client.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(c.server_serial, 2);
    assert!(logs.warnings()[0].contains("cannot read the file"));
    assert!(labels(&rec).is_empty());
}

#[tokio::test]
async fn client_keeps_its_configuration_when_rotated_files_are_bad() {
    let p = pki();
    let (server, _) = start_server(&p.collector);
    let client = ClientTls::new(p.agent.clone().into(), None).expect("client");
    let logs = Logs::capture();
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&p.agent.ca, "-----BEGIN CERTIFICATE-----\nMIIB").expect("write");
    let (s, _) = exchange(&server, client.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(s.peer_serial, 1);
    let warnings = logs.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("--tls-ca"), "{}", warnings[0]);
}

#[tokio::test]
async fn ca_rotation_changes_who_is_trusted() {
    let p = pki();
    let (server, rec) = start_server(&p.collector);
    let new_ca = Ca::new("tiergate test CA 2");
    let old_agent = ClientTls::new(p.agent.clone().into(), None).expect("client");
    let new_agent_files = p
        .dir
        .write("agent2", &p.ca.pem(), &new_ca.issue(Leaf::agent()));
    let new_agent = ClientTls::new(new_agent_files.into(), None).expect("client");

    exchange(&server, old_agent.connector(), name("localhost"))
        .await
        .ok();
    exchange(&server, new_agent.connector(), name("localhost"))
        .await
        .refused();
    assert_eq!(labels(&rec), ["unknown-ca"]);

    // A bundle of both CAs, then the new one alone.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&p.collector.ca, p.ca.pem() + &new_ca.pem()).expect("write");
    exchange(&server, old_agent.connector(), name("localhost"))
        .await
        .ok();
    exchange(&server, new_agent.connector(), name("localhost"))
        .await
        .ok();
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&p.collector.ca, new_ca.pem()).expect("write");
    rec.lock().unwrap().clear();
    exchange(&server, old_agent.connector(), name("localhost"))
        .await
        .refused();
    exchange(&server, new_agent.connector(), name("localhost"))
        .await
        .ok();
    assert_eq!(labels(&rec), ["unknown-ca"]);
}

#[test]
fn bad_files_at_new_are_errors_naming_the_file() {
    let p = pki();
    let allow = || vec![pattern(AGENT_ID)];
    let (on_reject, _) = recorder();
    let server_err = |files: TlsFiles| {
        ServerTls::new(files.into(), allow(), on_reject.clone())
            .expect_err("should fail")
            .to_string()
    };
    let client_err = |files: TlsFiles| {
        ClientTls::new(files.into(), None)
            .expect_err("should fail")
            .to_string()
    };
    let with = |f: &dyn Fn(&mut TlsFiles)| {
        let mut files = p.collector.clone();
        f(&mut files);
        files
    };
    let missing = p.dir.path().join("missing.pem");
    let garbage = p.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").expect("write");
    let half = p.dir.path().join("half.pem");
    let pem = std::fs::read_to_string(&p.collector.cert).expect("read");
    std::fs::write(&half, &pem[..pem.len() / 2]).expect("write");
    let corrupt = p.dir.path().join("corrupt.pem");
    std::fs::write(
        &corrupt,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let expired = p.dir.write(
        "expired",
        &p.ca.pem(),
        &p.ca.issue(Leaf::collector().expired()),
    );
    let d = |p: &std::path::Path| p.display().to_string();

    let cases: Vec<(TlsFiles, String)> = vec![
        (
            with(&|f| f.ca = missing.clone()),
            format!("--tls-ca {}: cannot read the file", d(&missing)),
        ),
        (
            with(&|f| f.cert = missing.clone()),
            format!("--tls-cert {}: cannot read the file", d(&missing)),
        ),
        (
            with(&|f| f.key = missing.clone()),
            format!("--tls-key {}: cannot read the file", d(&missing)),
        ),
        (
            with(&|f| f.cert = p.dir.path().to_owned()),
            format!("--tls-cert {}: cannot read the file", d(p.dir.path())),
        ),
        (
            with(&|f| f.cert = garbage.clone()),
            format!(
                "--tls-cert {}: no certificate found in the PEM file",
                d(&garbage)
            ),
        ),
        (
            with(&|f| f.ca = garbage.clone()),
            format!(
                "--tls-ca {}: no certificate found in the PEM file",
                d(&garbage)
            ),
        ),
        (
            with(&|f| f.cert = half.clone()),
            format!("--tls-cert {}: not valid PEM", d(&half)),
        ),
        (
            with(&|f| f.cert = corrupt.clone()),
            format!(
                "--tls-cert {}: certificate #1 is not a usable X.509 certificate",
                d(&corrupt)
            ),
        ),
        (
            with(&|f| f.key = garbage.clone()),
            format!("--tls-key {}: no private key found", d(&garbage)),
        ),
        (
            with(&|f| f.key = p.agent.key.clone()),
            format!(
                "--tls-key {} does not match the certificate in --tls-cert {}",
                d(&p.agent.key),
                d(&p.collector.cert)
            ),
        ),
        (
            expired.clone(),
            format!(
                "--tls-cert {}: the certificate expired at",
                d(&expired.cert)
            ),
        ),
    ];
    for (files, want) in cases {
        let s = server_err(files.clone());
        assert!(s.starts_with(&want), "server: {s}\n  want: {want}");
        let c = client_err(files);
        assert!(c.starts_with(&want), "client: {c}\n  want: {want}");
    }

    let e = ServerTls::new(p.collector.clone().into(), vec![], on_reject.clone())
        .expect_err("no allowed IDs")
        .to_string();
    assert!(e.starts_with("--allow-spiffe: no SPIFFE ID pattern"), "{e}");
}

#[test]
fn server_names() {
    for ok in [
        "localhost",
        "collector.corp.example",
        "127.0.0.1",
        "::1",
        "[::1]",
    ] {
        assert!(ClientTls::server_name(ok).is_ok(), "{ok}");
    }
    assert!(matches!(
        ClientTls::server_name("[::1]").unwrap(),
        ServerName::IpAddress(_)
    ));
    let e = ClientTls::server_name("not a host!")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--collector \"not a host!\""), "{e}");
}

#[test]
fn spiffe_ids_of_a_certificate() {
    let ca = Ca::new("tiergate test CA");
    let der = |svid: &Svid| {
        CertificateDer::from_pem_slice(svid.cert_pem.as_bytes())
            .expect("pem")
            .to_vec()
    };
    assert_eq!(
        spiffe_ids(&der(&ca.issue(Leaf::collector()))).unwrap(),
        [COLLECTOR_ID]
    );
    let mut l = Leaf::agent().uri("https://corp.example/x").uri(OTHER_ID);
    l.dns.push("localhost".into());
    assert_eq!(
        spiffe_ids(&der(&ca.issue(l))).unwrap(),
        [AGENT_ID, OTHER_ID]
    );
    assert!(spiffe_ids(&der(&ca.issue(Leaf::new()))).unwrap().is_empty());
    let e = spiffe_ids(b"not DER").unwrap_err().to_string();
    assert!(e.starts_with("not a valid DER X.509 certificate"), "{e}");
}

impl From<TlsFiles> for super::TlsFiles {
    fn from(f: TlsFiles) -> Self {
        super::TlsFiles {
            ca: f.ca,
            cert: f.cert,
            key: f.key,
        }
    }
}
