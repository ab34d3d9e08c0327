//! The writer's side of elevation grants: the control task reports a grant
//! made or ended as an agent record (`kind: elevation`, the grant as JSON);
//! here it becomes an OCSF 3005 User Access Management record, numbered and
//! delivered like every other record.

use super::{AgentRecord, Writer};
use crate::elevation::grant::{Grant, Principal, Target};
use crate::events::ocsf::Workload;
use crate::events::ocsf_access::{ElevationEnd, ElevationRecord, user_access};

/// The workload a grant names, as records name workloads.
fn target_workload(t: &Target) -> Workload {
    let mut w = Workload::default();
    match t {
        Target::Cgroup(p) => w.cgroup_path = Some(p.clone()),
        Target::Pod {
            namespace,
            name,
            container,
        } => {
            w.pod.namespace = Some(namespace.clone());
            w.pod.pod = Some(name.clone());
            w.pod.container = container.clone();
        }
        Target::SpiffeId(id) => w.spiffe_id = Some(id.clone()),
    }
    w
}

impl Writer {
    /// Writes a grant or the end of one; returns its seq.
    pub(super) fn elevation_record(&mut self, rec: &AgentRecord) -> u64 {
        let d = &rec.detail;
        let Some(g) = d
            .get("grant")
            .and_then(|g| serde_json::from_value::<Grant>(g.clone()).ok())
        else {
            // Written by this binary; cannot happen. Say so rather than drop.
            tracing::error!(detail = %d, "elevation record without a grant");
            return self.seq;
        };
        let end = match d.get("end").and_then(|e| e.as_str()) {
            None => None,
            Some("expired") => Some(ElevationEnd::Expired),
            Some("policy") => Some(ElevationEnd::Policy),
            Some("deleted") => Some(ElevationEnd::Deleted {
                object: g
                    .object
                    .as_ref()
                    .map_or_else(|| "its object".to_string(), |o| o.to_string()),
            }),
            Some(_) => Some(ElevationEnd::Revoked {
                by: d.get("ended_by").and_then(|b| b.as_str()).map_or_else(
                    || g.granted_by.operator(),
                    |id| {
                        Principal {
                            id: id.to_string(),
                            name: None,
                        }
                        .operator()
                    },
                ),
            }),
        };
        let tag = g.tag();
        let r = ElevationRecord {
            grant: &tag,
            from_tier: &g.from,
            to_tier: &g.to,
            end,
        };
        let workload = target_workload(&g.target);
        self.write_agent_line("elevation", |env, out| user_access(env, &r, &workload, out))
    }
}
