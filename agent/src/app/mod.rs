//! Composition root of `tiergate agent`: wires the kernel side, the cgroup
//! watch, the policy watch, the event pipeline and the admin endpoint.
//!
//! One control task owns the policy maps; everything that changes them
//! (policy reloads, cgroups appearing and going) is a message to it, so map
//! writes never interleave.

mod control_loop;
mod events;
mod export;
mod policy_watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::admin::{self, Readiness};
use crate::cli::{AgentArgs, ProxyMode};
use crate::control::Control;
use crate::elevation::kube::{self as elevation_kube, ObjectChange, StatusUpdate};
use crate::enforcement::loader::{self, LoadOptions, Loaded};
use crate::enforcement::sync::MapSync;
use crate::identity::cgroupfs::{self, CgroupFs};
use crate::identity::kubernetes;
use crate::identity::pods::PodChange;
use crate::identity::watch::{self, CgroupChange};
use crate::metrics::Metrics;
use crate::policy::{self, Compiled, Policy};
use crate::preflight;
use crate::proxies;
use crate::state::NodeState;

/// Everything that can stop the agent before it runs, each one sentence.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error("no cgroup v2: {0}")]
    Cgroup(#[from] cgroupfs::CgroupError),
    #[error("{0}")]
    CgroupNamespace(cgroupfs::CgroupError),
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

/// Which node daemon is starting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    Agent,
    Proxy,
}

/// What must happen while the process has one thread, before the runtime
/// starts: the privilege check (first, so a missing capability is the one
/// sentence the agent prints) and entering the node's cgroup namespace
/// (a namespace belongs to the thread that enters it).
pub fn prepare(daemon: Daemon) -> anyhow::Result<()> {
    match daemon {
        Daemon::Agent => preflight::check_privileges()?,
        Daemon::Proxy => preflight::check_proxy_privileges()?,
    }
    if let Some(pid) =
        cgroupfs::join_node_cgroup_namespace().map_err(StartError::CgroupNamespace)?
    {
        tracing::info!(
            pid,
            "entered the node's cgroup namespace (the container's own put the cgroup v2 mount outside it)"
        );
    }
    Ok(())
}

/// Runs the agent until SIGTERM/SIGINT (after [`prepare`]). Enforcement
/// stays pinned on exit.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let cgfs = preflight()?;
    let start = load_policy(&args.policy)?;
    let root = cgroup_root(&args, &cgfs)?;
    let hostname = args.node_name.clone().unwrap_or_else(hostname);
    let shared = Shared::default();
    let _admin = serve_admin(&args, &hostname, &shared).await?;

    let started = Instant::now();
    let (mut programs, sync) = load_programs(&args, &root, &shared.metrics)?;
    let (proxy_records, serving) = proxies_setup(&args, &mut programs.ebpf, &shared)?;
    let event_path = events::start(
        &args,
        &mut programs.ebpf,
        &hostname,
        (cgfs.clone(), root.clone()),
        &shared,
        proxy_records,
    )
    .await?;
    // Cgroup watch first, then the scan, so no cgroup falls between them.
    let (cgroup_changes, _cgroup_watch) = watch_cgroups(&root)?;
    let cgfs_for_dns = cgfs.clone();
    let mut control = Control::new(
        cgfs,
        root,
        sync,
        shared.state.clone(),
        start.policy.clone(),
        shared.metrics.clone(),
        event_path.records.clone(),
        args.policy.clone(),
        args.grants_file.clone(),
    );
    let kube = watch_kubernetes(&args, &hostname, &shared.metrics).await?;
    control.elevation.status = kube.status.clone();
    control.exempt = crate::control::Exempt::open(&args.bpffs)
        .context("cannot learn which cgroups serve the node (the agent's, the proxies')")?;
    control.elevation.node = hostname.clone();
    enforce(&mut control, &start, &shared.ready, &programs, started)?;
    let (proxy_tasks, registry) = match serving {
        Serving::Agent(mut path) => {
            let registry = path.registry.clone();
            let tasks = proxies::start(
                &mut path,
                shared.state.clone(),
                cgfs_for_dns,
                shared.metrics.clone(),
            );
            (tasks, Some(registry))
        }
        Serving::Separate(link) => (link.start(shared.metrics.clone())?, None),
    };

    control.load_grants();
    let (admin_tx, admin_rx) = tokio::sync::mpsc::channel(16);
    let admin = crate::elevation::admin::bind(&args.admin_socket)?;
    let _admin_task = AbortOnDrop(tokio::spawn(crate::elevation::admin::serve(
        admin,
        args.admin_socket.clone(),
        admin_tx,
    )));

    control_loop::run(
        &mut control,
        &args,
        control_loop::Inputs {
            cgroups: cgroup_changes,
            pods: kube.pods,
            objects: kube.objects,
            admin: admin_rx,
        },
    )
    .await?;
    // The proxies served here: new queries fail at once from now on, those
    // taken are answered (their records go out with the rest).
    proxies::drain(&proxy_tasks, registry.as_deref()).await;
    shutdown(event_path, control).await;
    Ok(())
}

/// Who serves the DNS and metadata proxies (`--proxies`).
enum Serving {
    Agent(proxies::DnsPath),
    Separate(proxies::link::Link),
}

/// The proxies (`--proxies agent`) or the link to `tiergate proxy`
/// (`separate`): what the writer takes their records from.
fn proxies_setup(
    args: &AgentArgs,
    ebpf: &mut aya::Ebpf,
    shared: &Shared,
) -> anyhow::Result<(proxies::link::WriterSide, Serving)> {
    Ok(match args.proxies {
        ProxyMode::Agent => {
            let maps = proxies::ProxyMaps::take(ebpf)?;
            let mut path = proxies::setup(&args.proxy, maps, shared.state.clone())?;
            let _ = shared.learner.set(path.link.learner.clone());
            let (dns, metadata) = path.take_records();
            ((path.link.clone(), dns, metadata), Serving::Agent(path))
        }
        ProxyMode::Separate => {
            let (link, side) = proxies::link::Link::bind(
                &args.proxy_dir,
                shared.state.clone(),
                args.proxy.limits(),
            )?;
            let _ = shared.learner.set(side.0.learner.clone());
            (side, Serving::Separate(link))
        }
    })
}

/// Aborts a task when dropped (the admin socket stops with the agent).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The start's policy, read and compiled before anything is loaded.
struct StartPolicy {
    policy: Arc<Policy>,
    compiled: Compiled,
    /// How long reading, parsing and compiling took.
    prepared: Duration,
}

/// What the stages share: the metrics, the readiness flags and the node
/// state the admin endpoint serves.
#[derive(Default)]
struct Shared {
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    state: Arc<NodeState>,
    /// The DNS proxy's learner, for `/dns/learned` (set once it exists).
    learner: admin::learned::LearnerSlot,
}

/// Cgroup v2 and BTF: what the agent needs of the host (privileges were
/// checked by [`prepare`]).
fn preflight() -> anyhow::Result<CgroupFs> {
    let cgfs = CgroupFs::discover().map_err(StartError::Cgroup)?;
    preflight::check_btf()?;
    Ok(cgfs)
}

/// Reads and compiles the policy: a bad file stops the start.
fn load_policy(path: &std::path::Path) -> anyhow::Result<StartPolicy> {
    let preparing = Instant::now();
    let policy = Arc::new(policy::load(path).map_err(|errors| StartError::Policy {
        path: path.to_path_buf(),
        errors,
    })?);
    let compiled = policy.compile().map_err(|e| StartError::Compile {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    Ok(StartPolicy {
        policy,
        compiled,
        prepared: preparing.elapsed(),
    })
}

/// The cgroup the programs attach to: `--cgroup-root` or the whole tree.
fn cgroup_root(args: &AgentArgs, cgfs: &CgroupFs) -> anyhow::Result<PathBuf> {
    let root = args
        .cgroup_root
        .clone()
        .unwrap_or_else(|| cgfs.mount.clone());
    if !root.starts_with(&cgfs.mount) || !root.join("cgroup.procs").exists() {
        return Err(StartError::CgroupRoot(root).into());
    }
    Ok(root)
}

/// Binds the admin address before anything is loaded, so a bad address
/// fails the start and changes nothing in the kernel.
async fn serve_admin(
    args: &AgentArgs,
    hostname: &str,
    shared: &Shared,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let inventory = Arc::new(admin::inventory::Inventory {
        node: hostname.to_string(),
        state: shared.state.clone(),
    });
    admin::serve(
        args.admin_addr,
        shared.metrics.clone(),
        shared.ready.clone(),
        inventory,
        shared.learner.clone(),
    )
    .await
    .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))
}

/// Loads (or adopts the pinned) eBPF programs and opens the policy maps.
fn load_programs(
    args: &AgentArgs,
    root: &std::path::Path,
    metrics: &Metrics,
) -> anyhow::Result<(Loaded, MapSync)> {
    let mut loaded = loader::load(&LoadOptions {
        bpffs: &args.bpffs,
        cgroup_root: root,
        ring_bytes: args.ring_buffer_bytes,
    })
    .context("cannot load the eBPF programs")?;
    metrics.programs_attached.set(loaded.attached.len() as i64);
    let sync = MapSync::new(&mut loaded.ebpf).context("cannot open the policy maps")?;
    Ok((loaded, sync))
}

fn watch_cgroups(
    root: &std::path::Path,
) -> anyhow::Result<(
    mpsc::UnboundedReceiver<CgroupChange>,
    tokio::task::JoinHandle<()>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let watch =
        watch::spawn(root.to_path_buf(), tx).context("cannot watch the cgroup tree (inotify)")?;
    Ok((rx, watch))
}

/// The Kubernetes watches (pods of this node, `TierElevation` objects), if
/// there is a Kubernetes.
struct KubeWatch {
    pods: mpsc::UnboundedReceiver<PodChange>,
    objects: mpsc::UnboundedReceiver<ObjectChange>,
    /// Where the control task sends the objects' statuses.
    status: Option<mpsc::UnboundedSender<StatusUpdate>>,
    _tasks: Vec<AbortOnDrop>,
    /// Without Kubernetes the senders are kept: the control loop waits on
    /// open channels that never deliver.
    _idle: Option<(
        mpsc::UnboundedSender<PodChange>,
        mpsc::UnboundedSender<ObjectChange>,
    )>,
}

/// Pod metadata: the watch starts now; until it has listed, pod cgroups
/// stay in defaultTier (fail closed). Elevation objects: likewise, nothing
/// is elevated by an object before the watch has seen it.
async fn watch_kubernetes(
    args: &AgentArgs,
    hostname: &str,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<KubeWatch> {
    let (pods_tx, pods) = mpsc::unbounded_channel();
    let (objects_tx, objects) = mpsc::unbounded_channel();
    Ok(match kubernetes::source(args.kubeconfig.as_deref())? {
        Some(source) => {
            let client = kubernetes::client(&source).await?;
            let pod_task = kubernetes::spawn(
                client.clone(),
                hostname.to_string(),
                pods_tx,
                metrics.clone(),
            );
            let (status_tx, status_rx) = mpsc::unbounded_channel();
            let (watch, writer) =
                elevation_kube::spawn(client, objects_tx, status_rx, metrics.clone());
            KubeWatch {
                pods,
                objects,
                status: Some(status_tx),
                _tasks: vec![
                    AbortOnDrop(pod_task),
                    AbortOnDrop(watch),
                    AbortOnDrop(writer),
                ],
                _idle: None,
            }
        }
        None => {
            tracing::info!(
                "no Kubernetes (no --kubeconfig and not in a cluster): host identity only"
            );
            KubeWatch {
                pods,
                objects,
                status: None,
                _tasks: Vec::new(),
                _idle: Some((pods_tx, objects_tx)),
            }
        }
    })
}

/// Learns the cgroup tree, writes the start's policy and reports ready.
fn enforce(
    control: &mut Control,
    start: &StartPolicy,
    ready: &Readiness,
    programs: &Loaded,
    started: Instant,
) -> anyhow::Result<()> {
    control.scan();
    control
        .install(start.policy.clone(), &start.compiled, start.prepared)
        .context("cannot write the policy maps")?;
    ready.programs_attached.store(true, Ordering::Release);
    ready.policy_in_force.store(true, Ordering::Release);
    // The start's parse is over: its memory goes back to the kernel.
    crate::control::release_freed_memory();
    tracing::info!(
        policy = %start.policy.name,
        version = %start.policy.version,
        cgroups = control.known.len(),
        programs = ?programs.attached,
        lsm = programs.lsm_attached,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "enforcing"
    );
    Ok(())
}

/// Stops the event path; the programs and maps stay pinned.
async fn shutdown(event_path: events::EventPath, control: Control) {
    tracing::info!("stopping; enforcement stays in force (pinned) until `tiergate uninstall`");
    // Reader first (it takes what the ring holds), then the writer (it
    // writes what is queued); each has a bound, enforcement is unaffected.
    let _ = event_path.stop_reader.send(());
    let _ = tokio::time::timeout(Duration::from_secs(1), event_path.reader).await;
    // The last aggregation window goes to the writer while it still runs
    // (what does not make it stays in the kernel map for the next agent).
    let _ = event_path.stop_aggregator.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), event_path.aggregator).await;
    drop(control);
    let _ = event_path.stop_writer.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), event_path.writer).await;
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
