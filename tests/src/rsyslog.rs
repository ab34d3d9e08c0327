//! A real rsyslogd (Debian's `rsyslog` and `rsyslog-gnutls` packages) as a
//! syslog-over-TLS (RFC 5425) receiver on loopback, for the collector's
//! `syslog+tls://` sink.
//!
//! Each [`Rsyslog`] runs its own `rsyslogd -n -f DIR/rsyslog.conf -i
//! DIR/rsyslogd.pid` (never the system service) with its work directory in
//! `DIR/rsyslog-work`. It listens with `imtcp` and the `gtls` stream driver
//! (TLS only, `streamDriver.mode="1"`) on `127.0.0.1:PORT`:
//!
//! - [`ClientAuth::Anon`] (the default, [`Rsyslog::start`]): the server shows
//!   its certificate, the client verifies it; client certificates are not
//!   required (`streamDriver.authMode="anon"`).
//! - [`ClientAuth::CertValid`]: clients must present a certificate signed by
//!   the CA (`streamDriver.authMode="x509/certvalid"`).
//!
//! Every message received goes, through a `jsonf` template, to one JSON line
//! in `DIR/received.jsonl`: PRI, TIMESTAMP, HOSTNAME, APP-NAME, PROCID,
//! MSGID, STRUCTURED-DATA and the raw MSG as a JSON string (control
//! characters are not escaped on receipt, so MSG comes back byte for byte).
//! `maxMessageSize` is 64 KiB (rsyslog's default of 8 KiB would truncate long
//! records). rsyslogd's stdout and stderr go to `DIR/rsyslogd.log`, its own
//! messages (`processInternalMessages`: start, each accepted connection,
//! errors) to `DIR/rsyslogd-internal.log`.
//!
//! Uses std and serde_json only.

use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How rsyslog authenticates TLS clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate needed (`anon`).
    #[default]
    Anon,
    /// A client certificate signed by the CA is required (`x509/certvalid`).
    CertValid,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// 0: a free port.
    pub port: u16,
    pub client_auth: ClientAuth,
    /// rsyslog's `maxMessageSize` (bytes); longer messages are truncated.
    pub max_message_size: usize,
    /// GnuTLS priority string (`gnutlsPriorityString`), e.g.
    /// `NORMAL:-VERS-ALL:+VERS-TLS1.3`; `None`: rsyslog's default (which
    /// negotiates TLS 1.2 with Debian 12's rsyslog).
    pub tls_priority: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            port: 0,
            client_auth: ClientAuth::Anon,
            max_message_size: 64 * 1024,
            tls_priority: None,
        }
    }
}

/// One message as rsyslog parsed it (RFC 5424 fields).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub pri: u8,
    /// rsyslog's RFC 3339 rendering of TIMESTAMP (`2026-11-24T08:00:00.123Z`).
    pub timestamp: String,
    pub hostname: String,
    pub app: String,
    pub procid: String,
    pub msgid: String,
    pub structured_data: String,
    /// MSG exactly as received.
    pub msg: String,
    /// MSG parsed as JSON; `Value::Null` if it is not JSON.
    pub json: Value,
}

/// A running rsyslogd; dropping it kills it.
pub struct Rsyslog {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

const RECEIVED: &str = "received.jsonl";
const LOG: &str = "rsyslogd.log";
const INTERNAL: &str = "rsyslogd-internal.log";
const CONF: &str = "rsyslog.conf";
const PID: &str = "rsyslogd.pid";

impl Rsyslog {
    /// Starts rsyslogd (anon client auth, 64 KiB messages, a free port) with
    /// its files in `dir` (created if missing), and waits until it accepts
    /// connections. Panics with rsyslogd's own output if it cannot start.
    pub fn start(dir: &Path, ca_pem: &Path, cert_pem: &Path, key_pem: &Path) -> Rsyslog {
        Rsyslog::start_with(dir, ca_pem, cert_pem, key_pem, Options::default())
    }

    pub fn start_with(
        dir: &Path,
        ca_pem: &Path,
        cert_pem: &Path,
        key_pem: &Path,
        options: Options,
    ) -> Rsyslog {
        fs::create_dir_all(dir.join("rsyslog-work"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let dir = dir
            .canonicalize()
            .unwrap_or_else(|e| panic!("cannot resolve {}: {e}", dir.display()));
        let absolute = |p: &Path| {
            p.canonicalize()
                .unwrap_or_else(|e| panic!("rsyslog: cannot use {}: {e}", p.display()))
        };
        let port = match options.port {
            0 => free_port(),
            port => port,
        };
        let auth = match options.client_auth {
            ClientAuth::Anon => "anon",
            ClientAuth::CertValid => "x509/certvalid",
        };
        let config = format!(
            r#"# Written by the tiergate test harness (tests/src/rsyslog.rs).
global(
  workDirectory="{work}"
  maxMessageSize="{max}"
  processInternalMessages="on"
  parser.escapeControlCharactersOnReceive="off"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}"
       notifyOnConnectionOpen="on"{priority})
template(name="tiergate-received" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
ruleset(name="tiergate") {{
  action(type="omfile" file="{received}" template="tiergate-received")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="tiergate")
# rsyslogd's own messages (start, connections, errors).
*.* action(type="omfile" file="{internal}")
"#,
            work = quoted(&dir.join("rsyslog-work")),
            max = options.max_message_size,
            ca = quoted(&absolute(ca_pem)),
            cert = quoted(&absolute(cert_pem)),
            key = quoted(&absolute(key_pem)),
            received = quoted(&dir.join(RECEIVED)),
            internal = quoted(&dir.join(INTERNAL)),
            priority = match &options.tls_priority {
                Some(p) => {
                    assert!(
                        !p.contains(['"', '\\', '\n']),
                        "unusable priority string {p:?}"
                    );
                    format!(" gnutlsPriorityString=\"{p}\"")
                }
                None => String::new(),
            },
        );
        fs::write(dir.join(CONF), config).unwrap_or_else(|e| panic!("cannot write {CONF}: {e}"));
        for old in [RECEIVED, LOG, INTERNAL] {
            let _ = fs::remove_file(dir.join(old));
        }
        let mut rsyslog = Rsyslog {
            dir,
            port,
            child: None,
        };
        rsyslog.launch();
        rsyslog
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file the received messages go to.
    pub fn received_path(&self) -> PathBuf {
        self.dir.join(RECEIVED)
    }

    /// rsyslogd's output on stdout and stderr (errors), all runs.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join(LOG)).unwrap_or_default()
    }

    /// rsyslogd's own messages (start, connections, errors), all runs.
    pub fn internal_log(&self) -> String {
        fs::read_to_string(self.dir.join(INTERNAL)).unwrap_or_default()
    }

    /// TLS connections accepted so far, all runs.
    pub fn connections(&self) -> usize {
        self.internal_log()
            .lines()
            .filter(|l| l.contains("imtcp: connection established with host"))
            .count()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills rsyslogd (SIGKILL, like a crash) and waits for it. What it had
    /// received stays readable.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops rsyslogd if it runs and starts it again with the same
    /// configuration and port; received messages accumulate.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Messages received so far, in order. Panics on a line that is not
    /// what the template writes.
    pub fn received(&self) -> Vec<Received> {
        let text = match fs::read(self.received_path()) {
            Ok(bytes) => String::from_utf8(bytes).expect("rsyslog wrote invalid UTF-8"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("cannot read {}: {e}", self.received_path().display()),
        };
        // A last line without its newline is still being written.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => return Vec::new(),
        };
        complete.lines().map(parse_line).collect()
    }

    /// Waits until at least `n` messages arrived or `timeout` passed, and
    /// returns what arrived (fewer than `n` on timeout).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "rsyslogd already runs");
        let _ = fs::remove_file(self.dir.join(PID));
        let log_path = self.dir.join(LOG);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let err_log = log.try_clone().expect("dup the log file");
        let bin = rsyslogd();
        let child = Command::new(&bin)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join(CONF))
            .arg("-i")
            .arg(self.dir.join(PID))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (install Debian's rsyslog and rsyslog-gnutls, or set RSYSLOGD)",
                    bin.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                self.fail(&format!("rsyslogd exited with {status}"));
            }
            let pid = self.child.as_ref().map_or(0, Child::id);
            if listening(pid, self.port) {
                return;
            }
            // rsyslogd keeps running without a listener it could not create.
            if self.log().contains("Could not create tcp listener") {
                self.stop();
                self.fail(&format!(
                    "rsyslogd could not listen on 127.0.0.1:{}",
                    self.port
                ));
            }
            if Instant::now() >= deadline {
                self.stop();
                self.fail(&format!(
                    "rsyslogd did not listen on 127.0.0.1:{} within 20s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- rsyslogd output ({}):\n{}\n--- rsyslogd messages:\n{}\n--- config ({}):\n{}\n(is rsyslog-gnutls installed? it provides the gtls stream driver)",
            self.dir.join(LOG).display(),
            self.log(),
            self.internal_log(),
            self.dir.join(CONF).display(),
            fs::read_to_string(self.dir.join(CONF)).unwrap_or_default()
        )
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rsyslogd() -> PathBuf {
    if let Some(bin) = std::env::var_os("RSYSLOGD") {
        return PathBuf::from(bin);
    }
    let sbin = Path::new("/usr/sbin/rsyslogd");
    if sbin.exists() {
        sbin.to_owned()
    } else {
        PathBuf::from("rsyslogd")
    }
}

fn quoted(path: &Path) -> String {
    let s = path.to_str().expect("UTF-8 path");
    assert!(
        !s.contains(['"', '\\', '\n']),
        "rsyslog config: unusable path {s:?}"
    );
    s.to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether process `pid` has a socket listening on 127.0.0.1:`port`: the
/// listening sockets' inodes from /proc/net/tcp, matched against the
/// process's descriptors. (Probing with a connection would make rsyslog log
/// a failed handshake, and would not tell who listens.)
fn listening(pid: u32, port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 9 && fields[1] == want && fields[3] == "0A")
                .then(|| format!("socket:[{}]", fields[9]))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .any(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
}

fn parse_line(line: &str) -> Received {
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("rsyslog output line is not JSON ({e}): {line}"));
    let field = |name: &str| -> String {
        v[name]
            .as_str()
            .unwrap_or_else(|| panic!("rsyslog output line lacks {name}: {line}"))
            .to_owned()
    };
    let msg = field("msg");
    Received {
        pri: field("pri")
            .parse()
            .unwrap_or_else(|_| panic!("bad pri in rsyslog output: {line}")),
        timestamp: field("timestamp"),
        hostname: field("hostname"),
        app: field("app"),
        procid: field("procid"),
        msgid: field("msgid"),
        structured_data: field("sd"),
        json: serde_json::from_str(&msg).unwrap_or(Value::Null),
        msg,
    }
}
