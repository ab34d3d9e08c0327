//! What an upstream answer may teach: the addresses on the CNAME chain from
//! the question, each with its TTL and the rules that may learn it, and every
//! address that may not, with the reason.
//!
//! Only the answer section counts, and in it only records whose owner is a
//! name of the chain that starts at the question (Cilium's discipline; the
//! Calico inline parser and Antrea learn from any A record, which lets an
//! upstream or a forger attach addresses to an allowed name). Authority and
//! additional sections never teach. The TTL of an address is the lowest TTL
//! on its way along the chain.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData};

use super::addr_class::{AddrClass, classify};

/// Longest CNAME chain followed; a longer (or looping) one teaches nothing past it.
pub const MAX_CHAIN: usize = 16;

/// Why an address in an answer was not learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Its owner is not on the chain from the question.
    OutOfChain,
    /// In the authority or additional section.
    NotAnswer,
    /// A cloud metadata endpoint: only `metadata:` decides those.
    Metadata,
    /// Loopback, link-local, unspecified, multicast or broadcast.
    Rebind(AddrClass),
    /// RFC 1918, ULA or CGNAT, and no matching rule has `allowPrivate`.
    Private(AddrClass),
    /// The chain was longer than [`MAX_CHAIN`] or looped.
    ChainTooLong,
}

impl Rejection {
    /// The event spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::OutOfChain => "out-of-chain",
            Rejection::NotAnswer => "not-in-answer-section",
            Rejection::Metadata => "metadata-service",
            Rejection::Rebind(_) => "rebind",
            Rejection::Private(_) => "private-address",
            Rejection::ChainTooLong => "chain-too-long",
        }
    }
}

/// An address the answer offers, and what becomes of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offered {
    /// The address (IPv4-mapped AAAA records unmapped).
    pub addr: IpAddr,
    /// Owner name of the record (normalised).
    pub owner: String,
    /// Seconds: the lowest TTL along the chain to this record.
    pub ttl: u32,
    /// `Ok(rules)`: learned for these rules (indices the caller gave);
    /// `Err(why)`: not learned.
    pub outcome: Result<Vec<usize>, Rejection>,
}

/// A name in the comparison form of [`crate::policy::fqdn::normalize`]:
/// lowercase, no trailing dot.
pub fn name_key(name: &Name) -> String {
    let mut s = name.to_ascii();
    if s.ends_with('.') {
        s.pop();
    }
    s.make_ascii_lowercase();
    s
}

/// Reads `answer` for the question `qname` (normalised). `rules` are the
/// rules the question matched, each with its `allowPrivate`; an address is
/// learned for every rule that admits its class.
pub fn read(answer: &Message, qname: &str, rules: &[(usize, bool)]) -> Vec<Offered> {
    // Each chain name with the lowest TTL on the way to it.
    let mut chain: HashMap<String, u32> = HashMap::from([(qname.to_owned(), u32::MAX)]);
    let mut current = qname.to_owned();
    let mut too_long = false;
    for hop in 0.. {
        let next = answer.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if name_key(&r.name) == current => {
                Some((name_key(&target.0), r.ttl))
            }
            _ => None,
        });
        let Some((target, ttl)) = next else { break };
        if hop >= MAX_CHAIN || chain.contains_key(&target) {
            too_long = true;
            break;
        }
        let ttl = chain[&current].min(ttl);
        chain.insert(target.clone(), ttl);
        current = target;
    }

    let mut out = Vec::new();
    for r in &answer.answers {
        let Some(addr) = address_of(&r.data) else {
            continue;
        };
        let owner = name_key(&r.name);
        let (ttl, outcome) = match chain.get(&owner) {
            // A chain cut short: its last name is not where the chain ends.
            Some(_) if too_long && owner == current => (r.ttl, Err(Rejection::ChainTooLong)),
            Some(&via) => (via.min(r.ttl), admit(addr, rules)),
            None => (r.ttl, Err(Rejection::OutOfChain)),
        };
        out.push(Offered {
            addr,
            owner,
            ttl,
            outcome,
        });
    }
    for r in answer.authorities.iter().chain(&answer.additionals) {
        if let Some(addr) = address_of(&r.data) {
            out.push(Offered {
                addr,
                owner: name_key(&r.name),
                ttl: r.ttl,
                outcome: Err(Rejection::NotAnswer),
            });
        }
    }
    out
}

/// The address of an A or AAAA record, IPv4-mapped IPv6 unmapped (so
/// `::ffff:169.254.169.254` is judged as the metadata endpoint it is).
fn address_of(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(a.0.to_ipv4_mapped().map_or(IpAddr::V6(a.0), IpAddr::V4)),
        _ => None,
    }
}

/// The rules that may learn `addr`, or why none may.
fn admit(addr: IpAddr, rules: &[(usize, bool)]) -> Result<Vec<usize>, Rejection> {
    match classify(addr) {
        AddrClass::Public => Ok(rules.iter().map(|&(i, _)| i).collect()),
        AddrClass::Metadata => Err(Rejection::Metadata),
        c if c.is_private() => {
            let ok: Vec<usize> = rules.iter().filter(|r| r.1).map(|r| r.0).collect();
            if ok.is_empty() {
                Err(Rejection::Private(c))
            } else {
                Ok(ok)
            }
        }
        c => Err(Rejection::Rebind(c)),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, OpCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Name, RData, Record};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_str(s).expect("test name")
    }

    fn a(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(ip.parse().expect("v4"))))
    }

    fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip.parse().expect("v6"))))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn msg(answers: Vec<Record>) -> Message {
        let mut m = Message::response(7, OpCode::Query);
        m.answers = answers;
        m
    }

    fn learned(o: &[Offered]) -> Vec<(String, u32)> {
        o.iter()
            .filter(|x| x.outcome.is_ok())
            .map(|x| (x.addr.to_string(), x.ttl))
            .collect()
    }

    fn rejected(o: &[Offered]) -> Vec<(String, Rejection)> {
        o.iter()
            .filter_map(|x| x.outcome.as_ref().err().map(|r| (x.addr.to_string(), *r)))
            .collect()
    }

    const ANY: &[(usize, bool)] = &[(0, false)];

    #[test]
    fn direct_answers_are_learned_with_their_ttl() {
        let m = msg(vec![
            a("api.example.", 30, "198.18.0.1"),
            aaaa("API.Example.", 60, "2001:db8::1"),
        ]);
        let o = read(&m, "api.example", ANY);
        assert_eq!(
            learned(&o),
            [("198.18.0.1".into(), 30), ("2001:db8::1".into(), 60)]
        );
        assert_eq!(o[0].outcome, Ok(vec![0]));
    }

    #[test]
    fn the_chain_is_followed_with_its_lowest_ttl() {
        let m = msg(vec![
            cname("www.example.", 20, "edge.cdn.test."),
            cname("edge.cdn.test.", 300, "pop1.cdn.test."),
            a("pop1.cdn.test.", 100, "198.18.0.2"),
            a("pop1.cdn.test.", 5, "198.18.0.3"),
        ]);
        let o = read(&m, "www.example", ANY);
        assert_eq!(
            learned(&o),
            [("198.18.0.2".into(), 20), ("198.18.0.3".into(), 5)]
        );
    }

    #[test]
    fn records_off_the_chain_and_outside_the_answer_teach_nothing() {
        let mut m = msg(vec![
            a("api.example.", 30, "198.18.0.1"),
            a("evil.example.", 30, "198.18.0.66"),
            cname("other.example.", 30, "x.test."),
            a("x.test.", 30, "198.18.0.67"),
        ]);
        m.additionals.push(a("api.example.", 30, "198.18.0.68"));
        m.authorities.push(aaaa("api.example.", 30, "2001:db8::68"));
        let o = read(&m, "api.example", ANY);
        assert_eq!(learned(&o), [("198.18.0.1".into(), 30)]);
        assert_eq!(
            rejected(&o),
            [
                ("198.18.0.66".into(), Rejection::OutOfChain),
                ("198.18.0.67".into(), Rejection::OutOfChain),
                ("2001:db8::68".into(), Rejection::NotAnswer),
                ("198.18.0.68".into(), Rejection::NotAnswer),
            ]
        );
    }

    #[test]
    fn loops_and_long_chains_stop() {
        let m = msg(vec![
            cname("a.test.", 30, "b.test."),
            cname("b.test.", 30, "a.test."),
            a("b.test.", 30, "198.18.0.9"),
        ]);
        let o = read(&m, "a.test", ANY);
        assert_eq!(
            rejected(&o),
            [("198.18.0.9".into(), Rejection::ChainTooLong)]
        );

        let mut recs: Vec<Record> = (0..=MAX_CHAIN + 1)
            .map(|i| cname(&format!("n{i}.test."), 30, &format!("n{}.test.", i + 1)))
            .collect();
        recs.push(a(&format!("n{}.test.", MAX_CHAIN + 2), 30, "198.18.0.10"));
        recs.push(a("n3.test.", 30, "198.18.0.11"));
        let o = read(&msg(recs), "n0.test", ANY);
        assert_eq!(learned(&o), [("198.18.0.11".into(), 30)]);
        assert!(
            !o.iter()
                .any(|x| x.addr.to_string() == "198.18.0.10" && x.outcome.is_ok())
        );
    }

    #[test]
    fn rebinding_answers_are_rejected_and_private_ones_need_allow_private() {
        let m = msg(vec![
            a("n.test.", 30, "169.254.169.254"),
            aaaa("n.test.", 30, "::ffff:169.254.169.254"),
            aaaa("n.test.", 30, "fd00:ec2::254"),
            a("n.test.", 30, "127.0.0.1"),
            a("n.test.", 30, "169.254.10.1"),
            a("n.test.", 30, "10.0.0.5"),
            aaaa("n.test.", 30, "fd12::5"),
            a("n.test.", 30, "100.64.0.5"),
        ]);
        let o = read(&m, "n.test", &[(0, false), (1, false)]);
        assert!(learned(&o).is_empty());
        let reasons: Vec<&str> = o
            .iter()
            .map(|x| x.outcome.clone().unwrap_err().as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "metadata-service",
                "metadata-service",
                "metadata-service",
                "rebind",
                "rebind",
                "private-address",
                "private-address",
                "private-address"
            ]
        );
        // One of two matching rules allows private answers: learned for it only;
        // the metadata and loopback answers stay refused whatever the rule says.
        let o = read(&m, "n.test", &[(0, false), (1, true)]);
        assert_eq!(
            learned(&o),
            [
                ("10.0.0.5".into(), 30),
                ("fd12::5".into(), 30),
                ("100.64.0.5".into(), 30)
            ]
        );
        assert!(
            o.iter()
                .filter(|x| x.outcome.is_ok())
                .all(|x| x.outcome == Ok(vec![1]))
        );
    }
}
