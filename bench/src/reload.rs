//! Section 3, policy reload: rename-to-flipped-verdict times; mixed verdicts under swaps.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::report::Report;
use crate::world::World;
use crate::{ALLOW, client, say, sh};

/// Time from the policy file's rename to the flipped verdict, both ways.
pub(crate) fn reload(w: &mut World, rep: &mut Report) -> Result<()> {
    let cg = w.cg("enf", 5);
    for n in [10usize, 1_000, 10_000] {
        for change in [ONE_RULE, ALL_RULES] {
            w.apply_policy(&w.policy(n, true))?;
            let mut sample = 0;
            for r in 0..rep.reps.max(3) {
                for allow_next in [false, true] {
                    say(&format!("reload {n} rules ({change}), sample {}", r + 1));
                    // The agent diffs against the generation it is about to
                    // write (which holds the policy of two swaps ago), so no
                    // sample repeats an earlier policy. ONE_RULE: 10.20.0.1's
                    // rule and one other rule differ from the policy in
                    // force; ALL_RULES: every destination differs.
                    sample += 1;
                    let net = if change == ALL_RULES { 64 + sample } else { 64 };
                    let yaml = w.policy_variant(n, allow_next, net, Some(sample));
                    match reload_sample(w, &cg, &yaml, allow_next)? {
                        Some(ms) => rep.reload_ms.entry((n, change)).or_default().push(ms),
                        None => rep.notes.push(format!(
                            "reload {n} ({change}): verdict did not flip within 10 s"
                        )),
                    }
                    // Let the file watcher settle before the next sample.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    Ok(())
}

pub(crate) const ONE_RULE: &str = "two rules changed";
pub(crate) const ALL_RULES: &str = "every rule changed";

/// Renames `yaml` into place and returns the ms until a client in `cg` sees
/// 10.20.0.1 allowed (`allow`) or denied.
fn reload_sample(w: &World, cg: &Path, yaml: &str, allow: bool) -> Result<Option<f64>> {
    let mut c = Command::new(&w.me)
        .arg("flip")
        .arg("--cgroup")
        .arg(cg)
        .args(["--netns", &w.netns, "--to", ALLOW])
        .args(["--want", if allow { "ok" } else { "denied" }])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(c.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    let tmp = w.policy_path().with_file_name(".policy.tmp");
    std::fs::write(&tmp, yaml)?;
    let t0 = client::mono_ns();
    std::fs::rename(&tmp, w.policy_path())?;
    line.clear();
    out.read_line(&mut line)?;
    c.wait()?;
    let t1: i64 = line.trim().parse().unwrap_or(-1);
    Ok((t1 >= 0).then(|| (t1 as u64 - t0) as f64 / 1e6))
}

/// Alternates two 10k-rule policies while a client connects in a loop;
/// every event's verdict must match its own policy version's.
pub(crate) fn mixed_verdicts(w: &mut World, rep: &mut Report, events: &Path) -> Result<()> {
    say("policy swaps under load (mixed-verdict check)");
    let cgp = format!("{}/enf/t0/w0011", w.cg_path);
    let mut expect = BTreeMap::new();
    for allow in [true, false] {
        let f = w.dir.join(format!("ref-{allow}.yaml"));
        std::fs::write(&f, w.policy(10_000, allow))?;
        let out = sh(
            w.bin.to_str().unwrap_or("tiergate"),
            &[
                "policy",
                "explain",
                "--policy",
                f.to_str().unwrap_or(""),
                "--cgroup",
                &cgp,
                "--to",
                ALLOW,
                "--udp",
                "--json",
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        expect.insert(
            v["policy"]["version"].as_str().unwrap_or("").to_string(),
            v["verdict"].as_str().unwrap_or("").to_string(),
        );
    }
    w.apply_policy(&w.policy(10_000, true))?;
    std::thread::sleep(Duration::from_millis(300));
    let off = std::fs::metadata(events).map(|m| m.len()).unwrap_or(0);
    let phase_start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut c = Command::new(&w.me)
        .arg("client")
        .arg("--cgroup")
        .arg(w.cg("enf", 11))
        .args([
            "--netns", &w.netns, "--mode", "udp", "--to", ALLOW, "--secs", "4",
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let mut swaps = 0;
    let t0 = Instant::now();
    let mut allow = false;
    while t0.elapsed() < Duration::from_millis(3600) {
        w.apply_policy(&w.policy(10_000, allow))?;
        allow = !allow;
        swaps += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    c.wait()?;
    std::thread::sleep(Duration::from_secs(2));
    // Only this phase's client: records written after `off` can include a
    // backlog from earlier phases (the ring holds 65,536 of them), judged
    // under other policies.
    let text = std::fs::read_to_string(events)?;
    let tail = text.get(off as usize..).unwrap_or("");
    let mut mixed = 0;
    let mut n = 0;
    for line in tail.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let t = &e["unmapped"]["tiergate"];
        if t["kind"] != "connection"
            || t["workload"]["cgroup_path"] != cgp.as_str()
            || e["time"].as_u64().unwrap_or(0) < phase_start_ms
        {
            continue;
        }
        n += 1;
        let ver = t["policy"]["version"].as_str().unwrap_or("");
        let verdict = t["verdict"].as_str().unwrap_or("");
        if expect.get(ver).map(String::as_str) != Some(verdict) {
            mixed += 1;
        }
    }
    rep.mixed = Some((swaps, n, mixed));
    Ok(())
}
