//! A `tiergate collector` process with test SVIDs, and the agent flags
//! that point an agent at it (the delivery, disk-fault and soak tests).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::pki::{Ca, Leaf, Svid, TempDir, TlsFiles};
use crate::{free_port, http_get, metric_value, tiergate_bin};

pub const ALLOW_AGENTS: &str = "spiffe://corp.example/ns/tiergate/sa/*";
pub const COLLECTOR_ID: &str = "spiffe://corp.example/tiergate/collector";

/// A `tiergate collector` process.
pub struct Collector {
    pub child: Option<Child>,
    pub port: u16,
    pub admin: u16,
    pub files: TlsFiles,
    pub sinks: Vec<String>,
    /// More flags (`--store …`).
    pub extra: Vec<String>,
    pub log: PathBuf,
}

impl Collector {
    pub fn start(dir: &Path, files: TlsFiles, sinks: Vec<String>) -> Collector {
        Self::start_with(dir, files, sinks, Vec::new(), "collector.log")
    }

    /// A collector with more flags, logging to `dir/<log>`.
    pub fn start_with(
        dir: &Path,
        files: TlsFiles,
        sinks: Vec<String>,
        extra: Vec<String>,
        log: &str,
    ) -> Collector {
        let mut c = Collector {
            child: None,
            port: free_port(),
            admin: free_port(),
            files,
            sinks,
            extra,
            log: dir.join(log),
        };
        c.restart();
        c
    }

    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(tiergate_bin());
        cmd.arg("collector")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--admin-addr", &format!("127.0.0.1:{}", self.admin)])
            .arg("--tls-ca")
            .arg(&self.files.ca)
            .arg("--tls-cert")
            .arg(&self.files.cert)
            .arg("--tls-key")
            .arg(&self.files.key)
            .args(["--allow-spiffe", ALLOW_AGENTS]);
        for s in &self.sinks {
            cmd.args(["--sink", s]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn collector");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/readyz").map(|(s, _)| s) != Some(200) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("collector exited with {st}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "collector not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean stop (what is buffered is written).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child this struct owns.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path)
    }

    pub fn metric(&self, prefix: &str) -> f64 {
        self.get("/metrics")
            .and_then(|(_, b)| metric_value(&b, prefix))
            .unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: TempDir::new(),
            ca: Ca::new("tiergate test CA"),
        }
    }
    pub fn collector(&self) -> TlsFiles {
        self.dir.write(
            "collector",
            &self.ca.pem(),
            &self.ca.issue(Leaf::collector()),
        )
    }
    pub fn agent(&self, name: &str, svid: &Svid) -> TlsFiles {
        self.dir.write(name, &self.ca.pem(), svid)
    }
}

pub fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

pub fn uids(evs: &[Value]) -> BTreeSet<String> {
    evs.iter()
        .map(|e| e["metadata"]["uid"].as_str().unwrap().to_string())
        .collect()
}

/// The agent flags that send to `c` with `files` and spool in `spool`.
pub fn agent_args(c: &Collector, files: &TlsFiles, spool: &Path) -> Vec<String> {
    vec![
        "--collector".into(),
        format!("https://127.0.0.1:{}", c.port),
        "--tls-ca".into(),
        files.ca.display().to_string(),
        "--tls-cert".into(),
        files.cert.display().to_string(),
        "--tls-key".into(),
        files.key.display().to_string(),
        "--collector-spiffe-id".into(),
        COLLECTOR_ID.into(),
        "--spool".into(),
        spool.display().to_string(),
    ]
}
