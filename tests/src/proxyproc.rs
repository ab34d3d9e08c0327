//! `tiergate proxy` beside a test's agent (run with [`separate_args`]):
//! the DNS and metadata proxies in a process of their own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Agent, Fixture, free_port, tiergate_bin};

/// The directory the agent and the proxy share.
pub fn proxy_dir(f: &Fixture) -> PathBuf {
    f.dir.join("proxy")
}

/// The agent's flags for proxies served by `tiergate proxy`.
pub fn separate_args(f: &Fixture) -> Vec<String> {
    vec![
        "--proxies".into(),
        "separate".into(),
        format!("--proxy-dir={}", proxy_dir(f).display()),
    ]
}

/// `tiergate proxy` for `f`, admin on `port`, through `wrapper` when it is
/// not empty, with `extra` flags.
pub fn command(f: &Fixture, port: u16, wrapper: &[&str], extra: &[&str]) -> Command {
    let bin = tiergate_bin();
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.arg("proxy")
        .arg(format!("--proxy-dir={}", proxy_dir(f).display()))
        .arg(format!("--bpffs={}", f.bpffs.display()))
        .arg(format!("--admin-addr=127.0.0.1:{port}"))
        .args(extra)
        .env("TIERGATE_LOG", "info,tiergate=debug");
    cmd
}

/// Starts the proxy (in cgroup `dir` when given) and waits until it serves
/// by the agent's view. Its log is `proxy.log` in the fixture's directory.
pub fn start(f: &Fixture, dir: Option<&Path>, wrapper: &[&str], extra: &[&str]) -> Agent {
    let port = free_port();
    let log = f.dir.join("proxy.log");
    let mut cmd = command(f, port, wrapper, extra);
    if let Some(dir) = dir {
        let procs =
            std::ffi::CString::new(dir.join("cgroup.procs").to_str().expect("utf-8").as_bytes())
                .expect("no NUL");
        // SAFETY: between fork and exec only async-signal-safe calls
        // (open, write, close) on memory prepared before the fork.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("proxy log"),
        )
        .spawn()
        .expect("spawn tiergate proxy");
    let mut p = Agent { child, port, log };
    p.wait_ready(Duration::from_secs(30));
    p
}
