//! What the observation store costs per record, outside the benchmark.
//!
//! `cargo run --release -p tiergate-collector --example store_cost -- [MODE] [N]`
//!
//! Records are rendered as the agent renders them (`agent/src/events/ocsf.rs`,
//! CONTRACT section 3): the benchmark's deny record (a UDP connect from a
//! plain cgroup, about 1 KB) and an allowed pod record with a rule, owner and
//! SPIFFE ID (about 1.4 KB), every one with its own seq, uid and time.
//!
//! Modes:
//! - `observe` (default): `Aggregate::add_records` on batches of 1,000
//!   (what the store thread does with each batch) on this thread; CPU time
//!   per record.
//! - `feed`: through `store::feed` into a SQLite store in a temp dir, as the
//!   collector does (offer → channel → store thread → store); CPU time of the
//!   whole process per record (the store thread's, which is what the store
//!   takes from delivery).
//!
//! Meant for `perf record` too: `perf record -g target/release/examples/store_cost observe 3000000`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tiergate_collector::metrics::CollectorMetrics;
use tiergate_collector::store::{Aggregate, feed};

/// The benchmark's record: a denied UDP connect of the load client (to a
/// destination of its own with `spread`).
fn deny_record(seq: u64, spread: bool) -> Vec<u8> {
    let ip = if spread {
        format!("10.30.{}.{}", seq / 256 % 256, seq % 256)
    } else {
        "10.30.0.1".to_string()
    };
    format!(
        concat!(
            r#"{{"class_uid":4001,"class_name":"Network Activity","category_uid":4,"#,
            r#""category_name":"Network Activity","activity_id":1,"activity_name":"Open","#,
            r#""type_uid":400101,"type_name":"Network Activity: Open","time":{time},"#,
            r#""severity_id":3,"action_id":2,"action":"Denied","disposition_id":2,"#,
            r#""disposition":"Blocked","status_id":2,"connection_info":{{"protocol_name":"udp","#,
            r#""protocol_num":17,"direction_id":2,"direction":"Outbound"}},"#,
            r#""dst_endpoint":{{"ip":"{ip}","port":80}},"actor":{{"process":{{"pid":412345,"#,
            r#""name":"tiergate-bench","tid":412345}},"user":{{"uid":"0"}}}},"#,
            r#""device":{{"hostname":"bench-node-1.example.internal","type_id":0}},"#,
            r#""metadata":{{"uid":"6f1c2b7a-93d4-4e2a-8c11-0b5d7e9f3a21-{seq}","version":"1.3.0","#,
            r#""product":{{"name":"tiergate","vendor_name":"tiergate","version":"0.1.0"}}}},"#,
            r#""unmapped":{{"tiergate":{{"kind":"connection","seq":{seq},"verdict":"deny","#,
            r#""reason":"no-matching-rule","tier":"t0","hook":"connect4","metadata_service":false,"#,
            r#""tier_inherited":false,"policy":{{"name":"bench","#,
            r#""version":"sha256:3b7a1f0c9d2e4b5a6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3"}},"#,
            r#""workload":{{"cgroup_id":81234,"cgroup_path":"/tgbench412300/enf/t0/load-0"}}}}}}}}"#
        ),
        time = 1_764_000_000_000u64 + seq / 100,
        seq = seq,
        ip = ip,
    )
    .into_bytes()
}

/// An allowed connection of a pod, with its rule, owner and SPIFFE ID.
fn pod_record(seq: u64) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"class_uid":4001,"class_name":"Network Activity","category_uid":4,"#,
            r#""category_name":"Network Activity","activity_id":1,"activity_name":"Open","#,
            r#""type_uid":400101,"type_name":"Network Activity: Open","time":{time},"#,
            r#""severity_id":1,"action_id":1,"action":"Allowed","disposition_id":1,"#,
            r#""disposition":"Allowed","status_id":1,"connection_info":{{"protocol_name":"tcp","#,
            r#""protocol_num":6,"direction_id":2,"direction":"Outbound"}},"#,
            r#""dst_endpoint":{{"ip":"198.18.0.{ip}","port":443}},"actor":{{"process":{{"pid":9321,"#,
            r#""name":"python3","tid":9388}},"user":{{"uid":"1000"}}}},"#,
            r#""device":{{"hostname":"ip-10-1-2-3.eu-west-1.compute.internal","type_id":0}},"#,
            r#""firewall_rule":{{"uid":"r-0123456789ab","name":"retrieval:egress[2]"}},"#,
            r#""metadata":{{"uid":"6f1c2b7a-93d4-4e2a-8c11-0b5d7e9f3a21-{seq}","version":"1.3.0","#,
            r#""product":{{"name":"tiergate","vendor_name":"tiergate","version":"0.1.0"}}}},"#,
            r#""unmapped":{{"tiergate":{{"kind":"connection","seq":{seq},"verdict":"allow","#,
            r#""reason":"egress-rule","tier":"retrieval","hook":"connect4","metadata_service":false,"#,
            r#""tier_inherited":false,"fqdn":"api.search.example.com","#,
            r#""rule":{{"uid":"r-0123456789ab","index":2}},"policy":{{"name":"ai-platform","#,
            r#""version":"sha256:3b7a1f0c9d2e4b5a6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3"}},"#,
            r#""workload":{{"cgroup_id":9321,"cgroup_path":"/kubepods.slice/kubepods-burstable.slice/"#,
            r#"kubepods-burstable-pod6b6d8f0e_2c1a_4b3f_9a1e_0c1d2e3f4a5b.slice/"#,
            r#"cri-containerd-4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f.scope","#,
            r#""namespace":"agents","pod":"retriever-7d9f8c6b5-x2k4q","#,
            r#""pod_uid":"6b6d8f0e-2c1a-4b3f-9a1e-0c1d2e3f4a5b","service_account":"retriever","#,
            r#""container":"tool","container_id":"4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f","#,
            r#""owner":"team-search","spiffe_id":"spiffe://corp.example/ns/agents/sa/retriever","#,
            r#""pod_state":"resolved"}}}}}}}}"#
        ),
        time = 1_764_000_000_000u64 + seq / 100,
        seq = seq,
        ip = seq % 4,
    )
    .into_bytes()
}

/// Batches of 1,000 (the agent's largest), deny records or a 1:1 mix.
fn batches(n: usize, mix: bool, spread: bool) -> Vec<Vec<Vec<u8>>> {
    (0..n as u64)
        .map(|seq| {
            if mix && seq % 2 == 1 {
                pod_record(seq)
            } else {
                deny_record(seq, spread)
            }
        })
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(<[Vec<u8>]>::to_vec)
        .collect()
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("observe", String::as_str);
    let n: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let mix = args.iter().any(|a| a == "mix");
    let spread = args.iter().any(|a| a == "spread");
    let sample_sizes = (deny_record(1, false).len(), pod_record(1).len());
    println!(
        "records: deny {} bytes, pod {} bytes; {n} records{}{}",
        sample_sizes.0,
        sample_sizes.1,
        if mix {
            ", deny and pod 1:1"
        } else {
            ", all deny"
        },
        if spread {
            ", each deny to another destination"
        } else {
            ""
        }
    );
    let input = batches(if mode == "observe" { 10_000 } else { n }, mix, spread);
    match mode {
        "observe" => {
            // A pool of distinct records read again and again: the
            // profile is the store's, not the making of records.
            let pool: Vec<Vec<u8>> = input.into_iter().take(10).flatten().collect();
            let cpu0 = cpu_time();
            let mut agg = Aggregate::default();
            for batch in pool.chunks(1000).cycle().take(n / 1000) {
                agg.add_records(batch, |e| panic!("{e}"));
                // Every second's worth, a new aggregate (as after a flush).
                if agg.updates >= 150_000 {
                    agg = Aggregate::default();
                }
            }
            let cpu = cpu_time() - cpu0;
            println!(
                "observe + aggregate: {:.0} ns CPU per record",
                cpu.as_nanos() as f64 / n as f64
            );
        }
        "feed" => {
            let dir = std::env::temp_dir().join(format!("tg-store-cost-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let url = format!("sqlite:{}", dir.join("s.db").display());
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let metrics = Arc::new(CollectorMetrics::new());
            let (feed, stopper) = rt
                .block_on(feed::start(url, 1_000_000, metrics.clone()))
                .unwrap();
            let cpu0 = cpu_time();
            let t = Instant::now();
            let mut offered = 0u64;
            for batch in input {
                offered += batch.len() as u64;
                feed.offer(batch.into_iter().map(|j| ("connection", j)));
                // Below the store's bound of waiting records (what it cannot
                // take is dropped): it writes at least every 50,000 updates.
                while offered - metrics.store_records.get() > 90_000 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            stopper.stop(Duration::from_secs(60));
            let cpu = cpu_time() - cpu0;
            println!(
                "feed (offer + store thread + sqlite): {:.0} ns CPU per record, {} written, {} dropped, {:.2} s wall",
                cpu.as_nanos() as f64 / n as f64,
                metrics.store_records.get(),
                metrics.store_dropped.get(),
                t.elapsed().as_secs_f64()
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
        other => panic!("unknown mode {other}: observe or feed"),
    }
}
