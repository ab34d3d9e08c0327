//! Disk faults end to end: the agent's spool, the agent's `--events` file and
//! the collector's file sink on a real tmpfs that fills up, or turns
//! read-only (a read-only bind mount over it), in the middle of a run. Real
//! agent, real collector, real mTLS.
//!
//! What every test checks: a log line that names the path and the error, a
//! metric, the books (every record the agent numbered reached the collector
//! or is named in a loss record the collector received, never both), the
//! agent still enforcing in the same process, and recovery once the disk is
//! writable again.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tiergate_tests::collector::{Collector, Pki, agent_args};
use tiergate_tests::pki::Leaf;
use tiergate_tests::{Fixture, policy, sh, tg};

const BODY: &str = r#"      egress:
        - cidrs: ["10.20.0.0/16"]"#;
const ALLOWED: &str = "10.20.0.1:80";
const DENIED: &str = "10.30.0.1:80";

/// A tmpfs of a fixed size mounted on a directory the test owns; unmounted
/// (lazily: the agent may still hold files in it) when dropped, even when
/// the test fails.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).expect("mount point");
        let opts = format!("size={size},mode=0755");
        sh(
            "mount",
            &["-t", "tmpfs", "-o", &opts, "tmpfs", dir.to_str().unwrap()],
        );
        Tmpfs { dir }
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Writes a file until the file system is full (ENOSPC).
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).expect("create filler");
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove filler");
    }

    /// Makes the mount read-only for everything that opens, creates,
    /// renames or removes a file in it. The kernel refuses to remount a file
    /// system read-only while a process holds a file open for writing on it
    /// (EBUSY), so this stacks a read-only bind mount on the directory:
    /// files already open keep writing, nothing new can be made. The bind
    /// mount is made read-only before it is attached (open_tree,
    /// mount_setattr, move_mount), so no file can be opened for writing
    /// through it in between.
    fn read_only(&self) {
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        const OPEN_TREE_CLONE: libc::c_uint = 1;
        const MOUNT_ATTR_RDONLY: u64 = 1;
        const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap();
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: plain syscalls on a NUL-terminated path, a live struct of
        // the size passed, and a descriptor this function owns.
        unsafe {
            let fd = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            ) as libc::c_int;
            assert!(fd >= 0, "open_tree: {}", std::io::Error::last_os_error());
            let set = libc::syscall(
                libc::SYS_mount_setattr,
                fd,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            );
            let err = std::io::Error::last_os_error();
            assert!(set == 0, "mount_setattr: {err}");
            let moved = libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                path.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert!(moved == 0, "move_mount: {err}");
        }
    }

    /// Removes the read-only bind mount.
    fn writable(&self) {
        sh("umount", &[self.dir.to_str().unwrap()]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The read-only bind mount, if any, then the tmpfs.
        for _ in 0..2 {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .output();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Every line of a JSON-lines file and of its rotated predecessors
/// (`PATH.1` …); a line that is not JSON fails the test.
fn lines(path: &Path) -> Vec<Value> {
    let mut text = String::new();
    for n in (1..=50).rev() {
        let rotated = PathBuf::from(format!("{}.{n}", path.display()));
        text.push_str(&std::fs::read_to_string(rotated).unwrap_or_default());
    }
    text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display()))
        })
        .collect()
}

fn seq(e: &Value) -> u64 {
    tg(e)["seq"].as_u64().expect("seq")
}

/// The seqs the loss records among `evs` name, each once; a seq named twice
/// fails the test (the books must be exact). Only loss records of a stage
/// starting with `stage` count.
fn named_lost(evs: &[Value], stage: &str) -> BTreeSet<u64> {
    let mut named = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for e in evs.iter().filter(|e| tg(e)["kind"] == "loss") {
        let st = tg(e)["stage"].as_str().unwrap_or_default();
        if !st.starts_with(stage) || !seen.insert(seq(e)) {
            continue; // another stage, or a resent copy
        }
        let mut n = 0;
        for run in tg(e)["seq_range"]["seqs"].as_array().into_iter().flatten() {
            for s in run[0].as_u64().unwrap()..=run[1].as_u64().unwrap() {
                assert!(named.insert(s), "seq {s} named lost twice: {e}");
                n += 1;
            }
        }
        assert_eq!(tg(e)["count"].as_u64(), Some(n), "count != seqs named: {e}");
    }
    named
}

/// Checks the books between what the agent numbered (`produced`) and what
/// reached the other side (`got`): every seq is delivered or named in one of
/// `got`'s loss records (of a stage starting with `stage`), never both.
/// Returns (delivered, lost), or what is still missing.
fn books(produced: &[Value], got: &[Value], stage: &str) -> Result<(usize, usize), String> {
    let all: BTreeSet<u64> = produced.iter().map(seq).collect();
    let delivered: BTreeSet<u64> = got
        .iter()
        .filter(|e| tg(e)["kind"] != "gap")
        .map(seq)
        .collect();
    let lost = named_lost(got, stage);
    let both: Vec<_> = delivered.intersection(&lost).collect();
    assert!(both.is_empty(), "delivered and named lost: {both:?}");
    let missing: Vec<_> = all
        .iter()
        .filter(|s| !delivered.contains(s) && !lost.contains(s))
        .collect();
    if missing.is_empty() && !all.is_empty() {
        Ok((delivered.len(), lost.len()))
    } else {
        Err(format!(
            "{} of {} seqs neither delivered nor named lost, e.g. {:?}",
            missing.len(),
            all.len(),
            missing.iter().take(8).collect::<Vec<_>>()
        ))
    }
}

/// Waits until the collector's file balances the agent's `--events` file.
fn wait_books(f: &Fixture, c: &Collector, collected: &Path) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match books(&f.events(), &lines(collected), "spool-") {
            Ok(r) => return r,
            Err(e) if Instant::now() > deadline => panic!(
                "{e}\nagent log:\n{}\ncollector log:\n{}",
                f.agent.as_ref().unwrap().log_text(),
                c.log_text()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool, diag: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}:\n{}", diag());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the agent's events file holds 10 denies numbered after `seq_`.
fn wait_denies_after(f: &Fixture, seq_: u64) {
    f.wait_event("10 denies", |_| {
        f.events()
            .iter()
            .filter(|e| tg(e)["verdict"] == "deny" && seq(e) > seq_)
            .count()
            >= 10
    });
}

fn connects(f: &Fixture, n: usize, target: &str) {
    let mut args = vec!["connect", "--sendto"];
    args.extend(std::iter::repeat_n(target, n));
    f.probe("t0/a", &args);
}

fn start_agent(f: &mut Fixture, args: &[String]) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = policy(&f.cg_path.clone(), BODY);
    f.start_agent_with(&p, &a);
}

/// The agent is the process the test started (no restart, no crash loop)
/// and still enforces.
fn still_enforcing(f: &mut Fixture) {
    let agent = f.agent.as_mut().unwrap();
    let status = agent.child.try_wait().unwrap();
    assert!(
        status.is_none(),
        "agent exited: {status:?}\n{}",
        agent.log_text()
    );
    assert_eq!(f.tcp("t0/a", DENIED), "EPERM");
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // After "pid (comm) ": state is field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Fails if process `pid` spends more than a quarter of a core during
/// `secs` seconds of a fault nothing else happens in: a retry loop that
/// spins would.
fn no_busy_loop(what: &str, pid: u32, secs: u64) {
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(secs));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < secs as f64 / 4.0,
        "{what} used {used:.2} s of CPU in {secs} s of a disk fault"
    );
}

fn agent_metric(f: &Fixture, name: &str) -> f64 {
    f.agent.as_ref().unwrap().metric(name).unwrap_or(0.0)
}

/// Everything after the agent recovered: no record lost after recovery, and
/// the spool drained.
fn after_recovery(f: &Fixture, got: &[Value], since_seq: u64) {
    let late: Vec<&Value> = got
        .iter()
        .filter(|e| tg(e)["kind"] == "connection" && seq(e) > since_seq)
        .collect();
    assert!(!late.is_empty(), "nothing delivered after recovery");
    wait_for(
        "spool drained after recovery",
        20,
        || agent_metric(f, "tiergate_spool_pending") == 0.0,
        || f.agent.as_ref().unwrap().log_text(),
    );
}

fn spool_fault(name: &str, fault: &str) {
    let mut f = Fixture::new(name);
    let pki = Pki::new();
    let collected = f.dir.join("collected.jsonl");
    let mut c = Collector::start(
        &f.dir,
        pki.collector(),
        vec![format!("file:{}", collected.display())],
    );
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let disk = Tmpfs::mount(f.dir.join("disk"), "4m");
    let spool = disk.dir.join("spool");
    let mut args = agent_args(&c, &files, &spool);
    // 64 KiB segments: new ones are made (and fail) often.
    args.extend(["--spool-max-bytes".into(), "1048576".into()]);
    start_agent(&mut f, &args);
    connects(&f, 10, DENIED);
    wait_denies_after(&f, 0);
    wait_books(&f, &c, &collected);
    // The collector goes away, so the spool must hold what follows.
    c.stop();
    let error = if fault == "full" {
        disk.fill();
        "No space left on device"
    } else {
        disk.read_only();
        "Read-only file system"
    };
    connects(&f, 300, ALLOWED);
    connects(&f, 20, DENIED);
    let lost_metric = "tiergate_events_lost_total{stage=\"spool-write-error\"}";
    wait_for(
        "spool write errors counted",
        20,
        || agent_metric(&f, lost_metric) > 0.0,
        || f.agent.as_ref().unwrap().log_text(),
    );
    assert_eq!(agent_metric(&f, "tiergate_spool_write_failing"), 1.0);
    let log = f.agent.as_ref().unwrap().log_text();
    assert!(
        log.lines().any(|l| l.contains("spool writes fail")
            && l.contains(error)
            && l.contains(&*spool.to_string_lossy())),
        "no log line naming the spool path and {error:?}:\n{log}"
    );
    still_enforcing(&mut f);
    // Collector back while the disk is still bad: nothing is acknowledged
    // that was not written, and the agent neither crashes nor spins.
    c.restart();
    no_busy_loop("the agent", f.agent.as_ref().unwrap().child.id(), 2);
    still_enforcing(&mut f);
    if fault == "full" {
        disk.free();
    } else {
        disk.writable();
    }
    // The spool retries a failed write at most every 250 ms: records in
    // that window are still given up (and named); then it writes again.
    wait_for(
        "spool writable again",
        10,
        || agent_metric(&f, "tiergate_spool_write_failing") == 0.0,
        || f.agent.as_ref().unwrap().log_text(),
    );
    let before = f.events().iter().map(seq).max().unwrap();
    connects(&f, 10, DENIED);
    wait_denies_after(&f, before);
    let (delivered, lost) = wait_books(&f, &c, &collected);
    assert!(lost > 0, "nothing given up, the fault did not bite");
    let got = lines(&collected);
    after_recovery(&f, &got, before);
    // Denies made after recovery all arrived.
    let late_denies = got
        .iter()
        .filter(|e| tg(e)["verdict"] == "deny" && seq(e) > before)
        .map(seq)
        .collect::<BTreeSet<_>>();
    assert!(
        late_denies.len() >= 10,
        "denies after recovery: {late_denies:?}"
    );
    eprintln!("{name}: delivered {delivered}, named lost {lost}");
}

#[test]
fn spool_on_a_full_disk_names_every_loss_and_recovers() {
    spool_fault("dfspoolfull", "full");
}

#[test]
fn spool_remounted_read_only_names_every_loss_and_recovers() {
    spool_fault("dfspoolro", "ro");
}

/// The collector's file sink on a disk that fills up or goes read-only: no
/// batch is acknowledged that was not written, the agent's spool holds
/// everything, and once the disk is back every record is written.
fn sink_fault(name: &str, fault: &str) {
    let mut f = Fixture::new(name);
    let pki = Pki::new();
    let disk = Tmpfs::mount(f.dir.join("disk"), "1m");
    let collected = disk.dir.join("collected.jsonl");
    // Small files: rotation (rename, create) happens during the fault.
    let sink = format!("file:{}?max-bytes=65536&keep=50", collected.display());
    let c = Collector::start(&f.dir, pki.collector(), vec![sink.clone()]);
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let spool = f.dir.join("spool");
    start_agent(&mut f, &agent_args(&c, &files, &spool));
    connects(&f, 10, DENIED);
    wait_denies_after(&f, 0);
    wait_books(&f, &c, &collected);
    let error = if fault == "full" {
        disk.fill();
        "No space left on device"
    } else {
        disk.read_only();
        "Read-only file system"
    };
    connects(&f, 100, ALLOWED);
    connects(&f, 20, DENIED);
    let errors = format!(
        "tiergate_collector_sink_errors_total{{sink=\"file:{}\"}}",
        collected.display()
    );
    wait_for(
        "collector sink errors counted",
        20,
        || c.metric(&errors) > 0.0,
        || c.log_text(),
    );
    wait_for(
        "agent spool holds the unacknowledged records",
        10,
        || agent_metric(&f, "tiergate_spool_pending") > 0.0,
        || f.agent.as_ref().unwrap().log_text(),
    );
    let log = c.log_text();
    assert!(
        log.lines().any(|l| l.contains("sink write failed")
            && l.contains(error)
            && l.contains(&*collected.to_string_lossy())),
        "no collector log line naming the file and {error:?}:\n{log}"
    );
    // The agent resends with backoff, the collector fails each attempt
    // once: no spin on either side.
    let errors_before = c.metric(&errors);
    no_busy_loop("the collector", c.child.as_ref().unwrap().id(), 2);
    no_busy_loop("the agent", f.agent.as_ref().unwrap().child.id(), 1);
    let attempts = c.metric(&errors) - errors_before;
    assert!(attempts <= 15.0, "{attempts} failed batches in 3 s");
    still_enforcing(&mut f);
    if fault == "full" {
        disk.free();
    } else {
        disk.writable();
    }
    let before = f.events().iter().map(seq).max().unwrap();
    connects(&f, 10, DENIED);
    wait_denies_after(&f, before);
    let (delivered, lost) = wait_books(&f, &c, &collected);
    assert_eq!(lost, 0, "records given up although the spool had room");
    let got = lines(&collected);
    assert!(
        got.iter().all(|e| tg(e)["kind"] != "gap"),
        "the collector reported a gap"
    );
    after_recovery(&f, &got, before);
    // At least once: a record written twice (a batch written in part, then
    // resent whole) is the same record, same uid, same value.
    let mut by_uid: std::collections::BTreeMap<&str, &Value> = Default::default();
    for e in &got {
        let uid = e["metadata"]["uid"].as_str().unwrap();
        if let Some(first) = by_uid.insert(uid, e) {
            assert_eq!(first, e, "two different records with uid {uid}");
        }
    }
    eprintln!(
        "{name}: delivered {delivered}, {} lines for {} uids",
        got.len(),
        by_uid.len()
    );
}

#[test]
fn collector_file_sink_on_a_full_disk_holds_acks_until_space_returns() {
    sink_fault("dfsinkfull", "full");
}

#[test]
fn collector_file_sink_remounted_read_only_holds_acks_until_writable() {
    sink_fault("dfsinkro", "ro");
}

/// The agent's own `--events` file on a disk that fills up: the records it
/// could not take are named in loss records (in the file, once it takes
/// lines again, and at the collector), the file never holds a torn line,
/// and the collector still gets everything.
#[test]
fn events_file_on_a_full_disk_names_its_losses_and_recovers() {
    let mut f = Fixture::new("dfevents");
    let pki = Pki::new();
    let collected = f.dir.join("collected.jsonl");
    let c = Collector::start(
        &f.dir,
        pki.collector(),
        vec![format!("file:{}", collected.display())],
    );
    let files = pki.agent("agent", &pki.ca.issue(Leaf::agent()));
    let disk = Tmpfs::mount(f.dir.join("disk"), "1m");
    let events = disk.dir.join("events.jsonl");
    std::os::unix::fs::symlink(&events, f.events_path()).unwrap();
    let spool = f.dir.join("spool");
    start_agent(&mut f, &agent_args(&c, &files, &spool));
    connects(&f, 10, DENIED);
    wait_denies_after(&f, 0);
    disk.fill();
    connects(&f, 300, ALLOWED);
    connects(&f, 20, DENIED);
    let stage = format!("events-file:{}", f.events_path().display());
    let metric = format!("tiergate_events_lost_total{{stage=\"{stage}\"}}");
    wait_for(
        "events-file losses counted",
        20,
        || agent_metric(&f, &metric) > 0.0,
        || f.agent.as_ref().unwrap().log_text(),
    );
    let log = f.agent.as_ref().unwrap().log_text();
    assert!(
        log.lines().any(|l| l.contains("cannot write events")
            && l.contains("No space left on device")
            && l.contains(&*f.events_path().to_string_lossy())),
        "no log line naming the events file and ENOSPC:\n{log}"
    );
    still_enforcing(&mut f);
    disk.free();
    connects(&f, 10, DENIED);
    // The collector has every record; the file has each one or names it lost.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got = lines(&collected);
        let mine = lines(&events);
        let produced: Vec<Value> = got.into_iter().filter(|e| tg(e)["kind"] != "gap").collect();
        match books(&produced, &mine, "events-file:") {
            Ok((kept, lost)) if produced.iter().any(|e| tg(e)["stage"] == stage.as_str()) => {
                assert!(lost > 0, "nothing given up, the fault did not bite");
                eprintln!("events file: kept {kept}, named lost {lost}");
                break;
            }
            r => assert!(
                Instant::now() < deadline,
                "{r:?}\nagent log:\n{}",
                f.agent.as_ref().unwrap().log_text()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    still_enforcing(&mut f);
}
