//! The agent's side of the stream without a message tree: an `Event` is
//! encoded once, when the writer spools it, and a `Batch` is those encoded
//! events framed as its repeated field. The bytes are exactly what prost
//! makes of the same `Event` and `Batch` (tests below), so the collector
//! decodes them with the generated types.

use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Status, Streaming};

use crate::events::v1::Ack;

/// The fields of one `Event`, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub seq: u64,
    pub uid: &'a str,
    pub kind: &'a str,
    pub priority: bool,
    pub time_ms: u64,
    pub ocsf_json: &'a [u8],
}

fn put_varint_field(buf: &mut Vec<u8>, tag: u32, v: u64) {
    // proto3: a field at its default value is not written.
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

fn put_bytes_field(buf: &mut Vec<u8>, tag: u32, v: &[u8]) {
    if !v.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(v.len() as u64, buf);
        buf.put_slice(v);
    }
}

/// Appends the encoding of an `Event` to `buf`.
pub fn encode_event(buf: &mut Vec<u8>, e: &EventFields<'_>) {
    buf.reserve(e.ocsf_json.len() + e.uid.len() + e.kind.len() + 32);
    put_varint_field(buf, 1, e.seq);
    put_bytes_field(buf, 2, e.uid.as_bytes());
    put_bytes_field(buf, 3, e.kind.as_bytes());
    put_varint_field(buf, 4, u64::from(e.priority));
    put_varint_field(buf, 5, e.time_ms);
    put_bytes_field(buf, 6, e.ocsf_json);
}

/// Whether `payload` decodes as an `Event` (what the collector's decoder
/// requires of it: well-formed fields, the known ones of their wire type,
/// `uid` and `kind` UTF-8), without building one.
pub fn is_event(mut payload: &[u8]) -> bool {
    while payload.has_remaining() {
        let Ok(key) = prost::encoding::decode_varint(&mut payload) else {
            return false;
        };
        let (tag, wire) = (key >> 3, key & 7);
        if tag == 0 || tag > u64::from(u32::MAX >> 3) {
            return false;
        }
        let ok = match wire {
            0 => {
                matches!(tag, 1 | 4 | 5 | 7..)
                    && prost::encoding::decode_varint(&mut payload).is_ok()
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                tag > 6 && payload.len() >= n && {
                    payload.advance(n);
                    true
                }
            }
            2 => {
                let Ok(len) = prost::encoding::decode_varint(&mut payload) else {
                    return false;
                };
                let Ok(len) = usize::try_from(len) else {
                    return false;
                };
                if !matches!(tag, 2 | 3 | 6 | 7..) || len > payload.len() {
                    return false;
                }
                let (field, rest) = payload.split_at(len);
                payload = rest;
                !matches!(tag, 2 | 3) || std::str::from_utf8(field).is_ok()
            }
            // Groups: prost never writes them, nor does this module.
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A `Batch` being built from encoded events.
#[derive(Debug)]
pub struct BatchBuf {
    buf: Vec<u8>,
    events: usize,
}

impl BatchBuf {
    /// A batch with its header fields; events are added with `push_event`.
    pub fn new(agent_id: &str, node: &str, batch_id: u64, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + agent_id.len() + node.len() + 16);
        put_bytes_field(&mut buf, 1, agent_id.as_bytes());
        put_bytes_field(&mut buf, 2, node.as_bytes());
        put_varint_field(&mut buf, 3, batch_id);
        Self { buf, events: 0 }
    }

    /// Adds one encoded `Event` (see `encode_event`, `is_event`).
    pub fn push_event(&mut self, event: &[u8]) {
        // An empty message is still an element of the repeated field.
        encode_key(4, WireType::LengthDelimited, &mut self.buf);
        encode_varint(event.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(event);
        self.events += 1;
    }

    /// Events pushed so far.
    pub fn events(&self) -> usize {
        self.events
    }

    /// The batch's encoding.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Bytes `push_event` adds for an event of `len` bytes.
    pub fn framed_len(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }
}

/// The gRPC codec of the agent's stream: sends encoded `Batch`es as they
/// are, receives `Ack`s.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawBatchCodec;

/// Writes an encoded `Batch` into the request body.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawBatchEncoder;

/// Decodes `Ack`s.
#[derive(Debug, Default, Clone, Copy)]
pub struct AckDecoder;

impl Codec for RawBatchCodec {
    type Encode = Vec<u8>;
    type Decode = Ack;
    type Encoder = RawBatchEncoder;
    type Decoder = AckDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawBatchEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        AckDecoder
    }
}

impl Encoder for RawBatchEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for AckDecoder {
    type Item = Ack;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Ack>, Status> {
        Ack::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable Ack: {e}")))
    }
}

/// `EventCollector/Stream` with encoded batches (what the generated client's
/// `stream` does with `Batch` messages).
pub async fn stream_raw<T, S>(
    grpc: &mut tonic::client::Grpc<T>,
    batches: S,
) -> Result<tonic::Response<Streaming<Ack>>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    S: tonic::codegen::tokio_stream::Stream<Item = Vec<u8>> + Send + 'static,
{
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {}", e.into())))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/tiergate.events.v1.EventCollector/Stream",
    );
    let mut req = tonic::Request::new(batches);
    req.extensions_mut().insert(tonic::GrpcMethod::new(
        "tiergate.events.v1.EventCollector",
        "Stream",
    ));
    grpc.streaming(req, path, RawBatchCodec).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::v1::{Batch, Event};

    fn event(seq: u64, uid: &str, kind: &str, priority: bool, time_ms: u64, json: &[u8]) -> Event {
        Event {
            seq,
            uid: uid.into(),
            kind: kind.into(),
            priority,
            time_ms,
            ocsf_json: json.to_vec().into(),
        }
    }

    fn encoded(e: &Event) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_event(
            &mut buf,
            &EventFields {
                seq: e.seq,
                uid: &e.uid,
                kind: &e.kind,
                priority: e.priority,
                time_ms: e.time_ms,
                ocsf_json: &e.ocsf_json,
            },
        );
        buf
    }

    fn samples() -> Vec<Event> {
        let big = vec![b'x'; 70_000];
        vec![
            event(
                1,
                "a1b2-1",
                "connection",
                false,
                1_764_000_000_000,
                b"{\"a\":1}",
            ),
            event(u64::MAX, "\u{e9}t\u{e9}", "loss", true, u64::MAX, &big),
            event(0, "", "", false, 0, b""),
            event(300, "u", "k", true, 127, b"{}"),
        ]
    }

    #[test]
    fn events_encode_as_prost_does() {
        for e in samples() {
            let mine = encoded(&e);
            assert_eq!(mine, e.encode_to_vec(), "{e:?}");
            assert!(is_event(&mine));
        }
    }

    #[test]
    fn batches_encode_as_prost_does() {
        for (agent, node, id) in [("a1b2c3d4e5f60718", "node-1", 7), ("", "", 0)] {
            let events = samples();
            let mut b = BatchBuf::new(agent, node, id, 0);
            for e in &events {
                let enc = encoded(e);
                let before = b.buf.len();
                b.push_event(&enc);
                assert_eq!(b.buf.len() - before, BatchBuf::framed_len(enc.len()));
            }
            assert_eq!(b.events(), events.len());
            let expected = Batch {
                agent_id: agent.into(),
                node: node.into(),
                batch_id: id,
                events,
            };
            let bytes = b.into_bytes();
            assert_eq!(bytes, expected.encode_to_vec());
            assert_eq!(Batch::decode(bytes.as_slice()).expect("decodes"), expected);
        }
    }

    /// Whatever `is_event` accepts, prost decodes; what prost refuses, it
    /// refuses (over every truncation and single-byte change of real events).
    #[test]
    fn is_event_agrees_with_prost() {
        let mut checked = 0;
        for e in samples().into_iter().filter(|e| e.ocsf_json.len() < 1000) {
            let enc = encoded(&e);
            let mut variants: Vec<Vec<u8>> = (0..enc.len()).map(|n| enc[..n].to_vec()).collect();
            for i in 0..enc.len() {
                for v in [0x00, 0x01, 0x07, 0x0a, 0x12, 0x3a, 0x80, 0xc3, 0xff] {
                    let mut m = enc.clone();
                    m[i] = v;
                    variants.push(m);
                }
            }
            // Unknown fields of every wire type prost skips, and a group.
            for extra in [
                &[0x38, 0x05][..],
                &[0x41, 1, 2, 3, 4, 5, 6, 7, 8],
                &[0x3a, 0x01, 0xff],
                &[0x3d, 1, 2, 3, 4],
                &[0x3b, 0x3c],
            ] {
                let mut m = enc.clone();
                m.extend_from_slice(extra);
                variants.push(m);
            }
            for v in variants {
                let prost_ok = Event::decode(v.as_slice()).is_ok();
                if is_event(&v) {
                    assert!(prost_ok, "accepted what prost refuses: {v:?}");
                }
                if !prost_ok {
                    assert!(!is_event(&v), "{v:?}");
                }
                checked += 1;
            }
        }
        assert!(checked > 500, "{checked}");
    }
}
