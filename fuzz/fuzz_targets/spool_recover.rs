//! The spool's recovery at open (`export/spool/recover.rs`): real spool
//! files, written by the spool itself, then damaged (truncated, overwritten,
//! extended, replaced by random bytes, foreign files, a garbled cursor).
//! Opening again never panics and never fails; every record before the
//! first damaged byte of its segment is served again, unchanged; a record
//! still intact on disk that is not served is accounted for (cut off as a
//! torn tail, or set aside with a copy under `corrupt/`).
#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tiergate::export::spool::{Appended, RECORD_OVERHEAD, Record, Spool, SpoolConfig};

#[derive(Arbitrary, Debug)]
struct Input {
    records: Vec<(bool, u8, u8)>,
    segment_bytes: u16,
    ack: u8,
    damage: Vec<Damage>,
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Truncate {
        file: u8,
        at: u16,
    },
    Overwrite {
        file: u8,
        at: u16,
        bytes: Vec<u8>,
    },
    Append {
        file: u8,
        bytes: Vec<u8>,
    },
    Replace {
        file: u8,
        bytes: Vec<u8>,
    },
    /// A segment after the last, as a crash right after creating it leaves.
    NewSegment {
        bytes: Vec<u8>,
    },
    Foreign {
        name: u8,
        bytes: Vec<u8>,
    },
    Cursor {
        bytes: Vec<u8>,
    },
}

fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("tiergate-fuzz-spool-{}", std::process::id()))
}

fn config(dir: &Path, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 24,
        segment_bytes,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .expect("segments dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

/// (seq, start, end) of each record of a file as the spool wrote it.
fn frames(data: &[u8]) -> Vec<(u64, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + RECORD_OVERHEAD <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4")) as usize;
        let seq = u64::from_le_bytes(data[pos + 8..pos + 16].try_into().expect("8"));
        out.push((seq, pos, pos + 8 + len));
        pos += 8 + len;
    }
    assert_eq!(pos, data.len(), "the spool wrote a partial record");
    out
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fuzz_target!(|input: Input| {
    let dir = scratch();
    let _ = fs::remove_dir_all(&dir);
    let segment_bytes = 64 + u64::from(input.segment_bytes % 4096);

    // 1. A real spool.
    let mut written: BTreeMap<u64, Record> = BTreeMap::new();
    {
        let (mut spool, _) = Spool::open(config(&dir, segment_bytes)).expect("open a new spool");
        for (i, &(priority, len, fill)) in input.records.iter().take(64).enumerate() {
            let seq = i as u64 + 1;
            let payload: Vec<u8> = (0..usize::from(len)).map(|k| fill ^ k as u8).collect();
            let rec = Record {
                seq,
                priority,
                payload,
            };
            assert_eq!(spool.append(&rec).expect("append"), Appended::Stored);
            written.insert(seq, rec);
        }
        let ack = u64::from(input.ack) % (written.len() as u64 + 1);
        if ack > 0 && input.ack >= 128 {
            spool.ack(ack).expect("ack");
        }
        spool.flush().expect("flush");
    }
    let files = segments(&dir);
    let pristine: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).expect("read")).collect();

    // 2. Damage. Per file: the bytes now and the first byte that differs.
    let mut now = pristine.clone();
    let mut cursor_damaged = false;
    for d in input.damage.iter().take(4) {
        let pick = |f: u8| (!files.is_empty()).then(|| usize::from(f) % files.len());
        match d {
            Damage::Truncate { file, at } => {
                if let Some(i) = pick(*file) {
                    let at = usize::from(*at).min(now[i].len());
                    now[i].truncate(at);
                }
            }
            Damage::Overwrite { file, at, bytes } => {
                if let Some(i) = pick(*file) {
                    let at = usize::from(*at).min(now[i].len());
                    for (k, b) in bytes.iter().take(64).enumerate() {
                        match now[i].get_mut(at + k) {
                            Some(x) => *x = *b,
                            None => now[i].push(*b),
                        }
                    }
                }
            }
            Damage::Append { file, bytes } => {
                if let Some(i) = pick(*file) {
                    now[i].extend(bytes.iter().take(256));
                }
            }
            Damage::Replace { file, bytes } => {
                if let Some(i) = pick(*file) {
                    now[i] = bytes.clone();
                }
            }
            Damage::NewSegment { bytes } => {
                let next = written.len() as u64 + 1;
                let path = dir.join(format!("segments/{next:020}.seg"));
                fs::write(path, bytes).expect("write");
            }
            Damage::Foreign { name, bytes } => {
                fs::write(dir.join(format!("segments/x{name}")), bytes).expect("write");
            }
            Damage::Cursor { bytes } => {
                fs::write(dir.join("cursor"), bytes).expect("write");
                cursor_damaged = true;
            }
        }
    }
    for (f, bytes) in files.iter().zip(&now) {
        fs::write(f, bytes).expect("write");
    }

    // 3. Recovery.
    let (spool, report) = Spool::open(config(&dir, segment_bytes))
        .unwrap_or_else(|e| panic!("open after damage: {e}"));
    // What the sender reads: everything after the acknowledged seq.
    let acked = report.acked;
    let served = spool
        .read_after(acked, usize::MAX, usize::MAX)
        .expect("read_after");
    if !cursor_damaged {
        assert_eq!(acked, spool.acked());
    }
    for w in served.windows(2) {
        assert!(w[0].seq < w[1].seq, "served out of order");
    }
    let served_seqs: BTreeMap<u64, &Record> = served.iter().map(|r| (r.seq, r)).collect();
    for r in &served {
        assert!(
            r.seq > acked,
            "served seq {} at or below the ack {acked}",
            r.seq
        );
        if let Some(w) = written.get(&r.seq) {
            assert_eq!(w, r, "seq {} served changed", r.seq);
        }
    }

    let mut unaccounted = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let damaged_from = first_difference(&pristine[i], &now[i]);
        for (seq, start, end) in frames(&pristine[i]) {
            if seq <= acked {
                continue;
            }
            let intact_now = now[i].get(start..end) == pristine[i].get(start..end);
            if end <= damaged_from {
                // The valid prefix of this segment.
                assert!(
                    served_seqs.contains_key(&seq),
                    "seq {seq} of {} (before the damage at byte {damaged_from}) was lost; {report:?}",
                    file.display()
                );
            } else if intact_now && !served_seqs.contains_key(&seq) {
                unaccounted.push(seq);
            }
        }
    }
    if !unaccounted.is_empty() {
        assert!(
            report.truncated_bytes > 0 || report.set_aside_records > 0,
            "intact records {unaccounted:?} dropped without a word: {report:?}"
        );
    }
    for aside in &report.set_aside_detail {
        assert!(aside.path.starts_with(dir.join("corrupt")), "{aside:?}");
        assert!(
            aside.path.is_file(),
            "no copy of a set-aside file: {aside:?}"
        );
    }
    drop(spool);
    let _ = fs::remove_dir_all(&dir);
});
