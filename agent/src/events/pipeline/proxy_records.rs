//! The writer's side of the agent's proxies: one OCSF record per DNS query
//! (DNS Activity) and per metadata request (HTTP Activity), numbered and
//! delivered like every other record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Writer;
use crate::dns::record::DnsRecord;
use crate::events::ocsf::{Envelope, Workload};
use crate::events::sinks::RecordMeta;
use crate::events::{ocsf_dns, ocsf_http};
use crate::metadata::record::MetadataRecord;
use crate::metrics::EventLabels;
use crate::policy::Policy;

/// Tells whoever handed a record in that the writer has written it (a
/// `tiergate proxy` keeps each record until the agent has: `proxies::link`).
#[derive(Clone, Debug)]
pub struct Receipt {
    /// The highest sequence number written.
    pub written: Arc<AtomicU64>,
    pub seq: u64,
}

impl Receipt {
    pub fn done(&self) {
        self.written.fetch_max(self.seq, Ordering::Release);
    }
}

/// What every proxy record has, apart from its body.
struct ProxyRecord<'a> {
    /// 0: the proxy address named no workload.
    cgroup_id: u64,
    time_ms: u64,
    policy: Option<&'a Policy>,
    kind: &'static str,
    verdict: &'static str,
    reason: &'static str,
    tier: &'a str,
    /// Written ahead of allowed records when the sinks are behind.
    priority: bool,
}

impl Writer {
    pub(super) fn dns_record(&mut self, r: &DnsRecord) {
        let head = ProxyRecord {
            cgroup_id: r.cgroup_id,
            time_ms: r.time_ms,
            policy: r.policy.as_deref(),
            kind: "dns",
            verdict: r.verdict.as_str(),
            reason: r.reason,
            tier: &r.tier,
            // Refusals are what an investigation looks for first.
            priority: r.verdict.as_str() != "allow",
        };
        self.proxy_record(head, |env, w, out| ocsf_dns::dns_activity(env, r, w, out));
        if let Some(rc) = &r.receipt {
            rc.done();
        }
    }

    pub(super) fn metadata_record(&mut self, r: &MetadataRecord) {
        let head = ProxyRecord {
            cgroup_id: r.cgroup_id,
            time_ms: r.time_ms,
            policy: r.policy.as_deref(),
            kind: "metadata",
            verdict: r.verdict.as_str(),
            reason: r.reason,
            tier: &r.tier,
            // Every metadata access is reported first, allowed or not.
            priority: true,
        };
        self.proxy_record(head, |env, w, out| ocsf_http::http_activity(env, r, w, out));
        if let Some(rc) = &r.receipt {
            rc.done();
        }
    }

    fn proxy_record(
        &mut self,
        h: ProxyRecord<'_>,
        render: impl FnOnce(&Envelope<'_>, &Workload, &mut Vec<u8>),
    ) {
        let workload = if h.cgroup_id == 0 {
            Default::default()
        } else {
            self.workload(h.cgroup_id, 0)
        };
        self.io
            .metrics
            .events
            .get_or_create(&EventLabels {
                kind: h.kind.into(),
                verdict: h.verdict.into(),
                reason: h.reason.into(),
                tier: h.tier.to_owned(),
            })
            .inc();
        let seq = self.next_seq();
        let uid = format!("{}-{seq}", self.cfg.instance);
        let env = Envelope {
            time: h.time_ms,
            seq,
            uid: &uid,
            hostname: &self.cfg.hostname,
            policy_name: h.policy.map(|p| p.name.as_str()),
            policy_version: h.policy.map(|p| p.version.as_str()),
        };
        self.buf.clear();
        render(&env, &workload, &mut self.buf);
        let meta = RecordMeta {
            seq,
            uid: &uid,
            kind: h.kind,
            priority: h.priority,
            time_ms: env.time,
        };
        Self::emit(&mut self.io.sinks, &meta, &self.buf);
    }
}
