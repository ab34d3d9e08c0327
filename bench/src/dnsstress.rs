//! Section 5, DNS names under stress: lookups across agent kills and proxy
//! kills (the proxies in `tiergate proxy`, the agent run with `--proxies
//! separate`), and the agent's memory and the learned map after 100k fresh
//! names.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_common::{ABI_VERSION, Learned, LearnedKey, map_names};
use anyhow::{Context, Result, bail};

use crate::agent::{metric, proc_usage};
use crate::client::mono_ns;
use crate::dns::{DnsFigures, RESOLVER};
use crate::say;
use crate::world::World;

/// Agent kills under the steady lookup load (issue 10: 100).
pub(crate) const KILLS: usize = 100;
/// Kills of the proxy process itself, in a run of their own.
pub(crate) const PROXY_KILLS: usize = 10;
/// The steady load: one lookup every this many µs.
pub(crate) const KILL_LOAD_US: u64 = 1000;
/// From a restarted agent taking the proxy's records again to the next
/// kill. With the proxy in a process of its own there is no outage to
/// wait out; this only spreads the kills over the load.
pub(crate) const KILL_GAP: Duration = Duration::from_millis(1000);
/// How long the proxy stays dead before it is started again: longer than
/// the 1 s resolver timeout, so that after the lookup in flight at the kill
/// has waited out its timeout, lookups still meet no proxy (and show how
/// they fail then).
pub(crate) const PROXY_DOWN: Duration = Duration::from_millis(1500);
/// From a restarted proxy serving to the next proxy kill: longer than the
/// 1 s resolver timeout, so each kill's failures are its own.
pub(crate) const PROXY_GAP: Duration = Duration::from_millis(1500);
/// The agent's (and proxy's) bpffs tag in the kill runs.
const TAG: &str = "k";
/// The names of the two runs: each lookup one never asked before.
pub(crate) const KILL_NAMES: &str = "k{}.bulk.test";
pub(crate) const PROXY_KILL_NAMES: &str = "p{}.bulk.test";
/// A lookup begun this long before a kill was in flight when it came.
const IN_FLIGHT_NS: u64 = 100_000_000;
/// A lookup answered this long after the proxy's kill was not answered by
/// the dying proxy.
pub(crate) const ANSWERED_BY_THE_DEAD_MS: u64 = 10;
const ANSWERED_BY_THE_DEAD_NS: u64 = ANSWERED_BY_THE_DEAD_MS * 1_000_000;
/// Fresh names, in steps (the map is read after each).
pub(crate) const BULK_STEP: u64 = 25_000;
pub(crate) const BULK_STEPS: u64 = 4;
pub(crate) const BULK_WINDOW: usize = 64;

/// One kill -9 (of the agent, or of the proxy process) and its restart.
pub(crate) struct Kill {
    /// Spawn of the new process to ready (the agent: /readyz 200; the
    /// proxy: /readyz 200 and the namespace served).
    pub(crate) restart_ms: f64,
    /// Agent kills: kill to the proxy handing its records to the new agent
    /// (the agent's `tiergate_proxy_connections` back to 1).
    pub(crate) reconnect_ms: f64,
    /// Kill to the killed process reaped (its sockets closed).
    pub(crate) reaped_ms: f64,
    /// Kill to lookups answering normally again: the end of the last failed
    /// or stalled lookup it caused (`None`: none failed or stalled).
    pub(crate) outage_ms: Option<f64>,
    pub(crate) failed: u64,
    /// Of those, lookups that failed only after the 1 s resolver timeout.
    pub(crate) slow: u64,
    /// Lookups that succeeded, but only after the timeout (one of glibc's
    /// two parallel queries, A or AAAA, was lost).
    pub(crate) stalled: u64,
    /// Lookups that waited for the timeout (failed or stalled) and had begun
    /// before the killed process was reaped: the one in flight at the kill.
    pub(crate) in_flight: u64,
    /// Proxy kills: lookups answered while no proxy ran (between the kill
    /// and the new proxy's spawn): a path around the proxy.
    pub(crate) answered_while_down: u64,
}

/// What the agent's event stream says of the agent-kill run's lookups.
#[derive(Default)]
pub(crate) struct Delivery {
    /// Distinct names of the run with a DNS record in the stream.
    pub(crate) names: u64,
    /// DNS records of the run's names, and of those, repeats of a (name,
    /// type) already written (at least once: a record whose ack the killed
    /// agent never sent is written again by the next).
    pub(crate) records: u64,
    pub(crate) repeats: u64,
    /// Loss records (`kind: loss`) in the stream: stage → records lost.
    pub(crate) losses: std::collections::BTreeMap<String, u64>,
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

/// The steady load: a glibc lookup of a fresh name every `KILL_LOAD_US`,
/// one after the other, each followed by a connect to its address, until
/// stdin closes.
fn steady_load(w: &World, job: &str, names: &str) -> Result<Child> {
    let resolv = w.resolv_conf();
    let every = KILL_LOAD_US.to_string();
    let rest = [
        "--resolv",
        &resolv,
        "--fresh",
        names,
        "--port",
        "80",
        "--connect",
        "--until-eof",
        "--every-us",
        &every,
    ];
    Ok(Command::new(&w.me)
        .args(w.dns_args("gai", "proxy", job, &rest))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?)
}

/// Stops the steady load; its JSON.
fn finish(mut c: Child) -> Result<serde_json::Value> {
    drop(c.stdin.take());
    let mut out = String::new();
    c.stdout.take().expect("stdout").read_to_string(&mut out)?;
    c.wait()?;
    serde_json::from_str(out.trim()).with_context(|| format!("gai output {out:?}"))
}

/// When a kill came and what followed it.
struct At {
    /// The SIGKILL (ns, `mono_ns`).
    kill: u64,
    /// The killed process reaped (its sockets closed).
    reaped: u64,
    /// The replacement spawned.
    spawned: u64,
    restart_ms: f64,
    reconnect_ms: f64,
}

/// Each kill's share of the load's failures: what began after it, or was
/// in flight when it came, and before the next kill.
fn attribute(kills: &[At], v: &serde_json::Value) -> Result<Vec<Kill>> {
    let outages: Vec<[u64; 4]> = serde_json::from_value(v["outages"].clone())?;
    let stalls: Vec<[u64; 2]> = serde_json::from_value(v["stalls"].clone())?;
    let mut out = Vec::new();
    for (i, at) in kills.iter().enumerate() {
        let t = at.kill;
        let next = kills.get(i + 1).map_or(u64::MAX, |n| n.kill);
        let mine = |start: u64| start + IN_FLIGHT_NS > t && start + IN_FLIGHT_NS <= next;
        let o: Vec<&[u64; 4]> = outages.iter().filter(|o| mine(o[0])).collect();
        let slow_ok: Vec<&[u64; 2]> = stalls.iter().filter(|s| mine(s[0])).collect();
        // Until lookups answer normally again: the last end of either.
        let back = o
            .iter()
            .map(|o| o[1])
            .chain(slow_ok.iter().map(|s| s[1]))
            .max();
        // An outage ended by a lookup answered after the kill and before
        // the replacement was spawned: a lookup answered with no proxy.
        let answered_while_down = o
            .iter()
            .filter(|o| o[1] > t + ANSWERED_BY_THE_DEAD_NS && o[1] < at.spawned)
            .count() as u64;
        // The client has one lookup in flight at a time: a run of failures
        // whose first began before the killed process was reaped, and
        // waited for the timeout, is that lookup (its query taken, or
        // queued on a socket that died unread).
        let in_flight = o.iter().filter(|o| o[0] < at.reaped && o[3] > 0).count() as u64
            + slow_ok.iter().filter(|s| s[0] < at.reaped).count() as u64;
        out.push(Kill {
            restart_ms: at.restart_ms,
            reconnect_ms: at.reconnect_ms,
            reaped_ms: (at.reaped - t) as f64 / 1e6,
            outage_ms: back.map(|b| b.checked_sub(t).map_or(f64::NAN, |d| d as f64 / 1e6)),
            failed: o.iter().map(|o| o[2]).sum(),
            slow: o.iter().map(|o| o[3]).sum(),
            stalled: slow_ok.len() as u64,
            in_flight,
            answered_while_down,
        });
        if o.is_empty() && slow_ok.is_empty() {
            continue;
        }
        say(&format!(
            "  kill {}: reaped +{:.1} ms, spawned +{:.1} ms; outages {:?}; stalls {:?}",
            i + 1,
            (at.reaped - t) as f64 / 1e6,
            (at.spawned - t) as f64 / 1e6,
            o.iter()
                .map(|o| (
                    (o[0] as f64 - t as f64) / 1e6,
                    (o[1] as f64 - t as f64) / 1e6,
                    o[2],
                    o[3]
                ))
                .collect::<Vec<_>>(),
            slow_ok
                .iter()
                .map(|s| ((s[0] as f64 - t as f64) / 1e6, (s[1] - s[0]) / 1_000_000))
                .collect::<Vec<_>>()
        ));
    }
    Ok(out)
}

/// Waits until `metric` on `port` reaches `at_least`; false after `within`.
fn wait_metric(port: u16, name: &str, at_least: f64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if metric(port, name) >= at_least {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The agent with `--proxies separate` (tag `k`), events to `events`.
fn start_separate_agent(w: &mut World, events: &Path, dir: &Path) -> Result<f64> {
    let flags = [
        "--proxies".to_string(),
        "separate".to_string(),
        "--proxy-dir".to_string(),
        dir.to_string_lossy().into_owned(),
    ];
    w.start_agent(TAG, events, &flags)
}

/// Fails unless the running agent's `tiergate_proxy_connections` reaches 1
/// within 10 s (`what`: which agent, for the message).
fn await_proxy(w: &World, what: &str) -> Result<()> {
    let port = w.agent.as_ref().context("agent")?.port;
    if !wait_metric(
        port,
        "tiergate_proxy_connections",
        1.0,
        Duration::from_secs(10),
    ) {
        bail!("the proxy did not connect to {what} within 10 s");
    }
    Ok(())
}

/// Item 5: the proxies in `tiergate proxy`, the agent with `--proxies
/// separate`. A steady load of fresh-name lookups while the agent is
/// killed (`kill -9`) and restarted `KILLS` times, then, in a run of its
/// own, while the proxy process is killed and restarted `PROXY_KILLS`
/// times; every failed and stalled lookup counted, per kill.
pub(crate) fn agent_kills(w: &mut World, f: &mut DnsFigures) -> Result<()> {
    let dir = w.dir.join("proxy-dir");
    let events = w.dir.join("dns-kill-events.jsonl");
    let ms = start_separate_agent(w, &events, &dir)?;
    let bpffs = w.agent.as_ref().context("agent")?.bpffs.clone();
    let proxy_ms = w.start_proxy(TAG, &dir, &bpffs)?;
    await_proxy(w, "the agent")?;
    say(&format!(
        "DNS: agent (--proxies separate) ready in {ms:.0} ms, tiergate proxy serving in {proxy_ms:.0} ms"
    ));
    // Lookups work through the proxy before anything is killed.
    let resolv = w.resolv_conf();
    let rest = [
        "--resolv",
        &resolv,
        "--fresh",
        "w{}.bulk.test",
        "--port",
        "80",
        "--connect",
        "--secs",
        "0.3",
    ];
    let (outs, _, _) = w.run_procs(&w.dns_args("gai", "proxy", "kill", &rest), 1)?;
    let v = &outs[0];
    if v["ok"].as_u64().unwrap_or(0) == 0
        || v["resolve_fail"].as_u64() != Some(0)
        || v["connect_eperm"].as_u64() != Some(0)
    {
        bail!(
            "lookups through tiergate proxy fail: {v}; see {}/proxy-{TAG}.log",
            w.dir.display()
        );
    }

    // The agent's kills.
    let c = steady_load(w, "kill", KILL_NAMES)?;
    let mut times = Vec::new();
    let run = (|| -> Result<()> {
        std::thread::sleep(Duration::from_secs(1));
        for k in 0..KILLS {
            if k % 10 == 0 {
                say(&format!("DNS: agent kill {}/{KILLS} under lookups", k + 1));
            }
            let t = mono_ns();
            w.kill_agent();
            let reaped = mono_ns();
            let ms = start_separate_agent(w, &events, &dir)?;
            await_proxy(w, "the restarted agent")?;
            let back = (mono_ns() - t) as f64 / 1e6;
            times.push(At {
                kill: t,
                reaped,
                spawned: reaped,
                restart_ms: ms,
                reconnect_ms: back,
            });
            std::thread::sleep(KILL_GAP);
        }
        Ok(())
    })();
    let v = finish(c)?;
    run?;
    say(&format!(
        "  agent kills: n {} ok {} failed {} stalls {} took {}",
        v["n"], v["ok"], v["resolve_fail"], v["stalls"], v["took_us"]
    ));
    f.kills = attribute(&times, &v)?;
    f.kill_load = v;
    f.delivery = Some(delivery(&events, f.kill_load["n"].as_u64().unwrap_or(0))?);

    // The proxy's kills.
    let c = steady_load(w, "pkill", PROXY_KILL_NAMES)?;
    let mut times = Vec::new();
    let run = (|| -> Result<()> {
        std::thread::sleep(Duration::from_secs(1));
        for k in 0..PROXY_KILLS {
            say(&format!(
                "DNS: proxy kill {}/{PROXY_KILLS} under lookups",
                k + 1
            ));
            let t = mono_ns();
            w.kill_proxy();
            let reaped = mono_ns();
            std::thread::sleep(PROXY_DOWN);
            let spawned = mono_ns();
            let ms = w.start_proxy(TAG, &dir, &bpffs)?;
            times.push(At {
                kill: t,
                reaped,
                spawned,
                restart_ms: ms,
                reconnect_ms: f64::NAN,
            });
            std::thread::sleep(PROXY_GAP);
        }
        Ok(())
    })();
    let v = finish(c)?;
    run?;
    say(&format!(
        "  proxy kills: n {} ok {} failed {} errors {} stalls {} outages {}",
        v["n"], v["ok"], v["resolve_fail"], v["errors"], v["stalls"], v["outages"]
    ));
    f.proxy_kills = attribute(&times, &v)?;
    f.proxy_kill_load = v;
    w.kill_proxy();
    w.stop_agent();
    Ok(())
}

/// Reads the kill run's records from the agent's event stream once it has
/// stopped growing (the proxy's queue handed over): the run's `n` names
/// `k0.bulk.test`…, each reported at least once?
fn delivery(events: &Path, n: u64) -> Result<Delivery> {
    say("DNS: waiting for the kill run's records to reach the event stream");
    let size = || std::fs::metadata(events).map_or(0, |m| m.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = size();
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = size();
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let mut d = Delivery::default();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut names: HashSet<String> = HashSet::new();
    let prefix = KILL_NAMES.split("{}").next().unwrap_or("k");
    let suffix = KILL_NAMES.rsplit("{}").next().unwrap_or("");
    for line in BufReader::new(std::fs::File::open(events)?).lines() {
        let line = line?;
        // Only loss records and DNS records of the run's names are parsed.
        let wanted = line.contains("\"loss\"") || (line.contains(suffix) && line.contains("4003"));
        if !wanted {
            continue;
        }
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let tg = &e["unmapped"]["tiergate"];
        if tg["kind"] == "loss" {
            let stage = tg["stage"].as_str().unwrap_or("?").to_string();
            *d.losses.entry(stage).or_default() += tg["count"].as_u64().unwrap_or(0);
            continue;
        }
        let host = e["query"]["hostname"].as_str().unwrap_or("");
        let number = host
            .strip_prefix(prefix)
            .and_then(|h| h.strip_suffix(suffix))
            .and_then(|i| i.parse::<u64>().ok());
        if e["class_uid"] != 4003 || number.is_none_or(|i| i >= n) {
            continue;
        }
        d.records += 1;
        let ty = e["query"]["type"].as_str().unwrap_or("").to_string();
        if !seen.insert((host.to_string(), ty)) {
            d.repeats += 1;
        }
        names.insert(host.to_string());
    }
    d.names = names.len() as u64;
    Ok(d)
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
