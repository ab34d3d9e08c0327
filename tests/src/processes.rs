//! The processes a test starts (the agent, `tiergate` commands, probes)
//! and the admin endpoints it reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{probe_bin, tiergate_bin};

/// Runs `tiergate` with arguments; returns (exit code, stdout, stderr).
pub fn run_tiergate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tiergate_bin())
        .args(args)
        .output()
        .expect("run tiergate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running agent.
pub struct Agent {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Agent {
    /// GET on the admin endpoint: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "agent exited with {status} before ready:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!("agent not ready within {timeout:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of a metric line starting with `prefix` (labels included).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        metric_value(&self.get("/metrics")?.1, prefix)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

/// A process parked in cgroup `dir` (for `--pid` lookups); returns once it
/// has joined. The caller kills it.
pub fn hold(dir: &Path) -> Child {
    let dir = dir.to_str().expect("utf-8 cgroup path");
    spawn_ready(&["--cgroup", dir, "hold"])
}

/// Starts `tg-probe args` and waits for its `ready` line (a server
/// listening, a process parked in its cgroup); the caller kills it.
pub fn spawn_ready(args: &[&str]) -> Child {
    let mut child = Command::new(probe_bin())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn probe");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready", "probe {args:?} did not start");
    child
}

/// GET on a loopback admin endpoint (agent or collector): (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of the first metric line starting with `prefix` (labels included).
pub fn metric_value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
