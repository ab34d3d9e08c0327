//! `/dns/learned?cgroup=PATH&ip=ADDR`: which DNS answer opened an address
//! for a workload (for `policy explain --agent`): the name, when it was
//! committed and until when it opens; 404 when none did.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

use axum::http::StatusCode;
use serde::Deserialize;

use crate::dns::learn::Opened;
use crate::dns::origins::Origins;
use crate::state::NodeState;

/// Query parameters.
#[derive(Debug, Deserialize)]
pub struct Query {
    pub cgroup: String,
    pub ip: IpAddr,
}

/// Who knows the origins (the learner, or the mirror of a separate
/// proxy's), once the proxies are set up (the admin endpoint starts before
/// the programs are loaded).
pub type LearnerSlot = Arc<OnceLock<Arc<dyn Origins>>>;

fn ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Looks the address up.
pub fn lookup(state: &NodeState, learner: &LearnerSlot, q: &Query) -> (StatusCode, String) {
    let Some(learner) = learner.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the DNS proxy is not running\n".into(),
        );
    };
    let Some((id, _)) = state
        .workloads()
        .into_iter()
        .find(|(_, w)| *w.path == *q.cgroup)
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("no workload with cgroup {}\n", q.cgroup),
        );
    };
    let ip = crate::policy::normalize_addr(q.ip);
    match learner.origin(id, ip) {
        Some(o) => (
            StatusCode::OK,
            serde_json::to_string(&Opened {
                name: o.name,
                learned_at: ms(o.at),
                expires: ms(o.until),
            })
            .expect("serializing cannot fail"),
        ),
        None => (
            StatusCode::NOT_FOUND,
            format!("no DNS answer opened {ip} for {}\n", q.cgroup),
        ),
    }
}
