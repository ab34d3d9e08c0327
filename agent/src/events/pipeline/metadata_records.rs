//! The writer's side of the metadata proxy: one OCSF HTTP Activity record
//! per request, numbered and delivered like every other record.

use super::Writer;
use crate::events::ocsf::Envelope;
use crate::events::ocsf_http;
use crate::events::sinks::RecordMeta;
use crate::metadata::record::MetadataRecord;
use crate::metrics::EventLabels;

impl Writer {
    pub(super) fn metadata_record(&mut self, r: &MetadataRecord) {
        // 0: the request's slot named no workload.
        let workload = if r.cgroup_id == 0 {
            Default::default()
        } else {
            self.workload(r.cgroup_id, 0)
        };
        self.io
            .metrics
            .events
            .get_or_create(&EventLabels {
                kind: "metadata".into(),
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
        ocsf_http::http_activity(&env, r, &workload, &mut self.buf);
        let meta = RecordMeta {
            seq,
            uid: &uid,
            kind: "metadata",
            // Every metadata access is what an investigation looks for.
            priority: true,
            time_ms: env.time,
        };
        Self::emit(&mut self.io.sinks, &meta, &self.buf);
    }
}
