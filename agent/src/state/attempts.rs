//! Each workload's reported connection attempts, for the inventory: counts
//! by verdict and the time of the last one. The event writer counts every
//! judged connection and refused socket it writes (one lookup and a few
//! relaxed atomic adds per record, no allocation); what the kernel or the
//! queues lost never reaches it, so the counts can be below the truth.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use agent_common::{VERDICT_ALLOW, VERDICT_AUDIT_DENY};
use serde::{Deserialize, Serialize};

/// The live counters of one workload (0 in a time: none yet).
#[derive(Default)]
pub(super) struct Counters {
    allowed: AtomicU64,
    denied: AtomicU64,
    audit_denied: AtomicU64,
    last_ms: AtomicU64,
    last_allowed_ms: AtomicU64,
    last_denied_ms: AtomicU64,
}

impl Counters {
    /// Counts one attempt judged `verdict` (`VERDICT_*`) at `time_ms`.
    /// Records may arrive out of order (denies are written first), so the
    /// times only move forward.
    pub(super) fn record(&self, verdict: u8, time_ms: u64, n: u64) {
        let (count, last) = match verdict {
            VERDICT_ALLOW => (&self.allowed, &self.last_allowed_ms),
            VERDICT_AUDIT_DENY => (&self.audit_denied, &self.last_denied_ms),
            _ => (&self.denied, &self.last_denied_ms),
        };
        count.fetch_add(n, Relaxed);
        last.fetch_max(time_ms, Relaxed);
        self.last_ms.fetch_max(time_ms, Relaxed);
    }

    /// What the counters say now (each field read on its own: a record
    /// being counted may show in one and not yet in another).
    pub(super) fn usage(&self) -> Usage {
        let time = |a: &AtomicU64| Some(a.load(Relaxed)).filter(|t| *t != 0);
        Usage {
            attempts: Attempts {
                allowed: self.allowed.load(Relaxed),
                denied: self.denied.load(Relaxed),
                audit_denied: self.audit_denied.load(Relaxed),
            },
            last_attempt_ms: time(&self.last_ms),
            last_allowed_ms: time(&self.last_allowed_ms),
            last_denied_ms: time(&self.last_denied_ms),
        }
    }
}

/// Reported connection attempts by verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    pub allowed: u64,
    pub denied: u64,
    pub audit_denied: u64,
}

/// A workload's use of the network as the agent saw it reported: the
/// inventory's `attempts` and last-attempt times (epoch ms; the records'
/// `time`). Absent fields (an older agent) read as none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub attempts: Attempts,
    /// The last attempt of any verdict.
    #[serde(default)]
    pub last_attempt_ms: Option<u64>,
    #[serde(default)]
    pub last_allowed_ms: Option<u64>,
    /// The last deny or audit-deny.
    #[serde(default)]
    pub last_denied_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use agent_common::VERDICT_DENY;

    use super::*;

    #[test]
    fn nothing_counted_reads_as_none() {
        let u = Counters::default().usage();
        assert_eq!(u, Usage::default());
        assert_eq!(
            serde_json::to_value(u).unwrap(),
            serde_json::json!({
                "attempts": {"allowed": 0, "denied": 0, "audit_denied": 0},
                "last_attempt_ms": null, "last_allowed_ms": null, "last_denied_ms": null
            })
        );
    }

    #[test]
    fn counts_by_verdict_and_keeps_the_latest_times() {
        let c = Counters::default();
        c.record(VERDICT_ALLOW, 1_000, 1);
        c.record(VERDICT_ALLOW, 3_000, 1);
        // A deny written before an older allow (priority queue first).
        c.record(VERDICT_DENY, 2_500, 1);
        c.record(VERDICT_ALLOW, 2_000, 1);
        c.record(VERDICT_AUDIT_DENY, 1_500, 1);
        assert_eq!(
            c.usage(),
            Usage {
                attempts: Attempts {
                    allowed: 3,
                    denied: 1,
                    audit_denied: 1
                },
                last_attempt_ms: Some(3_000),
                last_allowed_ms: Some(3_000),
                last_denied_ms: Some(2_500),
            }
        );
        c.record(VERDICT_AUDIT_DENY, 4_000, 1);
        let u = c.usage();
        assert_eq!(
            u.last_denied_ms,
            Some(4_000),
            "audit-denies are denies here"
        );
        assert_eq!(u.last_attempt_ms, Some(4_000));
        assert_eq!(u.last_allowed_ms, Some(3_000));
    }

    #[test]
    fn an_older_agents_document_reads_as_no_attempts() {
        let u: Usage = serde_json::from_str("{}").unwrap();
        assert_eq!(u, Usage::default());
    }
}
