//! Connections held open by a workload: echo servers in a test network
//! namespace that keep each connection, and `tg-probe hold-conns` clients
//! in a test cgroup that report, on demand, which of theirs still work.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use tiergate::dns::netns::Netns;

use crate::{Fixture, probe_bin};

/// Echo servers on each of the space-separated `addrs` in `netns`.
pub fn start_echo_on(netns: &str, addrs: &'static str) {
    let ns = Netns::open(&format!("/run/netns/{netns}")).expect("open test netns");
    let listeners = ns
        .run(move || {
            addrs
                .split(' ')
                .map(|a| TcpListener::bind(a.parse::<SocketAddr>().expect("addr")))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .expect("echo listeners in the test netns");
    for l in listeners {
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut b = [0u8; 64];
                    while let Ok(n @ 1..) = s.read(&mut b) {
                        if s.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
}

/// A `tg-probe hold-conns` client in a cgroup of the test namespace.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    pub fn start_with(f: &Fixture, cgroup: &Path, targets: &[&str]) -> Client {
        let mut child = Command::new(probe_bin())
            .arg("--cgroup")
            .arg(cgroup)
            .args(["--netns", &f.netns, "hold-conns"])
            .args(targets)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hold-conns");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready", "hold-conns did not connect");
        Client {
            child,
            stdin,
            stdout,
        }
    }

    /// One result per held socket, in the order they were given.
    pub fn check(&mut self) -> String {
        writeln!(self.stdin, "check").expect("ask for a check");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read check");
        line.trim().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
