//! The agent under test: start until ready, stop and uninstall; its metrics, CPU and RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tiergate_tests::{free_port, http_get};

use crate::world::World;

/// Sum of every sample whose line starts with `prefix` (NaN when the
/// endpoint does not answer).
pub(crate) fn metric(port: u16, prefix: &str) -> f64 {
    http_get(port, "/metrics")
        .map(|(_, b)| {
            b.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(f64::NAN)
}

/// (utime+stime ticks, VmRSS kB) of a pid.
pub(crate) fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) bpffs: PathBuf,
}

impl World {
    /// Spawns the agent; returns ms from spawn to /readyz 200.
    pub(crate) fn start_agent(
        &mut self,
        tag: &str,
        events: &Path,
        extra: &[String],
    ) -> Result<f64> {
        let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("{}-{tag}", self.name));
        if !self.bpffs.contains(&bpffs) {
            self.bpffs.push(bpffs.clone());
        }
        let port = free_port();
        let log = std::fs::File::create(self.dir.join(format!("agent-{tag}.log")))?;
        let t0 = Instant::now();
        let child = Command::new(&self.bin)
            .arg("agent")
            .arg("--policy")
            .arg(self.policy_path())
            .arg("--cgroup-root")
            .arg(self.cg_base.join("enf"))
            .arg("--bpffs")
            .arg(&bpffs)
            .arg("--events")
            .arg(events)
            .args(["--admin-addr", &format!("127.0.0.1:{port}")])
            .args(["--node-name", "bench"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.agent = Some(Agent { child, port, bpffs });
        loop {
            if let Some((200, _)) = http_get(port, "/readyz") {
                break;
            }
            let a = self.agent.as_mut().expect("agent");
            if let Ok(Some(st)) = a.child.try_wait() {
                bail!(
                    "agent exited ({st}); see {}/agent-{tag}.log",
                    self.dir.display()
                );
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("agent not ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    /// SIGKILL, as a crash: the pins stay (programs keep enforcing, and an
    /// agent started with the same tag re-adopts them). Returns its bpffs.
    pub(crate) fn kill_agent(&mut self) -> Option<PathBuf> {
        let mut a = self.agent.take()?;
        let _ = a.child.kill();
        let _ = a.child.wait();
        Some(a.bpffs)
    }

    pub(crate) fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            // SAFETY: signalling our own child (SIGCONT in case it was stopped).
            unsafe {
                libc::kill(a.child.id() as i32, libc::SIGCONT);
                libc::kill(a.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = a.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = a.child.kill();
            let _ = a.child.wait();
            let _ = Command::new(&self.bin)
                .args(["uninstall", "--bpffs"])
                .arg(&a.bpffs)
                .output();
            let _ = std::fs::remove_dir(&a.bpffs);
        }
    }
}

impl World {
    /// Spawns `tiergate proxy` beside the agent started with `--proxies
    /// separate --proxy-dir dir` on `bpffs`; returns ms from spawn until it
    /// is ready (/readyz 200: serving by the agent's view) and serves at
    /// least one namespace (`tiergate_dns_namespaces`).
    pub(crate) fn start_proxy(&mut self, tag: &str, dir: &Path, bpffs: &Path) -> Result<f64> {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("proxy-{tag}.log")))?;
        let t0 = Instant::now();
        let child = Command::new(&self.bin)
            .arg("proxy")
            .arg("--proxy-dir")
            .arg(dir)
            .arg("--bpffs")
            .arg(bpffs)
            .args(["--admin-addr", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let p = self.proxy.insert(Agent {
            child,
            port,
            bpffs: bpffs.to_path_buf(),
        });
        loop {
            if let Some((200, _)) = http_get(port, "/readyz")
                && metric(port, "tiergate_dns_namespaces") >= 1.0
            {
                break;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!(
                    "tiergate proxy exited ({st}); see {}/proxy-{tag}.log",
                    self.dir.display()
                );
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "tiergate proxy not serving within 30 s; see {}/proxy-{tag}.log",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    /// SIGKILL to the proxy process (the pins stay; nothing is uninstalled).
    pub(crate) fn kill_proxy(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
