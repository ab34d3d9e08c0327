//! `tiergate proxy`'s records to the agent, at least once. Each record (and
//! each loss count) gets a sequence number and stays in the proxy until the
//! agent says it has written it (`ack`); a new connection starts by sending
//! again what the last one left unacknowledged. So an agent killed with
//! records in flight loses none of them: the next agent writes them (a
//! record written in the last moments before an agent's death, whose ack
//! never left, is written twice).
//!
//! One connection at a time to the agent's socket, tried again every
//! [`RETRY`]. While no agent listens, records wait in the proxies' queues
//! (65,536 each) and then in the unacknowledged queue ([`MAX_UNACKED`]);
//! past both, the proxies count what they could not keep, and the count
//! goes to the agent as a `lost` frame, reported like its own losses. The
//! agent's requests to serve a namespace come back on the same connection.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::wire::{self, Down, Up};
use crate::dns::record::DnsRecord;
use crate::metadata::record::MetadataRecord;

/// How often a missing agent is looked for.
pub const RETRY: Duration = Duration::from_millis(200);
/// The socket's name in `--proxy-dir`.
pub const SOCKET_FILE: &str = "records.sock";
/// Frames kept for an agent that has not acknowledged them.
pub const MAX_UNACKED: usize = 65_536;

/// What the uplink moves.
pub struct Uplink {
    pub socket: PathBuf,
    pub dns: mpsc::Receiver<DnsRecord>,
    pub metadata: mpsc::Receiver<MetadataRecord>,
    /// The proxies' counts of records they could not queue (cumulative).
    pub dns_lost: Arc<AtomicU64>,
    pub metadata_lost: Arc<AtomicU64>,
    /// Where the agent's serve requests go.
    pub serve: mpsc::UnboundedSender<u32>,
    /// True while an agent takes the records.
    pub connected: Arc<AtomicBool>,
    /// Set when the process stops: [`Uplink::run`] then returns once the
    /// agent has acknowledged every record (or at once if none is there).
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// A frame the agent has not acknowledged yet.
struct Pending {
    seq: u64,
    line: Vec<u8>,
    /// What it counts as if it has to be given up.
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Dns,
    Metadata,
    Lost(u64, u64),
}

/// The frames in flight and the counts told.
#[derive(Default)]
struct Ledger {
    unacked: VecDeque<Pending>,
    next_seq: u64,
    /// Loss counts already put in a frame.
    told: (u64, u64),
    /// Frames given up because [`MAX_UNACKED`] were waiting (counted into
    /// the next `lost` frame).
    dropped: (u64, u64),
}

impl Ledger {
    fn push(&mut self, kind: Kind, frame: impl FnOnce(u64) -> Up) -> &[u8] {
        if self.unacked.len() >= MAX_UNACKED
            && let Some(old) = self.unacked.pop_front()
        {
            match old.kind {
                Kind::Dns => self.dropped.0 += 1,
                Kind::Metadata => self.dropped.1 += 1,
                // A loss count given up is told again with the next one.
                Kind::Lost(d, m) => {
                    self.told.0 -= d;
                    self.told.1 -= m;
                }
            }
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        self.unacked.push_back(Pending {
            seq,
            line: wire::encode(&frame(seq)),
            kind,
        });
        &self.unacked.back().expect("pushed").line
    }

    fn ack(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|p| p.seq <= seq) {
            self.unacked.pop_front();
        }
    }
}

impl Uplink {
    /// Runs for the process's life, or until `stop` and every record is
    /// acknowledged.
    pub async fn run(mut self) {
        let mut ledger = Ledger::default();
        let mut waiting_logged = false;
        loop {
            if *self.stop.borrow() {
                self.give_up(&ledger);
                return;
            }
            let stream = match UnixStream::connect(&self.socket).await {
                Ok(s) => s,
                Err(e) => {
                    if !waiting_logged {
                        tracing::warn!(socket = %self.socket.display(), error = %e, "no agent takes the proxies' records; they wait in the queue");
                        waiting_logged = true;
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            waiting_logged = false;
            let (rd, mut wr) = stream.into_split();
            let (acks_tx, mut acks) = mpsc::unbounded_channel();
            let requests = tokio::spawn(read_requests(rd, self.serve.clone(), acks_tx));
            if self.resend(&mut wr, &ledger).await.is_ok() {
                tracing::info!(socket = %self.socket.display(), unacknowledged = ledger.unacked.len(), "handing the proxies' records to the agent");
                self.connected.store(true, Ordering::Release);
                let drained = self.forward(&mut wr, &mut ledger, &mut acks).await;
                self.connected.store(false, Ordering::Release);
                if drained {
                    tracing::info!("every record handed to the agent and acknowledged");
                    requests.abort();
                    return;
                }
                tracing::warn!(
                    "the agent went away; the proxies keep serving, records wait for the next one"
                );
            }
            requests.abort();
        }
    }

    /// Stopping with no agent to take them: says what is not delivered
    /// (the next agent cannot count it).
    fn give_up(&mut self, ledger: &Ledger) {
        let queued = self.dns.len() + self.metadata.len();
        let unacked = ledger
            .unacked
            .iter()
            .filter(|p| !matches!(p.kind, Kind::Lost(..)))
            .count();
        if queued + unacked > 0 {
            tracing::error!(
                unacknowledged = unacked,
                queued,
                "stopping with records no agent has acknowledged: they are lost"
            );
        }
    }

    /// The loss counts not told yet, as a frame.
    fn losses<'l>(&self, ledger: &'l mut Ledger) -> Option<&'l [u8]> {
        let now = (
            self.dns_lost.load(Ordering::Relaxed) + ledger.dropped.0,
            self.metadata_lost.load(Ordering::Relaxed) + ledger.dropped.1,
        );
        if now == ledger.told {
            return None;
        }
        let (d, m) = (now.0 - ledger.told.0, now.1 - ledger.told.1);
        ledger.told = now;
        Some(ledger.push(Kind::Lost(d, m), |seq| Up::Lost {
            seq,
            dns: d,
            metadata: m,
        }))
    }

    /// Hello, then every unacknowledged frame again, in order.
    async fn resend(&self, wr: &mut OwnedWriteHalf, ledger: &Ledger) -> std::io::Result<()> {
        let hello = wire::encode(&Up::Hello {
            pid: std::process::id(),
        });
        wr.write_all(&hello).await?;
        for p in &ledger.unacked {
            wr.write_all(&p.line).await?;
        }
        Ok(())
    }

    /// Writes records and loss counts, takes acks, until the connection
    /// fails (false) or, stopping, everything is acknowledged (true).
    async fn forward(
        &mut self,
        wr: &mut OwnedWriteHalf,
        ledger: &mut Ledger,
        acks: &mut mpsc::UnboundedReceiver<u64>,
    ) -> bool {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut stopping = *self.stop.borrow();
        loop {
            if stopping
                && self.dns.is_empty()
                && self.metadata.is_empty()
                && ledger.unacked.is_empty()
            {
                return true;
            }
            let line = tokio::select! {
                Some(r) = self.dns.recv() => ledger.push(Kind::Dns, |seq| Up::dns(seq, r)),
                Some(r) = self.metadata.recv() => ledger.push(Kind::Metadata, |seq| Up::metadata(seq, r)),
                ack = acks.recv() => match ack {
                    Some(seq) => {
                        ledger.ack(seq);
                        continue;
                    }
                    // The agent's side closed.
                    None => return false,
                },
                _ = self.stop.changed(), if !stopping => {
                    stopping = true;
                    // The last counts go with the last records.
                    match self.losses(ledger) {
                        Some(line) => line,
                        None => continue,
                    }
                }
                _ = tick.tick() => match self.losses(ledger) {
                    Some(line) => line,
                    None => continue,
                },
            };
            if wr.write_all(line).await.is_err() {
                // Kept: sent again on the next connection.
                return false;
            }
        }
    }
}

/// The agent's frames: acks, and requests to serve the namespace of a pid.
/// Ends with the connection (dropping `acks` tells the forwarder).
async fn read_requests(
    rd: OwnedReadHalf,
    serve: mpsc::UnboundedSender<u32>,
    acks: mpsc::UnboundedSender<u64>,
) {
    let mut r = BufReader::new(rd);
    let mut buf = Vec::new();
    loop {
        match wire::read_line(&mut r, &mut buf).await {
            Ok(true) => match serde_json::from_slice::<Down>(&buf) {
                Ok(Down::Serve { pid }) => {
                    let _ = serve.send(pid);
                }
                Ok(Down::Ack { seq }) => {
                    let _ = acks.send(seq);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable frame from the agent"),
            },
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the agent's connection broke");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_frames_go_and_a_full_ledger_counts_what_it_gives_up() {
        let mut l = Ledger::default();
        for _ in 0..3 {
            l.push(Kind::Dns, |seq| Up::Lost {
                seq,
                dns: 0,
                metadata: 0,
            });
        }
        l.ack(2);
        assert_eq!(l.unacked.iter().map(|p| p.seq).collect::<Vec<_>>(), [3]);
        for _ in 0..MAX_UNACKED {
            l.push(Kind::Metadata, |seq| Up::Lost {
                seq,
                dns: 0,
                metadata: 0,
            });
        }
        assert_eq!(l.unacked.len(), MAX_UNACKED);
        assert_eq!(l.dropped, (1, 0));
        assert_eq!(l.unacked.front().unwrap().seq, 4);
    }
}
