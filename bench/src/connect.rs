//! Section 1, connect path: connects/s per configuration and load, over interleaved reps.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::agent::proc_usage;
use crate::hooks::hook_costs;
use crate::reload::reload;
use crate::report::Report;
use crate::world::World;
use crate::{ALLOW, DENY, WORKLOADS, say};

pub(crate) const CONFIGS: &[&str] = &[
    "none",
    "tg-10",
    "tg-1k",
    "tg-10k",
    "agg-10",
    "agg-10k",
    "nft-chain-10",
    "nft-chain-1k",
    "nft-chain-10k",
    "nft-set-10",
    "nft-set-1k",
    "nft-set-10k",
    "nft-vmap-10k",
];
pub(crate) const LOADS: &[(&str, &str, &str)] = &[
    ("tcp-allow", "tcp", ALLOW),
    ("tcp-deny", "tcp", DENY),
    ("udp-allow", "udp", ALLOW),
    ("udp-deny", "udp", DENY),
];

fn size(c: &str) -> usize {
    if c.ends_with("10k") {
        10_000
    } else if c.ends_with("1k") {
        1_000
    } else {
        10
    }
}

/// `agg-*` configs: the agent aggregating allowed attempts.
pub(crate) const AGGREGATE: &[&str] = &["--aggregate-allowed", "1s"];

/// Restarts agent A with or without aggregation when the config needs the
/// other; returns whether it aggregates now.
pub(crate) fn agent_for(w: &mut World, c: &str, aggregating: bool) -> Result<bool> {
    let want = c.starts_with("agg");
    if want != aggregating {
        w.stop_agent();
        w.write_policy(&w.policy(size(c), true))?;
        let extra: Vec<String> = if want {
            AGGREGATE.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        };
        w.start_agent("a", Path::new("/dev/null"), &extra)?;
    }
    Ok(want)
}

pub(crate) fn connect_path(w: &mut World, rep: &mut Report) -> Result<()> {
    w.write_policy(&w.policy(10_000, true))?;
    // Agent A: its events go to /dev/null (the event path is measured below).
    let ms = w.start_agent("a", Path::new("/dev/null"), &[])?;
    let mut aggregating = false;
    rep.start_ms.push(ms);
    say(&format!(
        "agent ready in {ms:.0} ms with 10k rules, {WORKLOADS} workloads"
    ));
    std::thread::sleep(Duration::from_secs(1));
    rep.rss_idle_kb
        .push(proc_usage(w.agent.as_ref().expect("agent").child.id()).1 as f64);
    // Sanity: the enforced side denies and allows as the policy says.
    let (v, _, _) = w.client(&w.cg("enf", 1), "udp", DENY, 0.05)?;
    if v["eperm"].as_u64() != v["n"].as_u64() {
        bail!("tiergate does not deny {DENY} from enf/t0: {v}");
    }
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let reps = if rep.wants("connect") { rep.reps } else { 0 };
    for r in 0..reps {
        for k in 0..CONFIGS.len() {
            let c = CONFIGS[(k + r) % CONFIGS.len()];
            say(&format!("rep {}/{} connect path: {c}", r + 1, rep.reps));
            aggregating = agent_for(w, c, aggregating)?;
            let side = if c.starts_with("tg") || c.starts_with("agg") {
                w.nft(None)?;
                w.apply_policy(&w.policy(size(c), true))?;
                "enf"
            } else if let Some(rest) = c.strip_prefix("nft-") {
                let form = rest.split('-').next().unwrap_or("chain");
                w.nft(Some(&w.nft_rules(size(c), form)))?;
                "plain"
            } else {
                w.nft(None)?;
                "plain"
            };
            for (i, (name, mode, to)) in LOADS.iter().enumerate() {
                let cg = w.cg(side, (r * 7 + i * 13) % WORKLOADS);
                let (v, ticks, rss) = w.client(&cg, mode, to, rep.secs)?;
                let n = v["n"].as_u64().unwrap_or(0);
                let good = if name.ends_with("allow") {
                    v["ok"].as_u64()
                } else {
                    Some(n - v["ok"].as_u64().unwrap_or(0) - v["other"].as_u64().unwrap_or(0))
                };
                if good != Some(n) && (c != "none" || name.ends_with("allow")) {
                    rep.notes
                        .push(format!("{c} {name}: unexpected outcomes {v}"));
                }
                let rate = v["rate"].as_f64().unwrap_or(f64::NAN);
                rep.rates
                    .entry((c.into(), name.to_string()))
                    .or_default()
                    .push(rate);
                if c == "tg-10k" && *name == "tcp-allow" {
                    rep.rss_load_kb.push(rss as f64);
                    let cpu = ticks as f64 / tick / v["secs"].as_f64().unwrap_or(1.0);
                    rep.cpu_per_10k.push(cpu / (rate / 10_000.0) * 100.0);
                }
            }
        }
    }
    w.nft(None)?;
    agent_for(w, "tg-10k", aggregating)?;
    if rep.wants("connect") {
        hook_costs(w, rep)?;
    }
    if rep.wants("reload") {
        reload(w, rep)?;
    }
    w.stop_agent();
    Ok(())
}
