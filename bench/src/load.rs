//! Load processes: this binary re-executed in a cgroup, outputs summed, agent CPU/RSS sampled.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::agent::proc_usage;
use crate::world::World;

impl World {
    /// Runs the timed connect loop in a cgroup; while it runs, samples the
    /// agent's CPU ticks and peak RSS. Returns (client JSON, ticks, rss kB).
    pub(crate) fn client(
        &self,
        cg: &Path,
        mode: &str,
        to: &str,
        secs: f64,
    ) -> Result<(serde_json::Value, u64, u64)> {
        self.clients(cg, mode, to, secs, 1)
    }

    /// `procs` client processes side by side in `cg`; their counts and rates
    /// summed. Also returns the agent's CPU ticks and peak RSS (kB) meanwhile.
    pub(crate) fn clients(
        &self,
        cg: &Path,
        mode: &str,
        to: &str,
        secs: f64,
        procs: usize,
    ) -> Result<(serde_json::Value, u64, u64)> {
        let args = [
            "client",
            "--cgroup",
            &cg.to_string_lossy(),
            "--netns",
            &self.netns,
            "--mode",
            mode,
            "--to",
            to,
            "--secs",
            &secs.to_string(),
        ]
        .map(String::from);
        let (outs, ticks, rss) = self.run_procs(&args, procs)?;
        Ok((summed(&outs)?, ticks, rss))
    }

    /// `procs` copies of this binary with `args`, side by side; each one's
    /// JSON output line, and the agent's CPU ticks and peak RSS (kB) meanwhile.
    pub(crate) fn run_procs(
        &self,
        args: &[String],
        procs: usize,
    ) -> Result<(Vec<serde_json::Value>, u64, u64)> {
        let apid = self.agent.as_ref().map(|a| a.child.id());
        let (t0, _) = apid.map(proc_usage).unwrap_or((0, 0));
        let mut cs = Vec::with_capacity(procs);
        for _ in 0..procs {
            let mut c = Command::new(&self.me)
                .args(args)
                .stdout(Stdio::piped())
                .spawn()?;
            // Read while it runs: an output longer than the pipe holds
            // would otherwise block the client before it exits.
            let mut stdout = c.stdout.take().expect("stdout");
            let reader = std::thread::spawn(move || {
                let mut out = String::new();
                stdout.read_to_string(&mut out).map(|_| out)
            });
            cs.push((c, reader));
        }
        let mut rss = 0;
        while cs.iter_mut().any(|(c, _)| matches!(c.try_wait(), Ok(None))) {
            if let Some(p) = apid {
                rss = rss.max(proc_usage(p).1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (t1, _) = apid.map(proc_usage).unwrap_or((0, 0));
        let mut outs = Vec::with_capacity(procs);
        for (mut c, reader) in cs {
            c.wait()?;
            let out = reader
                .join()
                .map_err(|_| anyhow::anyhow!("output reader panicked"))??;
            outs.push(
                serde_json::from_str(out.trim())
                    .with_context(|| format!("{} output {out:?}", args[0]))?,
            );
        }
        Ok((outs, t1.saturating_sub(t0), rss))
    }
}

/// The clients' outputs merged: durations the longest, counts and rates the
/// sum (fields that are not numbers are left out).
pub(crate) fn summed(outs: &[serde_json::Value]) -> Result<serde_json::Value> {
    let mut sum = serde_json::Map::new();
    for v in outs {
        for (k, x) in v.as_object().context("client output is not an object")? {
            let Some(x) = x.as_f64() else { continue };
            let prev = sum.get(k).and_then(|p| p.as_f64()).unwrap_or(0.0);
            let merged = if k == "secs" { prev.max(x) } else { prev + x };
            sum.insert(k.clone(), merged_number(k, merged));
        }
    }
    Ok(serde_json::Value::Object(sum))
}

/// Counts stay integers (callers read them with `as_u64`).
fn merged_number(key: &str, x: f64) -> serde_json::Value {
    if key == "secs" || key == "rate" {
        serde_json::json!(x)
    } else {
        serde_json::json!(x as u64)
    }
}
