//! A small authoritative DNS server for the tests, on hickory-proto, over
//! UDP and TCP. It answers from a zone the test writes (A, AAAA, CNAME,
//! with TTLs), sets TC=1 on UDP answers over 512 bytes (so clients retry
//! over TCP), answers NXDOMAIN for names it does not hold, and appends every
//! question it receives to a log file (so a test can show a refused name
//! never reached it).
//!
//! Zone file lines: `NAME TTL A|AAAA|CNAME VALUE` (`#` comments). A NAME
//! `*.SUFFIX` answers every name under SUFFIX that the zone does not hold
//! itself, with the asked name as the owner (RFC 4592 synthesis). For a
//! wildcard, an A VALUE may be a range (`*.bulk.test 30 A 198.18.0.0/15`):
//! each new name then gets the next address of the range (wrapping), so a
//! benchmark can teach many distinct addresses.
//!
//! A name whose first label is `slow` is answered after [`SLOW`] (a query
//! a test can catch in flight).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The zone: records by lowercase name (no trailing dot), and the wildcard
/// address ranges.
#[derive(Default)]
pub struct Zone {
    records: HashMap<String, Vec<Record>>,
    ranges: HashMap<String, Range>,
}

/// A wildcard whose A records come from a range, one address per name.
struct Range {
    ttl: u32,
    base: u32,
    size: u32,
    given: Mutex<HashMap<String, u32>>,
}

impl Range {
    fn record(&self, name: &Name) -> Record {
        let mut given = self.given.lock().expect("range lock");
        let next = given.len() as u32 % self.size;
        let off = *given.entry(key(name)).or_insert(next);
        let addr = Ipv4Addr::from(self.base.wrapping_add(off));
        Record::from_rdata(name.clone(), self.ttl, RData::A(A(addr)))
    }
}

impl Zone {
    /// The records of `name` (asked as `asked`): its own, else those of the
    /// closest `*.` wildcard above it, renamed to the asked name.
    fn records(&self, name: &str, asked: &Name) -> Option<Vec<Record>> {
        if let Some(r) = self.records.get(name) {
            return Some(r.clone());
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            let wild = format!("*.{parent}");
            if let Some(range) = self.ranges.get(&wild) {
                return Some(vec![range.record(asked)]);
            }
            if let Some(r) = self.records.get(&wild) {
                let renamed = r.iter().map(|r| {
                    let mut r = r.clone();
                    r.name = asked.clone();
                    r
                });
                return Some(renamed.collect());
            }
            rest = parent;
        }
        None
    }
}

fn key(name: &Name) -> String {
    let mut s = name.to_ascii().to_ascii_lowercase();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

fn fqdn(text: &str) -> Name {
    Name::from_str(&format!("{}.", text.trim_end_matches('.'))).expect("zone name")
}

/// Parses the zone text.
pub fn parse_zone(text: &str) -> Zone {
    let mut zone = Zone::default();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "zone line {line:?}: NAME TTL TYPE VALUE");
        let name = fqdn(f[0]);
        let ttl: u32 = f[1].parse().expect("zone ttl");
        if let ("A", Some((base, bits))) = (f[2], f[3].split_once('/')) {
            let base: Ipv4Addr = base.parse().expect("zone A range");
            let bits: u32 = bits.parse().expect("zone A range prefix");
            assert!(
                f[0].starts_with("*.") && (8..=32).contains(&bits),
                "{line:?}: a range needs a wildcard name and /8../32"
            );
            let range = Range {
                ttl,
                base: u32::from(base),
                size: 1 << (32 - bits),
                given: Mutex::default(),
            };
            zone.ranges.insert(key(&name), range);
            continue;
        }
        let data = match f[2] {
            "A" => RData::A(A(f[3].parse().expect("zone A"))),
            "AAAA" => RData::AAAA(AAAA(f[3].parse().expect("zone AAAA"))),
            "CNAME" => RData::CNAME(CNAME(fqdn(f[3]))),
            t => panic!("zone type {t} not supported"),
        };
        zone.records
            .entry(key(&name))
            .or_default()
            .push(Record::from_rdata(name, ttl, data));
    }
    zone
}

/// The answer to `query` from `zone`: the CNAME chain from the question and
/// the records of the asked type at its end.
pub fn answer(zone: &Zone, query: &Message) -> Message {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = true;
    m.queries = query.queries.clone();
    let Some(q) = query.queries.first() else {
        m.metadata.response_code = ResponseCode::FormErr;
        return m;
    };
    let mut name = key(&q.name);
    let mut asked = q.name.clone();
    let mut found = false;
    for _ in 0..16 {
        let Some(recs) = zone.records(&name, &asked) else {
            break;
        };
        found = true;
        if let Some(c) = recs.iter().find(|r| r.record_type() == RecordType::CNAME) {
            m.answers.push(c.clone());
            if let RData::CNAME(t) = &c.data {
                name = key(&t.0);
                asked = t.0.clone();
                continue;
            }
        }
        m.answers.extend(
            recs.iter()
                .filter(|r| r.record_type() == q.query_type)
                .cloned(),
        );
        break;
    }
    if !found {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    m
}

/// How long a `slow.` name's answer waits.
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(600);

fn is_slow(q: &Message) -> bool {
    q.queries
        .first()
        .is_some_and(|q| key(&q.name).split('.').next() == Some("slow"))
}

fn log_question(log: &Mutex<std::fs::File>, q: &Message, transport: &str) {
    if let Some(q) = q.queries.first() {
        let mut f = log.lock().expect("log");
        let _ = writeln!(f, "{transport} {} {}", key(&q.name), q.query_type);
    }
}

/// Serves `zone` on `addr` (UDP and TCP) until the process ends.
pub fn serve(addr: SocketAddr, zone: Zone, log_path: &str) {
    let zone = Arc::new(zone);
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("query log"),
    ));
    let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("dns udp {addr}: {e}"));
    let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("dns tcp {addr}: {e}"));
    {
        let (zone, log) = (zone.clone(), log.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if q.metadata.message_type != MessageType::Query {
                    continue;
                }
                log_question(&log, &q, "udp");
                let mut a = answer(&zone, &q);
                let mut bytes = a.to_vec().expect("encode");
                if bytes.len() > 512 {
                    // Too long for classic UDP: truncated, the client retries over TCP.
                    a = a.truncate();
                    bytes = a.to_vec().expect("encode");
                }
                if is_slow(&q) {
                    // Answered later, without holding up other queries.
                    if let Ok(udp) = udp.try_clone() {
                        std::thread::spawn(move || {
                            std::thread::sleep(SLOW);
                            let _ = udp.send_to(&bytes, from);
                        });
                    }
                    continue;
                }
                let _ = udp.send_to(&bytes, from);
            }
        });
    }
    std::thread::spawn(move || {
        for s in tcp.incoming().flatten() {
            let (zone, log) = (zone.clone(), log.clone());
            std::thread::spawn(move || {
                let mut s = s;
                loop {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut msg).is_err() {
                        return;
                    }
                    let Ok(q) = Message::from_vec(&msg) else {
                        return;
                    };
                    log_question(&log, &q, "tcp");
                    if is_slow(&q) {
                        std::thread::sleep(SLOW);
                    }
                    let bytes = answer(&zone, &q).to_vec().expect("encode");
                    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&bytes);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn ask(zone: &Zone, name: &str) -> (ResponseCode, Vec<String>) {
        let mut q = Message::query();
        q.add_query(Query::query(fqdn(name), RecordType::A));
        let a = answer(zone, &q);
        let got = a
            .answers
            .iter()
            .map(|r| format!("{} {}", key(&r.name), r.data))
            .collect();
        (a.metadata.response_code, got)
    }

    #[test]
    fn wildcards_answer_names_under_them_with_the_asked_owner() {
        let zone = parse_zone(
            "*.bulk.test 30 A 198.18.2.1\nexact.bulk.test 30 A 198.18.2.9\n*.range.test 30 A 198.18.0.0/30\n",
        );
        assert_eq!(
            ask(&zone, "n1.bulk.test"),
            (
                ResponseCode::NoError,
                vec!["n1.bulk.test 198.18.2.1".into()]
            )
        );
        assert_eq!(ask(&zone, "a.b.bulk.test").1, ["a.b.bulk.test 198.18.2.1"]);
        assert_eq!(
            ask(&zone, "exact.bulk.test").1,
            ["exact.bulk.test 198.18.2.9"]
        );
        assert_eq!(ask(&zone, "bulk.test").0, ResponseCode::NXDomain);
        assert_eq!(ask(&zone, "n1.other.test").0, ResponseCode::NXDomain);
        // A range: the next address per new name, the same one again for a
        // name already answered, wrapping at the end of the range.
        let names =
            ["a", "b", "a", "c", "d", "e"].map(|n| ask(&zone, &format!("{n}.range.test")).1);
        let addrs: Vec<&str> = names
            .iter()
            .map(|a| a[0].rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(
            addrs,
            [
                "198.18.0.0",
                "198.18.0.1",
                "198.18.0.0",
                "198.18.0.2",
                "198.18.0.3",
                "198.18.0.0"
            ]
        );
    }
}
