//! Section 2, event path: records/s to a file, a collector and a minimal reader, accounted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use tiergate_tests::free_port;

use crate::agent::metric;
use crate::reload::mixed_verdicts;
use crate::report::Report;
use crate::world::World;
use crate::{ALLOW, DENY, say};

/// The event path's load: UDP connects to the denied destination from
/// `TIERGATE_BENCH_EVENT_PROCS` processes (default 1). A denied connect is
/// the cheapest attempt to generate (EPERM before any packet), so one core
/// produces more records than an allowed connect loop can, and denies are
/// never shed: every record must arrive or be reported lost.
fn event_load(w: &World, cg: &Path, secs: f64) -> Result<(serde_json::Value, u64, u64)> {
    let procs = std::env::var("TIERGATE_BENCH_EVENT_PROCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    w.clients(cg, "udp", DENY, secs, procs)
}

fn count_file(path: &Path, from: u64) -> (u64, u64, u64, Vec<(String, String)>) {
    // (connection records, loss records' summed counts, loss records, (version, verdict) of connections)
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(_) => return (0, 0, 0, Vec::new()),
    };
    use std::io::Seek;
    let _ = f.seek(std::io::SeekFrom::Start(from));
    let (mut conn, mut lost, mut lossrec, mut vv) = (0, 0, 0, Vec::new());
    for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
        if line.contains("\"kind\":\"connection\"") {
            conn += 1;
            let pol = line.find("\"policy\":{").map(|i| &line[i..]).unwrap_or("");
            if let (Some(v), Some(d)) =
                (field(pol, "\"version\":\""), field(&line, "\"verdict\":\""))
            {
                vv.push((v, d));
            }
        } else if line.contains("\"kind\":\"loss\"")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
        {
            lossrec += 1;
            lost += v["unmapped"]["tiergate"]["count"].as_u64().unwrap_or(0);
        }
    }
    (conn, lost, lossrec, vv)
}

fn field(line: &str, key: &str) -> Option<String> {
    let i = line.find(key)? + key.len();
    let j = line[i..].find('"')?;
    Some(line[i..i + j].to_string())
}

fn produced(port: u16) -> f64 {
    ["allow", "deny", "audit-deny", "socket-deny"]
        .iter()
        .map(|v| {
            metric(
                port,
                &format!("tiergate_kernel_verdicts{{verdict=\"{v}\"}}"),
            )
        })
        .sum()
}

/// Polls `count` every 20 ms until it has not moved for `quiet`, or until
/// `limit` has passed since `t0` (then `true`); returns when it last moved.
fn last_move(
    t0: Instant,
    quiet: Duration,
    limit: Option<Duration>,
    count: impl Fn() -> f64,
) -> (Duration, bool) {
    let mut last = -1.0;
    let mut t_end = t0.elapsed();
    loop {
        let cur = count();
        if cur != last {
            last = cur;
            t_end = t0.elapsed();
        } else if t0.elapsed() - t_end > quiet {
            return (t_end, false);
        }
        if limit.is_some_and(|l| t0.elapsed() > l) {
            return (t_end, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records `sink`'s delivery rate for one rep (connection records in `file`
/// past `off`, over `secs`) and returns the rep's accounting figures.
fn delivered(
    rep: &mut Report,
    sink: &str,
    prod: f64,
    file: &Path,
    off: u64,
    secs: Duration,
) -> String {
    let (conn, lost, lossrec, _) = count_file(file, off);
    rep.events
        .entry(sink.into())
        .or_default()
        .push(conn as f64 / secs.as_secs_f64());
    format!(
        "kernel produced {prod} · delivered {conn} · lost {lost} (in {lossrec} loss records) · produced − delivered − lost = {}",
        prod as i64 - conn as i64 - lost as i64
    )
}

/// Writes back and drops the clean page cache before a measured load. The
/// rows write hundreds of MB of files (events, spool, sink) over a run; on
/// a VM whose memory the host backs on first touch (this one), page cache
/// that grows into guest memory never used before costs a host fault per
/// page, and later reps of a row ran up to 2× slower in the kernel's copy
/// into the page cache than the first. Dropping it lets every rep write
/// into memory that was used before, as a long-running host would.
fn fresh_page_cache() {
    // SAFETY: plain syscall.
    unsafe { libc::sync() };
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "1") {
        say(&format!("cannot drop the page cache: {e}"));
    }
}

/// Repetitions of each event-path row (the collector's ratio to the reader
/// moved by up to 0.1 between runs of 3).
pub(crate) const EVENT_REPS: usize = 5;

pub(crate) fn event_path(w: &mut World, rep: &mut Report) -> Result<()> {
    let load_s = 2.0;
    // The collectors run throughout; their rows are measured in every rep
    // right after the reader's, so that the ratio compares like moments.
    let collectors = start_collectors(w, rep)?;
    w.write_policy(&w.policy(10, true))?;
    let events = w.dir.join("events.jsonl");
    let ms = w.start_agent("b", &events, &[])?;
    rep.start_ms.push(ms);
    let mut port = w.agent.as_ref().expect("agent").port;
    let cg = w.cg("enf", 9);
    for r in 0..rep.reps.min(EVENT_REPS) {
        say(&format!("event path rep {}: file sink", r + 1));
        let settle = |w: &World| {
            // Wait until the agent has delivered what the kernel produced.
            let mut last = (-1.0, 0.0);
            for _ in 0..200 {
                let cur = (
                    metric(port, "tiergate_events_total"),
                    metric(port, "tiergate_events_lost_total"),
                );
                if cur == last {
                    break;
                }
                last = cur;
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = w;
        };
        settle(w);
        fresh_page_cache();
        let p0 = produced(port);
        let off = std::fs::metadata(&events).map(|m| m.len()).unwrap_or(0);
        let t0 = Instant::now();
        let (v, _, _) = event_load(w, &cg, load_s)?;
        // Delivered when the events counter stops moving.
        let (t_end, _) = last_move(t0, Duration::from_millis(500), None, || {
            metric(port, "tiergate_events_total") + metric(port, "tiergate_events_lost_total")
        });
        let prod = produced(port) - p0;
        let figures = delivered(rep, "file", prod, &events, off, t_end);
        rep.accounting.push(format!(
            "file rep {}: attempts {} · {figures}",
            r + 1,
            v["n"]
        ));

        // The ceiling: a minimal reader on the pinned ring buffer, agent stopped.
        say(&format!(
            "event path rep {}: minimal ring-buffer reader",
            r + 1
        ));
        // The agent is killed (its pins stay and the programs go on
        // producing): a ring buffer has one consumer, and a second reader
        // would move the consumer position under the agent's feet.
        let bpffs = w.kill_agent().expect("agent");
        let pin = bpffs.join("tiergate/v1/maps/TG_EVENTS");
        let res = (|| -> Result<f64> {
            let md = aya::maps::MapData::from_pin(&pin)?;
            let mut rb = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(md))?;
            while rb.next().is_some() {}
            fresh_page_cache();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s2 = stop.clone();
            let h = std::thread::spawn(move || {
                let (mut n, mut first, mut last) = (0u64, None, Instant::now());
                loop {
                    let mut got = false;
                    while let Some(item) = rb.next() {
                        std::hint::black_box(item.len());
                        n += 1;
                        got = true;
                    }
                    if got {
                        first.get_or_insert_with(Instant::now);
                        last = Instant::now();
                    } else if s2.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    } else {
                        std::thread::yield_now();
                    }
                }
                let d = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
                (n, d)
            });
            let (_v, _, _) = event_load(w, &cg, load_s)?;
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let (n, d) = h.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
            Ok(n as f64 / d.max(1e-9))
        })();
        match res {
            Ok(rate) => rep.events.entry("reader".into()).or_default().push(rate),
            Err(e) => rep.notes.push(format!("minimal reader failed: {e:#}")),
        }
        if let Some((pki, cols)) = &collectors {
            // One agent at a time: b's pins go while the collectors' agents run.
            w.start_agent("b", &events, &[])?;
            w.stop_agent();
            for c in cols {
                collector_rep(w, rep, load_s, pki, c, r)?;
            }
        }
        // A fresh agent (re-adopting b's pins when they are still there).
        w.start_agent("b", &events, &[])?;
        port = w.agent.as_ref().expect("agent").port;
    }
    mixed_verdicts(w, rep, &events)?;
    w.stop_agent();
    aggregated(w, rep, load_s)?;
    if let Some((_, cols)) = collectors {
        stop_collectors(w, rep, &cols);
    }
    Ok(())
}

/// The row of aggregated allowed attempts: attempts accounted per second.
pub(crate) const AGG_ROW: &str = "file + aggregation (allowed attempts)";

/// (allowed attempts the allowed connection records account for, those
/// records) in `file` past `off`: an aggregated record counts `count`.
fn attempts_in(file: &Path, off: u64) -> (u64, u64) {
    use std::io::Seek;
    let Ok(mut f) = std::fs::File::open(file) else {
        return (0, 0);
    };
    let _ = f.seek(std::io::SeekFrom::Start(off));
    let (mut attempts, mut records) = (0, 0);
    for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
        if line.contains("\"kind\":\"connection\"") && line.contains("\"verdict\":\"allow\"") {
            records += 1;
            attempts += serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v["count"].as_u64())
                .unwrap_or(1);
        }
    }
    (attempts, records)
}

/// Allowed UDP connects for 2 s with `--aggregate-allowed 1s` and a file
/// sink: every allowed attempt must be accounted for (the `count`s add up
/// to what the kernel judged), in far fewer records.
fn aggregated(w: &mut World, rep: &mut Report, load_s: f64) -> Result<()> {
    let file = w.dir.join("events-agg.jsonl");
    // The policy that allows the load's destination (the mixed-verdict run
    // before leaves the other one in place).
    w.write_policy(&w.policy(10, true))?;
    w.start_agent("g", &file, &["--aggregate-allowed".into(), "1s".into()])?;
    let port = w.agent.as_ref().expect("agent").port;
    let cg = w.cg("enf", 11);
    for r in 0..rep.reps.min(EVENT_REPS) {
        say(&format!(
            "event path rep {}: aggregated allowed attempts",
            r + 1
        ));
        std::thread::sleep(Duration::from_millis(1500));
        fresh_page_cache();
        let p0 = produced(port);
        let off = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let t0 = Instant::now();
        let (v, _, _) = w.clients(&cg, "udp", ALLOW, load_s, 1)?;
        // Delivered when the file stops growing for longer than a window.
        let (t_end, _) = last_move(t0, Duration::from_millis(2500), None, || {
            std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) as f64
        });
        let load_secs = v["secs"].as_f64().unwrap_or(load_s);
        let prod = produced(port) - p0;
        let (attempts, records) = attempts_in(&file, off);
        let (_, lost, lossrec, _) = count_file(&file, off);
        rep.events
            .entry(AGG_ROW.into())
            .or_default()
            .push(attempts as f64 / load_secs);
        rep.accounting.push(format!(
            "{AGG_ROW} rep {}: attempts {} in {load_secs:.2} s · kernel produced {prod} · accounted {attempts} in {records} records, the last {:.2} s after the load began · lost {lost} (in {lossrec} loss records) · produced − accounted − lost = {}",
            r + 1,
            v["n"],
            t_end.as_secs_f64(),
            prod as i64 - attempts as i64 - lost as i64
        ));
    }
    w.stop_agent();
    Ok(())
}

/// The row of the collector with `--store sqlite:…`, beside `collector`.
pub(crate) const STORE_ROW: &str = "collector + sqlite store";

/// One collector of the comparison: where it listens and writes.
struct Col {
    row: &'static str,
    tag: &'static str,
    pid: u32,
    listen: u16,
    admin: u16,
    sink: std::path::PathBuf,
    cg: usize,
}

/// Starts a collector over mTLS with a file sink; for the store's row also
/// with `--store sqlite:…` in the bench's directory.
fn spawn_collector(w: &mut World, pki: &Path, store: bool) -> Result<Col> {
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let (row, tag, cg) = if store {
        (STORE_ROW, "s", 22)
    } else {
        ("collector", "c", 21)
    };
    let listen = free_port();
    let admin = free_port();
    let sink = w.dir.join(format!("collected-{tag}.jsonl"));
    let log = std::fs::File::create(w.dir.join(format!("collector-{tag}.log")))?;
    let mut cmd = Command::new(&w.bin);
    cmd.arg("collector");
    if store {
        cmd.args([
            "--store",
            &format!("sqlite:{}", w.dir.join("store.db").display()),
        ]);
    }
    let c = cmd
        .args([
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
        ])
        .args([
            "--tls-ca",
            &p("ca.pem"),
            "--tls-cert",
            &p("collector.pem"),
            "--tls-key",
            &p("collector-key.pem"),
        ])
        .args(["--allow-spiffe", "spiffe://corp.example/ns/tiergate/sa/*"])
        .args([
            "--sink",
            &format!("file:{}?max-bytes=100000000000&keep=1", sink.display()),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = c.id();
    w.children.push(c);
    Ok(Col {
        row,
        tag,
        pid,
        listen,
        admin,
        sink,
        cg,
    })
}

/// The two collector rows' collectors (without and with the store) and the
/// PKI their agents use; `None` (noted) when the certificates cannot be made.
fn start_collectors(
    w: &mut World,
    rep: &mut Report,
) -> Result<Option<(std::path::PathBuf, [Col; 2])>> {
    let pki = w.dir.join("pki");
    let root = std::env::current_dir()?;
    let st = Command::new("cargo")
        .current_dir(root)
        .args(["xtask", "certs"])
        .arg(&pki)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        rep.notes
            .push("collector: `cargo xtask certs` failed; collector not measured".into());
        return Ok(None);
    }
    let cols = [
        spawn_collector(w, &pki, false)?,
        spawn_collector(w, &pki, true)?,
    ];
    Ok(Some((pki, cols)))
}

/// Notes the collectors' CPU per record over the whole run and stops them.
fn stop_collectors(w: &mut World, rep: &mut Report, cols: &[Col; 2]) {
    // CPU per record is the store's cost independent of the machine's
    // other load (rates move with it; this does not).
    let per_record: Vec<f64> = cols
        .iter()
        .map(|c| {
            cpu_seconds(c.pid) / metric(c.admin, "tiergate_collector_records_total").max(1.0) * 1e6
        })
        .collect();
    rep.notes.push(format!(
        "collector CPU (user + system) per record delivered, over all reps: {:.2} µs without the store, {:.2} µs with the sqlite store ({:.2}×)",
        per_record[0],
        per_record[1],
        per_record[1] / per_record[0]
    ));
    for c in cols {
        if let Some(i) = w.children.iter().position(|ch| ch.id() == c.pid) {
            let mut ch = w.children.remove(i);
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

/// User + system CPU seconds a process has used (`/proc/PID/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// One rep of one collector row: an agent streaming to it (started for the
/// rep, so only one agent and one load run at a time).
fn collector_rep(
    w: &mut World,
    rep: &mut Report,
    load_s: f64,
    pki: &Path,
    c: &Col,
    r: usize,
) -> Result<()> {
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let extra: Vec<String> = [
        "--collector",
        &format!("https://127.0.0.1:{}", c.listen),
        "--collector-spiffe-id",
        "spiffe://corp.example/tiergate/collector",
        "--tls-ca",
        &p("ca.pem"),
        "--tls-cert",
        &p("agent.pem"),
        "--tls-key",
        &p("agent-key.pem"),
        "--spool",
        &w.dir.join(format!("spool-{}", c.tag)).to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ms = w.start_agent(c.tag, Path::new("/dev/null"), &extra)?;
    rep.start_ms.push(ms);
    let port = w.agent.as_ref().expect("agent").port;
    let cg = w.cg("enf", c.cg);
    let cadmin = c.admin;
    let recs = || metric(cadmin, "tiergate_collector_records_total");
    say(&format!("event path rep {}: {} over mTLS", r + 1, c.row));
    let mut last = -1.0;
    for _ in 0..300 {
        let cur = recs() + metric(port, "tiergate_events_lost_total");
        if cur == last && metric(port, "tiergate_spool_pending") == 0.0 {
            break;
        }
        last = cur;
        std::thread::sleep(Duration::from_millis(100));
    }
    fresh_page_cache();
    let agent_pid = w.agent.as_ref().expect("agent").child.id();
    let cpu0 = (cpu_seconds(agent_pid), cpu_seconds(c.pid));
    let p0 = produced(port);
    let off = std::fs::metadata(&c.sink).map(|m| m.len()).unwrap_or(0);
    let t0 = Instant::now();
    let (v, _, _) = event_load(w, &cg, load_s)?;
    let limit = Some(Duration::from_secs(60));
    let (t_end, cut) = last_move(t0, Duration::from_millis(1500), limit, recs);
    let cpu1 = (cpu_seconds(agent_pid), cpu_seconds(c.pid));
    if cut {
        rep.notes
            .push(format!("{}: still receiving after 60 s", c.row));
    }
    let prod = produced(port) - p0;
    let figures = delivered(rep, c.row, prod, &c.sink, off, t_end);
    let stored = if c.row == STORE_ROW {
        format!(
            " · store so far: records written {}, dropped {}",
            metric(cadmin, "tiergate_collector_store_records_total"),
            metric(cadmin, "tiergate_collector_store_dropped_total")
        )
    } else {
        String::new()
    };
    let per_record = |a: f64, b: f64| (b - a) / prod.max(1.0) * 1e6;
    rep.accounting.push(format!(
        "{} rep {}: attempts {} · {figures} · collector duplicates so far {}{stored} · CPU per record from the load's start until delivery stopped: agent {:.2} µs, collector {:.2} µs",
        c.row,
        r + 1,
        v["n"],
        metric(cadmin, "tiergate_collector_duplicates_total"),
        per_record(cpu0.0, cpu1.0),
        per_record(cpu0.1, cpu1.1),
    ));
    w.stop_agent();
    Ok(())
}
