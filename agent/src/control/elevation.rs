//! Elevation grants in the control task: taking, listing and revoking
//! grants (the admin socket's requests), applying them to the cgroups they
//! cover (now and as cgroups appear), ending them at expiry, on revoke, and
//! when a reloaded policy no longer allows them.
//!
//! A grant covers the cgroups its target matches *whose own tier is the
//! grant's `from` tier*: a workload moved to another tier by a policy edit
//! is no longer elevated by it. The kernel entry ends by itself at expiry
//! (boot clock); this task removes it afterwards, reports the end and closes
//! what the grant opened.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::Control;
use tokio::sync::mpsc;

use crate::elevation::grant::{self, Grant, Principal};
use crate::elevation::kube::StatusUpdate;
use crate::elevation::protocol::{Op, Reply};
use crate::elevation::resource::ElevationObject;
use crate::elevation::sockets;
use crate::elevation::store::{self, Loaded};
use crate::enforcement::grants::GrantEntry;
use crate::events::pipeline::{AgentRecord, clock_ns, now_epoch_ms};
use crate::policy::{Proto, TierRef, Verdict};

/// Grants in force and where they are kept.
pub struct Elevations {
    pub grants: BTreeMap<String, Grant>,
    pub file: PathBuf,
    /// cgroup id → grant id written to the kernel for it.
    applied: HashMap<u64, String>,
    next_seq: u64,
    /// `TierElevation` objects not (yet) granted here, by uid, with the
    /// last refusal reported for each.
    pub objects: BTreeMap<String, (ElevationObject, Option<String>)>,
    /// Objects whose grant ended on this agent: never granted again.
    pub ended_objects: HashSet<String>,
    /// Where the statuses of objects go (None without Kubernetes), and the
    /// node name they carry.
    pub status: Option<mpsc::UnboundedSender<StatusUpdate>>,
    pub node: String,
}

impl Elevations {
    pub fn new(file: PathBuf) -> Self {
        Self {
            grants: BTreeMap::new(),
            file,
            applied: HashMap::new(),
            next_seq: 1,
            objects: BTreeMap::new(),
            ended_objects: HashSet::new(),
            status: None,
            node: String::new(),
        }
    }
}

/// A process in the cgroup directory `dir`.
fn first_pid(dir: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .ok()?
        .lines()
        .find_map(|l| l.trim().parse().ok())
}

/// `CLOCK_BOOTTIME` nanoseconds at the wall-clock time `epoch_ms`.
fn boot_ns_at(epoch_ms: u64) -> u64 {
    let offset = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME);
    (i128::from(epoch_ms) * 1_000_000 - offset).max(0) as u64
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    // A failure leaves the clock's bits: ids only need to be unique here.
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        b = (clock_ns(libc::CLOCK_REALTIME) as u64).to_le_bytes();
    }
    format!("g-{}", hex::encode(b))
}

impl Control {
    /// Reads the grants file at start: grants ended while no agent ran are
    /// reported and their sockets closed; the rest applied.
    pub fn load_grants(&mut self) {
        let now = now_epoch_ms();
        match store::load(&self.elevation.file, now) {
            Ok(Loaded::Grants(gs)) => {
                for g in gs {
                    self.elevation.next_seq = self.elevation.next_seq.max(g.seq + 1);
                    self.elevation.grants.insert(g.id.clone(), g);
                }
            }
            Ok(Loaded::SetAside { reason, moved_to }) => {
                tracing::error!(file = %self.elevation.file.display(), moved_to = %moved_to.display(), %reason,
                    "the grants file is unreadable; set aside, starting with no grants (nothing stays elevated)");
            }
            Err(e) => tracing::error!(file = %self.elevation.file.display(), error = %e,
                "cannot read the grants file; starting with no grants (nothing stays elevated)"),
        }
        // Entries an earlier agent wrote for grants nobody knows end now.
        if let Err(e) = self.sync.grants.retain_wanted() {
            tracing::error!(error = %e, "cannot remove stale grant entries");
        }
        self.recheck_grants("policy");
        self.expire_grants();
        self.apply_grants();
    }

    /// One admin request from `by`.
    pub fn admin(&mut self, op: Op, by: Principal) -> Reply {
        match op {
            Op::List => Reply::grants(self.elevation.grants.values().cloned().collect()),
            Op::Revoke { id } => match self.elevation.grants.contains_key(&id) {
                true => {
                    let g = self.end_grant(&id, "revoked", Some(&by));
                    Reply::grant(g.expect("present"))
                }
                false => Reply::error(format!("no grant {id} in force on this node")),
            },
            Op::Grant { request } => self.grant(request, by),
        }
    }

    fn grant(&mut self, req: grant::Request, by: Principal) -> Reply {
        let target = req.target.to_string();
        let to = req.to.clone();
        match self.admit(req, by.clone(), None) {
            Ok(g) => Reply::grant(g),
            Err(e) => {
                tracing::warn!(by = %by.id, %target, %to, error = %e, "grant refused");
                Reply::error(e)
            }
        }
    }

    /// Checks `req` against the policy and the workloads it matches and
    /// takes the grant: recorded, written to the kernel, reported. A grant
    /// from an object ends at the object's end, any other `duration_ms`
    /// from now.
    pub(super) fn admit(
        &mut self,
        req: grant::Request,
        by: Principal,
        object: Option<&ElevationObject>,
    ) -> Result<Grant, String> {
        let workloads = self.state.workloads();
        let matched: Vec<&crate::state::WorkloadInfo> = workloads
            .iter()
            .map(|(_, w)| w.as_ref())
            .filter(|w| req.target.matches(w))
            .collect();
        let policy = self.policy.clone();
        let allowed = |from: &str, to: &str, d: std::time::Duration| {
            let (Some(f), Some(t)) = (policy.tier_index(from), policy.tier_index(to)) else {
                return Err(format!("policy {} has no tier named `{to}`", policy.name));
            };
            policy.elevation_allowed(f, t, d).map(|_| ())
        };
        let (from, d) = grant::check(&req, &matched, allowed)?;
        let now = now_epoch_ms();
        let g = Grant {
            id: random_id(),
            seq: self.elevation.next_seq,
            target: req.target,
            from,
            to: req.to,
            granted_ms: now,
            expires_ms: object.map_or(now + d.as_millis() as u64, ElevationObject::expires_ms),
            ticket: req.ticket,
            reason: req.reason,
            granted_by: by,
            object: object.map(|o| o.object.clone()),
        };
        self.elevation.next_seq += 1;
        self.elevation.grants.insert(g.id.clone(), g.clone());
        if let Err(e) = self.persist() {
            self.elevation.grants.remove(&g.id);
            return Err(format!(
                "cannot record the grant in {}: {e}; nothing was granted",
                self.elevation.file.display()
            ));
        }
        self.apply_grants();
        tracing::info!(id = %g.id, target = %g.target, from = %g.from, to = %g.to,
            expires_ms = g.expires_ms, ticket = %g.ticket, by = %g.granted_by.id, "elevation granted");
        self.grant_record(&g, "grant", None);
        Ok(g)
    }

    fn persist(&self) -> std::io::Result<()> {
        let gs: Vec<Grant> = self.elevation.grants.values().cloned().collect();
        store::save(&self.elevation.file, &gs)
    }

    /// Ends the grants whose time is up.
    pub fn expire_grants(&mut self) {
        let now = now_epoch_ms();
        let due: Vec<String> = self
            .elevation
            .grants
            .values()
            .filter(|g| g.expires_ms <= now)
            .map(|g| g.id.clone())
            .collect();
        for id in due {
            self.end_grant(&id, "expired", None);
        }
    }

    /// Ends the grants the policy in force no longer allows (`end`).
    pub fn recheck_grants(&mut self, end: &str) {
        let policy = self.policy.clone();
        let now = now_epoch_ms();
        let gone: Vec<String> = self
            .elevation
            .grants
            .values()
            // Already over: the expiry reports those.
            .filter(|g| g.expires_ms > now)
            .filter(|g| {
                // What is left must fit the pair's maximum now.
                let rest = std::time::Duration::from_millis(g.expires_ms - now);
                match (policy.tier_index(&g.from), policy.tier_index(&g.to)) {
                    (Some(f), Some(t)) => policy.elevation_allowed(f, t, rest).is_err(),
                    _ => true,
                }
            })
            .map(|g| g.id.clone())
            .collect();
        for id in gone {
            self.end_grant(&id, end, None);
        }
    }

    /// Removes a grant, reports its end and closes what it opened.
    pub(super) fn end_grant(
        &mut self,
        id: &str,
        end: &str,
        by: Option<&Principal>,
    ) -> Option<Grant> {
        let g = self.elevation.grants.remove(id)?;
        if let Err(e) = self.persist() {
            tracing::error!(file = %self.elevation.file.display(), error = %e,
                "cannot record the end of a grant; the kernel entry is removed anyway");
        }
        // Every cgroup the grant covered (also when no agent applied it:
        // an expiry found at start).
        let cgroups: HashSet<u64> = self
            .state
            .workloads()
            .into_iter()
            .filter(|(_, w)| w.tier == g.from && g.target.matches(w))
            .map(|(c, _)| c)
            .chain(
                self.elevation
                    .applied
                    .iter()
                    .filter(|(_, gid)| gid.as_str() == id)
                    .map(|(c, _)| *c),
            )
            .collect();
        // Out of the kernel first: no new socket can appear under it.
        self.apply_grants();
        tracing::info!(id = %g.id, %end, ticket = %g.ticket, "elevation ended");
        self.grant_record(
            &g,
            if end == "expired" { "expire" } else { "revoke" },
            Some((end, by)),
        );
        self.close_opened(&g, &cgroups);
        if let Some(o) = &g.object {
            self.object_ended(o, &g, end);
        }
        Some(g)
    }

    /// Closes the sockets of `cgroups` whose destination their own tier
    /// does not allow (they were opened under `g`, or could only have
    /// been): one sock_diag pass per network namespace.
    fn close_opened(&mut self, g: &Grant, cgroups: &HashSet<u64>) {
        if cgroups.is_empty() {
            return;
        }
        // A process of each cgroup, one per network namespace.
        let by_id: HashMap<u64, &std::path::PathBuf> =
            self.known.iter().map(|(d, id)| (*id, d)).collect();
        let mut netns: BTreeMap<u64, (u32, HashSet<u64>)> = BTreeMap::new();
        for c in cgroups {
            let Some(pid) = by_id.get(c).and_then(|d| first_pid(d)) else {
                continue; // no process left: no socket left
            };
            let Ok(ino) = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            else {
                continue;
            };
            netns
                .entry(ino)
                .or_insert((pid, HashSet::new()))
                .1
                .insert(*c);
        }
        let policy = self.policy.clone();
        let state = self.state.clone();
        let keep = |s: &sockets::WorkloadSocket| {
            let Some(t) = state
                .workload(s.cgroup_id)
                .and_then(|w| policy.tier_index(&w.tier))
            else {
                return false;
            };
            let proto = match s.protocol {
                sockets::Proto::Tcp => Proto::Tcp,
                sockets::Proto::Udp => Proto::Udp,
            };
            policy
                .evaluate(TierRef::Tier(t), s.dst.ip(), s.dst.port(), proto)
                .verdict
                != Verdict::Deny
        };
        for (pid, cgs) in netns.values() {
            match sockets::close_where(*pid, cgs, keep) {
                Ok(closed) if closed.is_empty() => {}
                Ok(closed) => {
                    let list: Vec<String> = closed
                        .iter()
                        .map(|s| format!("{:?} {}", s.protocol, s.dst))
                        .collect();
                    tracing::info!(grant = %g.id, closed = closed.len(), sockets = ?list,
                        "closed connections the grant had opened");
                    self.metrics
                        .elevation_sockets_closed
                        .inc_by(closed.len() as u64);
                }
                Err(e) => tracing::error!(grant = %g.id, pid, error = %e,
                    "cannot close the connections the grant opened"),
            }
        }
    }

    /// After workloads or the policy changed: objects waiting for their
    /// pod or for a policy that allows them are tried, then the kernel
    /// brought to the grants in force.
    pub fn refresh_grants(&mut self) {
        self.admit_objects();
        self.apply_grants();
    }

    /// Brings `TG_GRANTS` and the writer's view to the grants in force.
    pub fn apply_grants(&mut self) {
        if self.elevation.grants.is_empty() && self.elevation.applied.is_empty() {
            return;
        }
        let now = now_epoch_ms();
        let mut want: HashMap<u64, &Grant> = HashMap::new();
        for (id, w) in self.state.workloads() {
            let g = self
                .elevation
                .grants
                .values()
                .filter(|g| g.expires_ms > now && w.tier == g.from && g.target.matches(&w))
                // Several grants: the one that ends last.
                .max_by_key(|g| g.expires_ms);
            if let Some(g) = g {
                want.insert(id, g);
            }
        }
        let policy = self.policy.clone();
        let tier_of = |name: &str| policy.tier_index(name).map(|i| i as u32);
        let mut tags = HashMap::new();
        for (cgroup, g) in &want {
            let e = GrantEntry {
                id: g.seq,
                tier: g.to.clone(),
                expires_ns: boot_ns_at(g.expires_ms),
            };
            if let Err(e) = self.sync.grants.put(*cgroup, e, tier_of) {
                tracing::error!(cgroup_id = cgroup, grant = %g.id, error = %e, "cannot write a grant entry");
                continue;
            }
            tags.insert(*cgroup, Arc::new(g.tag()));
        }
        let stale: Vec<u64> = self
            .elevation
            .applied
            .keys()
            .copied()
            .filter(|c| !want.contains_key(c))
            .collect();
        for c in stale {
            if let Err(e) = self.sync.grants.remove(c) {
                tracing::error!(cgroup_id = c, error = %e, "cannot remove a grant entry");
            }
        }
        self.elevation.applied = want.iter().map(|(c, g)| (*c, g.id.clone())).collect();
        if let Err(e) = self.sync.write_grants_flag() {
            tracing::error!(error = %e, "cannot write the grants flag");
        }
        self.metrics
            .elevations_active
            .set(self.elevation.grants.len() as i64);
        self.state.set_elevations(tags);
    }

    /// A grant, revoke or expiry record (OCSF 3005).
    fn grant_record(&self, g: &Grant, action: &str, end: Option<(&str, Option<&Principal>)>) {
        let _ = self.records.send(AgentRecord {
            message: match action {
                "grant" => format!(
                    "{} elevated from {} to {} until {} (ticket {})",
                    g.target, g.from, g.to, g.expires_ms, g.ticket
                ),
                _ => format!(
                    "elevation {} of {} to {} ended: {}",
                    g.id,
                    g.target,
                    g.to,
                    end.map_or("", |e| e.0)
                ),
            },
            failure: false,
            detail: serde_json::json!({
                "kind": "elevation",
                "action": action,
                "end": end.map(|e| e.0),
                "ended_by": end.and_then(|e| e.1).map(|p| p.id.clone()),
                "grant": g,
            }),
        });
    }
}
