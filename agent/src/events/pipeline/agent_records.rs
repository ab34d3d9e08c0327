//! Records about the agent itself (policy applied or rejected, losses,
//! elevation grants): numbered, rendered under the policy in force now and
//! written as priority records.

use super::{AgentRecord, Writer, now_epoch_ms};
use crate::events::ocsf::{self, Envelope};
use crate::events::sinks::RecordMeta;

impl Writer {
    /// Writes an agent-level record (policy loaded or rejected, loss);
    /// returns its seq.
    pub fn agent_record(&mut self, rec: AgentRecord) -> u64 {
        let kind = rec
            .detail
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("agent")
            .to_string();
        if kind == "elevation" {
            return self.elevation_record(&rec);
        }
        self.write_agent_line(&kind, |env, out| {
            ocsf::base_event(env, &rec.message, rec.failure, rec.detail, out)
        })
    }

    /// Numbers, renders (`render`, under the policy in force now) and
    /// writes one record about the agent itself (a priority record);
    /// returns its seq.
    pub(super) fn write_agent_line(
        &mut self,
        kind: &str,
        render: impl FnOnce(&Envelope<'_>, &mut Vec<u8>),
    ) -> u64 {
        let seq = self.next_seq();
        let uid = format!("{}-{seq}", self.cfg.instance);
        let policy = self.io.state.active_policy();
        let env = Envelope {
            time: now_epoch_ms(),
            seq,
            uid: &uid,
            hostname: &self.cfg.hostname,
            policy_name: policy.as_deref().map(|p| p.name.as_str()),
            policy_version: policy.as_deref().map(|p| p.version.as_str()),
        };
        self.buf.clear();
        render(&env, &mut self.buf);
        let meta = RecordMeta {
            seq,
            uid: &uid,
            kind,
            priority: true,
            time_ms: env.time,
        };
        Self::emit(&mut self.io.sinks, &meta, &self.buf);
        seq
    }
}
