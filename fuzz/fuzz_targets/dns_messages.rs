//! The DNS proxy's message handling: a workload's query (`dns/query.rs`)
//! and an upstream's answer (`dns/answer.rs`), both any bytes. Never panics;
//! the proxy's own replies encode and read back with the client's id and
//! question; the name index agrees with its patterns; an answer teaches
//! only addresses of the answer section that the rebinding guard admits,
//! for the rules that may learn them, never with a TTL above the record's.
#![no_main]

use hickory_proto::op::{Message, ResponseCode};
use libfuzzer_sys::fuzz_target;
use tiergate::dns::answer::read;
use tiergate::dns::query::{encode, error_reply, parse};
use tiergate::dns::{AddrClass, classify, name_key};
use tiergate::policy::fqdn::{NameIndex, NamePattern, normalize};

const PATTERNS: [&str; 5] = [
    "api.github.com",
    "*.s3.amazonaws.com",
    "**.googleapis.com",
    "example.com",
    "*.example.com",
];

fn check_reply(request: &Message, code: ResponseCode) {
    let reply = error_reply(request, code);
    // A reply that cannot be written is not sent; one that is must read back.
    if let Some(bytes) = encode(&reply) {
        let back = Message::from_vec(&bytes).expect("our own reply parses");
        assert_eq!(back.metadata.id, request.metadata.id);
        assert_eq!(back.metadata.response_code, code);
        assert_eq!(back.queries, request.queries);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };

    // As a workload's query.
    match parse(bytes) {
        Ok(q) => {
            assert_eq!(q.id, q.message.metadata.id);
            assert_eq!(q.message.queries.len(), 1);
            assert_eq!(q.name, name_key(&q.message.queries[0].name));
            check_reply(&q.message, ResponseCode::NXDomain);
            check_reply(&q.message, ResponseCode::ServFail);
            if let Ok(name) = normalize(&q.name) {
                let mut index = NameIndex::default();
                let patterns: Vec<NamePattern> = PATTERNS
                    .iter()
                    .map(|p| NamePattern::parse(p).expect("pattern"))
                    .collect();
                for (i, p) in patterns.iter().enumerate() {
                    index.insert(p, i);
                }
                let want: Vec<usize> = (0..patterns.len())
                    .filter(|&i| patterns[i].matches(&name))
                    .collect();
                assert_eq!(index.matching_rules(&name), want, "{name:?}");
            }
        }
        Err((_, Some(m))) => {
            check_reply(&m, ResponseCode::FormErr);
            check_reply(&m, ResponseCode::NotImp);
        }
        Err((_, None)) => assert!(Message::from_vec(bytes).is_err()),
    }

    // As an upstream's answer to its own question (or to a fixed one).
    let Ok(answer) = Message::from_vec(bytes) else {
        return;
    };
    let qname = answer
        .queries
        .first()
        .map(|q| name_key(&q.name))
        .unwrap_or_else(|| "example.com".to_owned());
    let rules = [(0usize, flags & 1 != 0), (7usize, flags & 2 != 0)];
    let offered = read(&answer, &qname, &rules);
    let addresses = |rs: &[hickory_proto::rr::Record]| {
        rs.iter()
            .filter(|r| {
                matches!(
                    r.data,
                    hickory_proto::rr::RData::A(_) | hickory_proto::rr::RData::AAAA(_)
                )
            })
            .count()
    };
    let in_answers = addresses(&answer.answers);
    assert_eq!(
        offered.len(),
        in_answers + addresses(&answer.authorities) + addresses(&answer.additionals)
    );
    let max_ttl = answer.answers.iter().map(|r| r.ttl).max().unwrap_or(0);
    for (i, o) in offered.iter().enumerate() {
        let Ok(learned_for) = &o.outcome else {
            continue;
        };
        assert!(
            i < in_answers,
            "learned from outside the answer section: {o:?}"
        );
        assert!(o.ttl <= max_ttl, "{o:?}");
        assert!(!learned_for.is_empty(), "{o:?}");
        let class = classify(o.addr);
        assert!(
            class == AddrClass::Public || class.is_private(),
            "learned a {class:?} address: {o:?}"
        );
        for r in learned_for {
            let (_, private_ok) = rules.iter().find(|(id, _)| id == r).expect("a given rule");
            assert!(class == AddrClass::Public || *private_ok, "{o:?}");
        }
        if let std::net::IpAddr::V6(a) = o.addr {
            assert!(
                a.to_ipv4_mapped().is_none(),
                "mapped address not unmapped: {o:?}"
            );
        }
    }
});
