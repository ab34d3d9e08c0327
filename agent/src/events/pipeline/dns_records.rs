//! The writer's side of the DNS proxy: one OCSF DNS Activity record per
//! query, numbered and delivered like every other record.

use super::Writer;
use crate::dns::record::DnsRecord;
use crate::events::ocsf::Envelope;
use crate::events::ocsf_dns;
use crate::events::sinks::RecordMeta;
use crate::metrics::EventLabels;

impl Writer {
    pub(super) fn dns_record(&mut self, r: &DnsRecord) {
        // 0: the query's slot named no workload.
        let workload = if r.cgroup_id == 0 {
            Default::default()
        } else {
            self.workload(r.cgroup_id, 0)
        };
        self.io
            .metrics
            .events
            .get_or_create(&EventLabels {
                kind: "dns".into(),
                verdict: r.verdict.as_str().into(),
                reason: r.reason.into(),
                tier: r.tier.clone(),
            })
            .inc();
        let seq = self.next_seq();
        let uid = format!("{}-{seq}", self.cfg.instance);
        let policy = r.policy.as_deref();
        let env = Envelope {
            time: r.time_ms,
            seq,
            uid: &uid,
            hostname: &self.cfg.hostname,
            policy_name: policy.map(|p| p.name.as_str()),
            policy_version: policy.map(|p| p.version.as_str()),
        };
        self.buf.clear();
        ocsf_dns::dns_activity(&env, r, &workload, &mut self.buf);
        let meta = RecordMeta {
            seq,
            uid: &uid,
            kind: "dns",
            // Refusals are what an investigation looks for first.
            priority: r.verdict.as_str() != "allow",
            time_ms: env.time,
        };
        Self::emit(&mut self.io.sinks, &meta, &self.buf);
    }
}
