//! Section 5, DNS names under stress: lookups across agent kills, and the
//! agent's memory and the learned map after 100k fresh names.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agent_common::{ABI_VERSION, Learned, LearnedKey, map_names};
use anyhow::{Context, Result};

use crate::agent::{metric, proc_usage};
use crate::client::mono_ns;
use crate::dns::{DnsFigures, NAME, RESOLVER};
use crate::say;
use crate::world::World;

/// Agent kills under the steady lookup load.
pub(crate) const KILLS: usize = 10;
/// The steady load: one lookup every this many µs.
pub(crate) const KILL_LOAD_US: u64 = 1000;
/// Time between a restart and the next kill: longer than an outage (a
/// lookup in flight at the kill waits for the 1 s resolver timeout), so
/// each kill's failures are its own.
pub(crate) const KILL_GAP: Duration = Duration::from_secs(3);
/// A lookup begun this long before a kill was in flight when it came.
const IN_FLIGHT_NS: u64 = 100_000_000;
/// Fresh names, in steps (the map is read after each).
pub(crate) const BULK_STEP: u64 = 25_000;
pub(crate) const BULK_STEPS: u64 = 4;
pub(crate) const BULK_WINDOW: usize = 64;

/// One kill -9 of the agent and its restart.
pub(crate) struct Kill {
    /// Spawn of the new agent to /readyz 200.
    pub(crate) restart_ms: f64,
    /// Kill to lookups answering normally again: the end of the last failed
    /// or stalled lookup it caused (`None`: none failed or stalled).
    pub(crate) outage_ms: Option<f64>,
    pub(crate) failed: u64,
    /// Of those, lookups that failed only after the 1 s resolver timeout.
    pub(crate) slow: u64,
    /// Lookups that succeeded, but only after the timeout (one of glibc's
    /// two parallel queries, A or AAAA, was lost).
    pub(crate) stalled: u64,
}

/// The map and the agent after a step of fresh names.
pub(crate) struct BulkStep {
    pub(crate) names: u64,
    /// Entries in `TG_LEARNED` (read from the pinned map): the flooding
    /// workload's, and all others'.
    pub(crate) entries: Option<(u64, u64)>,
    pub(crate) rss_kb: u64,
    pub(crate) rate: f64,
    pub(crate) failed: u64,
}

/// Item 5: a steady lookup load (glibc, paced) while the agent is killed and
/// restarted `KILLS` times; every failed lookup counted, and each kill's
/// outage as the client saw it.
pub(crate) fn agent_kills(w: &mut World, f: &mut DnsFigures, events: &Path) -> Result<()> {
    let resolv = w.resolv_conf();
    let every = KILL_LOAD_US.to_string();
    let rest = [
        "--resolv",
        &resolv,
        "--name",
        NAME,
        "--until-eof",
        "--every-us",
        &every,
    ];
    let mut c = Command::new(&w.me)
        .args(w.dns_args("gai", "proxy", "kill", &rest))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut times = Vec::new();
    let run = (|| -> Result<()> {
        std::thread::sleep(Duration::from_secs(1));
        for k in 0..KILLS {
            say(&format!("DNS: agent kill {}/{KILLS} under lookups", k + 1));
            let t = mono_ns();
            w.kill_agent();
            let ms = w.start_dns_agent(events)?;
            times.push((t, ms));
            std::thread::sleep(KILL_GAP);
        }
        Ok(())
    })();
    drop(c.stdin.take());
    let mut out = String::new();
    c.stdout.take().expect("stdout").read_to_string(&mut out)?;
    c.wait()?;
    run?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("gai output {out:?}"))?;
    let outages: Vec<[u64; 4]> = serde_json::from_value(v["outages"].clone())?;
    let stalls: Vec<[u64; 2]> = serde_json::from_value(v["stalls"].clone())?;
    let kills: Vec<u64> = times.iter().map(|t| t.0).collect();
    say(&format!(
        "  kills at {kills:?}; outages {outages:?}; stalls {stalls:?}"
    ));
    for (i, &(t, restart_ms)) in times.iter().enumerate() {
        let next = times.get(i + 1).map_or(u64::MAX, |n| n.0);
        // This kill's: what began after it, or was in flight when it came
        // (begun at most `IN_FLIGHT_NS` before), and before the next kill.
        let mine = |start: u64| start + IN_FLIGHT_NS > t && start + IN_FLIGHT_NS <= next;
        let out: Vec<&[u64; 4]> = outages.iter().filter(|o| mine(o[0])).collect();
        let slow_ok: Vec<&[u64; 2]> = stalls.iter().filter(|s| mine(s[0])).collect();
        // Until lookups answer normally again: the last end of either.
        let back = out
            .iter()
            .map(|o| o[1])
            .chain(slow_ok.iter().map(|s| s[1]))
            .max();
        f.kills.push(Kill {
            restart_ms,
            outage_ms: back.map(|b| b.checked_sub(t).map_or(f64::NAN, |d| d as f64 / 1e6)),
            failed: out.iter().map(|o| o[2]).sum(),
            slow: out.iter().map(|o| o[3]).sum(),
            stalled: slow_ok.len() as u64,
        });
    }
    f.kill_load = v;
    Ok(())
}

/// Entries in the pinned `TG_LEARNED` (a walk: one syscall per entry):
/// those of cgroup `mine`, and the others.
fn learned_entries(bpffs: &Path, mine: u64) -> Result<(u64, u64)> {
    let pin = bpffs.join(format!(
        "tiergate/v{ABI_VERSION}/maps/{}",
        map_names::LEARNED
    ));
    let md = aya::maps::MapData::from_pin(&pin)?;
    let map: aya::maps::HashMap<_, LearnedKey, Learned> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(md))?;
    let (mut own, mut others) = (0, 0);
    for k in map.keys().flatten() {
        if k.cgroup_id == mine {
            own += 1;
        } else {
            others += 1;
        }
    }
    Ok((own, others))
}

/// Item 4: fresh names from one workload, `BULK_STEP` at a time, each teaching
/// a new address; the map's entries and the agent's RSS after each step.
pub(crate) fn bulk_names(w: &mut World, f: &mut DnsFigures) -> Result<()> {
    let agent = w.agent.as_ref().context("agent")?;
    let (pid, port, bpffs) = (agent.child.id(), agent.port, agent.bpffs.clone());
    f.rss_before_kb = proc_usage(pid).1 as f64;
    // A cgroup's id is its directory's inode number.
    let cgroup =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(w.dns_cg("proxy", "bulk"))?);
    f.learned_before = learned_entries(&bpffs, cgroup).ok();
    let to = format!("{RESOLVER}:53");
    let (count, window) = (BULK_STEP.to_string(), BULK_WINDOW.to_string());
    for step in 0..BULK_STEPS {
        let from = (step * BULK_STEP).to_string();
        let names = (step + 1) * BULK_STEP;
        say(&format!("DNS: fresh names up to {names}"));
        let rest = [
            "--to",
            &to,
            "--fresh",
            "n{}.bulk.test",
            "--from",
            &from,
            "--count",
            &count,
            "--window",
            &window,
        ];
        let (outs, _, _) = w.run_procs(&w.dns_args("query", "proxy", "bulk", &rest), 1)?;
        let v = &outs[0];
        f.bulk.push(BulkStep {
            names,
            entries: learned_entries(&bpffs, cgroup).ok(),
            rss_kb: proc_usage(pid).1,
            rate: v["rate"].as_f64().unwrap_or(f64::NAN),
            failed: v["sent"].as_u64().unwrap_or(0) - v["answered"].as_u64().unwrap_or(0),
        });
    }
    // The agent walks the map for its gauge every 10 s.
    say("DNS: waiting for the agent to refresh tiergate_dns_learned");
    std::thread::sleep(Duration::from_secs(12));
    f.gauge = metric(port, "tiergate_dns_learned");
    f.rss_after_kb = proc_usage(pid).1 as f64;
    Ok(())
}
