//! `tiergate collector`: receives event streams from agents over gRPC with
//! mTLS (client SPIFFE IDs checked against `--allow-spiffe`) and writes them
//! to sinks (JSON-lines files with rotation, stdout, syslog over TLS) and,
//! with `--store`, aggregates them into the observation store (`store/`).

mod args;
pub mod metrics;
mod resume;
pub mod service;
pub mod sinks;
pub mod store;
pub mod tls_conn;
pub mod writer;

/// HTTP/2 flow control and framing towards the agents (see `run`).
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 2 << 20;
const MAX_FRAME: u32 = 1 << 20;

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tiergate_proto::events::v1::event_collector_server::EventCollectorServer;
use tiergate_tls::{Rejection, ServerTls, SpiffePattern, TlsFiles};

pub use args::CollectorArgs;
use metrics::{CollectorMetrics, ReasonLabels};
use service::{Collector, SeqTracker};

/// Runs the collector until SIGTERM/SIGINT.
pub async fn run(args: CollectorArgs) -> anyhow::Result<()> {
    let allow = args
        .allow_spiffe
        .iter()
        .map(|p| SpiffePattern::parse(p).map_err(|e| anyhow::anyhow!("--allow-spiffe {p}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let specs = if args.sink.is_empty() {
        vec!["stdout".to_string()]
    } else {
        args.sink.clone()
    };
    let mut sinks = Vec::new();
    for spec in &specs {
        sinks.push(sinks::parse_sink(spec).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    let metrics = Arc::new(CollectorMetrics::new());
    let m = metrics.clone();
    let on_reject: Arc<dyn Fn(&Rejection) + Send + Sync> = Arc::new(move |r: &Rejection| {
        m.rejected
            .get_or_create(&ReasonLabels {
                reason: r.label().to_string(),
            })
            .inc();
    });
    let tls = Arc::new(
        ServerTls::new(
            TlsFiles {
                ca: args.tls_ca.clone(),
                cert: args.tls_cert.clone(),
                key: args.tls_key.clone(),
            },
            allow,
            on_reject,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let admin_metrics = metrics.clone();
    let admin = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = admin_metrics.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(|| async { (StatusCode::OK, "ready\n") }));
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // Each agent's last written seq, from the file sinks' own records: with
    // several file sinks, what all of them hold (a batch one of them failed
    // was not acknowledged and must be written again).
    let resumed = resume::common(
        sinks
            .iter()
            .filter_map(|s| s.written_file())
            .map(resume::last_seqs)
            .collect(),
    );
    if !resumed.is_empty() {
        tracing::info!(
            agents = resumed.len(),
            "resuming agents' sequences from the file sinks"
        );
    }
    let store = match &args.store {
        Some(url) => Some(
            store::feed::start(url.clone(), args.store_max_rows, metrics.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };
    let (feed, stopper) = store.unzip();
    let svc = Collector {
        writer: writer::spawn_writer(sinks, metrics.clone(), feed),
        seqs: Arc::new(Mutex::new(SeqTracker::seeded(resumed))),
        metrics,
        hostname,
    };
    let incoming = tokio_stream::wrappers::ReceiverStream::new(tls_conn::incoming(listener, tls));
    tracing::info!(listen = %args.listen, sinks = ?specs, "collector ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tonic::transport::Server::builder()
        // An agent streams batches of up to 1 MiB with several in flight:
        // DATA frames up to 1 MiB instead of 16 KiB cut the per-frame work
        // on both ends. A window is what an agent may have sent and this
        // collector holds unread (its one stream is its connection's only
        // one): 2 MiB, two batches, bounds that memory per agent.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_service(EventCollectorServer::new(svc))
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
        .context("gRPC server failed")?;
    if let Some(stopper) = stopper {
        // Aggregates not yet written would be lost with the process.
        tokio::task::spawn_blocking(move || stopper.stop(std::time::Duration::from_secs(5)))
            .await
            .context("stopping the observation store")?;
    }
    Ok(())
}
