//! OCSF 1.3 Detection Finding (class 2004) for probing (`probing.rs`): one
//! `finding_info.uid` per finding, activity Create, Update while it grows,
//! Close when quiet; the same `unmapped.tiergate` block as connection
//! records, with the counts and sample destinations under `probing`.

use std::net::SocketAddr;

use serde::Serialize;

use super::ocsf::{Class, Device, Envelope, Metadata, PolicyRef, Unmapped, Workload, metadata};
use super::probing::{Activity, Finding, Key};

/// Where findings come from (`finding_info.data_sources`).
const DATA_SOURCE: &str = "tiergate denied connections";

#[derive(Serialize)]
struct FindingInfo<'a> {
    uid: &'a str,
    title: String,
    desc: String,
    types: [&'static str; 2],
    first_seen_time: u64,
    last_seen_time: u64,
    data_sources: [&'static str; 1],
}

#[derive(Serialize)]
struct Probing {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    /// The most distinct destinations within one window.
    distinct: u32,
    /// New distinct destinations since the finding began.
    total: u32,
    window_s: u64,
    threshold: u32,
    samples: Vec<String>,
    /// Why it closed (Close only): `quiet`, `evicted`, `agent-stopped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<&'static str>,
}

#[derive(Serialize)]
struct TiergateFinding<'a> {
    kind: &'static str,
    seq: u64,
    tier: &'a str,
    policy: PolicyRef<'a>,
    workload: &'a Workload,
    probing: Probing,
}

#[derive(Serialize)]
struct DetectionFinding<'a> {
    #[serde(flatten)]
    class: Class,
    type_name: String,
    time: u64,
    severity_id: u8,
    severity: &'static str,
    status_id: u8,
    status: &'static str,
    message: &'a str,
    finding_info: FindingInfo<'a>,
    device: Device<'a>,
    metadata: Metadata<'a>,
    unmapped: Unmapped<TiergateFinding<'a>>,
}

/// OCSF activity and status of each step. OCSF 1.3 has no "Closed"
/// status: Close is status 99 (Other), named `Closed`.
fn step(a: Activity) -> (u32, &'static str, u8, &'static str) {
    match a {
        Activity::Create => (1, "Create", 1, "New"),
        Activity::Update => (2, "Update", 2, "In Progress"),
        Activity::Close => (3, "Close", 99, "Closed"),
    }
}

/// Renders one finding record as one JSON line (no trailing newline).
/// `uid` is the finding's (`finding_info.uid`); `seen` its first and last
/// seen times in epoch milliseconds.
pub fn detection_finding<C>(
    env: &Envelope<'_>,
    uid: &str,
    f: &Finding<C>,
    tier: &str,
    workload: &Workload,
    seen: (u64, u64),
    out: &mut Vec<u8>,
) {
    let (activity_id, activity_name, status_id, status) = step(f.activity);
    let window = crate::duration::Span::from_millis(f.window.as_millis() as u64);
    let (title, what, port, host) = match f.key {
        Key::Sweep(port) => (
            format!("Probing: sweep of port {port}"),
            format!("{} distinct denied hosts on port {port}", f.distinct),
            Some(port),
            None,
        ),
        Key::Scan(ip) => (
            format!("Probing: scan of host {ip}"),
            format!("{} distinct denied ports on host {ip}", f.distinct),
            None,
            Some(ip.to_string()),
        ),
    };
    let who = workload
        .cgroup_path
        .as_deref()
        .unwrap_or("an unnamed cgroup");
    let desc = format!(
        "{who} tried {what} within {window} (threshold {}).",
        f.threshold
    );
    let rec = DetectionFinding {
        class: Class {
            class_uid: 2004,
            class_name: "Detection Finding",
            category_uid: 2,
            category_name: "Findings",
            activity_id,
            activity_name,
            type_uid: 200400 + activity_id,
        },
        type_name: format!("Detection Finding: {activity_name}"),
        time: env.time,
        severity_id: 3,
        severity: "Medium",
        status_id,
        status,
        message: &desc,
        finding_info: FindingInfo {
            uid,
            title,
            desc: desc.clone(),
            types: ["probing", f.key.kind()],
            first_seen_time: seen.0,
            last_seen_time: seen.1,
            data_sources: [DATA_SOURCE],
        },
        device: Device {
            hostname: env.hostname,
            type_id: 0,
        },
        metadata: metadata(env.uid),
        unmapped: Unmapped {
            tiergate: TiergateFinding {
                kind: "finding",
                seq: env.seq,
                tier,
                policy: PolicyRef {
                    name: env.policy_name,
                    version: env.policy_version,
                },
                workload,
                probing: Probing {
                    kind: f.key.kind(),
                    port,
                    host,
                    distinct: f.distinct,
                    total: f.total,
                    window_s: f.window.as_secs(),
                    threshold: f.threshold,
                    samples: (f.samples.iter())
                        .map(|&p| SocketAddr::from(p).to_string())
                        .collect(),
                    end: f.end.map(|e| e.as_str()),
                },
            },
        },
    };
    serde_json::to_writer(&mut *out, &rec).expect("serializing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::events::probing::End;

    fn render(activity: Activity, key: Key, end: Option<End>) -> Value {
        let env = Envelope {
            time: 1_764_000_000_500,
            seq: 42,
            uid: "abc-42",
            hostname: "node-1",
            policy_name: Some("ai-platform"),
            policy_version: Some("sha256:00"),
        };
        let f = Finding {
            activity,
            serial: 3,
            cgroup_id: 9,
            key,
            distinct: 30,
            total: 31,
            threshold: 25,
            window: Duration::from_secs(300),
            first_seen_ms: 1,
            last_seen_ms: 2,
            samples: vec![
                ("10.40.0.1".parse().unwrap(), 22),
                ("fd00:40::1".parse().unwrap(), 22),
            ],
            end,
            ctx: (),
        };
        let w = Workload {
            cgroup_id: 9,
            cgroup_path: Some("/agents/tier0/tool".into()),
            ..Default::default()
        };
        let mut out = Vec::new();
        detection_finding(
            &env,
            "abc-probe-0-3",
            &f,
            "tier0",
            &w,
            (1_764_000_000_001, 1_764_000_000_002),
            &mut out,
        );
        serde_json::from_slice(&out).expect("one JSON object")
    }

    #[test]
    fn create_is_a_detection_finding_with_the_tiergate_block() {
        let j = render(Activity::Create, Key::Sweep(22), None);
        assert_eq!(j["class_uid"], 2004);
        assert_eq!(j["category_uid"], 2);
        assert_eq!(
            (j["activity_id"].as_u64(), j["activity_name"].as_str()),
            (Some(1), Some("Create"))
        );
        assert_eq!(j["type_uid"], 200401);
        assert_eq!(j["severity_id"], 3);
        assert_eq!(
            (j["status_id"].as_u64(), j["status"].as_str()),
            (Some(1), Some("New"))
        );
        let fi = &j["finding_info"];
        assert_eq!(fi["uid"], "abc-probe-0-3");
        assert_eq!(fi["title"], "Probing: sweep of port 22");
        assert_eq!(fi["types"], serde_json::json!(["probing", "sweep"]));
        assert_eq!(fi["first_seen_time"], 1_764_000_000_001u64);
        assert_eq!(fi["last_seen_time"], 1_764_000_000_002u64);
        assert!(
            fi["desc"]
                .as_str()
                .unwrap()
                .contains("/agents/tier0/tool tried 30")
        );
        assert_eq!(j["metadata"]["uid"], "abc-42");
        assert_eq!(j["device"]["hostname"], "node-1");
        let t = &j["unmapped"]["tiergate"];
        assert_eq!(t["kind"], "finding");
        assert_eq!(t["seq"], 42);
        assert_eq!(t["tier"], "tier0");
        assert_eq!(t["policy"]["version"], "sha256:00");
        assert_eq!(t["workload"]["cgroup_path"], "/agents/tier0/tool");
        let p = &t["probing"];
        assert_eq!(p["kind"], "sweep");
        assert_eq!(p["port"], 22);
        assert!(p.get("host").is_none());
        assert_eq!(
            (p["distinct"].as_u64(), p["total"].as_u64()),
            (Some(30), Some(31))
        );
        assert_eq!(
            (p["window_s"].as_u64(), p["threshold"].as_u64()),
            (Some(300), Some(25))
        );
        assert_eq!(
            p["samples"],
            serde_json::json!(["10.40.0.1:22", "[fd00:40::1]:22"])
        );
        assert!(p.get("end").is_none());
    }

    #[test]
    fn update_and_close_steps() {
        let host = "10.40.0.1".parse().unwrap();
        let u = render(Activity::Update, Key::Scan(host), None);
        assert_eq!(
            (u["activity_id"].as_u64(), u["type_uid"].as_u64()),
            (Some(2), Some(200402))
        );
        assert_eq!(u["status"], "In Progress");
        assert_eq!(u["unmapped"]["tiergate"]["probing"]["host"], "10.40.0.1");
        assert_eq!(u["finding_info"]["types"][1], "scan");
        let c = render(Activity::Close, Key::Scan(host), Some(End::Quiet));
        assert_eq!(
            (c["activity_id"].as_u64(), c["type_uid"].as_u64()),
            (Some(3), Some(200403))
        );
        assert_eq!(
            (c["status_id"].as_u64(), c["status"].as_str()),
            (Some(99), Some("Closed"))
        );
        assert_eq!(c["unmapped"]["tiergate"]["probing"]["end"], "quiet");
    }
}
