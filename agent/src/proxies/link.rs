//! The agent's side of `--proxies separate`: it publishes its view for
//! `tiergate proxy` into `--proxy-dir` at every change (`view.rs`), takes
//! the proxy's records on a socket there and hands them to the event
//! writer as if its own proxies had made them (numbered, attributed,
//! delivered like every record), keeps a mirror of what they say was
//! learned (for `fqdn` on connection records and `/dns/learned`), and
//! passes the writer's serve requests on to every connected proxy.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::uplink::SOCKET_FILE;
use super::view::{Publisher, make_private_dir};
use super::wire::{self, Down, GrantWire, PolicyLabel, Up};
use crate::dns::learn::Limits;
use crate::dns::origins::Mirror;
use crate::dns::record::DnsRecord;
use crate::events::ocsf_access::ElevationTag;
use crate::events::pipeline::DnsLink;
use crate::events::pipeline::proxy_records::Receipt;
use crate::metadata::record::MetadataRecord;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::state::NodeState;

/// Records from proxies the writer may have queued before it counts losses.
const RECORD_QUEUE: usize = 65_536;

/// The agent's end, before it runs.
pub struct Link {
    dir: PathBuf,
    state: Arc<NodeState>,
    mirror: Arc<Mirror>,
    dns: mpsc::Sender<DnsRecord>,
    metadata: mpsc::Sender<MetadataRecord>,
    lost: Arc<AtomicU64>,
    metadata_lost: Arc<AtomicU64>,
    serve: mpsc::UnboundedReceiver<u32>,
    listener: UnixListener,
}

/// What the writer gets: its link and the records.
pub type WriterSide = (
    DnsLink,
    mpsc::Receiver<DnsRecord>,
    mpsc::Receiver<MetadataRecord>,
);

impl Link {
    /// Creates `dir` (0700) and binds its socket (0600; a stale one from an
    /// earlier agent is replaced).
    pub fn bind(
        dir: &Path,
        state: Arc<NodeState>,
        limits: Limits,
    ) -> anyhow::Result<(Self, WriterSide)> {
        make_private_dir(dir)
            .with_context(|| format!("cannot create --proxy-dir {}", dir.display()))?;
        let path = dir.join(SOCKET_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        let (dns, dns_rx) = mpsc::channel(RECORD_QUEUE);
        let (metadata, md_rx) = mpsc::channel(RECORD_QUEUE);
        let (serve_tx, serve) = mpsc::unbounded_channel();
        let mirror = Arc::new(Mirror::new(limits));
        let (lost, metadata_lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let link = DnsLink {
            learner: mirror.clone(),
            serve: serve_tx,
            lost: lost.clone(),
            metadata_lost: metadata_lost.clone(),
        };
        Ok((
            Self {
                dir: dir.to_path_buf(),
                state,
                mirror,
                dns,
                metadata,
                lost,
                metadata_lost,
                serve,
                listener,
            },
            (link, dns_rx, md_rx),
        ))
    }

    /// Publishes the view now and at every change, and takes proxies'
    /// connections.
    pub fn start(self, metrics: Arc<Metrics>) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut publisher = Publisher::new(&self.dir)
            .with_context(|| format!("cannot create --proxy-dir {}", self.dir.display()))?;
        let state = self.state.clone();
        let mirror = self.mirror.clone();
        let publish = tokio::spawn(async move {
            loop {
                // Rendering a new policy and writing the file block: off the
                // runtime's other tasks (the agent's runtime is multi-thread).
                let written = tokio::task::block_in_place(|| {
                    let view = publisher.view(&state);
                    publisher.write(&view)
                });
                if let Err(e) = written {
                    tracing::error!(error = %e, "cannot publish the view for tiergate proxy; it keeps the last one");
                }
                mirror.retain(|c| state.workload(c).is_some());
                // A burst of changes (a scan, a reload) is one write.
                tokio::select! {
                    _ = state.changed() => tokio::time::sleep(Duration::from_millis(2)).await,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        });
        let peers: Arc<Mutex<Vec<mpsc::UnboundedSender<u32>>>> = Arc::default();
        let serve_peers = peers.clone();
        let mut serve = self.serve;
        let requests = tokio::spawn(async move {
            while let Some(pid) = serve.recv().await {
                serve_peers
                    .lock()
                    .expect("peers lock")
                    .retain(|p| p.send(pid).is_ok());
            }
        });
        let ctx = Arc::new(Conn {
            state: self.state,
            mirror: self.mirror,
            dns: self.dns,
            metadata: self.metadata,
            lost: self.lost,
            metadata_lost: self.metadata_lost,
            metrics,
        });
        let listener = self.listener;
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        peers.lock().expect("peers lock").push(tx);
                        tokio::spawn(ctx.clone().serve(stream, rx));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a proxy's connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(vec![publish, requests, accept])
    }
}

/// What every proxy connection shares.
struct Conn {
    state: Arc<NodeState>,
    mirror: Arc<Mirror>,
    dns: mpsc::Sender<DnsRecord>,
    metadata: mpsc::Sender<MetadataRecord>,
    lost: Arc<AtomicU64>,
    metadata_lost: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

/// How often a connection's written records are acknowledged.
const ACK_EVERY: Duration = Duration::from_millis(20);

/// One connection's acknowledgements: records are acknowledged once the
/// writer has written them; a loss count once every record before it is
/// written (the writer reports the count on its next tick).
#[derive(Default)]
struct Acks {
    /// Highest record seq the writer has written (receipts raise it).
    written: Arc<AtomicU64>,
    /// Highest record seq received.
    received: u64,
    /// Loss frames: (their seq, the last record seq before them).
    losses: std::collections::VecDeque<(u64, u64)>,
    /// Highest seq acknowledged.
    acked: u64,
}

impl Acks {
    /// What may be acknowledged now, if more than before.
    fn next(&mut self) -> Option<u64> {
        let written = self.written.load(Ordering::Acquire);
        let mut ack = written;
        while let Some(&(seq, before)) = self.losses.front() {
            if written < before {
                break;
            }
            ack = ack.max(seq);
            self.losses.pop_front();
        }
        (ack > self.acked).then(|| {
            self.acked = ack;
            ack
        })
    }
}

impl Conn {
    async fn serve(
        self: Arc<Self>,
        stream: UnixStream,
        mut requests: mpsc::UnboundedReceiver<u32>,
    ) {
        self.metrics.proxy_connections.inc();
        let (rd, mut wr) = stream.into_split();
        let acks = Arc::new(Mutex::new(Acks::default()));
        let ack_state = acks.clone();
        let to_proxy = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ACK_EVERY);
            loop {
                let frame = tokio::select! {
                    pid = requests.recv() => match pid {
                        Some(pid) => Down::Serve { pid },
                        None => return,
                    },
                    _ = tick.tick() => match ack_state.lock().expect("acks lock").next() {
                        Some(seq) => Down::Ack { seq },
                        None => continue,
                    },
                };
                if wr.write_all(&wire::encode(&frame)).await.is_err() {
                    return;
                }
            }
        });
        let mut r = BufReader::new(rd);
        let mut buf = Vec::new();
        loop {
            match wire::read_line(&mut r, &mut buf).await {
                Ok(true) => match serde_json::from_slice::<Up>(&buf) {
                    Ok(f) => self.take(f, &mut acks.lock().expect("acks lock")),
                    Err(e) => tracing::warn!(error = %e, "unreadable frame from tiergate proxy"),
                },
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "a proxy's connection broke");
                    break;
                }
            }
        }
        to_proxy.abort();
        self.metrics.proxy_connections.dec();
        tracing::warn!("a tiergate proxy disconnected");
    }

    /// A record's policy (the agent's own copy when it has that version)
    /// and grant, from the frame.
    fn labels(
        &self,
        policy: Option<PolicyLabel>,
        elevation: Option<GrantWire>,
    ) -> (Option<Arc<Policy>>, Option<Arc<ElevationTag>>) {
        (
            policy.map(|p| p.resolve(&self.state)),
            elevation.map(|g| Arc::new(ElevationTag::from(g))),
        )
    }

    /// Hands a frame's record to the writer (a full writer queue counts it
    /// lost; it is not acknowledged, so the proxy keeps it until a later
    /// record's ack).
    fn take(&self, f: Up, acks: &mut Acks) {
        let receipt = |seq| {
            Some(Receipt {
                written: acks.written.clone(),
                seq,
            })
        };
        match f {
            Up::Hello { pid } => tracing::info!(pid, "tiergate proxy connected"),
            Up::Dns {
                seq,
                mut record,
                policy,
                elevation,
            } => {
                (record.policy, record.elevation) = self.labels(policy, elevation);
                record.receipt = receipt(seq);
                acks.received = acks.received.max(seq);
                self.mirror.note(&record);
                if self.dns.try_send(record).is_err() {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            Up::Metadata {
                seq,
                mut record,
                policy,
                elevation,
            } => {
                (record.policy, record.elevation) = self.labels(policy, elevation);
                record.receipt = receipt(seq);
                acks.received = acks.received.max(seq);
                if self.metadata.try_send(record).is_err() {
                    self.metadata_lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            Up::Lost { seq, dns, metadata } => {
                self.lost.fetch_add(dns, Ordering::Relaxed);
                self.metadata_lost.fetch_add(metadata, Ordering::Relaxed);
                acks.losses.push_back((seq, acks.received));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_count_is_acknowledged_only_after_the_records_before_it() {
        let mut a = Acks {
            received: 5,
            ..Default::default()
        };
        a.losses.push_back((6, 5));
        a.written.store(4, Ordering::Release);
        assert_eq!(a.next(), Some(4));
        assert_eq!(a.next(), None);
        a.written.store(5, Ordering::Release);
        assert_eq!(a.next(), Some(6));
        assert!(a.losses.is_empty());
    }
}
