//! Streams the spool to the collector: gRPC over mTLS, batches in sequence
//! order, a bounded window of unacknowledged batches, and the spool cursor
//! advanced only by the collector's acknowledgements. Any error closes the
//! stream; after a backoff the sender reconnects and resends everything after
//! the last acknowledged record (the collector may see a record twice — same
//! `metadata.uid` — but never misses one).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tiergate_proto::wire::{BatchBuf, is_event, stream_raw};
use tiergate_tls::ClientTls;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Uri};

use super::spool::Spool;
use crate::metrics::Metrics;

/// Batches in flight before the sender waits for acknowledgements.
const WINDOW: usize = 8;
const MAX_BATCH_RECORDS: usize = 1000;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// What a batch's buffer starts with: most batches under load fill it.
const BATCH_CAPACITY: usize = MAX_BATCH_BYTES + MAX_BATCH_RECORDS * 8;

/// Where and as whom to send.
pub struct SenderConfig {
    pub host: String,
    pub port: u16,
    pub tls: Arc<ClientTls>,
    pub node: String,
    pub agent_id: String,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("collector refused the stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("collector closed the stream")]
    Closed,
    #[error("spool: {0}")]
    Spool(String),
}

impl StreamError {
    fn label(&self) -> &'static str {
        match self {
            StreamError::Connect(_) => "connect",
            StreamError::Status(_) => "status",
            StreamError::Closed => "closed",
            StreamError::Spool(_) => "spool",
        }
    }
}

/// Parses `https://host:port`.
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        format!("--collector {url}: must start with https:// (plaintext is refused)")
    })?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("--collector {url}: missing :port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--collector {url}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("--collector {url}: missing host"));
    }
    Ok((host.to_string(), port))
}

/// Runs forever: connect, stream, back off, reconnect.
pub async fn run(
    cfg: SenderConfig,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut made_progress = false;
        let result = stream_once(&cfg, &spool, &notify, &metrics, &mut made_progress).await;
        metrics.export_connected.set(0);
        if let Err(e) = result {
            metrics
                .export_errors
                .get_or_create(&crate::metrics::StageLabels {
                    stage: e.label().into(),
                })
                .inc();
            tracing::warn!(collector = %format!("{}:{}", cfg.host, cfg.port), error = %e, retry_in_ms = backoff.as_millis() as u64, "event stream to the collector ended; events wait in the spool");
        }
        if made_progress {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn stream_once(
    cfg: &SenderConfig,
    spool: &Arc<Mutex<Spool>>,
    notify: &Arc<Notify>,
    metrics: &Arc<Metrics>,
    made_progress: &mut bool,
) -> Result<(), StreamError> {
    let (host, port, tls) = (cfg.host.clone(), cfg.port, cfg.tls.clone());
    let connector = tower::service_fn(move |_: Uri| {
        let (host, tls) = (host.clone(), tls.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ClientTls::server_name(&host).map_err(std::io::Error::other)?;
            let stream = tls.connector().connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The scheme is http because TLS is done by the connector above (with
    // our own verification); the URI's authority is only a label.
    let channel = Endpoint::from_shared(format!("http://{}:{}", cfg.host, cfg.port))
        .map_err(|e| StreamError::Connect(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_with_connector(connector)
        .await
        .map_err(|e| StreamError::Connect(crate::error_chain(&e)))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    // Batches go as encoded `Batch` messages made of the spooled `Event`
    // encodings: nothing is decoded or encoded again on the way out.
    let (tx, rx) = mpsc::channel::<Vec<u8>>(WINDOW);
    let mut acks = stream_raw(&mut grpc, ReceiverStream::new(rx))
        .await?
        .into_inner();
    metrics.export_connected.set(1);
    tracing::info!(collector = %format!("{}:{}", cfg.host, cfg.port), "streaming events to the collector");

    let mut sent_upto = spool.lock().expect("spool lock").acked();
    let mut inflight: VecDeque<(u64, u64, usize)> = VecDeque::new();
    let mut batch_id = 0u64;
    loop {
        while inflight.len() < WINDOW {
            let mut batch = BatchBuf::new(&cfg.agent_id, &cfg.node, batch_id + 1, BATCH_CAPACITY);
            let mut last = None;
            spool
                .lock()
                .expect("spool lock")
                .visit_after(
                    sent_upto,
                    MAX_BATCH_RECORDS,
                    MAX_BATCH_BYTES,
                    |seq, _, payload| {
                        last = Some(seq);
                        // CRC-checked, so only a version skew could fail this.
                        if is_event(payload) {
                            batch.push_event(payload);
                        } else {
                            tracing::error!(seq, "undecodable spool record skipped");
                        }
                    },
                )
                .map_err(|e| StreamError::Spool(e.to_string()))?;
            let Some(last) = last else {
                break;
            };
            batch_id += 1;
            let n = batch.events();
            if tx.send(batch.into_bytes()).await.is_err() {
                return Err(StreamError::Closed);
            }
            inflight.push_back((batch_id, last, n));
            sent_upto = last;
            metrics.export_sent.inc_by(n as u64);
        }
        tokio::select! {
            ack = acks.message() => {
                let Some(ack) = ack? else { return Err(StreamError::Closed) };
                spool.lock().expect("spool lock").ack(ack.acked_seq).map_err(|e| StreamError::Spool(e.to_string()))?;
                while let Some((id, _, n)) = inflight.front().copied() {
                    if id > ack.batch_id {
                        break;
                    }
                    inflight.pop_front();
                    metrics.export_acked.inc_by(n as u64);
                }
                *made_progress = true;
            }
            _ = notify.notified(), if inflight.len() < WINDOW => {}
            // A safety net: records appended without a notification.
            _ = tokio::time::sleep(Duration::from_secs(1)), if inflight.len() < WINDOW => {}
        }
        let s = spool.lock().expect("spool lock");
        metrics.spool_bytes.set(s.used_bytes() as i64);
        metrics.spool_pending.set(s.pending_records() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls() {
        assert_eq!(
            parse_url("https://collector:4317").unwrap(),
            ("collector".into(), 4317)
        );
        assert_eq!(
            parse_url("https://[::1]:4317/").unwrap(),
            ("::1".into(), 4317)
        );
        assert!(
            parse_url("http://collector:4317")
                .unwrap_err()
                .contains("plaintext is refused")
        );
        assert!(
            parse_url("https://collector")
                .unwrap_err()
                .contains("missing :port")
        );
        assert!(
            parse_url("https://:1")
                .unwrap_err()
                .contains("missing host")
        );
    }
}
