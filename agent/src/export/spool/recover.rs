//! Recovery at open: scanning segments, cutting torn tails, setting damaged and foreign files aside.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::{SpoolError, io_err};
use super::files::sync_dir;
use super::record::{count_intact, intact_after, parse_frame};
use super::segment::{Segment, parse_segment_name};
use super::write::WRITE_THRESHOLD;

/// A damaged end of the newest segment with no intact record after it is
/// taken for a torn write up to this size; a larger one is set aside.
const TORN_TAIL_MAX: u64 = 2 * WRITE_THRESHOLD as u64;

/// What `open` set aside from one damaged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where the damaged file was found.
    pub from: PathBuf,
    /// Where it is now (a whole copy of the original, under `corrupt/`).
    pub path: PathBuf,
    /// Bytes of the original that are no longer served.
    pub bytes: u64,
    /// Records in those bytes: every intact one found there, plus one for the
    /// damaged record the damage starts in (0 for an unreadable file).
    pub records: u64,
    /// The set-aside records come after this kept seq (None: before every
    /// kept record, or position unknown for a file with a foreign name).
    pub after_seq: Option<u64>,
    /// ... and before this kept seq (None: after every kept record).
    pub before_seq: Option<u64>,
    /// What was wrong, for the log.
    pub reason: String,
}

/// What `open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The directory held no spool: a new agent id was made.
    pub created: bool,
    /// Records waiting for an acknowledgement (seq above `acked`).
    pub records: u64,
    /// See [`Spool::last_seq`](super::Spool::last_seq).
    pub last_seq: Option<u64>,
    /// The acknowledged seq read from the cursor.
    pub acked: u64,
    /// Where the damaged files are now (under `corrupt/`), one per file.
    pub set_aside: Vec<PathBuf>,
    /// Bytes no longer served because they were set aside.
    pub set_aside_bytes: u64,
    /// Records no longer served because they were set aside.
    pub set_aside_records: u64,
    /// The same files with what was lost from each and between which kept
    /// seqs (for loss records), in the order of `set_aside`.
    pub set_aside_detail: Vec<SetAside>,
    /// Bytes of torn records cut from the end of the newest segment.
    pub truncated_bytes: u64,
    /// The cursor was garbled or missing: everything on disk will be resent.
    pub cursor_reset: bool,
    /// The agent id file was garbled and set aside: a new id was made.
    pub agent_id_reset: bool,
}

impl OpenReport {
    fn push_set_aside(&mut self, entry: SetAside) {
        self.set_aside.push(entry.path.clone());
        self.set_aside_bytes += entry.bytes;
        self.set_aside_records += entry.records;
        self.set_aside_detail.push(entry);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A free name `corrupt/<name>.<unix-time>[.<n>]`.
fn corrupt_name(corrupt_dir: &Path, name: &str) -> PathBuf {
    let base = format!("{name}.{}", unix_now());
    let mut path = corrupt_dir.join(&base);
    let mut n = 1;
    while path.symlink_metadata().is_ok() {
        path = corrupt_dir.join(format!("{base}.{n}"));
        n += 1;
    }
    path
}

/// Moves `from` into `corrupt/`.
pub(super) fn move_aside(
    from: &Path,
    corrupt_dir: &Path,
    name: &str,
) -> Result<PathBuf, SpoolError> {
    let to = corrupt_name(corrupt_dir, name);
    fs::rename(from, &to).map_err(io_err("move a damaged spool file to", &to))?;
    sync_dir(corrupt_dir)?;
    if let Some(parent) = from.parent() {
        sync_dir(parent)?;
    }
    Ok(to)
}

/// Copies `data` (a damaged file's whole content) into `corrupt/`, durably.
fn copy_aside(data: &[u8], corrupt_dir: &Path, name: &str) -> Result<PathBuf, SpoolError> {
    let to = corrupt_name(corrupt_dir, name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&to)
        .map_err(io_err("create", &to))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &to))?;
    sync_dir(corrupt_dir)?;
    Ok(to)
}

/// Cuts `path` to `len` bytes, durably.
fn truncate_file(path: &Path, len: u64) -> Result<(), SpoolError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(len)?;
            f.sync_all()
        })
        .map_err(io_err("truncate damaged spool segment", path))
}

/// Scans the segment files in seq order, repairing and setting aside as the
/// `spool` module documentation says. Returns the kept segments and the
/// highest seq found intact in what was set aside.
pub(super) fn recover_segments(
    segments_dir: &Path,
    corrupt_dir: &Path,
    acked: u64,
    report: &mut OpenReport,
) -> Result<(Vec<Segment>, Option<u64>), SpoolError> {
    let mut seen_seq: Option<u64> = None;
    let mut named: Vec<(u64, PathBuf, String)> = Vec::new();
    let entries = fs::read_dir(segments_dir).map_err(io_err("list", segments_dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", segments_dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry
            .file_type()
            .map_err(io_err("inspect", &path))?
            .is_file();
        match parse_segment_name(&name) {
            Some(seq) if is_file => named.push((seq, path, name)),
            _ => {
                let (bytes, records, max_seq) = if is_file {
                    match fs::read(&path) {
                        Ok(data) => {
                            let (n, max) = count_intact(&data, 0);
                            (data.len() as u64, n, max)
                        }
                        Err(_) => (0, 0, None),
                    }
                } else {
                    (0, 0, None)
                };
                seen_seq = seen_seq.max(max_seq);
                let to = move_aside(&path, corrupt_dir, &name)?;
                let reason = if is_file {
                    "not a segment file name"
                } else {
                    "not a regular file"
                };
                tracing::warn!(path = %path.display(), moved_to = %to.display(), bytes, records,
                    reason, "foreign file in the spool's segment directory set aside");
                report.push_set_aside(SetAside {
                    from: path,
                    path: to,
                    bytes,
                    records,
                    after_seq: None,
                    before_seq: None,
                    reason: reason.into(),
                });
            }
        }
    }
    named.sort_by_key(|(seq, ..)| *seq);

    let mut kept: Vec<Segment> = Vec::new();
    // For each set-aside entry with a position: (its index, kept.len() once its file was done).
    let mut positioned: Vec<(usize, usize)> = Vec::new();
    let mut prev: Option<u64> = None;
    let mut data = Vec::new();
    for (i, (name_seq, path, name)) in named.iter().enumerate() {
        let is_last = i + 1 == named.len();
        // Wholly acknowledged (an ack removed the segments before it, or was
        // cut short by a crash): the next segment starts at or below acked + 1.
        if let Some((next, ..)) = named.get(i + 1)
            && *next <= acked.saturating_add(1)
        {
            match fs::remove_file(path) {
                Ok(()) => continue,
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "cannot remove an acknowledged spool segment"),
            }
        }
        data.clear();
        if let Err(e) = File::open(path).and_then(|mut f| f.read_to_end(&mut data)) {
            let bytes = fs::metadata(path).map_or(0, |m| m.len());
            let to = move_aside(path, corrupt_dir, name)?;
            let reason = format!("unreadable: {e}");
            tracing::warn!(path = %path.display(), moved_to = %to.display(), bytes, %reason,
                "spool segment set aside");
            positioned.push((report.set_aside_detail.len(), kept.len()));
            report.push_set_aside(SetAside {
                from: path.clone(),
                path: to,
                bytes,
                records: 0,
                after_seq: prev,
                before_seq: None,
                reason,
            });
            continue;
        }

        let mut seg = Segment::new(path.clone(), *name_seq);
        let mut pos = 0usize;
        // What is wrong, and whether a torn write could have caused it (an
        // intact record in the wrong place cannot be torn).
        let mut damage: Option<(String, bool)> = None;
        while pos < data.len() {
            let frame = match parse_frame(&data[pos..]) {
                Ok(frame) => frame,
                Err(e) => {
                    damage = Some((e.to_string(), true));
                    break;
                }
            };
            if pos == 0 && frame.seq != *name_seq {
                damage = Some((
                    format!(
                        "first record has seq {} but the file is named for {name_seq}",
                        frame.seq
                    ),
                    false,
                ));
                break;
            }
            if let Some(p) = prev
                && frame.seq <= p
            {
                damage = Some((
                    format!("seq {} does not exceed the previous seq {p}", frame.seq),
                    false,
                ));
                break;
            }
            seg.note(pos as u64, frame.seq, frame.len as u64);
            prev = Some(frame.seq);
            pos += frame.len;
        }

        let mut set_aside_entry = None;
        if let Some((detail, torn_possible)) = damage {
            let lost = (data.len() - pos) as u64;
            let (intact, max_seq) = intact_after(&data, pos);
            if torn_possible && is_last && intact == 0 && lost <= TORN_TAIL_MAX {
                // A write that a crash cut short.
                truncate_file(path, pos as u64)?;
                tracing::warn!(path = %path.display(), offset = pos, bytes = lost, %detail,
                    "torn end of the newest spool segment cut off");
                report.truncated_bytes += lost;
            } else {
                let to = copy_aside(&data, corrupt_dir, name)?;
                truncate_file(path, pos as u64)?;
                let reason = format!("damaged at byte {pos}: {detail}");
                tracing::warn!(path = %path.display(), copy = %to.display(), bytes = lost,
                    records = intact + 1, after_seq = ?prev, %reason,
                    "damaged spool segment set aside; its records from the damage on are not sent");
                seen_seq = seen_seq.max(max_seq);
                set_aside_entry = Some(report.set_aside_detail.len());
                report.push_set_aside(SetAside {
                    from: path.clone(),
                    path: to,
                    bytes: lost,
                    records: intact + 1,
                    after_seq: prev,
                    before_seq: None,
                    reason,
                });
            }
        }

        if seg.records == 0 || seg.last_seq <= acked {
            // Empty (created just before a crash, or nothing left before the
            // damage) or wholly acknowledged.
            fs::remove_file(path).map_err(io_err("remove spool segment", path))?;
        } else {
            kept.push(seg);
        }
        if let Some(entry) = set_aside_entry {
            positioned.push((entry, kept.len()));
        }
    }
    for (entry, next_kept) in positioned {
        report.set_aside_detail[entry].before_seq = kept.get(next_kept).map(|s| s.first_seq);
    }
    Ok((kept, seen_seq))
}
