//! `cargo xtask fuzz [--secs N] [--jobs J] [--seeds] [TARGET...]`: the
//! cargo-fuzz (libFuzzer) targets in `fuzz/`, on the nightly toolchain.
//!
//! Each target runs for `--secs` seconds (default 300) from its committed
//! seed corpus `fuzz/corpus/<target>/`; what libFuzzer finds new goes to a
//! scratch corpus under the target directory (`fuzz-corpus/<target>/`), never
//! into the committed one, and crashes to `fuzz-artifacts/<target>/`. Up to
//! `--jobs` targets run at once (default 1: the machines have 2 cores). A
//! crash, timeout or out-of-memory fails the command, naming the artifact
//! and how to reproduce it. `--seeds` rewrites the committed seeds first
//! (`fuzz/seeds.rs`). `cargo xtask test` runs every target for
//! [`SMOKE_SECS`] seconds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{output, root, say, status, target_dir};

/// Every fuzz target, one per input from outside (README, "Fuzzing").
pub const TARGETS: &[&str] = &[
    "policy_parse",
    "policy_compile",
    "ring_decode",
    "spool_recover",
    "kubepods_path",
    "collector_batch",
    "store_records",
    "sink_spec",
    "cli_flags",
    "dns_messages",
    "metadata_request",
];

/// Seconds per target in `cargo xtask test`: enough to replay the corpus
/// and catch a regression, short enough for CI.
pub const SMOKE_SECS: u64 = 20;

const DEFAULT_SECS: u64 = 300;

/// Installs cargo-fuzz unless it is there (part of `cargo xtask setup`).
pub fn install() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    say("installing cargo-fuzz (crates.io; runs the fuzz targets in fuzz/)");
    status(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
}

/// `cargo xtask fuzz ...`
pub fn run(args: &[String]) -> Result<()> {
    let mut secs = DEFAULT_SECS;
    let mut jobs = 1usize;
    let mut seeds = false;
    let mut targets: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => secs = number(it.next(), "--secs")?,
            "--jobs" => jobs = number(it.next(), "--jobs")?.max(1) as usize,
            "--seeds" => seeds = true,
            t if TARGETS.contains(&t) => targets.push(t.to_owned()),
            other => bail!(
                "unknown fuzz argument {other:?}; usage: cargo xtask fuzz [--secs N] [--jobs J] \
                 [--seeds] [TARGET...]; targets: {}",
                TARGETS.join(" ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    install()?;
    if seeds {
        say("writing the seed corpora (fuzz/seeds.rs)");
        status(cargo_fuzz().args(["fuzz", "build", "-O", "seeds"]))?;
        let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        status(&mut Command::new(
            target_dir().join(triple).join("release/seeds"),
        ))?;
    }
    campaign(&targets, secs, jobs)
}

/// Every target for [`SMOKE_SECS`], one at a time (`cargo xtask test`).
pub fn smoke() -> Result<()> {
    install()?;
    let targets: Vec<String> = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    campaign(&targets, SMOKE_SECS, 1)
}

fn number(v: Option<&String>, flag: &str) -> Result<u64> {
    v.and_then(|s| s.parse().ok())
        .with_context(|| format!("{flag} needs a number"))
}

/// `cargo +nightly` (cargo-fuzz needs nightly's sanitizer flags).
fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.arg(format!("+{}", crate::NIGHTLY));
    c.env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO");
    c.current_dir(root());
    c
}

struct Running {
    target: String,
    child: Child,
    log: PathBuf,
    artifacts: PathBuf,
    started: Instant,
}

fn campaign(targets: &[String], secs: u64, jobs: usize) -> Result<()> {
    say(&format!(
        "building {} fuzz targets (nightly, libFuzzer)",
        targets.len()
    ));
    for t in targets {
        status(cargo_fuzz().args(["fuzz", "build", "-O", t]))?;
    }
    let base = target_dir();
    let mut queue: Vec<&String> = targets.iter().rev().collect();
    let mut running: Vec<Running> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < jobs
            && let Some(t) = queue.pop()
        {
            running.push(start(&base, t, secs)?);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            if let Some(st) = running[i].child.try_wait()? {
                let r = running.swap_remove(i);
                let log = std::fs::read_to_string(&r.log).unwrap_or_default();
                let execs = stat(&log, "stat::number_of_executed_units");
                let corpus = stat(&log, "cov:").or_else(|| stat(&log, "stat::new_units_added"));
                say(&format!(
                    "fuzz {}: {} s, {} runs{}: {}",
                    r.target,
                    r.started.elapsed().as_secs(),
                    execs.as_deref().unwrap_or("?"),
                    corpus.map(|c| format!(", {c}")).unwrap_or_default(),
                    if st.success() { "no crash" } else { "FAILED" }
                ));
                if !st.success() {
                    failures.push(failure(&r, &log));
                }
            } else {
                i += 1;
            }
        }
    }
    if !failures.is_empty() {
        bail!("fuzzing found problems:\n{}", failures.join("\n"));
    }
    Ok(())
}

fn start(base: &Path, target: &str, secs: u64) -> Result<Running> {
    let scratch = base.join("fuzz-corpus").join(target);
    let artifacts = base.join("fuzz-artifacts").join(target);
    let logs = base.join("fuzz-logs");
    for d in [&scratch, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let seeds = root().join("fuzz/corpus").join(target);
    let log = logs.join(format!("{target}.log"));
    let file = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    say(&format!("fuzz {target}: {secs} s (log {})", log.display()));
    let child = cargo_fuzz()
        .args(["fuzz", "run", "-O", target])
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("cannot start fuzz target {target}"))?;
    Ok(Running {
        target: target.to_owned(),
        child,
        log,
        artifacts,
        started: Instant::now(),
    })
}

/// The value after `key` in libFuzzer's output (its last occurrence).
fn stat(log: &str, key: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| {
            let (_, v) = l.split_once(key)?;
            let v = v.trim_start_matches(':').split_whitespace().next();
            Some(v.unwrap_or("").to_owned())
        })
        .filter(|v| !v.is_empty())
        .map(|v| if key == "cov:" { format!("cov {v}") } else { v })
}

/// What failed, where the input is, and how to run it again.
fn failure(r: &Running, log: &str) -> String {
    let artifact = log
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, p)| p.trim().to_owned())
        })
        .or_else(|| newest(&r.artifacts).map(|p| p.display().to_string()));
    let cause = log
        .lines()
        .find(|l| {
            l.contains("panicked at") || l.contains("ERROR: libFuzzer") || l.contains("==ERROR")
        })
        .unwrap_or("no panic message; see the log")
        .trim()
        .to_owned();
    match artifact {
        Some(a) => format!(
            "  {}: {cause}\n    input: {a}\n    again: cargo +nightly fuzz run {} {a}\n    log: {}",
            r.target,
            r.target,
            r.log.display()
        ),
        None => format!(
            "  {}: {cause} (no artifact; log {})",
            r.target,
            r.log.display()
        ),
    }
}

fn newest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}
