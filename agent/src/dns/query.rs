//! Reading a workload's query and writing the answers the proxy makes itself
//! (NXDOMAIN for a name the tier does not allow, SERVFAIL when it cannot
//! answer, FORMERR/NOTIMP for what it does not forward).
//!
//! Denied names get NXDOMAIN, not REFUSED: musl stops walking its search
//! list at REFUSED (Cilium grew `--tofqdns-dns-reject-response-code` for
//! that), and NXDOMAIN is the truth from this workload's point of view.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};

use super::answer::name_key;

/// A query the proxy may act on: one question, class IN, opcode QUERY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// The client's message id.
    pub id: u16,
    /// The queried name, normalised (lowercase, no trailing dot).
    pub name: String,
    /// The query type (A, AAAA, ...).
    pub qtype: RecordType,
    /// The parsed message, to answer or forward.
    pub message: Message,
}

/// Why a message is not a query the proxy forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Not a DNS message at all; nothing can be answered (no id).
    Unreadable,
    /// A response, or more or fewer than one question, or not class IN.
    FormErr,
    /// An opcode other than QUERY (UPDATE, NOTIFY, ...).
    NotImp,
}

impl Malformed {
    /// The event spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Unreadable => "unreadable",
            Malformed::FormErr => "format-error",
            Malformed::NotImp => "not-implemented",
        }
    }
}

/// Parses a workload's query. On `Err`, the message (when it has an id) is
/// answered with [`error_reply`] of the returned code.
pub fn parse(bytes: &[u8]) -> Result<Question, (Malformed, Option<Box<Message>>)> {
    let message = Message::from_vec(bytes).map_err(|_| (Malformed::Unreadable, None))?;
    if message.metadata.message_type != MessageType::Query {
        return Err((Malformed::FormErr, Some(Box::new(message))));
    }
    if message.metadata.op_code != OpCode::Query {
        return Err((Malformed::NotImp, Some(Box::new(message))));
    }
    let [q] = message.queries.as_slice() else {
        return Err((Malformed::FormErr, Some(Box::new(message))));
    };
    if q.query_class != DNSClass::IN {
        return Err((Malformed::FormErr, Some(Box::new(message))));
    }
    Ok(Question {
        id: message.metadata.id,
        name: name_key(&q.name),
        qtype: q.query_type,
        message: message.clone(),
    })
}

/// An answer the proxy makes itself: the client's id, question and RD bit,
/// RA set, no records.
pub fn error_reply(request: &Message, code: ResponseCode) -> Message {
    let mut m = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    m.metadata.recursion_desired = request.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = request.queries.clone();
    m
}

/// The bytes of a reply, or `None` if it cannot be written (it then is not
/// sent: the client times out rather than reading garbage).
pub fn encode(m: &Message) -> Option<Vec<u8>> {
    m.to_vec().ok()
}

/// OCSF's caption of a response code (DNS Activity `rcode`).
pub fn rcode_caption(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NoError",
        ResponseCode::FormErr => "FormError",
        ResponseCode::ServFail => "ServError",
        ResponseCode::NXDomain => "NXDomain",
        ResponseCode::NotImp => "NotImp",
        ResponseCode::Refused => "Refused",
        _ => "Other",
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).expect("name"), qtype));
        m
    }

    #[test]
    fn a_plain_query_is_read() {
        let m = query("API.GitHub.com.", RecordType::AAAA);
        let q = parse(&m.to_vec().expect("encode")).expect("parse");
        assert_eq!(q.name, "api.github.com");
        assert_eq!(q.qtype, RecordType::AAAA);
        assert_eq!(q.id, m.metadata.id);
    }

    #[test]
    fn what_is_not_one_in_query_is_refused_with_the_right_code() {
        assert_eq!(parse(b"\x01\x02").unwrap_err().0, Malformed::Unreadable);

        let mut two = query("a.test.", RecordType::A);
        two.add_query(Query::query(
            Name::from_str("b.test.").expect("n"),
            RecordType::A,
        ));
        assert_eq!(
            parse(&two.to_vec().expect("e")).unwrap_err().0,
            Malformed::FormErr
        );

        let mut none = query("a.test.", RecordType::A);
        none.queries.clear();
        assert_eq!(
            parse(&none.to_vec().expect("e")).unwrap_err().0,
            Malformed::FormErr
        );

        let mut resp = query("a.test.", RecordType::A);
        resp.metadata.message_type = MessageType::Response;
        assert_eq!(
            parse(&resp.to_vec().expect("e")).unwrap_err().0,
            Malformed::FormErr
        );

        let mut chaos = query("version.bind.", RecordType::TXT);
        chaos.queries[0].query_class = DNSClass::CH;
        assert_eq!(
            parse(&chaos.to_vec().expect("e")).unwrap_err().0,
            Malformed::FormErr
        );

        let mut update = query("a.test.", RecordType::A);
        update.metadata.op_code = OpCode::Update;
        assert_eq!(
            parse(&update.to_vec().expect("e")).unwrap_err().0,
            Malformed::NotImp
        );
    }

    #[test]
    fn error_replies_echo_id_question_and_rd() {
        let m = query("exfil.attacker.test.", RecordType::A);
        let r = error_reply(&m, ResponseCode::NXDomain);
        let back = Message::from_vec(&encode(&r).expect("encode")).expect("decode");
        assert_eq!(back.metadata.id, m.metadata.id);
        assert_eq!(back.metadata.message_type, MessageType::Response);
        assert_eq!(back.metadata.response_code, ResponseCode::NXDomain);
        assert!(back.metadata.recursion_desired && back.metadata.recursion_available);
        assert_eq!(back.queries, m.queries);
        assert!(back.answers.is_empty());
        assert_eq!(rcode_caption(ResponseCode::NXDomain), "NXDomain");
        assert_eq!(rcode_caption(ResponseCode::ServFail), "ServError");
    }
}
