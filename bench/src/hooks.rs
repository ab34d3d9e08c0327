//! Kernel ns per hook call from the BPF run-time statistics, also with records shed.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::connect::LOADS;
use crate::report::Report;
use crate::world::World;
use crate::{ALLOW, say, sh};

/// `run_time_ns` and `run_cnt` of each program attached through the agent's
/// pinned links (named by the link pin), from bpftool.
fn prog_stats(bpffs: &Path) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    let dir = bpffs.join("tiergate/v1/links");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let link: serde_json::Value = serde_json::from_str(&sh(
            "bpftool",
            &["--json", "link", "show", "pinned", &path.to_string_lossy()],
        )?)?;
        let id = link["prog_id"].as_u64().context("link without prog_id")?;
        let prog: serde_json::Value = serde_json::from_str(&sh(
            "bpftool",
            &["--json", "prog", "show", "id", &id.to_string()],
        )?)?;
        out.insert(
            name,
            (
                prog["run_time_ns"].as_u64().unwrap_or(0),
                prog["run_cnt"].as_u64().unwrap_or(0),
            ),
        );
    }
    Ok(out)
}

/// Kernel time per call of the connect and socket-creation hooks, per
/// policy size and load, from the kernel's BPF run-time statistics
/// (`kernel.bpf_stats_enabled`, on only for these short runs: it adds two
/// clock reads to every call).
pub(crate) fn hook_costs(w: &mut World, rep: &mut Report) -> Result<()> {
    let bpffs = w.agent.as_ref().context("no agent")?.bpffs.clone();
    let cg = w.cg("enf", 3);
    let set_stats = |on: bool| {
        std::fs::write(
            "/proc/sys/kernel/bpf_stats_enabled",
            if on { "1" } else { "0" },
        )
    };
    for n in [10usize, 1_000, 10_000] {
        w.apply_policy(&w.policy(n, true))?;
        for (name, mode, to) in LOADS {
            say(&format!("hook cost: {n} rules, {name}"));
            set_stats(true)?;
            let before = prog_stats(&bpffs);
            let run = w.client(&cg, mode, to, 0.3);
            let after = prog_stats(&bpffs);
            set_stats(false)?;
            let (before, after) = (before?, after?);
            run?;
            record_costs(rep, (n, name), &before, &after);
        }
    }
    // The same allowed connects without their ring-buffer records: the
    // agent is stopped until the ring passes 3/4 full, from where the hook
    // sheds allowed records (counting them) instead of writing them.
    let pid = w.agent.as_ref().context("no agent")?.child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let shed = (|| -> Result<()> {
        say("hook cost: allowed connects with the ring buffer full");
        w.client(&cg, "udp", ALLOW, 2.0)?; // fills the ring
        set_stats(true)?;
        let before = prog_stats(&bpffs);
        let run = w.client(&cg, "udp", ALLOW, 0.3);
        let after = prog_stats(&bpffs);
        set_stats(false)?;
        run?;
        record_costs(rep, (10_000, SHED), &before?, &after?);
        Ok(())
    })();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    shed?;
    // The same allowed connects folded by an aggregating agent (after a
    // first attempt, every one is a per-CPU hash update, not a record).
    crate::connect::agent_for(w, "agg-10k", false)?;
    let folded = (|| -> Result<()> {
        for (load, mode) in [(FOLDED_TCP, "tcp"), (FOLDED_UDP, "udp")] {
            say(&format!("hook cost: {load}"));
            w.client(&cg, mode, ALLOW, 0.1)?; // the first attempt is a record
            set_stats(true)?;
            let before = prog_stats(&bpffs);
            let run = w.client(&cg, mode, ALLOW, 0.3);
            let after = prog_stats(&bpffs);
            set_stats(false)?;
            run?;
            record_costs(rep, (10_000, load), &before?, &after?);
        }
        Ok(())
    })();
    crate::connect::agent_for(w, "tg-10k", true)?;
    folded
}

/// Column of the hook-cost table for allowed connects whose record is shed.
pub(crate) const SHED: &str = "udp-allow, record shed";
/// Columns of the hook-cost table for allowed connects an aggregating agent folds.
pub(crate) const FOLDED_TCP: &str = "tcp-allow, folded";
pub(crate) const FOLDED_UDP: &str = "udp-allow, folded";

fn record_costs(
    rep: &mut Report,
    (n, load): (usize, &str),
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) {
    for (prog, (t1, c1)) in after {
        let (t0, c0) = before.get(prog).copied().unwrap_or((0, 0));
        if *c1 > c0 {
            rep.hook_ns.insert(
                (n, load.to_string(), prog.clone()),
                (t1 - t0) as f64 / (c1 - c0) as f64,
            );
        }
    }
}
