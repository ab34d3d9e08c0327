//! Exact aggregation of allowed attempts (`tiergate agent --aggregate-allowed
//! WINDOW`, off by default). The hook folds a repeated allowed attempt into
//! a per-CPU hash keyed by (cgroup, process, destination, port, protocol,
//! hook, reason, tier, generation) instead of writing a ring record; this
//! drainer turns each window into one record per key with `count`,
//! `start_time` and `end_time`. Denies, audit-denies, metadata accesses,
//! addresses a DNS answer opened and attempts under an elevation grant are
//! never folded (agent-ebpf `judge`).
//!
//! Exact, without locks in the hook: two maps take turns. Each window the
//! drainer switches `TG_AGG_CTL.slot`, waits for an RCU grace period (no
//! hook still writes the old map: `rcu.rs`), reads the old map whole and
//! hands it to the writer, and clears it only after the writer has written
//! its records. The pinned ledger (`TG_AGG_LEDGER`) numbers the windows:
//! an agent killed between taking a window and writing it leaves the
//! window's map uncleared and its number unwritten, and the next agent
//! sends it again (a kill inside the sinks' flush, without a spool to
//! settle it, can send a window twice; never lose it). The kernel counts
//! what it folded (`TG_AGG_FOLDED`), so ring accounting stays exact.
//!
//! A key that does not fit (16,384 per map) gets its own ring record.

pub mod rcu;

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_common::{AggCtl, AggKey, AggVal, agg_ledger, map_names};
use anyhow::Context;
use aya::maps::{Array, IterableMap, MapData, PerCpuArray, PerCpuHashMap};
use tokio::sync::{mpsc, oneshot};

/// One key's attempts in a window, summed over the CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: AggKey,
    pub count: u64,
    /// Boot-clock times of the first and the last attempt.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Header fields of the first attempt.
    pub pid_tgid: u64,
    pub uid_gid: u64,
    pub comm: [u8; 16],
}

/// A drained window for the writer; `written` is answered once its records
/// are in the sinks (the writer has recorded that in the ledger).
pub struct Window {
    pub epoch: u64,
    pub entries: Vec<Entry>,
    /// Where the writer records the window's flush.
    pub ledger: Arc<Ledger>,
    pub written: oneshot::Sender<()>,
}

/// `TG_AGG_LEDGER`, shared by the drainer (window numbers) and the writer
/// (which window reached the sinks).
pub struct Ledger(Mutex<Array<MapData, u64>>);

impl Ledger {
    pub fn get(&self, slot: u32) -> u64 {
        self.0.lock().expect("lock").get(&slot, 0).unwrap_or(0)
    }

    pub fn set(&self, slot: u32, v: u64) {
        if let Err(e) = self.0.lock().expect("lock").set(slot, v, 0) {
            tracing::error!(error = %e, slot, "cannot write the aggregation ledger");
        }
    }
}

/// Sums one key's per-CPU values; None when no CPU counted anything.
pub fn sum(key: AggKey, per_cpu: &[AggVal]) -> Option<Entry> {
    let counted = per_cpu.iter().filter(|v| v.count > 0);
    let first = counted.clone().min_by_key(|v| v.first_ns)?;
    Some(Entry {
        key,
        count: counted.clone().map(|v| v.count).sum(),
        first_ns: first.first_ns,
        last_ns: counted.map(|v| v.last_ns).max().unwrap_or(first.last_ns),
        pid_tgid: first.pid_tgid,
        uid_gid: first.uid_gid,
        comm: first.comm,
    })
}

/// The aggregation maps.
pub struct Maps {
    ctl: Array<MapData, AggCtl>,
    slots: [PerCpuHashMap<MapData, AggKey, AggVal>; 2],
    ledger: Arc<Ledger>,
    barrier: rcu::RcuBarrier,
}

/// Attempts the kernel folded so far (for ring accounting).
pub fn folded_map(ebpf: &mut aya::Ebpf) -> anyhow::Result<PerCpuArray<MapData, u64>> {
    let m = ebpf
        .take_map(map_names::AGG_FOLDED)
        .context("map TG_AGG_FOLDED missing from the eBPF object")?;
    Ok(PerCpuArray::try_from(m)?)
}

impl Maps {
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        Ok(Self {
            ctl: Array::try_from(take(map_names::AGG_CTL)?)?,
            slots: [
                PerCpuHashMap::try_from(take(map_names::AGG0)?)?,
                PerCpuHashMap::try_from(take(map_names::AGG1)?)?,
            ],
            ledger: Arc::new(Ledger(Mutex::new(Array::try_from(take(
                map_names::AGG_LEDGER,
            )?)?))),
            barrier: rcu::RcuBarrier::new().context("cannot create the RCU barrier map")?,
        })
    }

    fn ctl(&self) -> AggCtl {
        self.ctl.get(&0, 0).unwrap_or_default()
    }

    fn set_ctl(&mut self, c: AggCtl) -> anyhow::Result<()> {
        self.ctl.set(0, c, 0).context("cannot write TG_AGG_CTL")
    }

    fn ledger(&self, slot: u32) -> u64 {
        self.ledger.get(slot)
    }

    fn set_ledger(&self, slot: u32, v: u64) {
        self.ledger.set(slot, v);
    }

    /// Everything in `slot`, summed per key.
    fn read(&self, slot: usize) -> Vec<Entry> {
        let map = &self.slots[slot];
        let mut out = Vec::new();
        for item in map.iter() {
            match item {
                Ok((k, v)) => out.extend(sum(k, &v)),
                Err(e) => tracing::error!(error = %e, "cannot read an aggregation entry"),
            }
        }
        out
    }

    fn is_empty(&self, slot: usize) -> bool {
        self.slots[slot].keys().next().is_none()
    }

    fn clear(&mut self, slot: usize) {
        let keys: Vec<AggKey> = self.slots[slot].keys().filter_map(Result::ok).collect();
        let fd = self.slots[slot].map().fd().as_fd();
        if let Err(e) = crate::enforcement::batch::delete(fd, &keys) {
            tracing::error!(error = %e, "cannot clear an aggregation map");
        }
    }

    /// Switches the folding map and waits until no hook writes the other;
    /// returns the other (now quiet) slot and the window's number.
    fn switch(&mut self) -> anyhow::Result<(usize, u64)> {
        let mut c = self.ctl();
        let old = (c.slot & 1) as usize;
        let epoch = self.ledger(agg_ledger::EPOCH) + 1;
        self.set_ledger(agg_ledger::EPOCH, epoch);
        c.slot = 1 - old as u32;
        self.set_ctl(c)?;
        self.barrier
            .wait()
            .context("cannot wait for an RCU grace period")?;
        Ok((old, epoch))
    }
}

/// Whether window `epoch` reached the sinks: written, or (with a spool
/// holding `spool_last`) pending in a flush whose last record the spool has.
pub fn window_written(
    epoch: u64,
    written: u64,
    pending: u64,
    pending_seq: u64,
    spool_last: Option<u64>,
) -> bool {
    written >= epoch || (pending == epoch && spool_last.is_some_and(|s| s >= pending_seq))
}

/// Sends window `epoch` of `slot` to the writer, waits until it is written,
/// then clears the slot. An empty window is only marked written.
async fn deliver(
    maps: &Arc<Mutex<Maps>>,
    tx: &mpsc::Sender<Window>,
    slot: usize,
    epoch: u64,
) -> bool {
    let m = maps.clone();
    let (entries, ledger) = tokio::task::spawn_blocking(move || {
        let m = m.lock().expect("lock");
        (m.read(slot), m.ledger.clone())
    })
    .await
    .unwrap_or_else(|_| (Vec::new(), maps.lock().expect("lock").ledger.clone()));
    if !entries.is_empty() {
        let (written, done) = oneshot::channel();
        let w = Window {
            epoch,
            entries,
            ledger,
            written,
        };
        if tx.send(w).await.is_err() || done.await.is_err() {
            // The writer stopped: the window stays in its map for the next
            // agent (its number is not written).
            return false;
        }
    } else {
        maps.lock()
            .expect("lock")
            .set_ledger(agg_ledger::WRITTEN, epoch);
    }
    let m = maps.clone();
    let _ = tokio::task::spawn_blocking(move || m.lock().expect("lock").clear(slot)).await;
    true
}

/// Starts aggregation (`window` Some) or makes sure it is off, after
/// sending what an earlier agent left: the quiet slot if its window never
/// reached the sinks, then the folding one.
pub async fn run(
    maps: Maps,
    window: Option<Duration>,
    spool_last: Option<u64>,
    tx: mpsc::Sender<Window>,
    mut stop: oneshot::Receiver<()>,
) {
    let maps = Arc::new(Mutex::new(maps));
    let (quiet, epoch, sent) = {
        let m = &mut *maps.lock().expect("lock");
        let c = m.ctl();
        let quiet = 1 - (c.slot & 1) as usize;
        let epoch = m.ledger(agg_ledger::EPOCH);
        let sent = window_written(
            epoch,
            m.ledger(agg_ledger::WRITTEN),
            m.ledger(agg_ledger::PENDING),
            m.ledger(agg_ledger::PENDING_SEQ),
            spool_last,
        );
        if window.is_none() && c.enabled != 0 {
            // Off from now: no new folds, and none still running after this.
            let _ = m.set_ctl(AggCtl { enabled: 0, ..c });
            let _ = m.barrier.wait();
        }
        (quiet, epoch, sent)
    };
    if sent {
        let m = maps.clone();
        let _ = tokio::task::spawn_blocking(move || m.lock().expect("lock").clear(quiet)).await;
    } else if !deliver(&maps, &tx, quiet, epoch).await {
        return;
    }
    // Off, and nothing folded left (aggregation is off in the kernel and no
    // hook still folds): no window to take, no grace period to wait for.
    if window.is_none() && maps.lock().expect("lock").is_empty(1 - quiet) {
        return;
    }
    if let Some(w) = window {
        let mut m = maps.lock().expect("lock");
        let c = m.ctl();
        if let Err(e) = m.set_ctl(AggCtl { enabled: 1, ..c }) {
            tracing::error!(error = %e, "cannot turn aggregation on; every attempt keeps its own record");
            return;
        }
        tracing::info!(
            window_ms = w.as_millis() as u64,
            "aggregating allowed attempts"
        );
    }
    let mut tick = tokio::time::interval(window.unwrap_or(Duration::from_secs(1)));
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        // Off: one pass sends what is left in the folding slot, then done.
        let m = maps.clone();
        let switched = tokio::task::spawn_blocking(move || m.lock().expect("lock").switch()).await;
        match switched {
            Ok(Ok((slot, epoch))) => {
                if !deliver(&maps, &tx, slot, epoch).await {
                    return;
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot take an aggregation window"),
            Err(_) => return,
        }
        if stopping || window.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(count: u64, first: u64, last: u64, pid: u64) -> AggVal {
        AggVal {
            count,
            first_ns: first,
            last_ns: last,
            pid_tgid: pid,
            ..Default::default()
        }
    }

    #[test]
    fn cpus_add_up_and_the_window_spans_them_all() {
        let k = AggKey::default();
        let e = sum(k, &[v(3, 50, 90, 7), v(0, 0, 0, 0), v(2, 20, 60, 9)]).unwrap();
        assert_eq!((e.count, e.first_ns, e.last_ns), (5, 20, 90));
        assert_eq!(e.pid_tgid, 9, "the first attempt's process");
        assert!(sum(k, &[v(0, 0, 0, 0), v(0, 0, 0, 0)]).is_none());
    }

    #[test]
    fn a_window_counts_as_written_only_when_the_ledger_or_the_spool_says_so() {
        // Written.
        assert!(window_written(4, 4, 4, 100, None));
        // Taken, never written: send again.
        assert!(!window_written(4, 3, 3, 90, None));
        // Killed inside the flush: the spool settles it.
        assert!(window_written(4, 3, 4, 100, Some(100)));
        assert!(!window_written(4, 3, 4, 100, Some(99)));
        // Without a spool a flush in progress is sent again (twice, never lost).
        assert!(!window_written(4, 3, 4, 100, None));
        // Nothing ever taken.
        assert!(window_written(0, 0, 0, 0, None));
    }
}
