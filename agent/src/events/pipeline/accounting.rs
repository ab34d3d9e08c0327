//! Records a killed agent took from the kernel ring but had not written:
//! counted exactly after the restart and reported as a loss record
//! (`stage: agent-restart`), instead of vanishing.
//!
//! The kernel counts, per CPU and pinned, every verdict and every record it
//! could not put in the ring; the verdict is counted after the record's
//! submit, so `submitted = Σ verdicts − ring full − shed` only ever counts
//! records already in the ring. The writer keeps `handled`, the kernel
//! records it has written to the sinks or reported lost itself (queue full,
//! undecodable), in the pinned `TG_REPORTED` map after every flush, so it
//! survives `kill -9`. A later agent starts from that figure (`h_start`) and
//! counts what its reader takes (`taken`). Whenever the ring is empty
//! (consumer position = producer position, read from the ring's own pages
//! after the counters), every record counted in `submitted` has been taken by
//! some agent, so `submitted − h_start − taken` is the number taken by an
//! earlier agent and never handled. It never overcounts; a hook between its
//! submit and its count makes it undercount until the next check.
//!
//! A flush is bracketed: `HANDLED_PENDING` and `PENDING_SEQ` (the last seq of
//! the batch) before the sinks write, `HANDLED` after. A kill inside the
//! bracket is settled at the next start by the spool: if it holds the batch's
//! last seq, the batch was written. Without a spool (`--events` only) the
//! committed figure is used, so such a kill can report a batch as lost that
//! reached the file (never the other way round).

use std::os::fd::AsRawFd;

use agent_common::{counter, reported};
use aya::maps::{Array, MapData};

use super::KernelCounters;

/// The ring's consumer and producer positions, mapped read-only.
pub struct RingPositions {
    consumer: *const u64,
    producer: *const u64,
    page: usize,
}

// SAFETY: the mappings are read-only views of kernel-updated counters, read
// with atomic loads; they live as long as this value.
unsafe impl Send for RingPositions {}

impl RingPositions {
    /// Maps the first two pages of a ring-buffer map (consumer position,
    /// producer position). The mappings outlive the descriptor.
    pub fn map(fd: &impl AsRawFd) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let map = |offset: usize| -> std::io::Result<*const u64> {
            // SAFETY: a fresh read-only shared mapping of a BPF ring-buffer
            // map's control page; the kernel allows it and keeps it valid
            // until munmap.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(p.cast())
        };
        let consumer = map(0)?;
        let producer = map(page).inspect_err(|_| {
            // SAFETY: unmapping what was mapped just above.
            unsafe { libc::munmap(consumer as *mut _, page) };
        })?;
        Ok(Self {
            consumer,
            producer,
            page,
        })
    }

    /// True when every record reserved so far has been consumed.
    pub fn empty(&self) -> bool {
        // SAFETY: both point to live, aligned u64 counters the kernel (and
        // the reader) update atomically.
        unsafe {
            let producer = std::sync::atomic::AtomicU64::from_ptr(self.producer as *mut u64)
                .load(std::sync::atomic::Ordering::Acquire);
            let consumer = std::sync::atomic::AtomicU64::from_ptr(self.consumer as *mut u64)
                .load(std::sync::atomic::Ordering::Acquire);
            consumer == producer
        }
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mappings once.
        unsafe {
            libc::munmap(self.consumer as *mut _, self.page);
            libc::munmap(self.producer as *mut _, self.page);
        }
    }
}

/// The writer's side of the ledger.
pub struct Accounting {
    ring: Option<RingPositions>,
    /// Handled before this agent started (None until a baseline exists).
    h_start: Option<u64>,
    /// Kernel records this agent has handed to the sinks or reported lost.
    pub handled: u64,
    persisted: u64,
}

fn get(map: &Array<MapData, u64>, slot: u32) -> u64 {
    map.get(&slot, 0).unwrap_or(0)
}

fn set(map: &mut Array<MapData, u64>, slot: u32, v: u64) {
    if let Err(e) = map.set(slot, v, 0) {
        tracing::error!(error = %e, slot, "cannot record the handled-records count");
    }
}

/// What the last agent had handled when it stopped: the committed figure,
/// or the pending one when it died inside a flush whose last seq the spool
/// holds (the batch was written).
fn settle(committed: u64, pending: u64, pending_seq: u64, spool_last_seq: Option<u64>) -> u64 {
    match spool_last_seq {
        Some(last) if pending != committed && last >= pending_seq => pending,
        _ => committed,
    }
}

/// Records in the ring, by the kernel's counters (see the module comment).
pub fn submitted(k: &KernelCounters) -> u64 {
    let verdicts = [
        counter::ALLOW,
        counter::DENY,
        counter::AUDIT_DENY,
        counter::SOCKET_DENY,
    ]
    .iter()
    .map(|s| k.total(*s))
    .sum::<u64>();
    // Folded attempts are counted as verdicts too, but have no ring record.
    verdicts
        .saturating_sub(k.total(counter::RINGBUF_LOST) + k.total(counter::ALLOW_SHED) + k.folded())
}

impl Accounting {
    /// `spool_last_seq`: with a spool, the last seq it holds after recovery.
    pub fn start(
        k: &KernelCounters,
        ring: Option<RingPositions>,
        spool_last_seq: Option<u64>,
    ) -> Self {
        let r = &k.reported;
        let h_start = (get(r, reported::BASELINE) == 1).then(|| {
            settle(
                get(r, reported::HANDLED),
                get(r, reported::HANDLED_PENDING),
                get(r, reported::PENDING_SEQ),
                spool_last_seq,
            )
        });
        Self {
            ring,
            h_start,
            handled: 0,
            persisted: u64::MAX,
        }
    }

    /// Before the sinks write a batch whose last seq is `seq`.
    pub fn before_flush(&mut self, k: &mut KernelCounters, seq: u64) {
        let Some(h) = self.h_start else { return };
        let now = h + self.handled;
        if now != self.persisted {
            set(&mut k.reported, reported::PENDING_SEQ, seq);
            set(&mut k.reported, reported::HANDLED_PENDING, now);
        }
    }

    /// After the sinks wrote it.
    pub fn after_flush(&mut self, k: &mut KernelCounters) {
        let Some(h) = self.h_start else { return };
        let now = h + self.handled;
        if now != self.persisted {
            set(&mut k.reported, reported::HANDLED, now);
            self.persisted = now;
        }
    }

    /// Records earlier agents took and never handled, when the ring is
    /// empty enough to tell (else None). The first check on maps without a
    /// baseline makes one: what the kernel submitted so far counts as handled.
    pub fn lost_by_earlier_agents(
        &mut self,
        k: &mut KernelCounters,
        taken: &dyn Fn() -> u64,
    ) -> Option<u64> {
        let submitted = submitted(k);
        if !self.ring.as_ref()?.empty() {
            return None;
        }
        let taken = taken();
        match self.h_start {
            Some(h) => Some(submitted.saturating_sub(h + taken)),
            None => {
                let h = submitted.saturating_sub(taken);
                self.h_start = Some(h);
                set(&mut k.reported, reported::HANDLED, h + self.handled);
                set(&mut k.reported, reported::HANDLED_PENDING, h + self.handled);
                set(&mut k.reported, reported::BASELINE, 1);
                self.persisted = h + self.handled;
                set(&mut k.reported, reported::RESTART_LOST, 0);
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::settle;

    #[test]
    fn a_kill_inside_a_flush_is_settled_by_the_spool() {
        // Clean stop: both figures agree.
        assert_eq!(settle(100, 100, 40, Some(40)), 100);
        // Died after the spool took the batch (its last seq is there).
        assert_eq!(settle(100, 130, 45, Some(45)), 130);
        assert_eq!(settle(100, 130, 45, Some(47)), 130);
        // Died before: the spool stops short of the batch.
        assert_eq!(settle(100, 130, 45, Some(40)), 100);
        // No spool to ask: the committed figure (may report a written batch
        // as lost, never the other way round).
        assert_eq!(settle(100, 130, 45, None), 100);
    }
}
