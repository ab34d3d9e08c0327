//! The scanner against serde_json: on every line the scanner reads, both
//! must read the same; everything else it must leave to serde_json.

use serde_json::json;

use super::super::observe::tests::connection;
use super::super::record::Rec;
use super::read;

/// An allowed connection of a pod as the agent writes it, with every
/// field the store reads and many it skips.
const POD: &str = concat!(
    r#"{"class_uid":4001,"class_name":"Network Activity","category_uid":4,"#,
    r#""category_name":"Network Activity","activity_id":1,"activity_name":"Open","#,
    r#""type_uid":400101,"type_name":"Network Activity: Open","time":1764000000123,"#,
    r#""severity_id":1,"action_id":1,"action":"Allowed","disposition_id":1,"#,
    r#""disposition":"Allowed","status_id":1,"connection_info":{"protocol_name":"tcp","#,
    r#""protocol_num":6,"direction_id":2,"direction":"Outbound"},"#,
    r#""dst_endpoint":{"ip":"198.18.0.7","port":443},"actor":{"process":{"pid":9321,"#,
    r#""name":"python3","tid":9388},"user":{"uid":"1000"}},"#,
    r#""device":{"hostname":"ip-10-1-2-3.eu-west-1.compute.internal","type_id":0},"#,
    r#""firewall_rule":{"uid":"r-0123456789ab","name":"retrieval:egress[2]"},"#,
    r#""metadata":{"uid":"6f1c2b7a-93d4-4e2a-8c11-0b5d7e9f3a21-17","version":"1.3.0","#,
    r#""product":{"name":"tiergate","vendor_name":"tiergate","version":"0.1.0"}},"#,
    r#""unmapped":{"tiergate":{"kind":"connection","seq":17,"verdict":"allow","#,
    r#""reason":"egress-rule","tier":"retrieval","hook":"connect4","metadata_service":false,"#,
    r#""tier_inherited":false,"fqdn":"API.Search.example.com.","#,
    r#""rule":{"uid":"r-0123456789ab","index":2},"policy":{"name":"ai-platform","#,
    r#""version":"sha256:3b7a1f0c9d2e4b5a6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3"},"#,
    r#""workload":{"cgroup_id":9321,"cgroup_path":"/kubepods.slice/kubepods-burstable.slice/"#,
    r#"kubepods-burstable-pod6b6d8f0e_2c1a_4b3f_9a1e_0c1d2e3f4a5b.slice/cri-containerd-4f2a.scope","#,
    r#""namespace":"agents","pod":"retriever-7d9f8c6b5-x2k4q","service_account":"retriever","#,
    r#""owner":"team-search","spiffe_id":"spiffe://corp.example/ns/agents/sa/retriever","#,
    r#""pod_state":"resolved","tags":[1,-2.5e3,true,null,{"a":[]},"x\"\\\/\b\f\n\r\t\u00e9"]}}}}"#
);

fn samples() -> Vec<String> {
    let dns = json!({
        "class_uid": 4003, "time": 5, "query": {"hostname": "Api.Example.com.", "type": "A"},
        "connection_info": {"protocol_name": "udp"},
        "dst_endpoint": {"ip": "10.0.0.53", "port": 53},
        "device": {"hostname": "n"},
        "unmapped": {"tiergate": {"kind": "dns", "verdict": "deny", "tier": "t",
            "policy": {"version": "sha256:1"}, "workload": {"systemd_unit": "a-1.service"}}}
    });
    let policy = json!({"class_uid": 0, "time": 9, "device": {"hostname": "n"},
        "unmapped": {"tiergate": {"kind": "policy", "action": "applied", "seq": 1,
            "policy": {"name": "p", "version": "sha256:2"}, "rules": null}}});
    let mut counted = connection("deny", "10.0.0.1", 443);
    counted["count"] = json!(12);
    counted["unmapped"]["tiergate"]["rule"] = json!({"uid": "r-1", "index": 0});
    vec![
        POD.to_string(),
        connection("allow", "10.0.0.1", 443).to_string(),
        serde_json::to_string_pretty(&counted).unwrap(),
        dns.to_string(),
        policy.to_string(),
    ]
}

/// The scanner reads `line` as serde_json does, or leaves it; says which.
fn agrees(line: &[u8]) -> bool {
    let Some(fast) = read(line) else {
        return false;
    };
    match Rec::read_serde(line) {
        Ok(slow) => assert_eq!(fast, slow, "{}", String::from_utf8_lossy(line)),
        Err(e) => panic!(
            "the scanner read a line serde_json refuses ({e}): {}",
            String::from_utf8_lossy(line)
        ),
    }
    true
}

#[test]
fn records_as_agents_write_them_are_read_by_the_scanner() {
    for line in samples() {
        assert!(agrees(line.as_bytes()), "declined: {line}");
    }
    let rec = read(POD.as_bytes()).unwrap();
    let tg = rec.unmapped.unwrap().tiergate.unwrap();
    assert_eq!(rec.time, Some(1_764_000_000_123));
    assert_eq!(tg.fqdn.unwrap().0, "API.Search.example.com.");
    let w = tg.workload.unwrap();
    assert_eq!(w.owner, Some(json!("team-search")));
    assert_eq!(w.namespace.unwrap().0, "agents");
}

#[test]
fn what_serde_json_might_read_otherwise_is_left_to_it() {
    let declined = [
        // Escapes in a key or a wanted string (serde_json unescapes them).
        r#"{"ti\u006de":1}"#,
        r#"{"unmapped":{"tiergate":{"tier":"t\u0030"}}}"#,
        // Other types than agents write.
        r#"{"time":1.0}"#,
        r#"{"time":1e3}"#,
        r#"{"time":-1}"#,
        r#"{"time":"1"}"#,
        r#"{"class_uid":4294967296}"#,
        r#"{"dst_endpoint":{"port":65536}}"#,
        r#"{"time":123456789012345678901}"#,
        r#"{"dst_endpoint":["10.0.0.1",80]}"#,
        r#"{"unmapped":{"tiergate":{"workload":{"owner":{"team":"a"}}}}}"#,
        r#"{"unmapped":{"tiergate":{"rules":[]}}}"#,
        // A wanted field twice (serde refuses it), even as null.
        r#"{"time":1,"time":2}"#,
        r#"{"device":null,"device":{}}"#,
        r#"{"unmapped":{"tiergate":{"tier":null,"tier":"t"}}}"#,
        // Not a JSON object.
        "null",
        "[]",
        "",
        "{",
        r#"{"a":1,}"#,
        r#"{"a":01}"#,
        r#"{"a":1}x"#,
        r#"{"a":tru}"#,
        r#"{"a":"b
c"}"#,
        r#"{"a":"\x"}"#,
    ];
    for line in declined {
        assert!(read(line.as_bytes()).is_none(), "read: {line}");
    }
    let deep = format!("{}1{}", r#"{"a":["#.repeat(40), "]}".repeat(40));
    assert!(read(deep.as_bytes()).is_none());
    // Not UTF-8 (in a string serde_json skips without checking).
    assert!(read(b"{\"message\":\"\xff\"}").is_none());
    // What agents do write, with space.
    assert!(agrees(b" {\"time\" : 1 ,\n\t\"x\":[ ] , \"y\":{ }}\r\n"));
    assert!(agrees(
        br#"{"unmapped":{"tiergate":{"kind":null}},"device":null}"#
    ));
}

/// Mutated records, byte by byte and value by value: whatever the scanner
/// reads, serde_json reads the same.
#[test]
fn mutated_records_are_read_the_same_or_left_to_serde_json() {
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    const BYTES: &[u8] = b"{}[]\":,\\ \n0123456789-+.eEtrufalsn\x01\xc3\xa9ax";
    const VALUES: &[&str] = &[
        "null",
        "0",
        "1",
        "-1",
        "1.5",
        "1e2",
        "18446744073709551616",
        "\"\"",
        "\"t\\u0030\"",
        "\"\\\"\"",
        "[]",
        "{}",
        "[1,{\"a\":null}]",
        "true",
        "\"x\"",
        "65536",
        "4294967296",
    ];
    let (mut read_by_scanner, mut total) = (0, 0);
    for base in samples() {
        for _ in 0..1500 {
            let mut line = base.clone().into_bytes();
            for _ in 0..=next(3) {
                let at = next(line.len() + 1).min(line.len());
                match next(6) {
                    0 if at < line.len() => {
                        line.remove(at);
                    }
                    1 => line.insert(at, BYTES[next(BYTES.len())]),
                    2 if at < line.len() => line[at] = BYTES[next(BYTES.len())],
                    3 => {
                        // A value replaced: after a colon, up to , } or ].
                        let colons: Vec<usize> = line
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| **b == b':')
                            .map(|(i, _)| i + 1)
                            .collect();
                        let start = colons[next(colons.len())];
                        let end = line[start..]
                            .iter()
                            .position(|b| matches!(b, b',' | b'}' | b']'))
                            .map_or(line.len(), |n| start + n);
                        let v = VALUES[next(VALUES.len())].as_bytes();
                        line.splice(start..end, v.iter().copied());
                    }
                    4 => {
                        // A field repeated: `"key":` copied before itself.
                        let quotes: Vec<usize> = line
                            .windows(2)
                            .enumerate()
                            .filter(|(_, w)| w == b"{\"" || w == b",\"")
                            .map(|(i, _)| i + 1)
                            .collect();
                        if let Some(&start) = quotes.get(next(quotes.len().max(1))) {
                            let end = line[start..]
                                .iter()
                                .position(|b| matches!(b, b',' | b'}'))
                                .map_or(line.len(), |n| start + n);
                            let field: Vec<u8> = line[start..end].to_vec();
                            line.splice(start..start, field.into_iter().chain([b',']));
                        }
                    }
                    _ => {}
                }
            }
            total += 1;
            if agrees(&line) {
                read_by_scanner += 1;
            }
        }
    }
    // Enough of the mutants are still records for the comparison to count.
    assert!(
        read_by_scanner * 10 > total,
        "{read_by_scanner} of {total} read"
    );
}
