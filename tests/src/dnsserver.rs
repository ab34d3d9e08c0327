//! A small authoritative DNS server for the tests, on hickory-proto, over
//! UDP and TCP. It answers from a zone the test writes (A, AAAA, CNAME,
//! with TTLs), sets TC=1 on UDP answers over 512 bytes (so clients retry
//! over TCP), answers NXDOMAIN for names it does not hold, and appends every
//! question it receives to a log file (so a test can show a refused name
//! never reached it).
//!
//! Zone file lines: `NAME TTL A|AAAA|CNAME VALUE` (`#` comments).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Records by lowercase name (no trailing dot).
pub type Zone = HashMap<String, Vec<Record>>;

fn key(name: &Name) -> String {
    let mut s = name.to_ascii().to_ascii_lowercase();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

/// Parses the zone text.
pub fn parse_zone(text: &str) -> Zone {
    let mut zone = Zone::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "zone line {line:?}: NAME TTL TYPE VALUE");
        let name = Name::from_str(&format!("{}.", f[0].trim_end_matches('.'))).expect("zone name");
        let ttl: u32 = f[1].parse().expect("zone ttl");
        let data = match f[2] {
            "A" => RData::A(A(f[3].parse().expect("zone A"))),
            "AAAA" => RData::AAAA(AAAA(f[3].parse().expect("zone AAAA"))),
            "CNAME" => RData::CNAME(CNAME(
                Name::from_str(&format!("{}.", f[3].trim_end_matches('.'))).expect("zone CNAME"),
            )),
            t => panic!("zone type {t} not supported"),
        };
        zone.entry(key(&name))
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
    let mut found = false;
    for _ in 0..16 {
        let Some(recs) = zone.get(&name) else { break };
        found = true;
        if let Some(c) = recs.iter().find(|r| r.record_type() == RecordType::CNAME) {
            m.answers.push(c.clone());
            if let RData::CNAME(t) = &c.data {
                name = key(&t.0);
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
