//! Connect load: client processes in a cgroup, outputs summed, agent CPU/RSS sampled.

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
        let apid = self.agent.as_ref().map(|a| a.child.id());
        let (t0, _) = apid.map(proc_usage).unwrap_or((0, 0));
        let mut cs = Vec::with_capacity(procs);
        for _ in 0..procs {
            cs.push(
                Command::new(&self.me)
                    .arg("client")
                    .arg("--cgroup")
                    .arg(cg)
                    .args(["--netns", &self.netns, "--mode", mode, "--to", to])
                    .args(["--secs", &secs.to_string()])
                    .stdout(Stdio::piped())
                    .spawn()?,
            );
        }
        let mut rss = 0;
        while cs.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
            if let Some(p) = apid {
                rss = rss.max(proc_usage(p).1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (t1, _) = apid.map(proc_usage).unwrap_or((0, 0));
        let mut sum = serde_json::Map::new();
        for mut c in cs {
            c.wait()?;
            let mut out = String::new();
            c.stdout.take().expect("stdout").read_to_string(&mut out)?;
            let v: serde_json::Value = serde_json::from_str(out.trim())
                .with_context(|| format!("client output {out:?}"))?;
            for (k, x) in v.as_object().context("client output is not an object")? {
                let prev = sum.get(k).and_then(|p| p.as_f64()).unwrap_or(0.0);
                let x = x.as_f64().unwrap_or(0.0);
                // Durations: the longest; counts and rates: the sum.
                let merged = if k == "secs" { prev.max(x) } else { prev + x };
                sum.insert(k.clone(), merged_number(k, merged));
            }
        }
        Ok((serde_json::Value::Object(sum), t1.saturating_sub(t0), rss))
    }
}

/// Counts stay integers (callers read them with `as_u64`).
fn merged_number(key: &str, x: f64) -> serde_json::Value {
    if key == "secs" || key == "rate" {
        serde_json::json!(x)
    } else {
        serde_json::json!(x as u64)
    }
}
