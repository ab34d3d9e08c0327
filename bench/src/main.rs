//! tiergate's benchmark suite (root; see docs/BENCHMARKS.md for the output).
//!
//!   tiergate-bench --tiergate target/release/tiergate --out docs/BENCHMARKS.md [--reps N] [--secs S]
//!
//! Everything runs in a network namespace, a cgroup subtree and a bpffs
//! directory this process creates and removes (also on error). Traffic only
//! goes to addresses on that namespace's `lo` (and, in the metadata section,
//! from the agent's proxy to a fake metadata service on the host's 127.0.0.1).

mod agent;
mod client;
mod connect;
mod dns;
mod dnsclient;
mod dnsreport;
mod dnsstress;
mod events;
mod hooks;
mod load;
mod md;
mod mdclient;
mod mdreport;
mod merge;
mod nft;
mod policy;
mod reload;
mod report;
mod stats;
mod world;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::connect::connect_path;
use crate::dns::dns_path;
use crate::events::event_path;
use crate::md::md_path;
use crate::report::Report;
use crate::world::World;

pub(crate) const ALLOW: &str = "10.20.0.1:80";
pub(crate) const DENY: &str = "10.30.0.1:80";
pub(crate) const WORKLOADS: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("client") => return client::client(&args[1..]),
        Some("flip") => return client::flip(&args[1..]),
        Some("server") => return client::server(&args[1..]),
        Some("gai") => return dnsclient::gai(&args[1..]),
        Some("query") => return dnsclient::query(&args[1..]),
        Some("dns-serve") => return dnsclient::dns_serve(&args[1..]),
        Some("http") => return mdclient::http(&args[1..]),
        Some("imds-serve") => return mdclient::imds_serve(&args[1..]),
        _ => {}
    }
    if let Err(e) = run(&args) {
        eprintln!("tiergate-bench: {e:#}");
        std::process::exit(1);
    }
}

/// The value after the last `name` (so `cargo xtask bench --out X` overrides
/// the default the xtask passes first).
fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .rposition(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

pub(crate) fn say(s: &str) {
    eprintln!("bench: {s}");
}

/// Now, as the report writes it (`2026-12-01 07:35 UTC`).
pub(crate) fn utc_now() -> String {
    sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub(crate) fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(args: &[String]) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root (it loads eBPF programs and creates namespaces)");
    }
    let bin = PathBuf::from(arg(args, "--tiergate").unwrap_or("target/release/tiergate".into()));
    let bin = std::fs::canonicalize(&bin).with_context(|| format!("{}", bin.display()))?;
    let out = PathBuf::from(arg(args, "--out").unwrap_or("docs/BENCHMARKS.md".into()));
    let reps: usize = arg(args, "--reps")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let secs: f64 = arg(args, "--secs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0.5);
    // For working on one part: connect, reload, events, dns, metadata (the document's
    // other sections keep what the last run of theirs wrote).
    let only: Option<Vec<String>> =
        arg(args, "--only").map(|s| s.split(',').map(str::to_string).collect());
    let command = format!("tiergate-bench {}", args.join(" "));
    let fs = sh("stat", &["-f", "-c", "%T", "/sys/fs/bpf"]).unwrap_or_default();
    if !fs.contains("bpf") {
        sh("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }
    sh("nft", &["--version"]).context("nftables (nft) is needed: apt-get install nftables")?;
    let started = Instant::now();
    let mut w = World::new(bin)?;
    w.start_server()?;
    let mut rep = Report {
        reps,
        secs,
        only,
        ..Default::default()
    };
    if rep.wants("connect") || rep.wants("reload") {
        connect_path(&mut w, &mut rep)?;
    }
    if rep.wants("events") {
        event_path(&mut w, &mut rep)?;
    }
    if rep.wants("dns") {
        dns_path(&mut w, &mut rep, &command)?;
    }
    if rep.wants("metadata") {
        md_path(&mut w, &mut rep, &command)?;
    }
    drop(w);
    rep.total_s = started.elapsed().as_secs_f64();
    let previous = std::fs::read_to_string(&out).ok();
    if let (Some(only), Some(_)) = (&rep.only, &previous) {
        let date = utc_now();
        rep.notes.push(format!(
            "{}: `{command}` on {} measured {}; the other sections are from earlier runs (the header describes the last full run).",
            merge::PARTIAL,
            date,
            only.join(", ")
        ));
    }
    let mut md = rep.render(&command);
    if let (Some(only), Some(old)) = (&rep.only, &previous) {
        md = merge::merge(old, &md, only);
    }
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&out, md)?;
    say(&format!("wrote {} ({:.0} s)", out.display(), rep.total_s));
    Ok(())
}
