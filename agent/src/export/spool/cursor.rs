//! The acknowledged cursor: `ack`, which frees acknowledged segments at
//! once, and the cursor file, persisted off the caller's path by a thread of
//! its own.
//!
//! The file holds two 16-byte slots (`"TGC1"`, seq u64 LE, crc32 LE of the
//! 12 bytes before). A write overwrites the slot that does not hold the
//! newest seq, in place (`pwrite` + `fdatasync`: no new file, no rename, no
//! directory sync), so a write torn by a crash leaves the other slot, and
//! the cursor before it, intact. Reading takes the highest valid slot. A
//! 16-byte file (one slot, as agents before this format wrote it) reads as
//! that slot; the spool rewrites it in the new form when it opens.
//!
//! Why a thread: a cursor write waits for the disk (milliseconds on a busy
//! one). `ack` runs where the sender holds the spool, which the event writer
//! needs for every record; it now only hands the seq over. The thread writes
//! the newest seq it was given, so acknowledgements that arrive during a
//! write are persisted together by the next.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Spool;
use super::error::{SpoolError, io_err};
use super::files::write_atomic;

const CURSOR_MAGIC: [u8; 4] = *b"TGC1";
const SLOT_LEN: usize = 16;
const FILE_LEN: usize = 2 * SLOT_LEN;
/// After a failed cursor write, the next attempt waits for a new ack or this long.
const RETRY: Duration = Duration::from_millis(250);

impl Spool {
    /// Records that the collector has everything up to `seq`: hands the
    /// cursor to its thread, then deletes the segments whose records are all
    /// at or below it. An ack at or below the current one is ignored.
    ///
    /// The segments go before the cursor is on disk, and a cursor that
    /// cannot be written (disk full, read-only) does not stop the ack: the
    /// collector has the records, so they are not sent again while this
    /// process runs, and their segments are still deleted, which gives a
    /// full disk back the room the cursor needs. Until a cursor write
    /// succeeds (retried at the next ack, or after 250 ms) a restart resends
    /// from the last cursor on disk: duplicates, never a loss.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.acked {
            return Ok(());
        }
        let last = self.last_seq.unwrap_or(0);
        if seq > last {
            return Err(SpoolError::AckBeyondLast { seq, last });
        }
        self.cursor.set(seq);
        self.acked = seq;

        let done = self.segments.partition_point(|s| s.last_seq <= seq);
        let mut removed = 0;
        for (idx, seg) in self.segments[..done].iter().enumerate() {
            if idx + 1 == self.segments.len() && self.active.is_some() {
                // Everything in it, the buffer too, is acknowledged.
                self.active = None;
                if self.write_failure.take().is_some() {
                    tracing::info!("spool write failure cleared: its records were acknowledged");
                }
            }
            match fs::remove_file(&seg.path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => removed += 1,
                Err(e) => {
                    // Kept in the index (and in used_bytes); retried at the next ack.
                    tracing::warn!(path = %seg.path.display(), error = %e,
                        "cannot remove an acknowledged spool segment");
                    break;
                }
            }
        }
        self.segments.drain(..removed);
        self.used = self.segments.iter().map(|s| s.bytes).sum();
        self.pending = match self.count_pending() {
            Ok(n) => n,
            Err(e) => {
                // Only the gauge suffers: counts every record still on disk.
                tracing::warn!(error = %e, "cannot count pending spool records");
                self.segments.iter().map(|s| s.records).sum()
            }
        };
        Ok(())
    }

    /// Waits until the cursor thread has written the last ack (or failed
    /// to): for a clean stop, and for tests.
    pub fn sync_cursor(&self) -> Result<(), String> {
        self.cursor.sync()
    }
}

fn encode_slot(seq: u64) -> [u8; SLOT_LEN] {
    let mut data = [0u8; SLOT_LEN];
    data[..4].copy_from_slice(&CURSOR_MAGIC);
    data[4..12].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&data[..12]);
    data[12..].copy_from_slice(&crc.to_le_bytes());
    data
}

fn parse_slot(data: &[u8]) -> Option<u64> {
    let data: &[u8; SLOT_LEN] = data.try_into().ok()?;
    let crc = u32::from_le_bytes(data[12..].try_into().ok()?);
    if data[..4] != CURSOR_MAGIC || crc32fast::hash(&data[..12]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(data[4..12].try_into().ok()?))
}

/// Replaces the cursor file with both slots at `seq` (at open, and when
/// the file on disk was garbled or in the one-slot form).
pub(super) fn write_cursor(dir: &Path, seq: u64) -> Result<(), SpoolError> {
    let slot = encode_slot(seq);
    let mut data = [0u8; FILE_LEN];
    data[..SLOT_LEN].copy_from_slice(&slot);
    data[SLOT_LEN..].copy_from_slice(&slot);
    write_atomic(dir, "cursor", &data)
}

/// The acknowledged seq a cursor file holds: the highest valid slot of the
/// two-slot form, or the one slot of the old form; `None` when no slot is
/// valid or the length is neither.
pub(super) fn parse_cursor(data: &[u8]) -> Option<u64> {
    match data.len() {
        SLOT_LEN => parse_slot(data),
        FILE_LEN => {
            let a = parse_slot(&data[..SLOT_LEN]);
            let b = parse_slot(&data[SLOT_LEN..]);
            a.max(b)
        }
        _ => None,
    }
}

/// The open cursor file and the slot the next write goes to.
struct CursorFile {
    file: File,
    next: usize,
}

impl CursorFile {
    fn write(&mut self, seq: u64) -> io::Result<()> {
        let offset = (self.next * SLOT_LEN) as u64;
        self.file.write_all_at(&encode_slot(seq), offset)?;
        self.file.sync_data()?;
        // Only a write that landed moves on: after a failed (maybe torn)
        // one, the other slot still holds the newest cursor on disk.
        self.next ^= 1;
        Ok(())
    }
}

#[derive(Default)]
struct State {
    /// The highest seq handed over.
    target: u64,
    /// The highest seq known to be on disk.
    written: u64,
    /// The last write's error, until a write succeeds.
    failure: Option<String>,
    /// Writes attempted since the last `set` (a `sync` waits for one).
    attempts: u64,
    stop: bool,
    #[cfg(test)]
    fail: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The thread that persists the cursor, and its hand-over.
pub(super) struct CursorWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CursorWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("CursorWriter")
            .field("target", &st.target)
            .field("written", &st.written)
            .field("failure", &st.failure)
            .finish()
    }
}

impl CursorWriter {
    /// Opens `dir/cursor` (which the spool's open has read as `acked`, or
    /// written) and starts the thread. The first write goes to the slot
    /// that does not hold `acked`.
    pub(super) fn start(dir: &Path, acked: u64) -> Result<Self, SpoolError> {
        let path = dir.join("cursor");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open the spool cursor", &path))?;
        let data = fs::read(&path).map_err(io_err("read", &path))?;
        let next = match data.len() {
            // The one-slot form: its slot stays until the second is written.
            SLOT_LEN => 1,
            _ if parse_slot(data.get(..SLOT_LEN).unwrap_or_default()) == Some(acked) => 1,
            _ => 0,
        };
        let shared = Arc::new(Shared::default());
        {
            let mut st = shared.lock();
            st.target = acked;
            st.written = acked;
        }
        let thread = std::thread::Builder::new()
            .name("tg-spool-cursor".into())
            .spawn({
                let shared = shared.clone();
                move || persist(CursorFile { file, next }, &shared)
            })
            .map_err(io_err("start the spool cursor thread", &path))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn set(&self, seq: u64) {
        let mut st = self.shared.lock();
        if seq > st.target {
            st.target = seq;
            st.attempts = 0;
            self.shared.changed.notify_all();
        }
    }

    /// The last cursor write's error, until one succeeds.
    pub(super) fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }

    fn sync(&self) -> Result<(), String> {
        let mut st = self.shared.lock();
        loop {
            if st.written >= st.target {
                return Ok(());
            }
            if st.attempts > 0
                && let Some(e) = &st.failure
            {
                return Err(e.clone());
            }
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Makes every cursor write fail, as a full disk does.
    #[cfg(test)]
    pub(super) fn inject_failures(&self, on: bool) {
        self.shared.lock().fail = on;
    }
}

impl Drop for CursorWriter {
    /// Writes the last ack (one attempt) and stops the thread.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn persist(mut file: CursorFile, shared: &Shared) {
    let mut st = shared.lock();
    loop {
        let failed = st.failure.is_some();
        if st.target <= st.written || (failed && st.attempts > 0) {
            if st.stop {
                return;
            }
            // Nothing new; after a failure, the next ack or RETRY tries again.
            st = if failed {
                let (mut st, _) = shared
                    .changed
                    .wait_timeout(st, RETRY)
                    .unwrap_or_else(|p| p.into_inner());
                st.attempts = 0;
                st
            } else {
                shared.changed.wait(st).unwrap_or_else(|p| p.into_inner())
            };
            continue;
        }
        let seq = st.target;
        #[cfg(test)]
        let fail = st.fail;
        drop(st);
        #[cfg(not(test))]
        let r = file.write(seq);
        #[cfg(test)]
        let r = if fail {
            Err(io::Error::other("injected cursor write failure"))
        } else {
            file.write(seq)
        };
        st = shared.lock();
        st.attempts += 1;
        match r {
            Ok(()) => {
                st.written = st.written.max(seq);
                if let Some(previous) = st.failure.take() {
                    tracing::info!(previous_error = %previous, "spool cursor written again");
                }
            }
            Err(e) => {
                let message = e.to_string();
                if st.failure.is_none() {
                    tracing::error!(error = %message, acked = seq,
                        "cannot persist the spool cursor; acknowledged records are not resent \
                         unless the agent restarts before a cursor write succeeds");
                }
                st.failure = Some(message);
                if st.stop {
                    return;
                }
            }
        }
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_valid_slot_is_the_cursor() {
        let (a, b) = (encode_slot(7), encode_slot(9));
        assert_eq!(parse_cursor(&[a, b].concat()), Some(9));
        assert_eq!(parse_cursor(&[b, a].concat()), Some(9));
        // One slot torn or flipped: the other one counts.
        let mut torn = [a, b].concat();
        torn[SLOT_LEN + 5] ^= 0x40;
        assert_eq!(parse_cursor(&torn), Some(7));
        torn[5] ^= 0x01;
        assert_eq!(parse_cursor(&torn), None);
        // The one-slot form of earlier agents.
        assert_eq!(parse_cursor(&a), Some(7));
        assert_eq!(parse_cursor(&[a, b, a].concat()), None);
        assert_eq!(parse_cursor(b""), None);
    }

    #[test]
    fn writes_alternate_slots_and_keep_the_newest() {
        let dir = std::env::temp_dir().join(format!("tg-cursor-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        write_cursor(&dir, 3).expect("write");
        let w = CursorWriter::start(&dir, 3).expect("start");
        for seq in [5, 8, 13] {
            w.set(seq);
            w.sync().expect("sync");
            let data = fs::read(dir.join("cursor")).expect("read");
            assert_eq!(data.len(), FILE_LEN);
            assert_eq!(parse_cursor(&data), Some(seq));
        }
        let data = fs::read(dir.join("cursor")).expect("read");
        // Both slots started at 3 and the first write went to slot 1:
        // 5 to slot 1, 8 to slot 0, 13 to slot 1; the ack before stays.
        assert_eq!(parse_slot(&data[..SLOT_LEN]), Some(8));
        assert_eq!(parse_slot(&data[SLOT_LEN..]), Some(13));
        w.inject_failures(true);
        w.set(21);
        assert!(w.sync().is_err());
        assert!(w.failure().is_some());
        w.inject_failures(false);
        w.set(22);
        w.sync().expect("sync after the failure");
        assert_eq!(w.failure(), None);
        w.set(30);
        drop(w);
        let data = fs::read(dir.join("cursor")).expect("read");
        assert_eq!(parse_cursor(&data), Some(30), "drop writes the last ack");
        let _ = fs::remove_dir_all(&dir);
    }
}
