//! The writer's side of probing detection: every denied or audit-denied
//! connection record feeds the detector (`events/probing.rs`) after it is
//! written, and each finding it raises becomes an OCSF Detection Finding
//! record, numbered, prioritised and delivered like every other record.

use std::sync::Arc;

use agent_common::{CONNECT_F_LEARNED, VERDICT_ALLOW};

use super::{Judged, Writer, WriterConfig, clock_ns, now_epoch_ms};
use crate::events::ocsf::{Envelope, Workload};
use crate::events::ocsf_finding;
use crate::events::probing::{Attempt, Detector, Finding, Pair};
use crate::events::sinks::RecordMeta;
use crate::metrics::FindingLabels;
use crate::policy::Policy;

/// What a finding is written with: the tier, policy and identity of its
/// workload's last denied attempt (kept, so a Close still names a workload
/// whose cgroup is gone).
#[derive(Clone)]
pub(super) struct Tag {
    tier: String,
    policy: Option<Arc<Policy>>,
    workload: Workload,
}

/// The detector and what names its findings.
pub(super) struct Probing {
    detector: Detector<Tag>,
    /// `finding_info.uid` is `<uid_prefix>-<serial>`: the agent id and the
    /// seq this run started from, so no two runs share one.
    uid_prefix: String,
    out: Vec<Finding<Tag>>,
}

impl Probing {
    pub(super) fn new(cfg: &WriterConfig) -> Self {
        Probing {
            detector: Detector::new(cfg.probing),
            uid_prefix: format!("{}-probe-{}", cfg.instance, cfg.start_seq),
            out: Vec::new(),
        }
    }
}

/// Milliseconds of CLOCK_BOOTTIME, the clock of the kernel's stamps.
fn boot_ms(boot_ns: i128) -> u64 {
    (boot_ns / 1_000_000).max(0) as u64
}

impl Writer {
    /// Feeds one written connection record: denies and audit-denies (the
    /// latter from staging tiers, which would have been denied) of enforced
    /// tiers. A UDP connect to an address the workload's own DNS answer
    /// taught it is a resolver's sort probe: written, not counted.
    pub(super) fn probe(&mut self, j: &Judged<'_>, dst: Pair, tier: &str, workload: &Workload) {
        if j.verdict == VERDICT_ALLOW || tier == crate::policy::HOST_TIER_NAME {
            return;
        }
        if !self.probing.detector.config().enabled() {
            return;
        }
        let tag = Tag {
            tier: tier.to_owned(),
            policy: self.io.state.policy(j.generation),
            workload: workload.clone(),
        };
        let attempt = Attempt {
            dst,
            udp_connect: j.protocol == libc::IPPROTO_UDP as u8
                && matches!(j.hook, "connect4" | "connect6"),
            learned: j.flags & CONNECT_F_LEARNED != 0,
        };
        if attempt.is_sort_probe() {
            self.io.metrics.probing_sort_probes.inc();
        }
        let now = boot_ms(j.header.boot_ns as i128);
        let mut out = std::mem::take(&mut self.probing.out);
        (self.probing.detector).observe(now, j.header.cgroup_id, attempt, tag, &mut out);
        self.findings(&mut out);
    }

    /// Closes quiet findings and updates grown ones (the writer's tick).
    pub(super) fn probe_tick(&mut self) {
        let mut out = std::mem::take(&mut self.probing.out);
        let now = boot_ms(clock_ns(libc::CLOCK_BOOTTIME));
        self.probing.detector.tick(now, &mut out);
        self.findings(&mut out);
    }

    /// Closes every open finding (the agent stops).
    pub(super) fn probe_stop(&mut self) {
        let mut out = std::mem::take(&mut self.probing.out);
        self.probing.detector.close_all(&mut out);
        self.findings(&mut out);
    }

    fn findings(&mut self, out: &mut Vec<Finding<Tag>>) {
        for f in out.drain(..) {
            self.finding_record(&f);
        }
        self.probing.out = std::mem::take(out);
    }

    fn finding_record(&mut self, f: &Finding<Tag>) {
        self.io
            .metrics
            .findings
            .get_or_create(&FindingLabels {
                kind: f.key.kind().into(),
                activity: f.activity.name().into(),
            })
            .inc();
        let seq = self.next_seq();
        let uid = format!("{}-{seq}", self.cfg.instance);
        let finding_uid = format!("{}-{}", self.probing.uid_prefix, f.serial);
        let policy = f.ctx.policy.as_deref();
        let env = Envelope {
            time: now_epoch_ms(),
            seq,
            uid: &uid,
            hostname: &self.cfg.hostname,
            policy_name: policy.map(|p| p.name.as_str()),
            policy_version: policy.map(|p| p.version.as_str()),
        };
        let seen = (
            self.epoch_ms(f.first_seen_ms * 1_000_000),
            self.epoch_ms(f.last_seen_ms * 1_000_000),
        );
        self.buf.clear();
        ocsf_finding::detection_finding(
            &env,
            &finding_uid,
            f,
            &f.ctx.tier,
            &f.ctx.workload,
            seen,
            &mut self.buf,
        );
        let meta = RecordMeta {
            seq,
            uid: &uid,
            kind: "finding",
            priority: true,
            time_ms: env.time,
        };
        Self::emit(&mut self.io.sinks, &meta, &self.buf);
    }
}
