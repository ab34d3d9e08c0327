//! Resolvers other than glibc's for the DNS tests
//! (`tests/tests/dns_resolvers.rs`): a static musl client (`musl-gcc
//! -static`), the same C client against glibc (`cc`, for its RFC 6724
//! sort) and a pure-Go one (`go build`, CGO_ENABLED=0, run with
//! GODEBUG=netdns=go), each built at test time from
//! `tests/src/resolvers/lookup.{c,go}` into the target directory and cached
//! there by a hash of its source and compiler version. Each looks a name up,
//! connects (TCP) to the first address and prints `ok ADDR`,
//! `connect ERRNO ADDR` or its resolver's error, then `addresses ...`.
//!
//! The set-up (`cargo xtask setup`) installs the compilers (Debian's
//! `musl-tools` and `golang-go`); without them the tests fail saying so.
//! The Go build is offline: standard library only, GOPROXY=off,
//! GOTOOLCHAIN=local, its caches under the target directory.
//!
//! A second DNS server ([`serve_big_zone`]) holds the world's zone plus
//! [`BIG_NAME`], whose answer is over 512 bytes: over UDP it is truncated
//! (TC=1), a resolver must retry over TCP.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::dns_world::{World, ZONE};
use crate::{probe_bin, sh, spawn_ready};

const LOOKUP_C: &str = include_str!("resolvers/lookup.c");
const LOOKUP_GO: &str = include_str!("resolvers/lookup.go");

/// The name with the long answer, and its addresses.
pub const BIG_NAME: &str = "big.example.test";
pub const BIG_COUNT: u32 = 40;
/// The server of [`serve_big_zone`] (the policy's resolver in these tests).
pub const BIG_RESOLVER: &str = "10.53.0.54";

/// [`BIG_NAME`]'s addresses: 198.18.1.1 to 198.18.1.40.
pub fn big_addresses() -> Vec<String> {
    (1..=BIG_COUNT).map(|i| format!("198.18.1.{i}")).collect()
}

/// Starts a DNS server on [`BIG_RESOLVER`] in `w`'s namespace answering
/// the world's zone and [`BIG_NAME`]; returns its query log.
pub fn serve_big_zone(w: &mut World) -> PathBuf {
    let mut zone = String::from(ZONE);
    for a in big_addresses() {
        zone.push_str(&format!("{BIG_NAME} 30 A {a}\n"));
    }
    let (zone_path, log) = (w.f.dir.join("big.zone"), w.f.dir.join("big.log"));
    std::fs::write(&zone_path, zone).expect("zone");
    sh(
        "ip",
        &[
            "-n",
            &w.f.netns,
            "addr",
            "add",
            &format!("{BIG_RESOLVER}/32"),
            "dev",
            "lo",
        ],
    );
    w.children.push(spawn_ready(&[
        "--netns",
        &w.f.netns,
        "dns-serve",
        &format!("{BIG_RESOLVER}:53"),
        zone_path.to_str().expect("utf-8"),
        log.to_str().expect("utf-8"),
    ]));
    log
}

/// A built client and how it runs.
pub struct Client {
    pub label: &'static str,
    bin: PathBuf,
    env: Vec<(&'static str, &'static str)>,
}

/// What a client printed.
#[derive(Debug)]
pub struct Lookup {
    /// `ok ADDR`, `connect ERRNO ADDR`, `gai EAI_...` (musl) or
    /// `lookup KIND MESSAGE` (Go).
    pub result: String,
    /// Every address the lookup returned (empty when it failed).
    pub addresses: Vec<String>,
    pub stderr: String,
}

impl Client {
    /// The static musl client.
    pub fn musl() -> Client {
        let version = tool_version("musl-gcc", &["-dumpversion"], "musl-tools");
        let bin = cached("musl", &[LOOKUP_C, &version], |dir, out| {
            let src = dir.join("lookup.c");
            std::fs::write(&src, LOOKUP_C).expect("write lookup.c");
            let mut c = Command::new("musl-gcc");
            c.args(["-static", "-O2", "-Wall", "-Werror", "-o"])
                .arg(out)
                .arg(&src);
            c
        });
        Client {
            label: "musl",
            bin,
            env: Vec::new(),
        }
    }

    /// The same C client against the system's glibc (`cc`, dynamic):
    /// getaddrinfo(NAME, PORT) with glibc's RFC 6724 sort, which connects a
    /// UDP socket to every answered address on PORT (`rfc3484_sort`).
    pub fn glibc() -> Client {
        let version = tool_version("cc", &["--version"], "gcc");
        let bin = cached("glibc", &[LOOKUP_C, &version], |dir, out| {
            let src = dir.join("lookup.c");
            std::fs::write(&src, LOOKUP_C).expect("write lookup.c");
            let mut c = Command::new("cc");
            c.args(["-O2", "-Wall", "-Werror", "-o"]).arg(out).arg(&src);
            c
        });
        Client {
            label: "glibc",
            bin,
            env: Vec::new(),
        }
    }

    /// The pure-Go client.
    pub fn go() -> Client {
        let version = tool_version("go", &["version"], "golang-go");
        let bin = cached("go", &[LOOKUP_GO, &version], |dir, out| {
            let src = dir.join("src");
            std::fs::create_dir_all(&src).expect("go src dir");
            std::fs::write(src.join("main.go"), LOOKUP_GO).expect("write main.go");
            std::fs::write(src.join("go.mod"), "module tglookup\n\ngo 1.19\n").expect("go.mod");
            let shared = profile_dir().join("resolver-clients");
            let mut c = Command::new("go");
            c.current_dir(&src)
                .args(["build", "-trimpath", "-o"])
                .arg(out)
                .arg(".")
                .env("GOENV", "off")
                .env("GOCACHE", shared.join("go-cache"))
                .env("GOPATH", shared.join("go-path"))
                .env("GOFLAGS", "-mod=mod -buildvcs=false")
                .env("GOPROXY", "off")
                .env("GOTOOLCHAIN", "local")
                .env("GO111MODULE", "on")
                .env("CGO_ENABLED", "0");
            c
        });
        Client {
            label: "go",
            bin,
            env: vec![("GODEBUG", "netdns=go")],
        }
    }

    /// Runs the client in cgroup `rel` of `w`'s namespace with resolver file
    /// `resolv` (as [`World::probe`] runs tg-probe): looks `name` up and
    /// connects to its first address on `port`.
    pub fn lookup(&self, w: &World, rel: &str, resolv: &str, name: &str, port: u16) -> Lookup {
        let dir = w.f.cgroup(rel);
        let out = Command::new(probe_bin())
            .arg("--cgroup")
            .arg(&dir)
            .args(["--netns", &w.f.netns, "--resolv", &w.resolv(resolv), "exec"])
            .arg(&self.bin)
            .args([name, &port.to_string()])
            .envs(self.env.iter().copied())
            .output()
            .expect("run the client");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "{} client {name} failed ({}): {stdout}{stderr}",
            self.label,
            out.status
        );
        let mut lines = stdout.lines();
        let result = lines.next().unwrap_or_default().to_string();
        let addresses = lines
            .find_map(|l| l.strip_prefix("addresses"))
            .map(|a| a.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        Lookup {
            result,
            addresses,
            stderr,
        }
    }
}

/// The target profile directory (the test executables' `deps/` parent).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf()
}

/// `cmd args`'s output, the compiler's identity for the cache key; fails
/// the test, naming the set-up, when the tool is missing.
fn tool_version(cmd: &str, args: &[&str], package: &str) -> String {
    let hint = format!(
        "the resolver tests need `{cmd}` (Debian package {package}): run `cargo xtask setup` as root, which installs it"
    );
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => panic!(
            "`{cmd} {}` failed: {}; {hint}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run `{cmd}`: {e}; {hint}"),
    }
}

/// FNV-1a over `parts` (the cache key: stable across builds and Rust
/// versions, unlike `DefaultHasher`).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The client `kind` built from `key`, under the target directory: reused
/// when already there, else built by `build(dir, out)` into a temporary
/// name and renamed into place (test processes running at once never see
/// half a binary; the tests of one process build one at a time, so two
/// threads never write the same temporary file).
fn cached(kind: &str, key: &[&str], build: impl FnOnce(&Path, &Path) -> Command) -> PathBuf {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = profile_dir()
        .join("resolver-clients")
        .join(format!("{kind}-{:016x}", fnv(key)));
    let bin = dir.join("lookup");
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(&dir).expect("client dir");
    let tmp = dir.join(format!("lookup.{}.tmp", std::process::id()));
    let mut cmd = build(&dir, &tmp);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("build the {kind} client: {e}"));
    assert!(
        out.status.success(),
        "building the {kind} client failed ({cmd:?}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &bin).expect("rename the client into place");
    bin
}
