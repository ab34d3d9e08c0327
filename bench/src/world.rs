//! The run's sandbox: netns, cgroup tree, bpffs, temp dir, target server; removed on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Result, bail};
use tiergate_tests::{cgroup2_mount, remove_cgroup_tree};

use crate::agent::Agent;
use crate::{ALLOW, DENY, WORKLOADS, sh};

/// Everything the run creates; dropping it removes all of it.
pub(crate) struct World {
    pub(crate) bin: PathBuf,
    pub(crate) me: PathBuf,
    pub(crate) name: String,
    pub(crate) netns: String,
    pub(crate) cg_base: PathBuf,
    pub(crate) cg_path: String,
    pub(crate) dir: PathBuf,
    pub(crate) bpffs: Vec<PathBuf>,
    pub(crate) children: Vec<Child>,
    pub(crate) agent: Option<Agent>,
    /// `tiergate proxy`, beside an agent run with `--proxies separate`.
    pub(crate) proxy: Option<Agent>,
}

impl World {
    pub(crate) fn new(bin: PathBuf) -> Result<Self> {
        let name = format!("tgbench{}", std::process::id());
        let mount = cgroup2_mount();
        let w = World {
            bin,
            me: std::env::current_exe()?,
            netns: name.clone(),
            cg_base: mount.join(&name),
            cg_path: format!("/{name}"),
            dir: std::env::temp_dir().join(&name),
            name,
            bpffs: Vec::new(),
            children: Vec::new(),
            agent: None,
            proxy: None,
        };
        std::fs::create_dir_all(w.dir.join("policy"))?;
        for side in ["enf", "plain"] {
            for i in 0..WORKLOADS {
                std::fs::create_dir_all(w.cg_base.join(format!("{side}/t0/w{i:04}")))?;
            }
            std::fs::create_dir_all(w.cg_base.join(format!("{side}/locked")))?;
        }
        sh("ip", &["netns", "add", &w.netns])?;
        sh("ip", &["-n", &w.netns, "link", "set", "lo", "up"])?;
        for a in ["10.20.0.1/32", "10.30.0.1/32"] {
            sh("ip", &["-n", &w.netns, "addr", "add", a, "dev", "lo"])?;
        }
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &w.netns,
                "sh",
                "-c",
                "echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range; echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; echo 8192 > /proc/sys/net/core/somaxconn",
            ],
        )?;
        Ok(w)
    }

    pub(crate) fn start_server(&mut self) -> Result<()> {
        let ns = self.netns.clone();
        self.spawn_ready(&["server", "--netns", &ns, ALLOW, DENY])
    }

    /// Runs this binary with `args` until the end of the run (its stdin
    /// closing stops it), once it has said "ready".
    pub(crate) fn spawn_ready(&mut self, args: &[&str]) -> Result<()> {
        let mut c = Command::new(&self.me)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().expect("stdout")).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = c.kill();
            let _ = c.wait();
            bail!("{} did not start", args[0]);
        }
        self.children.push(c);
        Ok(())
    }

    pub(crate) fn cg(&self, side: &str, w: usize) -> PathBuf {
        self.cg_base.join(format!("{side}/t0/w{w:04}"))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_proxy();
        self.stop_agent();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for b in &self.bpffs {
            let _ = Command::new(&self.bin)
                .args(["uninstall", "--bpffs"])
                .arg(b)
                .output();
            let _ = std::fs::remove_dir(b);
        }
        remove_cgroup_tree(&self.cg_base);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        // TIERGATE_BENCH_KEEP=1 keeps the agents' logs and files.
        if std::env::var_os("TIERGATE_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
