//! The ring-buffer record decoder (`events/decode.rs`) and what the writer
//! makes of a decoded record: never panics; a record shorter than its kind's
//! struct is an error; a decoded record holds exactly the bytes given; and
//! the OCSF line rendered from any decoded record is one line of valid JSON.
#![no_main]

use agent_common::{ConnectEvent, EVENT_CONNECT, EVENT_SOCKET, EventHeader, SocketEvent};
use libfuzzer_sys::fuzz_target;
use tiergate::events::decode::{DecodeError, KernelEvent, comm, decode, destination};
use tiergate::events::ocsf::{
    Envelope, ProcessInfo, SocketInfo, Verdict, Workload, network_activity,
};
use tiergate::events::names::{reason_str, verdict_str};

fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: the event structs are #[repr(C)] integer-only Pod types.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

fuzz_target!(|data: &[u8]| {
    let result = decode(data);
    if data.len() < size_of::<EventHeader>() {
        assert_eq!(result, Err(DecodeError::Short(data.len())));
        return;
    }
    let kind = u32::from_ne_bytes(data[..4].try_into().expect("4 bytes"));
    let ev = match (kind, result) {
        (EVENT_CONNECT, Ok(ev @ KernelEvent::Connect(c))) => {
            assert!(data.len() >= size_of::<ConnectEvent>());
            assert_eq!(bytes_of(&c), &data[..size_of::<ConnectEvent>()]);
            ev
        }
        (EVENT_SOCKET, Ok(ev @ KernelEvent::Socket(s))) => {
            assert!(data.len() >= size_of::<SocketEvent>());
            assert_eq!(bytes_of(&s), &data[..size_of::<SocketEvent>()]);
            ev
        }
        (EVENT_CONNECT | EVENT_SOCKET, Err(DecodeError::Size { kind: k, len, want })) => {
            assert_eq!((k, len), (kind, data.len()));
            assert!(len < want);
            return;
        }
        (k, Err(DecodeError::UnknownKind(u)))
            if k == u && k != EVENT_CONNECT && k != EVENT_SOCKET =>
        {
            return;
        }
        (k, r) => panic!("kind {k}, {} bytes: {r:?}", data.len()),
    };

    // What the writer does with it (enrichment aside).
    let h = ev.header();
    let _ = ev.is_priority();
    let process = ProcessInfo {
        pid: (h.pid_tgid >> 32) as u32,
        tid: h.pid_tgid as u32,
        uid: h.uid_gid as u32,
        name: comm(&h.comm),
    };
    let workload = Workload {
        cgroup_id: h.cgroup_id,
        ..Workload::default()
    };
    let env = Envelope {
        time: h.boot_ns / 1_000_000,
        seq: 1,
        uid: "fuzz-1",
        hostname: "node",
        policy_name: None,
        policy_version: None,
    };
    let (verdict, reason, protocol, dst, socket, flags) = match ev {
        KernelEvent::Connect(c) => (
            c.verdict,
            c.reason,
            c.protocol,
            Some((destination(c.addr), c.port)),
            None,
            c.flags,
        ),
        KernelEvent::Socket(s) => (
            s.verdict,
            s.reason,
            s.protocol as u8,
            None,
            Some(SocketInfo {
                family: s.family,
                sock_type: s.sock_type,
                protocol: s.protocol,
            }),
            0,
        ),
    };
    let v = Verdict {
        verdict: verdict_str(verdict),
        reason: reason_str(reason),
        tier: "t",
        hook: "connect4",
        metadata_service: flags & agent_common::CONNECT_F_METADATA != 0,
        inherited: flags & agent_common::CONNECT_F_INHERITED != 0,
        fqdn: None,
        rule: None,
        elevation: None,
        span: None,
    };
    let mut out = Vec::new();
    network_activity(
        &env, &v, protocol, dst, socket, &process, &workload, &mut out,
    );
    assert!(!out.contains(&b'\n'), "a record spans lines");
    let json: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    assert!(json.is_object());
});
