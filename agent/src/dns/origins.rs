//! Which DNS answer opened an address for a workload: asked by the event
//! writer (connection records carry the name) and by `/dns/learned`.
//!
//! When the agent serves the proxies, the learner knows (it wrote the
//! address). When `tiergate proxy` serves them, the agent keeps a [`Mirror`]
//! of the same book, fed by the proxy's DNS records: every address a record
//! says was learned, with the lifetime the policy gives its TTL.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use super::learn::{Book, Learner, Limits, Origin};
use super::record::DnsRecord;

/// Answers "which name opened `addr` for `cgroup`?".
pub trait Origins: Send + Sync {
    fn origin(&self, cgroup: u64, addr: IpAddr) -> Option<Origin>;
}

impl Origins for Learner {
    fn origin(&self, cgroup: u64, addr: IpAddr) -> Option<Origin> {
        Learner::origin(self, cgroup, addr)
    }
}

/// The agent's copy of a separate proxy's book.
pub struct Mirror {
    book: Mutex<Book>,
}

impl Mirror {
    pub fn new(limits: Limits) -> Self {
        Self {
            book: Mutex::new(Book::new(limits)),
        }
    }

    /// Notes the addresses `rec` says were learned.
    pub fn note(&self, rec: &DnsRecord) {
        let at = UNIX_EPOCH + Duration::from_millis(rec.time_ms);
        let mut book = self.book.lock().expect("mirror lock");
        for a in rec.answers.iter().filter(|a| a.rejected.is_none()) {
            let lifetime = rec
                .policy
                .as_ref()
                .and_then(|p| p.dns.as_ref())
                .map_or(Duration::from_secs(u64::from(a.ttl)), |d| d.lifetime(a.ttl));
            book.record(
                rec.cgroup_id,
                crate::policy::normalize_addr(a.addr),
                Origin {
                    name: rec.qname.clone(),
                    at,
                    until: at + lifetime,
                },
            );
        }
    }

    /// Forgets the workloads `live` rejects.
    pub fn retain(&self, live: impl Fn(u64) -> bool) {
        self.book.lock().expect("mirror lock").retain(live);
    }
}

impl Origins for Mirror {
    fn origin(&self, cgroup: u64, addr: IpAddr) -> Option<Origin> {
        let book = self.book.lock().expect("mirror lock");
        book.origin(cgroup, addr)
            .filter(|o| o.until > std::time::SystemTime::now())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::record::{AnswerAddr, QueryVerdict};

    fn record(addrs: &[(&str, Option<&'static str>)]) -> DnsRecord {
        DnsRecord {
            time_ms: std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            cgroup_id: 7,
            tier: "t".into(),
            policy: None,
            qname: "api.example.test".into(),
            qtype: "A".into(),
            transport: "udp",
            verdict: QueryVerdict::Allow,
            reason: "name-allowed",
            rcode_id: 0,
            rcode: "NoError",
            matched: vec![],
            resolver: None,
            answers: addrs
                .iter()
                .map(|(a, r)| AnswerAddr {
                    addr: a.parse().unwrap(),
                    ttl: 30,
                    owner: "api.example.test".into(),
                    rejected: *r,
                })
                .collect(),
            commit_us: None,
            cap: None,
            evicted: 0,
            elevation: None,
            receipt: None,
        }
    }

    #[test]
    fn the_mirror_names_learned_addresses_only_for_their_workload() {
        let m = Mirror::new(Limits {
            per_workload: 16,
            per_name: 16,
        });
        m.note(&record(&[
            ("198.18.0.10", None),
            ("169.254.169.254", Some("metadata")),
        ]));
        let o = m
            .origin(7, "198.18.0.10".parse().unwrap())
            .expect("learned");
        assert_eq!(o.name, "api.example.test");
        assert!(o.until > o.at);
        assert!(m.origin(8, "198.18.0.10".parse().unwrap()).is_none());
        assert!(m.origin(7, "169.254.169.254".parse().unwrap()).is_none());
        m.retain(|c| c != 7);
        assert!(m.origin(7, "198.18.0.10".parse().unwrap()).is_none());
    }
}
