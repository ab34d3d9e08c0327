//! Composition root of `tiergate agent`: wires the kernel side, the cgroup
//! watch, the policy watch, the event pipeline and the admin endpoint.
//!
//! One control task owns the policy maps; everything that changes them
//! (policy reloads, cgroups appearing and going) is a message to it, so map
//! writes never interleave.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent_common::map_names;
use anyhow::Context as _;
use aya::maps::{Array, PerCpuArray, RingBuf};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::admin::{
    self, Readiness,
    metrics::{Metrics, PolicyLabels},
};
use crate::cli::AgentArgs;
use crate::enforcement::loader::{self, LoadOptions};
use crate::enforcement::sync::{CgroupVerdicts, MapSync};
use crate::events::pipeline::{
    self, AgentRecord, KernelCounters, LineSink, QueueLosses, Queues, Sink, Writer, WriterConfig,
    WriterInputs,
};
use crate::identity::cgroupfs::{self, CgroupFs};
use crate::identity::watch::{self, CgroupChange};
use crate::policy::{self, Policy, Workload};
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
    let _admin = admin::serve(args.admin_addr, metrics.clone(), ready.clone())
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
    let state = Arc::new(crate::state::NodeState::default());
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
    let writer = Writer::new(
        WriterConfig {
            hostname: hostname.clone(),
            instance: instance_id(),
            cgroups: (cgfs.clone(), root.clone()),
        },
        state.clone(),
        metrics.clone(),
        sinks,
        counters,
        losses.clone(),
    );
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

    let mut control = Control {
        cgfs,
        root,
        sync,
        state: state.clone(),
        policy: policy.clone(),
        known: HashMap::new(),
        metrics: metrics.clone(),
        records: atx,
        policy_path: args.policy.clone(),
        last_rejected: None,
    };
    control.scan();
    control
        .install(policy.clone(), &compiled)
        .context("cannot write the policy maps")?;
    ready.programs_attached.store(true, Ordering::Release);
    ready.policy_in_force.store(true, Ordering::Release);
    tracing::info!(
        policy = %policy.name,
        version = %policy.version,
        cgroups = control.known.len(),
        programs = ?loaded.attached,
        lsm = loaded.lsm_attached,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "enforcing"
    );

    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel::<()>();
    let _policy_watch = watch_policy_file(&args.policy, reload_tx.clone())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut rescan = tokio::time::interval(Duration::from_secs(args.rescan_interval.max(1)));
    rescan.tick().await;
    loop {
        tokio::select! {
            Some(change) = cg_rx.recv() => control.cgroup_change(change),
            Some(()) = reload_rx.recv() => {
                // Coalesce a burst of file events (editors write several).
                tokio::time::sleep(Duration::from_millis(20)).await;
                while reload_rx.try_recv().is_ok() {}
                control.reload();
            }
            _ = hup.recv() => { tracing::info!("SIGHUP: re-reading the policy"); control.reload(); }
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

/// The task that owns the maps.
struct Control {
    cgfs: CgroupFs,
    root: PathBuf,
    sync: MapSync,
    state: Arc<crate::state::NodeState>,
    policy: Arc<Policy>,
    /// cgroup directory → id, for everything under `root`.
    known: HashMap<PathBuf, u64>,
    metrics: Arc<Metrics>,
    records: mpsc::UnboundedSender<AgentRecord>,
    policy_path: PathBuf,
    /// Version text of the last rejected file, so one bad edit is one record.
    last_rejected: Option<String>,
}

impl Control {
    fn verdicts(policy: &Policy, path: &str) -> CgroupVerdicts {
        let w = Workload {
            cgroup_path: path,
            pod: None,
        };
        CgroupVerdicts {
            tier: policy.assign(&w).tier,
            child_tier: policy.child_tier(path),
        }
    }

    fn add(&mut self, dir: PathBuf) {
        let (Ok(id), Ok(path)) = (cgroupfs::cgroup_id(&dir), self.cgfs.path_of(&dir)) else {
            return; // gone again
        };
        let v = Self::verdicts(&self.policy, &path);
        self.state.set_cgroup(id, &path);
        if let Err(e) = self.sync.upsert_cgroup(id, v) {
            tracing::error!(cgroup = %path, error = %e, "cannot write cgroup entry");
        }
        self.known.insert(dir, id);
        self.metrics
            .cgroups_known
            .set(self.sync.cgroup_count() as i64);
    }

    fn remove(&mut self, dir: &Path) {
        if let Some(id) = self.known.remove(dir) {
            self.state.remove_cgroup(id);
            if let Err(e) = self.sync.remove_cgroup(id) {
                tracing::error!(cgroup_id = id, error = %e, "cannot remove cgroup entry");
            }
        }
        self.metrics
            .cgroups_known
            .set(self.sync.cgroup_count() as i64);
    }

    fn cgroup_change(&mut self, change: CgroupChange) {
        match change {
            CgroupChange::Created(dir) => self.add(dir),
            CgroupChange::Removed(dir) => {
                // Children go first in the kernel, but be tolerant.
                let gone: Vec<PathBuf> = self
                    .known
                    .keys()
                    .filter(|d| d.starts_with(&dir))
                    .cloned()
                    .collect();
                for d in gone {
                    self.remove(&d);
                }
            }
            CgroupChange::Rescan => self.scan(),
        }
    }

    /// Full walk: adds what is new, drops what is gone (also entries an
    /// earlier agent left in the pinned map).
    fn scan(&mut self) {
        let dirs = cgroupfs::walk(&self.root);
        let live: std::collections::HashSet<&PathBuf> = dirs.iter().collect();
        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|d| !live.contains(d))
            .cloned()
            .collect();
        for d in gone {
            self.remove(&d);
        }
        for d in &dirs {
            if !self.known.contains_key(d) {
                self.add(d.clone());
            }
        }
        let ids: std::collections::HashSet<u64> = self.known.values().copied().collect();
        match self.sync.retain_cgroups(&|id| ids.contains(&id)) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "dropped stale cgroup entries"),
            Err(e) => tracing::error!(error = %e, "cannot prune cgroup entries"),
        }
        self.metrics
            .cgroups_known
            .set(self.sync.cgroup_count() as i64);
    }

    /// Writes a compiled policy and every known cgroup's tier under it.
    fn install(
        &mut self,
        policy: Arc<Policy>,
        compiled: &policy::Compiled,
    ) -> Result<(), crate::enforcement::sync::SyncError> {
        let entries: Vec<(u64, CgroupVerdicts)> = self
            .known
            .iter()
            .filter_map(|(dir, id)| {
                self.cgfs
                    .path_of(dir)
                    .ok()
                    .map(|p| (*id, Self::verdicts(&policy, &p)))
            })
            .collect();
        let started = Instant::now();
        let stats = self.sync.swap(compiled, &entries)?;
        let old = std::mem::replace(&mut self.policy, policy.clone());
        self.state.activate(stats.generation, policy.clone());
        self.metrics.policy_info.clear();
        self.metrics
            .policy_info
            .get_or_create(&PolicyLabels {
                name: policy.name.clone(),
                version: policy.version.clone(),
            })
            .set(1);
        self.metrics.policy_rules.set(stats.rules as i64);
        self.metrics.reload("applied");
        tracing::info!(
            policy = %policy.name,
            version = %policy.version,
            previous = %old.version,
            generation = stats.generation,
            rules = stats.rules,
            cgroups = stats.cgroups,
            swap_us = started.elapsed().as_micros() as u64,
            "policy in force"
        );
        let _ = self.records.send(AgentRecord {
            message: format!("policy {} {} in force", policy.name, policy.version),
            failure: false,
            detail: serde_json::json!({
                "kind": "policy",
                "action": "applied",
                "file": self.policy_path.display().to_string(),
                "previous_version": old.version,
            }),
        });
        Ok(())
    }

    /// Re-reads the policy file; a bad file changes nothing in the kernel.
    fn reload(&mut self) {
        let parsed = policy::load(&self.policy_path);
        let result = parsed.map_err(|e| e.to_string()).and_then(|p| {
            p.compile()
                .map(|c| (p, c))
                .map_err(|e| format!("{}: {e}", self.policy_path.display()))
        });
        match result {
            Ok((p, _)) if p.version == self.policy.version => {
                self.last_rejected = None;
                self.metrics.reload("unchanged");
            }
            Ok((p, compiled)) => {
                self.last_rejected = None;
                if let Err(e) = self.install(Arc::new(p), &compiled) {
                    tracing::error!(error = %e, "cannot write the new policy; the previous one stays in force");
                    self.metrics.reload("failed");
                }
            }
            Err(errors) => {
                if self.last_rejected.as_deref() == Some(errors.as_str()) {
                    return;
                }
                self.metrics.reload("rejected");
                tracing::error!(
                    file = %self.policy_path.display(),
                    in_force = %self.policy.version,
                    "policy rejected; the last good policy stays in force:\n{errors}"
                );
                let _ = self.records.send(AgentRecord {
                    message: format!(
                        "policy {} rejected; {} stays in force",
                        self.policy_path.display(),
                        self.policy.version
                    ),
                    failure: true,
                    detail: serde_json::json!({
                        "kind": "policy",
                        "action": "rejected",
                        "file": self.policy_path.display().to_string(),
                        "errors": errors.lines().collect::<Vec<_>>(),
                    }),
                });
                self.last_rejected = Some(errors);
            }
        }
    }
}

/// Watches the policy file's directory (editors and ConfigMaps replace the
/// file rather than write it in place) and signals a reload on any change.
fn watch_policy_file(
    path: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
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
