//! Policy reloads: writing a compiled policy with every known cgroup's tier
//! under it, re-reading the policy file (a bad file changes nothing in the
//! kernel), and handing the memory a reload freed back to the kernel.

use std::sync::Arc;
use std::time::Instant;

use super::{Control, describe};
use crate::enforcement::sync::{CgroupVerdicts, SyncError};
use crate::events::pipeline::AgentRecord;
use crate::metrics::PolicyLabels;
use crate::policy::{self, Policy};
use crate::state::WorkloadInfo;

/// Hands the heap pages freed after a reload (the YAML tree and the
/// previous policy: megabytes for a large file) back to the kernel; glibc
/// would keep them, and they would count as the agent's RSS from then on.
/// Called once reloads have been quiet for a while ([`TRIM_AFTER`]): the
/// next reload pays ~6 ms (10,000 rules) to fault the pages in again, which
/// a burst of edits should not pay each time.
pub fn release_freed_memory() {
    tracing::debug!("returning freed heap pages to the kernel");
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Most rules a policy record lists (`unmapped.tiergate.rules`); a larger
/// policy's records list none and say how many there are
/// (`rules_omitted`): one record stays well under every sink's line limit.
pub const MAX_LISTED_RULES: usize = 2_000;

/// `[{tier, index, uid}]` of every rule of `policy` and how many were left
/// out (all of them past [`MAX_LISTED_RULES`], else none).
fn rules_in_force(policy: &Policy) -> (serde_json::Value, usize) {
    let refs = policy.rule_refs();
    if refs.len() > MAX_LISTED_RULES {
        return (serde_json::json!([]), refs.len());
    }
    (serde_json::to_value(refs).expect("rule refs serialize"), 0)
}

/// Quiet time after a reload before freed memory goes back to the kernel.
pub const TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl Control {
    /// Writes a compiled policy and every known cgroup's tier under it.
    /// `prepared` is how long reading, parsing and compiling took (logged).
    pub fn install(
        &mut self,
        policy: Arc<Policy>,
        compiled: &policy::Compiled,
        prepared: std::time::Duration,
    ) -> Result<(), SyncError> {
        let describing = Instant::now();
        let described = self.describe_known(&policy);
        let entries: Vec<(u64, CgroupVerdicts)> =
            described.iter().map(|(id, _, v)| (*id, *v)).collect();
        let describe_us = describing.elapsed().as_micros() as u64;
        let started = Instant::now();
        let stats = self.sync.swap(compiled, &entries, |name| {
            policy.tier_index(name).map(|i| i as u32)
        })?;
        let swap_us = started.elapsed().as_micros() as u64;
        let old = std::mem::replace(&mut self.policy, policy.clone());
        self.state.activate(stats.generation, policy.clone());
        for (id, info, _) in described {
            self.state.set_workload(id, info);
        }
        // Grants the new policy no longer allows end; the rest follow the
        // workloads' new tiers.
        self.recheck_grants("policy");
        self.refresh_grants();
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
            prepare_us = prepared.as_micros() as u64,
            describe_us,
            swap_us,
            rules_written = stats.rules_written,
            "policy in force"
        );
        let rules = rules_in_force(&policy);
        let _ = self.records.send(AgentRecord {
            message: format!("policy {} {} in force", policy.name, policy.version),
            failure: false,
            detail: serde_json::json!({
                "kind": "policy",
                "action": "applied",
                "file": self.policy_path.display().to_string(),
                "previous_version": old.version,
                "rules": rules.0,
                "rules_omitted": rules.1,
            }),
        });
        Ok(())
    }

    /// Every known cgroup's identity and kernel entry under `policy`.
    fn describe_known(&self, policy: &Policy) -> Vec<(u64, WorkloadInfo, CgroupVerdicts)> {
        let exempt = self.exempt.ids();
        self.known
            .iter()
            .filter_map(|(dir, id)| {
                let path = self.cgfs.path_of(dir).ok()?;
                let (info, v, _) = describe(policy, &self.pods, &path, exempt.contains(id));
                Some((*id, info, v))
            })
            .collect()
    }

    /// Re-reads the policy file; a bad file changes nothing in the kernel.
    pub fn reload(&mut self) {
        let started = Instant::now();
        let file = self.policy_path.display().to_string();
        let src = policy::parse::read(&self.policy_path);
        // The YAML tree is freed when this function returns, after the swap.
        let (parsed, _tree) = match &src {
            Ok(src) => policy::parse::parse_keeping_tree(src, &file),
            Err(e) => (Err(e.clone()), Vec::new()),
        };
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
                if let Err(e) = self.install(Arc::new(p), &compiled, started.elapsed()) {
                    tracing::error!(error = %e, "cannot write the new policy; the previous one stays in force");
                    self.metrics.reload("failed");
                }
            }
            Err(errors) => self.reject(errors),
        }
    }

    /// Reports a rejected file once per distinct error text; the policy in
    /// force stays.
    fn reject(&mut self, errors: String) {
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
