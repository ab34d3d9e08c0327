//! The control loop: feeds the control task its inputs (cgroup changes, pod
//! changes, elevation objects and requests, policy file changes, SIGHUP, the rescan tick) until SIGTERM or
//! SIGINT.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::policy_watch::{self, PolicyFileEvent};
use crate::cli::AgentArgs;
use crate::control::{self, Control};
use crate::identity::pods::PodChange;
use crate::identity::watch::CgroupChange;

/// The watches started before the first scan.
pub(super) struct Inputs {
    pub cgroups: mpsc::UnboundedReceiver<CgroupChange>,
    pub pods: mpsc::UnboundedReceiver<PodChange>,
    /// `TierElevation` objects.
    pub objects: mpsc::UnboundedReceiver<crate::elevation::kube::ObjectChange>,
    /// Elevation requests from the admin socket.
    pub admin: mpsc::Receiver<crate::elevation::admin::AdminRequest>,
}

/// Watches the policy file and the signals, then hands every input to
/// `control` until the agent is told to stop.
pub(super) async fn run(
    control: &mut Control,
    args: &AgentArgs,
    mut inputs: Inputs,
) -> anyhow::Result<()> {
    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel::<PolicyFileEvent>();
    let _policy_watch = policy_watch::watch_policy_file(&args.policy, reload_tx.clone())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut rescan = tokio::time::interval(Duration::from_secs(args.rescan_interval.max(1)));
    rescan.tick().await;
    // Grants ending: the kernel stops honouring them on its own; this
    // removes the entries, reports the end and closes what they opened.
    // The same tick notices a proxy process starting (TG_GUARD).
    let mut expiry = tokio::time::interval(Duration::from_millis(250));
    // When to hand memory freed by reloads back to the kernel.
    let mut trim_at: Option<Instant> = None;
    loop {
        tokio::select! {
            Some(change) = inputs.cgroups.recv() => control.cgroup_change(change),
            Some(change) = inputs.pods.recv() => control.pod_change(change),
            Some(change) = inputs.objects.recv() => control.elevation_object(change),
            Some(what) = reload_rx.recv() => {
                policy_watch::settle(&mut reload_rx, what).await;
                trim_at = Some(reload(control));
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-reading the policy");
                trim_at = Some(reload(control));
            }
            _ = tokio::time::sleep_until(trim_at.unwrap_or_else(Instant::now)), if trim_at.is_some() => {
                trim_at = None;
                control::release_freed_memory();
            }
            _ = rescan.tick() => control.scan(),
            Some((op, by, reply)) = inputs.admin.recv() => {
                let _ = reply.send(control.admin(op, by));
            }
            _ = expiry.tick() => {
                control.expire_grants();
                control.check_exempt();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    Ok(())
}

/// Re-reads the policy; returns when to hand the memory it freed back.
fn reload(control: &mut Control) -> Instant {
    control.reload();
    Instant::now() + control::TRIM_AFTER
}
