//! Tests of durability and write failures: kill -9, injected write errors, a full disk.

use std::fs::{self, File};
use std::io::{self, BufRead, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::test_support::*;
use super::write::{WRITE_RETRY_INTERVAL, WRITE_THRESHOLD};
use super::*;

const KILL9_ENV: &str = "TIERGATE_SPOOL_KILL9_DIR";

const KILL9_READY: &str = "TIERGATE-SPOOL-KILL9-READY";

/// The child of `kill9_loses_only_the_unwritten_buffer`; does nothing
/// when run on its own.
#[test]
fn kill9_child() {
    let Some(dir) = std::env::var_os(KILL9_ENV) else {
        return;
    };
    let (mut s, _) = open(Path::new(&dir), 64 << 20, 16 << 20);
    store_range(&mut s, 1..=100);
    s.flush().expect("flush");
    store_range(&mut s, 101..=250);
    println!("{KILL9_READY}");
    io::stdout().flush().expect("stdout");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn kill9_loses_only_the_unwritten_buffer() {
    let t = TestDir::new("kill9");
    let module = module_path!();
    let test_name = format!(
        "{}::kill9_child",
        module.split_once("::").map_or(module, |(_, rest)| rest)
    );
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            test_name.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL9_ENV, t.spool())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child test");
    let stdout = child.stdout.take().expect("stdout");
    let ready = io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains(KILL9_READY));
    assert!(
        ready,
        "the child test {test_name} ended before it was ready"
    );
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "child status {status}");

    let (s, report) = open(&t.spool(), 64 << 20, 16 << 20);
    assert_clean(&report);
    // 1-100 were flushed; of 101-250 the buffer was written each time it
    // passed 64 KiB, and what was still in it died with the process.
    let per_write = WRITE_THRESHOLD.div_ceil(FRAME as usize) as u64;
    let survivors = 100 + (150 / per_write) * per_write;
    assert!(survivors > 100 && survivors < 250);
    assert_eq!(seqs(&all_after(&s, 0)), (1..=survivors).collect::<Vec<_>>());
    assert_eq!(report.last_seq, Some(survivors));
    assert_eq!(s.used_bytes(), survivors * FRAME);
}

#[test]
fn write_errors_drop_and_count_and_the_spool_recovers() {
    let t = TestDir::new("writeerr");
    let (mut s, _) = open(&t.spool(), 64 << 20, 16 << 20);
    let mut stored = seqs(&store_range(&mut s, 1..=10));
    s.flush().expect("flush");
    let seg = segment_path(&t.spool(), 1);

    s.fail_writes = true;
    let mut seq = 10;
    let mut dropped = Vec::new();
    // Appends fill the buffer; the write at 64 KiB fails half-way and is
    // cut off, that record stays buffered, and later ones are dropped.
    while dropped.len() < 5 {
        seq += 1;
        match s.append(&rec(seq, seq % 2 == 0, PAYLOAD)).expect("append") {
            Appended::Stored => stored.push(seq),
            Appended::Dropped {
                reason: DropReason::WriteError(msg),
            } => {
                assert!(msg.contains(&seg.display().to_string()), "{msg}");
                assert!(msg.contains("No space left on device"), "{msg}");
                dropped.push(seq);
            }
            other => panic!("seq {seq}: {other:?}"),
        }
        assert!(seq < 1000, "no write error surfaced");
    }
    assert_eq!(
        fs::metadata(&seg).expect("metadata").len(),
        10 * FRAME,
        "partial write cut off"
    );
    let err = s.flush().expect_err("flush with failing writes");
    assert!(matches!(err, SpoolError::Io { .. }), "{err}");
    assert_eq!(fs::metadata(&seg).expect("metadata").len(), 10 * FRAME);
    assert_eq!(s.dropped_write_errors(), 5);
    assert_eq!(s.dropped_normal() + s.dropped_priority(), 5);

    // Writes work again: flush writes the kept buffer.
    s.fail_writes = false;
    s.flush().expect("flush after recovery");
    seq += 1;
    store(&mut s, &rec(seq, false, PAYLOAD));
    stored.push(seq);

    // And append retries by itself after the retry interval.
    s.fail_writes = true;
    let mut failed = false;
    while !failed {
        seq += 1;
        match s.append(&rec(seq, false, PAYLOAD)).expect("append") {
            Appended::Stored => stored.push(seq),
            Appended::Dropped { .. } => failed = true,
        }
    }
    s.fail_writes = false;
    std::thread::sleep(WRITE_RETRY_INTERVAL + Duration::from_millis(50));
    seq += 1;
    store(&mut s, &rec(seq, true, PAYLOAD));
    stored.push(seq);
    s.flush().expect("flush");
    assert_eq!(seqs(&all_after(&s, 0)), stored);
    drop(s);

    let (s, report) = open(&t.spool(), 64 << 20, 16 << 20);
    assert_clean(&report);
    assert_eq!(
        seqs(&all_after(&s, 0)),
        stored,
        "exactly the stored records, no holes"
    );
}

/// Unmounts on drop (lazily, so a failed test cannot leave it busy).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_on_a_real_file_system() {
    let t = TestDir::new("enospc");
    let mnt = t.0.join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tiergate-spool-test"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("disk_full_on_a_real_file_system skipped: cannot mount a tmpfs (needs root)");
        return;
    }
    let _mount = Mount(mnt.clone());
    let (mut s, _) = open(&mnt.join("spool"), 64 << 20, 16 << 20);
    // Fill the file system, then leave 100 KiB free.
    let filler_path = mnt.join("filler");
    let mut filler = File::create(&filler_path).expect("create filler");
    while filler.write_all(&[0xa5; 4096]).is_ok() {}
    let len = filler.metadata().expect("metadata").len();
    filler.set_len(len - 100 * 1024).expect("shrink filler");
    drop(filler);

    let mut stored = Vec::new();
    let mut write_errors = 0;
    let mut seq = 0;
    while write_errors < 20 {
        seq += 1;
        assert!(seq < 100_000, "the file system never filled up");
        match s.append(&rec(seq, false, PAYLOAD)).expect("append") {
            Appended::Stored => stored.push(seq),
            Appended::Dropped {
                reason: DropReason::WriteError(msg),
            } => {
                assert!(msg.contains("No space left on device"), "{msg}");
                write_errors += 1;
            }
            other => panic!("seq {seq}: {other:?}"),
        }
        if seq % 20 == 0 {
            let _ = s.flush();
        }
    }
    assert!(stored.len() > 100, "only {} records stored", stored.len());
    // Whole records only on disk, whatever the kernel managed to write.
    let on_disk: u64 = segment_files(&mnt.join("spool")).iter().map(|f| f.1).sum();
    assert_eq!(on_disk % FRAME, 0, "segment bytes {on_disk}");

    fs::remove_file(&filler_path).expect("remove filler");
    s.flush().expect("flush once space is back");
    for _ in 0..20 {
        seq += 1;
        store(&mut s, &rec(seq, false, PAYLOAD));
        stored.push(seq);
    }
    s.flush().expect("flush");
    assert_eq!(s.dropped_write_errors(), 20);
    drop(s);
    let (s, report) = open(&mnt.join("spool"), 64 << 20, 16 << 20);
    assert_clean(&report);
    assert_eq!(seqs(&all_after(&s, 0)), stored);
}

#[test]
fn acks_go_on_when_the_cursor_cannot_be_written() {
    let t = TestDir::new("cursorfail");
    let (mut s, _) = open(&t.spool(), 64 << 20, 4 * FRAME);
    store_range(&mut s, 1..=12);
    s.flush().expect("flush");
    let before = segment_files(&t.spool()).len();
    // The cursor write fails, as it does on a full or read-only file system.
    s.cursor.inject_failures(true);
    s.ack(8).expect("an ack goes on without its cursor");
    assert!(s.sync_cursor().is_err());
    assert!(s.write_failing());
    assert_eq!(s.acked(), 8);
    assert_eq!(
        seqs(&all_after(&s, s.acked())),
        (9..=12).collect::<Vec<_>>()
    );
    assert_eq!(s.pending_records(), 4);
    assert!(
        segment_files(&t.spool()).len() < before,
        "acknowledged segments kept: their space is what a full disk needs back"
    );
    s.cursor.inject_failures(false);
    s.ack(10).expect("ack");
    s.sync_cursor().expect("the cursor is written again");
    assert!(!s.write_failing(), "a cursor write succeeded");
    drop(s);
    let (s, report) = open(&t.spool(), 64 << 20, 4 * FRAME);
    assert_clean(&report);
    assert_eq!(s.acked(), 10);
}
