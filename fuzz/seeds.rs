//! Writes the committed seed corpora (`fuzz/corpus/<target>/`) from the
//! product's own writers and the tests' inputs: policy files, ring records
//! built from the kernel structs, protobuf batches, DNS messages built with
//! hickory-proto, cgroup paths, sink specs, flags, metadata requests.
//! `cargo xtask fuzz --seeds` runs it; the output is deterministic.

use std::fs;
use std::path::{Path, PathBuf};

use agent_common::{ConnectEvent, EVENT_CONNECT, EVENT_SOCKET, EventHeader, SocketEvent};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use prost::Message as _;
use tiergate_proto::events::v1::{Batch, Event};

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(dir).expect("corpus dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: the event structs are #[repr(C)] integer-only Pod types.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
}

/// Deterministic filler for the structured (`arbitrary`) targets.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn name(s: &str) -> Name {
    s.parse().expect("name")
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    let repo = root.parent().expect("repository");

    // policy_parse: the shipped policy, the README's examples, and mistakes.
    let d = corpus.join("policy_parse");
    write(
        &d,
        "default.yaml",
        fs::read(repo.join("deploy/policy/default.yaml")).expect("default.yaml"),
    );
    write(&d, "pods.yaml", POLICY_PODS);
    write(&d, "dns-metadata.yaml", POLICY_DNS_METADATA);
    write(&d, "errors.yaml", POLICY_ERRORS);
    write(
        &d,
        "syntax.yaml",
        "spec:\n  tiers: [\n    - name: a\n  bad: {",
    );

    // policy_compile, spool_recover: structured inputs.
    for t in ["policy_compile", "spool_recover"] {
        for (i, len) in [64usize, 256, 1024].into_iter().enumerate() {
            write(
                &corpus.join(t),
                &format!("noise-{len}"),
                noise(i as u64 + 7, len),
            );
        }
    }

    // ring_decode: records as the kernel writes them.
    let d = corpus.join("ring_decode");
    let header = |kind| EventHeader {
        kind,
        cpu: 1,
        boot_ns: 123_456_789_000,
        cgroup_id: 4242,
        pid_tgid: (1000 << 32) | 1001,
        uid_gid: (0 << 32) | 1000,
        comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
    };
    let mut connect = ConnectEvent {
        header: header(EVENT_CONNECT),
        addr: std::net::Ipv4Addr::new(10, 9, 9, 9)
            .to_ipv6_mapped()
            .octets(),
        port: 80,
        hook: 0,
        protocol: 6,
        verdict: 1,
        reason: 2,
        _pad: [0; 2],
        flags: 0,
        tier: 1,
        generation: 1,
        _pad2: 0,
    };
    write(&d, "connect-v4", bytes_of(&connect));
    connect.addr = "2001:db8::1"
        .parse::<std::net::Ipv6Addr>()
        .expect("v6")
        .octets();
    connect.flags = 1;
    write(&d, "connect-v6-metadata", bytes_of(&connect));
    let socket = SocketEvent {
        header: header(EVENT_SOCKET),
        family: 17,
        sock_type: 3,
        protocol: 0,
        verdict: 1,
        reason: 5,
        _pad: [0; 2],
        tier: 2,
        generation: 1,
    };
    write(&d, "socket", bytes_of(&socket));
    write(&d, "short", &bytes_of(&connect)[..20]);
    let mut unknown = bytes_of(&socket);
    unknown[0] = 9;
    write(&d, "unknown-kind", unknown);

    // kubepods_path: each layout of the parser's tests.
    let d = corpus.join("kubepods_path");
    let uid = "0b0c6f2e-4a1d-4c59-9a3b-2f2d1e0c9a11";
    let uid_sd = uid.replace('-', "_");
    let cid = "5f3c2a1b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29180716253443526170ab";
    let paths = [
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_sd}.slice/cri-containerd-{cid}.scope"),
        format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_sd}.slice/crio-{cid}.scope"),
        format!("/kubepods.slice/kubepods-pod{uid_sd}.slice/docker-{cid}.scope"),
        format!("/kubepods/burstable/pod{uid}/{cid}"),
        format!("0::/kubepods/pod{uid}\n"),
        format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_sd}.slice/crio-conmon-{cid}.scope"),
        format!("/system.slice/containerd.service/kubepods-besteffort-pod{uid_sd}.slice:cri-containerd:{cid}"),
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0123456789abcdef0123456789abcdef.slice".to_owned(),
        "/kubepods.slice/kubepods-burstable.slice".to_owned(),
        "/system.slice/sshd.service".to_owned(),
        "/kubepods/burstable/podnot-a-uid".to_owned(),
    ];
    for (i, p) in paths.iter().enumerate() {
        write(&d, &format!("path-{i:02}"), p);
    }

    // collector_batch: batches as an agent sends them.
    let d = corpus.join("collector_batch");
    let event = |seq: u64, kind: &str| {
        Event {
        seq,
        uid: format!("a1b2c3d4e5f60718-{seq}"),
        kind: kind.to_owned(),
        priority: kind != "connection",
        time_ms: 1_764_000_000_000 + seq,
        ocsf_json: format!(
            r#"{{"class_uid":4001,"time":{},"metadata":{{"uid":"a1b2c3d4e5f60718-{seq}"}},"unmapped":{{"tiergate":{{"kind":"{kind}","seq":{seq}}}}}}}"#,
            1_764_000_000_000 + seq
        )
        .into_bytes()
        .into(),
    }
    };
    let batch = |id, events| Batch {
        agent_id: "a1b2c3d4e5f60718".into(),
        node: "node-1".into(),
        batch_id: id,
        events,
    };
    write(
        &d,
        "contiguous",
        batch(
            1,
            vec![
                event(1, "connection"),
                event(2, "connection"),
                event(3, "policy"),
            ],
        )
        .encode_to_vec(),
    );
    write(
        &d,
        "gaps",
        batch(
            2,
            vec![
                event(5, "connection"),
                event(9, "loss"),
                event(7, "connection"),
                event(20, "socket"),
            ],
        )
        .encode_to_vec(),
    );
    write(&d, "empty", batch(3, vec![]).encode_to_vec());

    // store_records: records as an agent writes them, one a line: runs of
    // one shape (seq, uid, time and pid change), other shapes in between,
    // DNS, policy and loss records, escaped strings, broken lines.
    let d = corpus.join("store_records");
    let deny = |seq: u64, ip: &str| {
        format!(
            concat!(
                r#"{{"class_uid":4001,"class_name":"Network Activity","activity_id":1,"time":{},"#,
                r#""disposition_id":2,"disposition":"Blocked","connection_info":{{"protocol_name":"udp","#,
                r#""protocol_num":17}},"dst_endpoint":{{"ip":"{}","port":80}},"#,
                r#""actor":{{"process":{{"pid":{},"name":"load","tid":{}}},"user":{{"uid":"0"}}}},"#,
                r#""device":{{"hostname":"node-1","type_id":0}},"metadata":{{"uid":"a1b2c3d4e5f60718-{}","#,
                r#""version":"1.3.0","product":{{"name":"tiergate"}}}},"unmapped":{{"tiergate":{{"#,
                r#""kind":"connection","seq":{},"verdict":"deny","reason":"no-matching-rule","tier":"t0","#,
                r#""hook":"connect4","metadata_service":false,"tier_inherited":false,"#,
                r#""policy":{{"name":"p","version":"sha256:ab"}},"#,
                r#""workload":{{"cgroup_id":9,"cgroup_path":"/bench/t0/w0001"}}}}}}}}"#
            ),
            1_764_000_000_000 + seq * 3,
            ip,
            4000 + seq % 9,
            4000 + seq % 9,
            seq,
            seq
        )
    };
    let pod = concat!(
        r#"{"class_uid":4001,"time":1764000000500,"count":3,"connection_info":{"protocol_name":"tcp"},"#,
        r#""dst_endpoint":{"ip":"198.18.0.7","port":443},"device":{"hostname":"node-1"},"#,
        r#""firewall_rule":{"uid":"r-0123456789ab","name":"retrieval:egress[2]"},"#,
        r#""unmapped":{"tiergate":{"kind":"connection","seq":40,"verdict":"allow","tier":"retrieval","#,
        r#""fqdn":"API.Example.com.","rule":{"uid":"r-0123456789ab","index":2},"#,
        r#""policy":{"name":"p","version":"sha256:ab"},"workload":{"cgroup_id":9321,"#,
        r#""cgroup_path":"/kubepods.slice/kubepods-pod6b6d8f0e_2c1a_4b3f_9a1e_0c1d2e3f4a5b.slice","#,
        r#""namespace":"agents","service_account":"retriever","owner":"team-search","#,
        r#""spiffe_id":"spiffe://corp.example/ns/agents/sa/retriever"}}}}"#
    );
    let dns = r#"{"class_uid":4003,"time":1764000000600,"query":{"hostname":"api.example.com","type":"A"},"dst_endpoint":{"ip":"10.0.0.53","port":53},"device":{"hostname":"node-1"},"unmapped":{"tiergate":{"kind":"dns","verdict":"allow","tier":"t0","policy":{"version":"sha256:ab"},"workload":{"systemd_unit":"backup-17.service"}}}}"#;
    let policy = r#"{"class_uid":0,"time":1764000000001,"unmapped":{"tiergate":{"kind":"policy","action":"applied","seq":1,"policy":{"name":"p","version":"sha256:ab"},"rules":[{"tier":"t0","index":0,"uid":"r-0123456789ab"}]}}}"#;
    let loss = r#"{"class_uid":0,"time":1764000000002,"unmapped":{"tiergate":{"kind":"loss","count":3}}}"#;
    let escaped = r#"{"class_uid":4001,"time":1764000000700,"connection_info":{"protocol_name":"tcp"},"dst_endpoint":{"ip":"10.0.0.1","port":443},"device":{"hostname":"node-1"},"unmapped":{"tiergate":{"kind":"connection","verdict":"allow","tier":"t\u0030","workload":{"cgroup_path":"\/bench\/t0\/w0001","owner":{"team":"a"}}}}}"#;
    let mut run: Vec<String> = (10..16).map(|s| deny(s, "10.30.0.1")).collect();
    run.push(deny(16, "10.30.0.2"));
    run.extend((17..20).map(|s| deny(s, "10.30.0.1")));
    write(&d, "deny-runs", run.join("\n"));
    write(
        &d,
        "mixed",
        [
            policy.to_string(),
            deny(1, "10.30.0.1"),
            pod.to_string(),
            deny(2, "10.30.0.1"),
            pod.replace("\"seq\":40", "\"seq\":41"),
            dns.to_string(),
            loss.to_string(),
            escaped.to_string(),
            deny(3, "10.30.0.1"),
        ]
        .join("\n"),
    );
    write(
        &d,
        "broken",
        [
            deny(1, "10.30.0.1"),
            deny(2, "10.30.0.1").replace("\"time\":", "\"time\":-"),
            "not json".to_string(),
            deny(3, "10.30.0.1").replace("1.3.0", "1\"3.0"),
            r#"{"class_uid":4001,"unmapped":{"tiergate":{"kind":"connection"}}}"#.to_string(),
            deny(4, "10.30.0.1"),
        ]
        .join("\n"),
    );

    // sink_spec
    let d = corpus.join("sink_spec");
    for (i, s) in [
        "stdout",
        "-",
        "file:/var/log/tiergate/events.jsonl",
        "file:///var/log/tiergate/events.jsonl?max-bytes=104857600&keep=10",
        "file://relative/path",
        "file:events.jsonl?keep=0&max-bytes=0",
        "syslog+tls://siem.example:6514?ca=/etc/tiergate/ca.pem",
        "syslog+tls://[2001:db8::1]?ca=ca.pem&cert=c.pem&key=k.pem&app-name=tiergate",
        "syslog+tls://user:secret@siem?ca=ca.pem",
        "syslog://siem:514",
        "syslog+tls://siem?ca=%2Fetc%2Fca.pem&ca=x",
        "kafka://broker:9092",
    ]
    .iter()
    .enumerate()
    {
        write(&d, &format!("spec-{i:02}"), s);
    }

    // cli_flags: a value, then arguments, one per line.
    let d = corpus.join("cli_flags");
    for (i, s) in [
        "https://collector.example:4317",
        "https://[2001:db8::1]:4317/",
        "http://169.254.169.254:80",
        "[fd00:ec2::254]:80",
        "10.9.9.9:80",
        "api.github.com:443",
        "500ms",
        "30d\n--events\n-\n--ring-buffer-bytes\n4096\n--collector\nhttps://c:1",
        "x\n--sink\nstdout\n--listen\n[::]:4317\n--log-format\njson",
        "x\n--pid\n1\n--to\n[::1]:53\n--udp\n--json\n--agent\n127.0.0.1:9464",
    ]
    .iter()
    .enumerate()
    {
        write(&d, &format!("flags-{i:02}"), s);
    }

    // dns_messages: a flags byte, then a message.
    let d = corpus.join("dns_messages");
    let mut q = Message::query();
    q.metadata.id = 4711;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(name("api.github.com."), RecordType::A));
    let query = q.to_vec().expect("query");
    write(&d, "query-a", [[0u8].as_slice(), &query].concat());
    let mut q6 = Message::query();
    q6.metadata.id = 4712;
    q6.add_query(Query::query(
        name("bucket.s3.amazonaws.com."),
        RecordType::AAAA,
    ));
    write(
        &d,
        "query-aaaa",
        [[1u8].as_slice(), &q6.to_vec().expect("query")].concat(),
    );
    let mut ans = Message::response(4711, OpCode::Query);
    ans.metadata.message_type = MessageType::Response;
    ans.add_query(Query::query(name("www.example.com."), RecordType::A));
    ans.answers = vec![
        Record::from_rdata(
            name("www.example.com."),
            20,
            RData::CNAME(CNAME(name("edge.cdn.test."))),
        ),
        Record::from_rdata(
            name("edge.cdn.test."),
            300,
            RData::A(A("198.18.0.2".parse().expect("v4"))),
        ),
        Record::from_rdata(
            name("edge.cdn.test."),
            60,
            RData::AAAA(AAAA("::ffff:169.254.169.254".parse().expect("v6"))),
        ),
        Record::from_rdata(
            name("other.test."),
            60,
            RData::A(A("10.0.0.1".parse().expect("v4"))),
        ),
    ];
    ans.authorities = vec![Record::from_rdata(
        name("www.example.com."),
        60,
        RData::A(A("192.0.2.1".parse().expect("v4"))),
    )];
    write(
        &d,
        "answer-chain",
        [[3u8].as_slice(), &ans.to_vec().expect("answer")].concat(),
    );

    // metadata_request: target, method, then rules and headers.
    let d = corpus.join("metadata_request");
    for (i, s) in [
        "/latest/meta-data/iam/security-credentials/role\nGET\ndeny /latest/meta-data/iam/**\nX-aws-ec2-metadata-token: abc",
        "/latest/api/token\nPUT\nX-aws-ec2-metadata-token-ttl-seconds: 21600\nimdsv2",
        "/computeMetadata/v1/instance/service-accounts/default/token?recursive=true\nGET\nMetadata-Flavor: Google\nallow /computeMetadata/v1/instance/**",
        "/metadata/instance?api-version=2021-02-01\nGET\nMetadata: true",
        "/opc/v2/instance/\nGET\nAuthorization: Bearer Oracle\ndeny /opc/v1/identity/**",
        "/2009-04-04/meta-data/%2e%2e/user-data\nGET\ndeny-this",
        "/latest/meta-data/\nPOST\nX-Forwarded-For: 1.2.3.4",
    ]
    .iter()
    .enumerate()
    {
        write(&d, &format!("request-{i:02}"), s);
    }
    println!("seeds written under {}", corpus.display());
}

const POLICY_PODS: &str = r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata: {name: ai-platform}
spec:
  trustDomain: corp.example
  mode: enforce
  defaultTier: unassigned
  tiers:
    - name: retrieval
      description: read-only tools
      mode: audit
      egress:
        - cidrs: ["10.20.0.0/16", "fd00:20::/64"]
          ports: ["443", "8000-8100"]
          protocols: [tcp]
    - name: cloud-writer
      metadata: allow
      egress:
        - cidrs: ["0.0.0.0/0"]
          ports: [443]
    - name: unassigned
      egress: []
  bindings:
    - tier: cloud-writer
      match: {namespace: agents, serviceAccount: uploader, container: tool}
    - tier: retrieval
      match: {spiffeId: "spiffe://corp.example/ns/agents/sa/*"}
    - tier: retrieval
      match: {namespace: ops, podLabels: {app: fetcher}}
    - tier: retrieval
      match:
        cgroupPath: "/agents/tier0/**"
"#;

const POLICY_DNS_METADATA: &str = r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: names
spec:
  defaultTier: closed
  dns:
    resolvers: ["10.96.0.10", "fd00::10"]
    minTTL: 5s
    maxTTL: 1h
  tiers:
    - name: retrieval
      metadata:
        mode: filter
        require: imdsv2
        allowPaths: ["/latest/meta-data/**"]
        denyPaths: ["/latest/meta-data/iam/**"]
      egress:
        - fqdns: ["api.openai.com", "*.s3.amazonaws.com", "**.googleapis.com"]
          ports: ["443"]
          protocols: [tcp]
        - fqdns: ["vault.vault.svc.cluster.local"]
          allowPrivate: true
          ports: ["8200"]
    - name: closed
  elevation:
    - {from: closed, to: retrieval, maxDuration: 30m}
"#;

const POLICY_ERRORS: &str = r#"apiVersion: tiergate.io/v1alpha2
kind: TierPolicy
metadata: {name: Bad Name}
spec:
  mode: enforcing
  defaultTier: nowhere
  tierz: []
  tiers:
    - name: a
      egress:
        - cidrs: ["10.0.0.1/8", "300.0.0.0/8"]
          ports: ["0", "90-80", "http"]
          protocols: [icmp]
    - name: a
    - name: host
  bindings:
    - tier: missing
      match: {cgroupPath: "/a/**/b", serviceAccount: x}
  elevation:
    - {from: a, to: a, maxDuration: 8d}
    - {from: host, to: nowhere, maxDuration: 1 hour, until: never}
"#;
