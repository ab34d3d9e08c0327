//! `cargo xtask soak [--minutes N] [--seed S]`: the chaos soak, long (the
//! short one runs in `cargo xtask test`). It runs the soak test with the
//! duration in its environment and prints the figures table that
//! docs/RELIABILITY.md holds; the table is also written to
//! `<target>/soak-report.md`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::{cargo, say, status, target_dir};

pub fn run(tiergate: &Path, args: &[String]) -> Result<()> {
    let mut minutes: u64 = 60;
    let mut seed = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .parse::<u64>()
                .with_context(|| format!("{flag}: not a whole number"))
        };
        match a.as_str() {
            "--minutes" => minutes = value("--minutes")?,
            "--seed" => seed = Some(value("--seed")?),
            other => bail!(
                "unknown soak flag {other:?} (usage: cargo xtask soak [--minutes N] [--seed S])"
            ),
        }
    }
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    let report = target_dir().join("soak-report.md");
    say(&format!(
        "chaos soak for {minutes} min; figures → {}",
        report.display()
    ));
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "tiergate-tests",
        "--test",
        "soak",
    ])
    .args(["--", "--nocapture"])
    .env("TIERGATE_BIN", tiergate)
    .env("TIERGATE_SOAK_SECS", (minutes * 60).to_string())
    .env("TIERGATE_SOAK_REPORT", &report);
    if let Some(s) = seed {
        cmd.env("TIERGATE_SOAK_SEED", s.to_string());
    }
    status(&mut cmd)
}
