//! The decision on one query: whose it is (the slot it arrived on), whether
//! the workload's tier allows the name, forwarding, learning the answer's
//! addresses into the kernel, and only then releasing the answer.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, ResponseCode};
use tokio::sync::mpsc;

use super::answer;
use super::learn::Learner;
use super::query::{self, Malformed, Question};
use super::record::{AnswerAddr, DnsRecord, QueryVerdict};
use crate::policy::names::TierNames;
use crate::policy::{Mode, Policy};
use crate::state::NodeState;

/// How long one resolver has to answer before the next is asked.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long a query from a cgroup the agent has not seen yet waits for it.
pub const NEW_CGROUP_WAIT: Duration = Duration::from_millis(500);

/// How a query reached the proxy (and how it is forwarded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Forwards a query to one resolver (the caller's namespace and transport).
pub trait Forward {
    /// Sends `query` to `resolver`, returns its answer (same id).
    fn forward(
        &mut self,
        resolver: IpAddr,
        query: &[u8],
    ) -> impl std::future::Future<Output = std::io::Result<Vec<u8>>> + Send;
}

/// The names of each tier of the policy in force, computed once per version.
type NamesCache = Mutex<Option<(Arc<Policy>, Arc<Vec<TierNames>>)>>;

/// Shared by every namespace's servers.
pub struct Engine {
    state: Arc<NodeState>,
    learner: Arc<Learner>,
    events: mpsc::Sender<DnsRecord>,
    /// DNS records dropped because the writer's queue was full (the writer
    /// reports them as a loss record).
    pub lost_records: Arc<AtomicU64>,
    names: NamesCache,
}

/// What the workload gets back, and the record of it.
pub struct Outcome {
    /// Bytes to send to the workload; `None`: send nothing (unreadable
    /// input with no id to answer).
    pub reply: Option<Vec<u8>>,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Engine {
    pub fn new(
        state: Arc<NodeState>,
        learner: Arc<Learner>,
        events: mpsc::Sender<DnsRecord>,
    ) -> Self {
        Self {
            state,
            learner,
            events,
            lost_records: Arc::default(),
            names: Mutex::new(None),
        }
    }

    /// The learned-address writer (for `explain --agent` and events).
    pub fn learner(&self) -> &Arc<Learner> {
        &self.learner
    }

    fn tier_names(&self, policy: &Arc<Policy>) -> Arc<Vec<TierNames>> {
        let mut cache = self.names.lock().expect("names lock");
        if let Some((p, names)) = cache.as_ref()
            && Arc::ptr_eq(p, policy)
        {
            return names.clone();
        }
        let names = Arc::new(policy.tier_names());
        *cache = Some((policy.clone(), names.clone()));
        names
    }

    fn report(&self, rec: DnsRecord) {
        if self.events.try_send(rec).is_err() {
            self.lost_records.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers one query that arrived on `slot`.
    pub async fn answer(
        &self,
        slot: u32,
        bytes: &[u8],
        transport: Transport,
        fwd: &mut impl Forward,
    ) -> Outcome {
        let mut rec = DnsRecord {
            time_ms: epoch_ms(),
            cgroup_id: 0,
            tier: "unknown".into(),
            policy: self.state.active_policy(),
            qname: String::new(),
            qtype: String::new(),
            transport: transport.as_str(),
            verdict: QueryVerdict::Deny,
            reason: "malformed",
            rcode_id: 0,
            rcode: "",
            matched: Vec::new(),
            resolver: None,
            answers: Vec::new(),
            commit_us: None,
            cap: None,
            evicted: 0,
            elevation: None,
            receipt: None,
        };
        let q = match query::parse(bytes) {
            Ok(q) => q,
            Err((why, msg)) => {
                let code = match why {
                    Malformed::NotImp => ResponseCode::NotImp,
                    _ => ResponseCode::FormErr,
                };
                rec.reason = "malformed";
                return self.refuse(rec, msg.as_deref(), code);
            }
        };
        rec.qname = q.name.clone();
        rec.qtype = q.qtype.to_string();

        let Some((cgroup, workload)) = self
            .state
            .workload_by_slot_within(slot, NEW_CGROUP_WAIT)
            .await
        else {
            rec.reason = "unknown-workload";
            return self.refuse(rec, Some(&q.message), ResponseCode::ServFail);
        };
        rec.cgroup_id = cgroup;
        // Under an elevation grant, the granted tier's names (as the kernel
        // judges the connections by the granted tier).
        (rec.tier, rec.elevation) = self.state.judged_tier(cgroup, &workload.tier, rec.time_ms);
        let Some(policy) = rec.policy.clone() else {
            rec.reason = "unknown-workload";
            return self.refuse(rec, Some(&q.message), ResponseCode::ServFail);
        };
        let Some(tier_id) = policy.tier_index(&rec.tier) else {
            rec.reason = "unknown-workload";
            return self.refuse(rec, Some(&q.message), ResponseCode::ServFail);
        };
        let audit = policy.tiers[tier_id].effective_mode(policy.mode) == Mode::Audit;
        let names = self.tier_names(&policy);
        let matched = names[tier_id].matching(&q.name);
        rec.matched = matched.iter().map(|r| r.pattern.to_string()).collect();
        let rules: Vec<(usize, bool)> = matched
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.allow_private))
            .collect();
        let ids: Vec<u64> = matched.iter().map(|r| r.id).collect();
        if matched.is_empty() {
            rec.reason = "name-not-allowed";
            if !audit {
                return self.refuse(rec, Some(&q.message), ResponseCode::NXDomain);
            }
            rec.verdict = QueryVerdict::AuditDeny;
        } else {
            rec.verdict = QueryVerdict::Allow;
            rec.reason = "name-allowed";
        }

        let resolvers = policy
            .dns
            .as_ref()
            .map(|d| d.resolvers.clone())
            .unwrap_or_default();
        let mut answer_bytes = None;
        for r in resolvers {
            match fwd.forward(r, bytes).await {
                Ok(a) => {
                    rec.resolver = Some(r);
                    answer_bytes = Some(a);
                    break;
                }
                Err(e) => tracing::debug!(resolver = %r, error = %e, "resolver failed"),
            }
        }
        let Some(mut answer_bytes) = answer_bytes else {
            rec.reason = "upstream-failed";
            return self.refuse(rec, Some(&q.message), ResponseCode::ServFail);
        };
        let Ok(msg) = Message::from_vec(&answer_bytes) else {
            rec.reason = "upstream-failed";
            return self.refuse(rec, Some(&q.message), ResponseCode::ServFail);
        };
        rec.rcode_id = u16::from(msg.metadata.response_code);
        rec.rcode = query::rcode_caption(msg.metadata.response_code);
        if msg.metadata.response_code == ResponseCode::NoError {
            self.learn(&q, &msg, cgroup, &policy, &rules, &ids, &mut rec);
        }
        // The client's id back on the answer (it went out under a fresh one).
        answer_bytes[..2].copy_from_slice(&q.id.to_be_bytes());
        self.report(rec);
        Outcome {
            reply: Some(answer_bytes),
        }
    }

    /// Commits the answer's learnable addresses; returns when the kernel has
    /// all of them (a failed write leaves that address closed, and is
    /// reported as `commit-failed`).
    #[allow(clippy::too_many_arguments)]
    fn learn(
        &self,
        q: &Question,
        msg: &Message,
        cgroup: u64,
        policy: &Policy,
        rules: &[(usize, bool)],
        ids: &[u64],
        rec: &mut DnsRecord,
    ) {
        let started = Instant::now();
        // Whom the answer opens for (`spec.dns.scope`), the asker first.
        let scope = policy.dns.as_ref().map(|d| d.scope).unwrap_or_default();
        let members = self.state.scope_members(cgroup, scope);
        for o in answer::read(msg, &q.name, rules) {
            let rejected = match &o.outcome {
                Err(why) => Some(why.as_str()),
                Ok(idx) if rec.verdict == QueryVerdict::AuditDeny || idx.is_empty() => {
                    Some("not-allowed")
                }
                Ok(idx) => {
                    let patterns: Vec<u64> = idx.iter().map(|&i| ids[i]).collect();
                    let lifetime = policy
                        .dns
                        .as_ref()
                        .map_or(Duration::from_secs(u64::from(o.ttl)), |d| d.lifetime(o.ttl));
                    let mut failed = None;
                    for &m in &members {
                        match self.learner.learn(m, o.addr, lifetime, &patterns, &q.name) {
                            Ok(l) if m == cgroup => {
                                rec.evicted += l.evicted;
                                rec.cap = rec.cap.or(l.cap.map(|c| c.as_str()));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(addr = %o.addr, cgroup = m, error = %e, "cannot commit a learned address");
                                failed = Some("commit-failed");
                            }
                        }
                    }
                    failed
                }
            };
            rec.answers.push(AnswerAddr {
                addr: o.addr,
                ttl: o.ttl,
                owner: o.owner,
                rejected,
            });
        }
        rec.commit_us = Some(started.elapsed().as_micros() as u64);
    }

    /// Answers with `code` (when the request can be answered) and reports.
    fn refuse(&self, mut rec: DnsRecord, request: Option<&Message>, code: ResponseCode) -> Outcome {
        rec.rcode_id = u16::from(code);
        rec.rcode = query::rcode_caption(code);
        if rec.verdict != QueryVerdict::AuditDeny {
            rec.verdict = QueryVerdict::Deny;
        }
        let reply = request.and_then(|m| query::encode(&query::error_reply(m, code)));
        self.report(rec);
        Outcome { reply }
    }
}
