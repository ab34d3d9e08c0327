//! Frames between `tiergate proxy` and the agent on the socket in
//! `--proxy-dir`: one JSON object per line, at most [`MAX_FRAME`] bytes.
//! The proxy sends its records ([`Up`]); the agent asks it to serve a
//! namespace at once ([`Down`]).

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use crate::dns::record::DnsRecord;
use crate::events::ocsf_access::{ElevationTag, Operator};
use crate::metadata::record::MetadataRecord;
use crate::policy::Policy;
use crate::state::NodeState;

/// Longest frame either side reads (a DNS record with a full answer is a
/// few KiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Proxy → agent. Records and loss counts carry a sequence number (per
/// proxy process, from 1); the proxy keeps each until the agent acknowledges
/// it, and sends what is unacknowledged again on its next connection.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum Up {
    /// First frame of a connection.
    Hello { pid: u32 },
    Dns {
        seq: u64,
        record: DnsRecord,
        policy: Option<PolicyLabel>,
        elevation: Option<GrantWire>,
    },
    Metadata {
        seq: u64,
        record: MetadataRecord,
        policy: Option<PolicyLabel>,
        elevation: Option<GrantWire>,
    },
    /// Records the proxy could not keep since its last `lost` frame (its
    /// queues were full while no agent took them).
    Lost { seq: u64, dns: u64, metadata: u64 },
}

/// Agent → proxy.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum Down {
    /// The hook refused a query of this process: its namespace has no
    /// proxy yet.
    Serve { pid: u32 },
    /// Every frame up to `seq` is written (or reported lost) by the agent.
    Ack { seq: u64 },
}

/// The policy a record was judged by, by name and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLabel {
    pub name: String,
    pub version: String,
}

impl PolicyLabel {
    pub fn of(p: &Policy) -> Self {
        Self {
            name: p.name.clone(),
            version: p.version.clone(),
        }
    }

    /// The agent's own copy of the policy when it has this version (it
    /// published it), else one known by name and version only.
    pub fn resolve(&self, state: &NodeState) -> Arc<Policy> {
        (0..agent_common::GENERATIONS as u32)
            .filter_map(|g| state.policy(g))
            .find(|p| p.version == self.version)
            .unwrap_or_else(|| Arc::new(Policy::label(&self.name, &self.version)))
    }
}

/// An elevation grant as records and the view carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantWire {
    pub id: String,
    pub ticket: String,
    pub reason: String,
    pub granted_by: OperatorWire,
    pub expires: u64,
    pub tier: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OperatorWire {
    Unix { uid: u32, name: Option<String> },
    Kubernetes { username: String },
}

impl From<&ElevationTag> for GrantWire {
    fn from(t: &ElevationTag) -> Self {
        Self {
            id: t.id.clone(),
            ticket: t.ticket.clone(),
            reason: t.reason.clone(),
            granted_by: match &t.granted_by {
                Operator::Unix { uid, name } => OperatorWire::Unix {
                    uid: *uid,
                    name: name.clone(),
                },
                Operator::Kubernetes { username } => OperatorWire::Kubernetes {
                    username: username.clone(),
                },
            },
            expires: t.expires,
            tier: t.tier.clone(),
        }
    }
}

impl From<GrantWire> for ElevationTag {
    fn from(g: GrantWire) -> Self {
        Self {
            id: g.id,
            ticket: g.ticket,
            reason: g.reason,
            granted_by: match g.granted_by {
                OperatorWire::Unix { uid, name } => Operator::Unix { uid, name },
                OperatorWire::Kubernetes { username } => Operator::Kubernetes { username },
            },
            expires: g.expires,
            tier: g.tier,
        }
    }
}

impl Up {
    pub fn dns(seq: u64, r: DnsRecord) -> Self {
        Up::Dns {
            seq,
            policy: r.policy.as_deref().map(PolicyLabel::of),
            elevation: r.elevation.as_deref().map(GrantWire::from),
            record: r,
        }
    }

    pub fn metadata(seq: u64, r: MetadataRecord) -> Self {
        Up::Metadata {
            seq,
            policy: r.policy.as_deref().map(PolicyLabel::of),
            elevation: r.elevation.as_deref().map(GrantWire::from),
            record: r,
        }
    }
}

/// One frame as a line.
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(frame).expect("frames serialize");
    v.push(b'\n');
    v
}

/// Reads one line into `buf` (without its newline): `Ok(false)` at the end
/// of the stream; an error for a line longer than [`MAX_FRAME`] or cut short.
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let n = (&mut *r)
        .take(MAX_FRAME as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(false);
    }
    if buf.pop() != Some(b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            if n > MAX_FRAME {
                format!("a frame longer than {MAX_FRAME} bytes")
            } else {
                "the stream ended inside a frame".to_string()
            },
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::record::{AnswerAddr, QueryVerdict};

    fn dns() -> DnsRecord {
        DnsRecord {
            time_ms: 1,
            cgroup_id: 42,
            tier: "retrieval".into(),
            policy: None,
            qname: "api.example.test".into(),
            qtype: "A".into(),
            transport: "udp",
            verdict: QueryVerdict::Allow,
            reason: "name-allowed",
            rcode_id: 0,
            rcode: "NoError",
            matched: vec!["api.example.test".into()],
            resolver: Some("10.53.0.53".parse().unwrap()),
            answers: vec![AnswerAddr {
                addr: "198.18.0.10".parse().unwrap(),
                ttl: 30,
                owner: "api.example.test".into(),
                rejected: Some("private"),
            }],
            commit_us: Some(3),
            cap: Some("name"),
            evicted: 2,
            elevation: Some(Arc::new(ElevationTag {
                id: "g1".into(),
                ticket: "T-1".into(),
                reason: "incident".into(),
                granted_by: Operator::Kubernetes {
                    username: "alice".into(),
                },
                expires: 99,
                tier: "privileged".into(),
            })),
            receipt: None,
        }
    }

    #[test]
    fn a_dns_record_crosses_the_wire_whole() {
        let line = encode(&Up::dns(5, dns()));
        let back: Up = serde_json::from_slice(&line[..line.len() - 1]).unwrap();
        let Up::Dns {
            seq,
            record,
            elevation,
            ..
        } = back
        else {
            panic!("not a dns frame")
        };
        let want = dns();
        assert_eq!(seq, 5);
        assert_eq!(record.qname, want.qname);
        assert_eq!(record.answers, want.answers);
        assert_eq!(
            (record.transport, record.reason, record.rcode, record.cap),
            ("udp", "name-allowed", "NoError", Some("name"))
        );
        assert_eq!(record.resolver, want.resolver);
        let tag = ElevationTag::from(elevation.unwrap());
        assert_eq!(&tag, want.elevation.as_deref().unwrap());
    }

    #[tokio::test]
    async fn lines_are_bounded_and_whole() {
        let mut ok = tokio::io::BufReader::new(&b"{\"a\":1}\n"[..]);
        let mut buf = Vec::new();
        assert!(read_line(&mut ok, &mut buf).await.unwrap());
        assert_eq!(buf, b"{\"a\":1}");
        assert!(!read_line(&mut ok, &mut buf).await.unwrap());
        let mut cut = tokio::io::BufReader::new(&b"{\"a\":"[..]);
        assert!(read_line(&mut cut, &mut buf).await.is_err());
        let long = vec![b'x'; MAX_FRAME + 10];
        let mut big = tokio::io::BufReader::new(&long[..]);
        let e = read_line(&mut big, &mut buf).await.unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
    }
}
