use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::*;

const S: u64 = 1_000;

/// A 60 s window (Updates at most every 20 s), sweeps from 5 hosts, scans
/// from 4 ports.
fn small() -> Config {
    Config {
        window: Duration::from_secs(60),
        hosts: 5,
        ports: 4,
    }
}

fn host(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a28_0000 + n))
}

/// Feeds `pairs` at `t`; returns what came out.
fn feed(
    d: &mut Detector<&'static str>,
    t: u64,
    cg: u64,
    pairs: &[Pair],
) -> Vec<Finding<&'static str>> {
    let mut out = Vec::new();
    for p in pairs {
        d.observe(t, cg, *p, "t0", &mut out);
    }
    out
}

fn tick(d: &mut Detector<&'static str>, t: u64) -> Vec<Finding<&'static str>> {
    let mut out = Vec::new();
    d.tick(t, &mut out);
    out
}

fn hosts_on(port: u16, range: std::ops::Range<u32>) -> Vec<Pair> {
    range.map(|n| (host(n), port)).collect()
}

#[test]
fn below_the_threshold_nothing_and_at_it_one_create() {
    let mut d = Detector::new(small());
    assert!(
        feed(&mut d, 0, 7, &hosts_on(22, 1..5)).is_empty(),
        "4 hosts < 5"
    );
    // The same hosts again are not new.
    assert!(feed(&mut d, S, 7, &hosts_on(22, 1..5)).is_empty());
    let out = feed(&mut d, 2 * S, 7, &hosts_on(22, 5..6));
    assert_eq!(out.len(), 1, "{out:?}");
    let f = &out[0];
    assert_eq!(f.activity, Activity::Create);
    assert_eq!(f.key, Key::Sweep(22));
    assert_eq!((f.distinct, f.total, f.threshold), (5, 5, 5));
    assert_eq!((f.first_seen_ms, f.last_seen_ms), (0, 2 * S));
    assert_eq!(f.samples, hosts_on(22, 1..6), "first seen first");
    assert_eq!((f.serial, f.cgroup_id, f.ctx), (1, 7, "t0"));
    assert_eq!(f.window, Duration::from_secs(60));
}

#[test]
fn growth_is_updated_at_most_once_per_interval_then_closed_when_quiet() {
    let mut d = Detector::new(small());
    assert_eq!(d.config().update_interval(), Duration::from_secs(20));
    let created = feed(&mut d, 0, 7, &hosts_on(22, 0..5));
    assert_eq!(created.len(), 1);
    // Growth within the interval: nothing yet, on events or ticks.
    for i in 5..15 {
        assert!(feed(&mut d, u64::from(i) * S, 7, &hosts_on(22, i..i + 1)).is_empty());
    }
    assert!(tick(&mut d, 19 * S).is_empty());
    // Once the interval has passed, one Update with the peak.
    let up = tick(&mut d, 20 * S);
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].activity, Activity::Update);
    assert_eq!((up[0].distinct, up[0].total, up[0].serial), (15, 15, 1));
    assert_eq!(up[0].samples.len(), MAX_SAMPLES);
    // No growth: no Update however long.
    assert!(tick(&mut d, 45 * S).is_empty());
    // Growth after the interval is reported with the event itself.
    let up = feed(&mut d, 46 * S, 7, &hosts_on(22, 15..16));
    assert_eq!(up.len(), 1);
    assert_eq!((up[0].activity, up[0].distinct), (Activity::Update, 16));
    // Retrying known destinations keeps them in the window but is not new:
    // the finding closes one window after its last new destination.
    for t in [60, 80, 100] {
        assert!(feed(&mut d, t * S, 7, &hosts_on(22, 10..16)).is_empty());
    }
    assert!(tick(&mut d, 105 * S).is_empty());
    let closed = tick(&mut d, 106 * S);
    assert_eq!(closed.len(), 1, "{closed:?}");
    let c = &closed[0];
    assert_eq!(
        (c.activity, c.end, c.serial),
        (Activity::Close, Some(End::Quiet), 1)
    );
    assert_eq!((c.distinct, c.last_seen_ms), (16, 46 * S));
    assert!(tick(&mut d, 500 * S).is_empty(), "closed once");
    assert_eq!(d.tracked(), (0, 0), "nothing left");
}

#[test]
fn sweeps_and_scans_are_counted_apart() {
    // Zeek's defaults: 24 hosts on port 22 and 14 ports on another host
    // make 38 distinct denied pairs and neither kind.
    let mut d = Detector::new(Config::default());
    let mut pairs = hosts_on(22, 1..25);
    pairs.extend((1000..1014).map(|p| (host(900), p)));
    assert!(feed(&mut d, 0, 1, &pairs).is_empty());
    // The 25th host makes a sweep, the 15th port a scan: two findings.
    let sweep = feed(&mut d, S, 1, &[(host(25), 22)]);
    let scan = feed(&mut d, S, 1, &[(host(900), 1014)]);
    assert_eq!(sweep.len(), 1);
    assert_eq!(scan.len(), 1);
    assert_eq!((sweep[0].key, sweep[0].distinct), (Key::Sweep(22), 25));
    assert_eq!((scan[0].key, scan[0].distinct), (Key::Scan(host(900)), 15));
    assert_ne!(sweep[0].serial, scan[0].serial);
}

#[test]
fn a_kind_set_to_zero_is_off() {
    let mut d = Detector::new(Config {
        hosts: 0,
        ..small()
    });
    assert!(feed(&mut d, 0, 1, &hosts_on(22, 0..100)).is_empty());
    let scan: Vec<Pair> = (1..5).map(|p| (host(1), p)).collect();
    assert_eq!(feed(&mut d, 0, 1, &scan)[0].key, Key::Scan(host(1)));
    let mut off = Detector::new(Config {
        hosts: 0,
        ports: 0,
        ..small()
    });
    assert!(feed(&mut off, 0, 1, &hosts_on(22, 0..100)).is_empty());
    assert_eq!(off.tracked(), (0, 0));
}

#[test]
fn old_pairs_leave_the_window() {
    // One new host every 20 s: never more than 3 in a 60 s window.
    let mut d = Detector::new(small());
    for i in 0..100 {
        let t = u64::from(i) * 20 * S;
        assert!(
            feed(&mut d, t, 1, &hosts_on(22, i..i + 1)).is_empty(),
            "host {i}"
        );
        assert!(tick(&mut d, t + S).is_empty());
        assert!(d.tracked().1 <= 3, "{:?}", d.tracked());
    }
    // Four in 30 s, then the fifth: the first is still in the window...
    let mut d = Detector::new(small());
    for i in 0..4 {
        feed(&mut d, u64::from(i) * 10 * S, 1, &hosts_on(22, i..i + 1));
    }
    assert_eq!(feed(&mut d, 59 * S, 1, &hosts_on(22, 4..5)).len(), 1);
    // ...one second later it would not have been.
    let mut d = Detector::new(small());
    for i in 0..4 {
        feed(&mut d, u64::from(i) * 10 * S, 1, &hosts_on(22, i..i + 1));
    }
    assert!(feed(&mut d, 60 * S, 1, &hosts_on(22, 4..5)).is_empty());
}

#[test]
fn workloads_are_independent() {
    let mut d = Detector::new(small());
    assert!(feed(&mut d, 0, 1, &hosts_on(22, 0..4)).is_empty());
    assert!(feed(&mut d, 0, 2, &hosts_on(22, 0..4)).is_empty());
    let out = feed(&mut d, S, 2, &hosts_on(22, 4..5));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cgroup_id, 2);
    assert_eq!(d.tracked(), (2, 9));
}

#[test]
fn memory_is_bounded_by_the_caps() {
    let mut d = Detector::new(small());
    // One workload trying 10,000 hosts on 3 ports: at most MAX_PAIRS kept.
    let mut out = Vec::new();
    for i in 0..10_000u32 {
        d.observe(
            u64::from(i),
            1,
            (host(i), 80 + (i % 3) as u16),
            "t0",
            &mut out,
        );
        assert!(d.tracked().1 <= MAX_PAIRS);
    }
    assert_eq!(d.tracked(), (1, MAX_PAIRS));
    let creates = out
        .iter()
        .filter(|f| f.activity == Activity::Create)
        .count();
    assert_eq!(creates, 3, "one sweep per port");
    // 5,000 more workloads: at most MAX_WORKLOADS, the quietest forgotten
    // first, its open findings closed as evicted.
    out.clear();
    for cg in 2..5_002u64 {
        d.observe(20_000 + cg, cg, (host(1), 80), "t0", &mut out);
        assert!(d.tracked().0 <= MAX_WORKLOADS);
    }
    assert_eq!(d.tracked().0, MAX_WORKLOADS);
    let evicted: Vec<_> = out.iter().filter(|f| f.end == Some(End::Evicted)).collect();
    assert_eq!(evicted.len(), 3, "workload 1 went first: {evicted:?}");
    assert!(evicted.iter().all(|f| f.cgroup_id == 1));
    // A window later everything has left.
    assert!(tick(&mut d, 100_000).is_empty());
    assert_eq!(d.tracked(), (0, 0));
}

#[test]
fn all_workloads_together_hold_at_most_the_total_cap() {
    let mut d = Detector::new(Config {
        ports: 0,
        ..small()
    });
    let mut out = Vec::new();
    let per = MAX_PAIRS as u32;
    for cg in 0..70u64 {
        for i in 0..per {
            let t = cg * u64::from(per) + u64::from(i);
            d.observe(t / 100, cg, (host(i), 80), "t0", &mut out);
        }
        assert!(d.tracked().1 <= MAX_TOTAL_PAIRS, "{:?}", d.tracked());
    }
    assert!(
        d.tracked().1 > MAX_TOTAL_PAIRS - MAX_PAIRS,
        "{:?}",
        d.tracked()
    );
    assert!(d.tracked().0 < 70);
    let evicted = out.iter().filter(|f| f.end == Some(End::Evicted)).count();
    assert_eq!(evicted, 70 - d.tracked().0, "each forgotten sweep closed");
}

#[test]
fn stopping_closes_what_is_open() {
    let mut d = Detector::new(small());
    feed(&mut d, 0, 1, &hosts_on(22, 0..5));
    let mut out = Vec::new();
    d.close_all(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].activity, out[0].end),
        (Activity::Close, Some(End::Stopped))
    );
    assert_eq!(d.tracked(), (0, 0));
}

#[test]
fn time_going_back_is_taken_as_now() {
    let mut d = Detector::new(small());
    feed(&mut d, 100 * S, 1, &hosts_on(22, 0..4));
    // An event stamped before the last tick still counts, at the tick's time.
    assert!(tick(&mut d, 101 * S).is_empty());
    let out = feed(&mut d, 50 * S, 1, &hosts_on(22, 4..5));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].last_seen_ms, 101 * S);
}

/// `pairs` as attempts of one kind.
fn attempts(pairs: &[Pair], udp_connect: bool, learned: bool) -> Vec<Attempt> {
    (pairs.iter())
        .map(|&dst| Attempt {
            dst,
            udp_connect,
            learned,
        })
        .collect()
}

fn feed_attempts(
    d: &mut Detector<&'static str>,
    t: u64,
    cg: u64,
    tries: &[Attempt],
) -> (usize, Vec<Finding<&'static str>>) {
    let mut out = Vec::new();
    let counted = (tries.iter())
        .filter(|a| d.observe(t, cg, **a, "t0", &mut out))
        .count();
    (counted, out)
}

#[test]
fn a_resolvers_sort_probes_of_its_own_answer_are_not_counted() {
    // Go probes every answered address on port 9, glibc on the asked port:
    // 40 addresses, far above 5 hosts on one port.
    let mut d = Detector::new(small());
    for port in [9, 443, 0] {
        let (counted, out) =
            feed_attempts(&mut d, 0, 1, &attempts(&hosts_on(port, 1..41), true, true));
        assert_eq!((counted, out.len()), (0, 0), "port {port}: {out:?}");
    }
    assert_eq!(d.tracked(), (0, 0), "nothing held for them");
    // Nor do they add to real attempts: 4 TCP connects on port 9 and the
    // probes to 40 more hosts stay below the threshold; the 5th TCP
    // connect makes it, with 5 distinct, not 45.
    assert!(feed(&mut d, S, 2, &hosts_on(9, 100..104)).is_empty());
    let (_, out) = feed_attempts(&mut d, S, 2, &attempts(&hosts_on(9, 1..41), true, true));
    assert!(out.is_empty(), "{out:?}");
    let out = feed(&mut d, 2 * S, 2, &hosts_on(9, 104..105));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].key, out[0].distinct), (Key::Sweep(9), 5));
}

#[test]
fn a_sweep_of_learned_addresses_by_datagram_or_tcp_or_of_unlearned_ones_is_counted() {
    let cases = [
        // Datagrams sent to learned addresses (sendmsg): real traffic.
        ("udp datagrams to learned addresses", false, true),
        // TCP connects to learned addresses on a port the name does not allow.
        ("tcp connects to learned addresses", false, true),
        // UDP connects to addresses the workload never resolved.
        ("udp connects to unlearned addresses", true, false),
        ("tcp connects to unlearned addresses", false, false),
    ];
    for (what, udp_connect, learned) in cases {
        let mut d = Detector::new(small());
        let (counted, out) = feed_attempts(
            &mut d,
            0,
            1,
            &attempts(&hosts_on(9, 1..41), udp_connect, learned),
        );
        assert_eq!(counted, 40, "{what}");
        assert_eq!(out.len(), 1, "{what}: {out:?}");
        assert_eq!(
            (out[0].activity, out[0].key),
            (Activity::Create, Key::Sweep(9))
        );
        assert_eq!(out[0].distinct, 5, "{what}: created at the threshold");
    }
    // A scan of one learned host's ports by datagram is a scan.
    let mut d = Detector::new(small());
    let ports: Vec<Pair> = (1000..1010).map(|p| (host(1), p)).collect();
    let (_, out) = feed_attempts(&mut d, 0, 1, &attempts(&ports, false, true));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].key, Key::Scan(host(1)));
}

#[test]
fn a_sort_probe_then_a_datagram_to_the_same_pair_counts_the_datagram() {
    let mut d = Detector::new(small());
    let pairs = hosts_on(9, 1..6);
    feed_attempts(&mut d, 0, 1, &attempts(&pairs, true, true));
    let (counted, out) = feed_attempts(&mut d, S, 1, &attempts(&pairs, false, true));
    assert_eq!(counted, 5);
    assert_eq!(out.len(), 1, "the datagrams are new pairs: {out:?}");
}
