//! The events file on a failing disk (`/dev/full`, a full tmpfs) and the
//! run arithmetic of loss records.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::*;

fn meta(seq: u64) -> RecordMeta<'static> {
    RecordMeta {
        seq,
        uid: "test",
        kind: "connection",
        priority: false,
        time_ms: 0,
    }
}

fn line(seq: u64) -> Vec<u8> {
    format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes()
}

#[test]
fn runs_merge_in_any_order() {
    let mut r = Vec::new();
    for s in [1, 2, 3, 7, 8] {
        push_run(&mut r, s);
    }
    assert_eq!(r, vec![(1, 3), (7, 8)]);
    push_run(&mut r, 5);
    assert_eq!(r, vec![(1, 3), (5, 5), (7, 8)]);
    add_runs(&mut r, &[(4, 4), (6, 6), (20, 22)]);
    assert_eq!(r, vec![(1, 8), (20, 22)]);
    add_runs(&mut r, &[(21, 30)]);
    assert_eq!(r, vec![(1, 8), (20, 30)]);
    assert!(in_runs(&r, 25) && !in_runs(&r, 9));
    assert_eq!(runs_len(&r), 19);
}

/// A loss record the file could not take either: the records it named are
/// named again in the next report, and the metric's share counts each once.
#[test]
fn a_lost_loss_record_has_its_records_named_again() {
    let mut s = LineSink::open("/dev/full").expect("open /dev/full");
    s.write(&meta(1), &line(1));
    s.write(&meta(2), &line(2));
    s.flush();
    let first = s.take_losses();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].count, first[0].first_reported), (2, 2));
    assert_eq!(first[0].seq_ranges, vec![(1, 2)]);
    assert!(
        first[0].what.contains("No space left on device"),
        "{first:?}"
    );
    // Seq 3 is the loss record reporting them; it is lost as well.
    s.write(&meta(3), &line(3));
    s.loss_carried(3, &first[0]);
    s.flush();
    let second = s.take_losses();
    assert_eq!((second[0].count, second[0].first_reported), (3, 1));
    assert_eq!(second[0].seq_ranges, vec![(1, 3)]);
    assert!(s.take_losses().is_empty());
}

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real full file system: whole lines only in the file, the lost ones
/// exactly the ones missing, and writes resume once there is room.
#[test]
fn full_disk_leaves_whole_lines_and_exact_losses() {
    let dir = std::env::temp_dir().join(format!("tiergate-sink-enospc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tiergate-sink-test"])
        .arg(&dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let _ = std::fs::remove_dir(&dir);
        eprintln!(
            "full_disk_leaves_whole_lines_and_exact_losses skipped: cannot mount a tmpfs (needs root)"
        );
        return;
    }
    let _mount = Tmpfs(dir.clone());
    let path = dir.join("events.jsonl");
    let mut s = LineSink::open(path.to_str().unwrap()).expect("open");
    let mut seq = 0;
    let mut lost = Vec::new();
    while lost.is_empty() {
        for _ in 0..100 {
            seq += 1;
            s.write(&meta(seq), &line(seq));
        }
        s.flush();
        lost = s.take_losses();
        assert!(seq < 10_000, "the file system never filled up");
    }
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.is_empty() || text.ends_with('\n'), "torn last line");
    let mut kept: Vec<u64> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
            v["seq"].as_u64().unwrap()
        })
        .collect();
    let mut named = Vec::new();
    for (a, b) in &lost[0].seq_ranges {
        named.extend(*a..=*b);
    }
    assert_eq!(lost[0].count, named.len() as u64);
    kept.extend(&named);
    kept.sort_unstable();
    assert_eq!(
        kept,
        (1..=seq).collect::<Vec<_>>(),
        "kept + lost != written"
    );
    // Room again: the next batch lands.
    std::fs::write(&path, b"").expect("truncate");
    seq += 1;
    s.write(&meta(seq), &line(seq));
    s.flush();
    assert!(s.take_losses().is_empty());
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(&format!("\"seq\":{seq},")), "{text:?}");
}
