//! Composition root of `tiergate agent`: wires the kernel side, the cgroup
//! watch, the policy watch, the event pipeline and the admin endpoint.
//!
//! One control task owns the policy maps; everything that changes them
//! (policy reloads, cgroups appearing and going) is a message to it, so map
//! writes never interleave.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent_common::map_names;
use anyhow::Context as _;
use aya::maps::{Array, PerCpuArray, RingBuf};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::admin::{self, Readiness, metrics::Metrics};
use crate::cli::AgentArgs;
use crate::control::Control;
use crate::enforcement::loader::{self, LoadOptions};
use crate::enforcement::sync::MapSync;
use crate::events::pipeline::{
    self, AgentRecord, KernelCounters, QueueLosses, Queues, Writer, WriterConfig, WriterInputs,
};
use crate::events::sinks::{LineSink, Sink};
use crate::identity::cgroupfs::{self, CgroupFs};
use crate::identity::kubernetes;
use crate::identity::watch;
use crate::policy;
use crate::preflight;

/// Everything that can stop the agent before it runs, each one sentence.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error("no cgroup v2: {0}")]
    Cgroup(#[from] cgroupfs::CgroupError),
    #[error("--cgroup-root {0} is not a cgroup v2 directory")]
    CgroupRoot(PathBuf),
    #[error("policy {path} is invalid:\n{errors}")]
    Policy {
        path: PathBuf,
        errors: policy::PolicyErrors,
    },
    #[error("policy {path} cannot be compiled: {error}")]
    Compile { path: PathBuf, error: String },
}

/// Runs the agent until SIGTERM/SIGINT. Enforcement stays pinned on exit.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    preflight::check_privileges()?;
    let cgfs = CgroupFs::discover().map_err(StartError::Cgroup)?;
    preflight::check_btf()?;
    let preparing = Instant::now();
    let policy = Arc::new(
        policy::load(&args.policy).map_err(|errors| StartError::Policy {
            path: args.policy.clone(),
            errors,
        })?,
    );
    let compiled = policy.compile().map_err(|e| StartError::Compile {
        path: args.policy.clone(),
        error: e.to_string(),
    })?;
    let prepared = preparing.elapsed();
    let root = args
        .cgroup_root
        .clone()
        .unwrap_or_else(|| cgfs.mount.clone());
    if !root.starts_with(&cgfs.mount) || !root.join("cgroup.procs").exists() {
        return Err(StartError::CgroupRoot(root).into());
    }
    let hostname = args.node_name.clone().unwrap_or_else(hostname);
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(Readiness::default());
    let state = Arc::new(crate::state::NodeState::default());
    let inventory = Arc::new(admin::inventory::Inventory {
        node: hostname.clone(),
        state: state.clone(),
    });
    let _admin = admin::serve(args.admin_addr, metrics.clone(), ready.clone(), inventory)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;

    let started = Instant::now();
    let mut loaded = loader::load(&LoadOptions {
        bpffs: &args.bpffs,
        cgroup_root: &root,
        ring_bytes: args.ring_buffer_bytes,
    })
    .context("cannot load the eBPF programs")?;
    metrics.programs_attached.set(loaded.attached.len() as i64);
    let sync = MapSync::new(&mut loaded.ebpf).context("cannot open the policy maps")?;

    // Event path.
    let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
        ebpf.take_map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))
    };
    let ring = RingBuf::try_from(take(&mut loaded.ebpf, map_names::EVENTS)?)?;
    let counters = KernelCounters {
        counters: PerCpuArray::try_from(take(&mut loaded.ebpf, map_names::COUNTERS)?)?,
        reported: Array::try_from(take(&mut loaded.ebpf, map_names::REPORTED)?)?,
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(target) = &args.events {
        sinks.push(Box::new(
            LineSink::open(target).with_context(|| format!("cannot open --events {target}"))?,
        ));
    }
    let losses = Arc::new(QueueLosses::default());
    let (ptx, prx) = mpsc::channel(pipeline::QUEUE_CAPACITY);
    let (ntx, nrx) = mpsc::channel(pipeline::QUEUE_CAPACITY);
    let (atx, arx) = mpsc::unbounded_channel();
    let startup_tx = atx.clone();
    // Delivery to the collector: spool first (it fixes the agent id and
    // where numbering resumes), then the sender.
    let mut instance = instance_id();
    let mut start_seq = 0;
    let mut startup_records = Vec::new();
    if let Some(url) = &args.collector {
        let export = export_setup(&args, url, &hostname, metrics.clone()).await?;
        instance = export.agent_id;
        start_seq = export.last_seq;
        startup_records = export.records;
        sinks.push(export.sink);
    }
    let writer = Writer::new(
        WriterConfig {
            hostname: hostname.clone(),
            instance,
            start_seq,
            cgroups: (cgfs.clone(), root.clone()),
        },
        state.clone(),
        metrics.clone(),
        sinks,
        counters,
        losses.clone(),
    );
    for rec in startup_records {
        let _ = startup_tx.send(rec);
    }
    let writer_task = tokio::spawn(writer.run(WriterInputs {
        priority: prx,
        normal: nrx,
        agent: arx,
    }));
    let reader_metrics = metrics.clone();
    let reader_task = tokio::spawn(async move {
        let q = Queues {
            priority: ptx,
            normal: ntx,
            losses,
        };
        if let Err(e) = pipeline::run_reader(ring, q, reader_metrics).await {
            tracing::error!(error = %e, "ring-buffer reader stopped");
        }
    });

    // Cgroup watch first, then the scan, so no cgroup falls between them.
    let (cg_tx, mut cg_rx) = mpsc::unbounded_channel();
    let _watch =
        watch::spawn(root.clone(), cg_tx).context("cannot watch the cgroup tree (inotify)")?;

    let mut control = Control::new(
        cgfs,
        root,
        sync,
        state.clone(),
        policy.clone(),
        metrics.clone(),
        atx,
        args.policy.clone(),
    );
    // Pod metadata: the watch starts now; until it has listed, pod cgroups
    // stay in defaultTier (fail closed).
    let (pod_tx, mut pod_rx) = mpsc::unbounded_channel();
    let _pods = match kubernetes::source(args.kubeconfig.as_deref())? {
        Some(source) => {
            Some(kubernetes::spawn(source, hostname.clone(), pod_tx, metrics.clone()).await?)
        }
        None => {
            tracing::info!(
                "no Kubernetes (no --kubeconfig and not in a cluster): host identity only"
            );
            None
        }
    };
    control.scan();
    control
        .install(policy.clone(), &compiled, prepared)
        .context("cannot write the policy maps")?;
    ready.programs_attached.store(true, Ordering::Release);
    ready.policy_in_force.store(true, Ordering::Release);
    // The start's parse is over: its memory goes back to the kernel.
    crate::control::release_freed_memory();
    tracing::info!(
        policy = %policy.name,
        version = %policy.version,
        cgroups = control.known.len(),
        programs = ?loaded.attached,
        lsm = loaded.lsm_attached,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "enforcing"
    );

    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel::<PolicyFileEvent>();
    let _policy_watch = watch_policy_file(&args.policy, reload_tx.clone())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut rescan = tokio::time::interval(Duration::from_secs(args.rescan_interval.max(1)));
    rescan.tick().await;
    // When to hand memory freed by reloads back to the kernel.
    let mut trim_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            Some(change) = cg_rx.recv() => control.cgroup_change(change),
            Some(change) = pod_rx.recv() => control.pod_change(change),
            Some(what) = reload_rx.recv() => {
                // A replaced file is read at once (the reload's latency is
                // the time to enforcement). An in-place write is read when
                // it is closed or, if that never comes, 20 ms after the last
                // write; a half-written file would only be rejected.
                let mut complete = what == PolicyFileEvent::Complete;
                while !complete {
                    match tokio::time::timeout(Duration::from_millis(20), reload_rx.recv()).await {
                        Ok(Some(PolicyFileEvent::Writing)) => {}
                        Ok(Some(PolicyFileEvent::Complete)) | Ok(None) | Err(_) => complete = true,
                    }
                }
                while reload_rx.try_recv().is_ok() {}
                control.reload();
                trim_at = Some(tokio::time::Instant::now() + crate::control::TRIM_AFTER);
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-reading the policy");
                control.reload();
                trim_at = Some(tokio::time::Instant::now() + crate::control::TRIM_AFTER);
            }
            _ = tokio::time::sleep_until(trim_at.unwrap_or_else(tokio::time::Instant::now)), if trim_at.is_some() => {
                trim_at = None;
                crate::control::release_freed_memory();
            }
            _ = rescan.tick() => control.scan(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping; enforcement stays in force (pinned) until `tiergate uninstall`");
    reader_task.abort();
    drop(control);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
    Ok(())
}

/// What the exporter set-up gives the writer.
struct ExportSetup {
    agent_id: String,
    last_seq: u64,
    sink: Box<dyn Sink>,
    /// Loss records for spool files set aside at open.
    records: Vec<AgentRecord>,
}

/// Opens the spool, checks the TLS files and starts the sender.
async fn export_setup(
    args: &AgentArgs,
    url: &str,
    node: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ExportSetup> {
    use crate::export::{sender, spool, spool_sink::SpoolSink};
    let (host, port) = sender::parse_url(url).map_err(anyhow::Error::msg)?;
    let files = crate::tls::TlsFiles {
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
            crate::policy::glob::SpiffePattern::parse(p)
                .map_err(|e| anyhow::anyhow!("--collector-spiffe-id {p}: {e}"))?,
        ),
        None => None,
    };
    let tls =
        Arc::new(crate::tls::ClientTls::new(files, expect).map_err(|e| anyhow::anyhow!("{e}"))?);
    let (spool, report) = spool::Spool::open(spool::SpoolConfig {
        dir: args.spool.clone(),
        max_bytes: args.spool_max_bytes,
        segment_bytes: (args.spool_max_bytes / 16).clamp(64 << 10, 16 << 20),
    })
    .map_err(|e| anyhow::anyhow!("--spool {}: {e}", args.spool.display()))?;
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
    let sink = Box::new(SpoolSink::new(spool.clone(), notify.clone(), &args.spool));
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

/// What a file event means for the policy watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyFileEvent {
    /// The file was replaced (rename, create, a ConfigMap's `..data` swap)
    /// or an in-place write finished: read it now.
    Complete,
    /// An in-place write is under way: read it once the writes settle.
    Writing,
}

/// Classifies a file-system event for the policy file `name`: `None` for
/// events about other files in its directory (a temporary file being
/// written before the rename) and for reads.
fn classify_policy_event(ev: &notify::Event, name: &std::ffi::OsStr) -> Option<PolicyFileEvent> {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    let is_ours = |p: &std::path::PathBuf| {
        p.file_name()
            .is_some_and(|f| f == name || f == std::ffi::OsStr::new("..data"))
    };
    if !ev.paths.iter().any(is_ours) {
        return None;
    }
    match ev.kind {
        K::Access(AccessKind::Close(AccessMode::Write)) => Some(PolicyFileEvent::Complete),
        K::Access(_) => None,
        // Created or written in place (`>`, `cp`): read once it is closed.
        K::Modify(ModifyKind::Data(_)) | K::Create(_) => Some(PolicyFileEvent::Writing),
        // Moved away or removed (an editor's save, `rm` + `cp`): the new
        // file usually follows at once; reading now would only report it
        // missing.
        K::Modify(ModifyKind::Name(RenameMode::From)) | K::Remove(_) => {
            Some(PolicyFileEvent::Writing)
        }
        // A rename seen from both ends: ours only if the policy file (or
        // `..data`) is where it went.
        K::Modify(ModifyKind::Name(RenameMode::Both)) => {
            if ev.paths.get(1).is_some_and(is_ours) {
                Some(PolicyFileEvent::Complete)
            } else {
                Some(PolicyFileEvent::Writing)
            }
        }
        _ => Some(PolicyFileEvent::Complete),
    }
}

/// Watches the policy file's directory (editors and ConfigMaps replace the
/// file rather than write it in place) and signals a reload on a change of
/// the policy file.
fn watch_policy_file(
    path: &Path,
    tx: mpsc::UnboundedSender<PolicyFileEvent>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path
        .file_name()
        .context("the policy path names no file")?
        .to_os_string();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && let Some(what) = classify_policy_event(&ev, &name)
        {
            let _ = tx.send(what);
        }
    })
    .context("cannot start the policy file watch")?;
    w.watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    Ok(w)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Random id of this agent run (for `metadata.uid`).
fn instance_id() -> String {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        b = (std::process::id() as u64 ^ pipeline::now_epoch_ms()).to_le_bytes();
    }
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::{PolicyFileEvent, classify_policy_event};
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RenameMode,
    };
    use std::ffi::OsStr;

    fn ev(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(path.into())
    }

    #[test]
    fn policy_watch_reacts_to_the_policy_file_only() {
        let name = OsStr::new("policy.yaml");
        let c = |kind, path| classify_policy_event(&ev(kind, path), name);
        // A rename into place (editors, `mv`, the bench) is read at once.
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Complete)
        );
        // A file created in place is read once it is closed (`>` creates
        // it empty first).
        assert_eq!(
            c(EventKind::Create(CreateKind::File), "/etc/tg/policy.yaml"),
            Some(PolicyFileEvent::Writing)
        );
        // A ConfigMap volume swaps its `..data` symlink.
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/tg/..data"
            ),
            Some(PolicyFileEvent::Complete)
        );
        // An in-place write settles until the file is closed.
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Writing)
        );
        assert_eq!(
            c(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Complete)
        );
        // Moved away or removed: wait for what replaces it.
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Writing)
        );
        assert_eq!(
            c(
                EventKind::Remove(notify::event::RemoveKind::File),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Writing)
        );
        let both = |from: &str, to: &str| {
            let ev = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
                .add_path(from.into())
                .add_path(to.into());
            classify_policy_event(&ev, name)
        };
        // vim: policy.yaml → policy.yaml~, then the new file → policy.yaml.
        assert_eq!(
            both("/etc/tg/policy.yaml", "/etc/tg/policy.yaml~"),
            Some(PolicyFileEvent::Writing)
        );
        assert_eq!(
            both("/etc/tg/.policy.tmp", "/etc/tg/policy.yaml"),
            Some(PolicyFileEvent::Complete)
        );
        assert_eq!(
            both("/etc/tg/..data_tmp", "/etc/tg/..data"),
            Some(PolicyFileEvent::Complete)
        );
        // Reads, and the temporary file written before a rename, are not changes.
        assert_eq!(
            c(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/etc/tg/policy.yaml"
            ),
            None
        );
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "/etc/tg/.policy.yaml.tmp"
            ),
            None
        );
        assert_eq!(
            c(EventKind::Create(CreateKind::File), "/etc/tg/other.yaml"),
            None
        );
    }
}
