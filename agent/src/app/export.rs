//! Delivery to the collector: opens the spool (reporting damage it set
//! aside), checks the TLS files and starts the sender.

use std::sync::Arc;

use anyhow::Context as _;

use crate::cli::AgentArgs;
use crate::events::pipeline::AgentRecord;
use crate::events::sinks::Sink;
use crate::export::{sender, spool, spool_sink::SpoolSink};
use crate::metrics::Metrics;

/// What the exporter set-up gives the writer.
pub(super) struct ExportSetup {
    pub agent_id: String,
    pub last_seq: u64,
    pub sink: Box<dyn Sink>,
    /// Loss records for spool files set aside at open.
    pub records: Vec<AgentRecord>,
}

/// Opens the spool, checks the TLS files and starts the sender.
pub(super) async fn export_setup(
    args: &AgentArgs,
    url: &str,
    node: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ExportSetup> {
    let (host, port) = sender::parse_url(url).map_err(anyhow::Error::msg)?;
    let tls = client_tls(args)?;
    let (spool, report) = spool::Spool::open(spool::SpoolConfig {
        dir: args.spool.clone(),
        max_bytes: args.spool_max_bytes,
        segment_bytes: (args.spool_max_bytes / 16).clamp(64 << 10, 16 << 20),
    })
    .map_err(|e| anyhow::anyhow!("--spool {}: {e}", args.spool.display()))?;
    let records = spool_damage(&report, &metrics);
    tracing::info!(
        spool = %args.spool.display(),
        pending = report.records,
        acked = report.acked,
        "spool open"
    );
    let agent_id = spool.agent_id().to_string();
    let last_seq = spool.last_seq().unwrap_or(0);
    let spool = Arc::new(std::sync::Mutex::new(spool));
    let notify = Arc::new(tokio::sync::Notify::new());
    let sink = Box::new(SpoolSink::new(
        spool.clone(),
        notify.clone(),
        metrics.clone(),
        &args.spool,
    ));
    let cfg = sender::SenderConfig {
        host,
        port,
        tls,
        node: node.to_string(),
        agent_id: agent_id.clone(),
    };
    tokio::spawn(sender::run(cfg, spool, notify, metrics));
    Ok(ExportSetup {
        agent_id,
        last_seq,
        sink,
        records,
    })
}

/// The client side of mTLS to the collector: `--tls-*` files and the
/// collector's expected SPIFFE id.
fn client_tls(args: &AgentArgs) -> anyhow::Result<Arc<tiergate_tls::ClientTls>> {
    let files = tiergate_tls::TlsFiles {
        ca: args.tls_ca.clone().context("--collector needs --tls-ca")?,
        cert: args
            .tls_cert
            .clone()
            .context("--collector needs --tls-cert")?,
        key: args
            .tls_key
            .clone()
            .context("--collector needs --tls-key")?,
    };
    let expect = match &args.collector_spiffe_id {
        Some(p) => Some(
            tiergate_tls::SpiffePattern::parse(p)
                .map_err(|e| anyhow::anyhow!("--collector-spiffe-id {p}: {e}"))?,
        ),
        None => None,
    };
    Ok(Arc::new(
        tiergate_tls::ClientTls::new(files, expect).map_err(|e| anyhow::anyhow!("{e}"))?,
    ))
}

/// Reports spool files set aside at open (damaged): a warning, the loss
/// metric and a loss record for the collector.
fn spool_damage(report: &spool::OpenReport, metrics: &Metrics) -> Vec<AgentRecord> {
    let mut records = Vec::new();
    if !report.set_aside.is_empty() || report.truncated_bytes > 0 || report.cursor_reset {
        tracing::warn!(
            set_aside = ?report.set_aside,
            truncated_bytes = report.truncated_bytes,
            cursor_reset = report.cursor_reset,
            "the spool had damaged files; they were set aside and the agent goes on"
        );
        metrics.lost("spool-corrupt", report.set_aside_records);
        records.push(AgentRecord {
            message: format!(
                "spool damage: {} files set aside, {} bytes of a torn tail dropped{}",
                report.set_aside.len(),
                report.truncated_bytes,
                if report.cursor_reset { ", cursor reset (records may be sent twice)" } else { "" }
            ),
            failure: true,
            detail: serde_json::json!({
                "kind": "loss",
                "stage": "spool-corrupt",
                "count": report.set_aside_records,
                "bytes": report.set_aside_bytes,
                "files": report.set_aside.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "truncated_bytes": report.truncated_bytes,
                "cursor_reset": report.cursor_reset,
            }),
        });
    }
    records
}
