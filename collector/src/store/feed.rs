//! The collector's side of the store: records the sinks have taken are
//! handed over without waiting ([`Feed::offer`] never blocks), folded into
//! an aggregate on the store's own thread and written about once a second
//! (or every [`FLUSH_UPDATES`] updates).
//!
//! Delivery to the sinks never waits for the store. What the store cannot
//! take is counted in `tiergate_collector_store_dropped_total`: records
//! offered while [`MAX_PENDING`] are already waiting, records that are not
//! readable, and an aggregate thrown away after the store failed for so
//! long that it held [`MAX_HELD_KEYS`] keys. A failing store is logged
//! once when it starts failing and once when it writes again; meanwhile
//! the aggregate is kept and written at the next success. The store's
//! thread runs at nice 10, below the delivery path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Aggregate, Store, StoreError};
use crate::metrics::CollectorMetrics;

/// Records waiting for the store's thread, at most.
pub const MAX_PENDING: usize = 100_000;
/// Updates that make the aggregate written before its second is up.
pub const FLUSH_UPDATES: u64 = 50_000;
/// How often the aggregate is written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Keys an unwritten aggregate may hold while the store fails.
pub const MAX_HELD_KEYS: usize = 100_000;

/// Record kinds that can make an update (`observe.rs`).
const KINDS: &[&str] = &["connection", "dns", "policy"];

enum Msg {
    Records(Vec<Bytes>),
    Stop,
}

/// The handle the sinks' thread offers records through.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::Sender<Msg>,
    pending: Arc<AtomicUsize>,
    metrics: Arc<CollectorMetrics>,
}

/// Ends the store's thread: writes what it holds first.
pub struct Stopper {
    tx: mpsc::Sender<Msg>,
    done: mpsc::Receiver<()>,
}

impl Stopper {
    /// Asks the store to write what it holds and waits at most `wait`.
    pub fn stop(self, wait: Duration) {
        let _ = self.tx.send(Msg::Stop);
        if self.done.recv_timeout(wait).is_err() {
            tracing::warn!("the observation store did not finish its last write in time");
        }
    }
}

/// Opens the store on a thread of its own (a PostgreSQL client must not
/// run on the async runtime's threads) and starts feeding it. Returns once
/// the store is open, or why it cannot be.
pub async fn start(
    url: String,
    max_rows: u64,
    metrics: Arc<CollectorMetrics>,
) -> Result<(Feed, Stopper), StoreError> {
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::channel::<Msg>();
    let (done_tx, done) = mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let feed = Feed {
        tx: tx.clone(),
        pending: pending.clone(),
        metrics: metrics.clone(),
    };
    std::thread::Builder::new()
        .name("tiergate-store".into())
        .spawn(move || {
            lower_priority();
            let store = match Store::open_bounded(&url, max_rows) {
                Ok(s) => {
                    let _ = opened_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            tracing::info!(store = store.name(), max_rows, "observation store open");
            run(store, rx, pending, metrics);
            let _ = done_tx.send(());
        })
        .expect("spawn store thread");
    match opened_rx.await {
        Ok(Ok(())) => Ok((feed, Stopper { tx, done })),
        Ok(Err(e)) => Err(e),
        Err(_) => unreachable!("the store thread answers before it ends"),
    }
}

/// Nice 10 for the store's thread: when the cores are busy, delivery to
/// the sinks goes first and the store's queue takes up the slack (what
/// overflows it is counted, never waited for).
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id
    // changes only this thread's nice value (Linux: per thread).
    let rc =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, STORE_NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the store thread's priority");
    }
}

/// The store thread's nice value.
const STORE_NICE: libc::c_int = 10;

impl Feed {
    /// Hands over records the sinks have taken; never blocks.
    /// `records` are (kind, OCSF JSON) pairs.
    pub fn offer<K: AsRef<str>, J: Into<Bytes>>(&self, records: impl IntoIterator<Item = (K, J)>) {
        let lines: Vec<Bytes> = records
            .into_iter()
            .filter(|(kind, _)| KINDS.contains(&kind.as_ref()))
            .map(|(_, json)| json.into())
            .collect();
        let n = lines.len();
        if n == 0 {
            return;
        }
        if self.pending.fetch_add(n, Ordering::Relaxed) + n > MAX_PENDING {
            self.pending.fetch_sub(n, Ordering::Relaxed);
            self.metrics.store_dropped.inc_by(n as u64);
            return;
        }
        if self.tx.send(Msg::Records(lines)).is_err() {
            self.pending.fetch_sub(n, Ordering::Relaxed);
            self.metrics.store_dropped.inc_by(n as u64);
        }
    }
}

fn run(
    mut store: Store,
    rx: mpsc::Receiver<Msg>,
    pending: Arc<AtomicUsize>,
    metrics: Arc<CollectorMetrics>,
) {
    let mut agg = Aggregate::default();
    let mut failing: Option<Instant> = None;
    let mut due = Instant::now() + FLUSH_EVERY;
    loop {
        let stop = match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(Msg::Records(lines)) => {
                pending.fetch_sub(lines.len(), Ordering::Relaxed);
                agg.add_records(&lines, |e| {
                    metrics.store_dropped.inc();
                    tracing::debug!(error = %e, "record not readable for the store");
                });
                false
            }
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        };
        if stop || Instant::now() >= due || agg.updates >= FLUSH_UPDATES {
            flush(&mut store, &mut agg, &mut failing, &metrics);
            due = Instant::now() + FLUSH_EVERY;
        }
        if stop {
            return;
        }
    }
}

fn flush(
    store: &mut Store,
    agg: &mut Aggregate,
    failing: &mut Option<Instant>,
    metrics: &CollectorMetrics,
) {
    if agg.is_empty() {
        return;
    }
    match store.record(agg) {
        Ok(w) => {
            metrics.store_records.inc_by(agg.updates);
            metrics.store_evicted.inc_by(w.evicted);
            if let Some(since) = failing.take() {
                tracing::info!(
                    store = store.name(),
                    failed_for_s = since.elapsed().as_secs(),
                    "observation store writes again"
                );
            }
            *agg = Aggregate::default();
        }
        Err(e) => {
            metrics.store_errors.inc();
            if failing.is_none() {
                tracing::error!(error = %e, "observation store write failed; delivery to the sinks goes on, observations are kept and written when the store works again");
                *failing = Some(Instant::now());
            }
            if agg.observations.len() > MAX_HELD_KEYS {
                metrics.store_dropped.inc_by(agg.updates);
                *agg = Aggregate::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::observe::tests::connection;
    use super::*;

    fn line(ip: &str) -> Vec<u8> {
        connection("allow", ip, 443).to_string().into_bytes()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn records_reach_the_store_and_a_stop_writes_them() {
        let dir = std::env::temp_dir().join(format!("tg-store-feed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite:{}", dir.join("s.db").display());
        let metrics = Arc::new(CollectorMetrics::new());
        let (feed, stopper) = start(url.clone(), 10, metrics.clone()).await.unwrap();
        feed.offer([
            ("connection", line("10.0.0.1")),
            ("connection", line("10.0.0.1")),
            ("loss", b"{}".to_vec()),
            ("connection", b"garbage".to_vec()),
        ]);
        stopper.stop(Duration::from_secs(10));
        assert_eq!(metrics.store_records.get(), 2);
        assert_eq!(metrics.store_dropped.get(), 1, "the unreadable record");
        let rows = Store::open(&url).unwrap().observations(0).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].seen.count, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_store_that_cannot_open_is_an_error_at_start() {
        let metrics = Arc::new(CollectorMetrics::new());
        let e = start("sqlite:/nonexistent/x/s.db".into(), 10, metrics)
            .await
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("cannot open the database file"),
            "{e}"
        );
    }

    #[test]
    fn offers_beyond_the_bound_are_counted_not_queued() {
        let (tx, rx) = mpsc::channel();
        let metrics = Arc::new(CollectorMetrics::new());
        let feed = Feed {
            tx,
            pending: Arc::new(AtomicUsize::new(MAX_PENDING - 1)),
            metrics: metrics.clone(),
        };
        feed.offer([("connection", line("10.0.0.1"))]);
        feed.offer([("connection", line("10.0.0.1")), ("dns", line("10.0.0.2"))]);
        assert_eq!(metrics.store_dropped.get(), 2);
        assert_eq!(rx.try_iter().count(), 1);
    }
}
