//! Windows of aggregated allowed attempts (`events/aggregate/`): one
//! connection record per key with `count`, `start_time` and `end_time`,
//! rendered like any other (identity, rule, policy of its generation), then
//! flushed before the window counts as written in the pinned ledger, so
//! the drainer clears the kernel map only after the sinks have its records.

use agent_common::{EVENT_CONNECT, EventHeader, VERDICT_ALLOW, agg_ledger};

use super::{Judged, Writer};
use crate::events::aggregate::Window;
use crate::events::decode;
use crate::events::names::hook_str;
use crate::events::ocsf::Span;

impl Writer {
    pub(super) fn window(&mut self, w: Window) {
        for e in &w.entries {
            let header = EventHeader {
                kind: EVENT_CONNECT,
                cpu: 0,
                boot_ns: e.first_ns,
                cgroup_id: e.key.cgroup_id,
                pid_tgid: e.pid_tgid,
                uid_gid: e.uid_gid,
                comm: e.comm,
            };
            let judged = Judged {
                header: &header,
                generation: e.key.generation,
                tier: e.key.tier,
                verdict: VERDICT_ALLOW,
                reason: e.key.reason,
                hook: hook_str(e.key.hook),
                flags: e.key.flags,
                protocol: e.key.protocol,
            };
            let span = Span {
                count: e.count,
                start_ms: self.epoch_ms(e.first_ns),
                end_ms: self.epoch_ms(e.last_ns),
            };
            let dst = decode::destination(e.key.addr);
            self.network_record(&judged, Some((dst, e.key.port)), None, None, Some(span));
        }
        w.ledger.set(agg_ledger::PENDING, w.epoch);
        w.ledger.set(agg_ledger::PENDING_SEQ, self.seq);
        self.flush();
        w.ledger.set(agg_ledger::WRITTEN, w.epoch);
        let _ = w.written.send(());
    }
}
