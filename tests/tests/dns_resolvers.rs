//! DNS names with resolvers other than glibc's, on the real kernel: a
//! static musl client and a pure-Go one (`tiergate_tests::resolvers`,
//! built at test time) resolve through the agent's DNS proxy as the glibc
//! tests in `dns.rs` do: an allowed name opens its answer for the asking
//! workload, a name no rule allows is NXDOMAIN (musl's EAI_NONAME, Go's "no
//! such host", never a timeout) and never reaches the resolver, and an
//! address the client did not resolve stays closed. The policy's resolver
//! ([`BIG_RESOLVER`]) also holds a name whose answer is over 512 bytes:
//! over UDP it comes back truncated (TC=1) and Go retries over TCP through
//! the proxy; musl 1.2.3 (Debian bookworm) has no TCP fallback, so there
//! the test only checks that nothing opens without an answer.
//!
//! The long answer's 40 addresses also show resolvers' RFC 6724 sort
//! probes (a UDP connect per address, nothing sent): glibc (the same C
//! client built against the system's glibc) and Go resolve it under a
//! TCP/443 rule; every probe is denied and written, and none is counted
//! as probing, while datagrams or TCP to those addresses, or UDP connects
//! to addresses never resolved, still raise sweeps.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tiergate_tests::dns_world::{NAMES, RESOLVER, World, dns_policy, is_dns};
use tiergate_tests::resolvers::{
    BIG_COUNT, BIG_NAME, BIG_RESOLVER, Client, Lookup, big_addresses, serve_big_zone,
};
use tiergate_tests::{is_conn, tg};

/// A world whose policy's resolver is the big zone's server; returns it
/// with that server's query log.
fn world(name: &str) -> (World, PathBuf) {
    let mut w = World::new(name);
    let log = serve_big_zone(&mut w);
    let root = w.f.cg_path.clone();
    let policy = dns_policy(&root, "enforce", &format!("{NAMES}, \"{BIG_NAME}\"")).replace(
        &format!("resolvers: [\"{RESOLVER}\"]"),
        &format!("resolvers: [\"{BIG_RESOLVER}\"]"),
    );
    w.f.start_agent(&policy);
    w.warm_up("t0/a");
    (w, log)
}

/// Did any of the world's DNS servers see `name`?
fn asked(w: &World, log: &PathBuf, name: &str) -> bool {
    [log, &w.log, &w.rogue_log]
        .iter()
        .any(|l| w.queried(l).contains(name))
}

/// The first event from cgroup `rel` matching `pred`.
fn event_of(w: &World, what: &str, rel: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let cg = w.f.cg(rel);
    w.f.wait_event(what, |e| {
        tg(e)["workload"]["cgroup_path"] == cg.as_str() && pred(e)
    })
}

/// What both clients must show: the allowed name opens its address for the
/// asker (with its DNS and connection records), a refused name is NXDOMAIN
/// and never forwarded, unresolved addresses stay EPERM.
fn resolves_through_the_proxy(c: &Client, w: &World, log: &PathBuf, nxdomain: &dyn Fn(&Lookup)) {
    let rel = format!("t0/{}", c.label);
    let look = |name: &str| c.lookup(w, &rel, "resolv.conf", name, 443);

    // Not resolved by this workload (t0/a did, in warm_up): closed.
    let r = look("198.18.0.10");
    assert_eq!(r.result, "connect EPERM 198.18.0.10", "{r:?}");

    // An allowed name: the answer through the proxy, the connect goes out
    // (the namespace's echo server on :443 accepts it).
    let r = look("api.example.test");
    assert_eq!(r.result, "ok 198.18.0.10", "{r:?}");
    assert_eq!(r.addresses, ["198.18.0.10"], "{r:?}");
    // A CNAME chain: the address at its end opens under the asked name.
    let r = look("www.example.test");
    assert_eq!(r.result, "ok 198.18.0.12", "{r:?}");
    let q = event_of(w, "the DNS record of the allowed name", &rel, |e| {
        is_dns(e, "api.example.test") && e["query"]["type"] == "A"
    });
    assert_eq!(q["rcode"], "NoError", "{q}");
    // Forwarded to the policy's resolver, not the one resolv.conf names.
    assert_eq!(q["dst_endpoint"]["ip"], BIG_RESOLVER, "{q}");
    let t = tg(&q);
    assert_eq!(t["verdict"], "allow", "{q}");
    assert_eq!(t["tier"], "t0", "{q}");
    assert_eq!(t["addresses"][0]["ip"], "198.18.0.10", "{q}");
    assert_eq!(t["addresses"][0]["learned"], true, "{q}");
    let conn = event_of(w, "the connection the name opened", &rel, |e| {
        is_conn(e, "198.18.0.10", 443, "allow")
    });
    assert_eq!(tg(&conn)["reason"], "fqdn", "{conn}");
    assert_eq!(tg(&conn)["fqdn"], "api.example.test", "{conn}");

    // Names no rule allows: NXDOMAIN from the proxy, never asked upstream.
    for name in ["other.example.test", "exfil-c2VjcmV0.attacker.test"] {
        let r = look(name);
        nxdomain(&r);
        assert!(!asked(w, log, name), "{name} reached a resolver");
    }
    let refused = event_of(w, "the refusal's DNS record", &rel, |e| {
        is_dns(e, "other.example.test") && e["query"]["type"] == "A"
    });
    assert_eq!(refused["rcode"], "NXDomain", "{refused}");
    assert_eq!(refused["disposition"], "Blocked", "{refused}");
    assert_eq!(tg(&refused)["verdict"], "deny", "{refused}");
    assert_eq!(tg(&refused)["reason"], "name-not-allowed", "{refused}");
    // The address only the refused name would have given stays closed.
    let r = look("198.18.0.11");
    assert_eq!(r.result, "connect EPERM 198.18.0.11", "{r:?}");
    assert!(
        asked(w, log, "api.example.test"),
        "the allowed name never reached the policy's resolver"
    );
}

/// Connects from `rel` to every address of [`BIG_NAME`].
fn big_connects(w: &World, rel: &str) -> Vec<String> {
    let targets: Vec<String> = big_addresses().iter().map(|a| format!("{a}:443")).collect();
    let mut args = vec!["connect"];
    args.extend(targets.iter().map(String::as_str));
    w.f.probe(rel, &args)
}

#[test]
fn musl_resolves_through_the_proxy() {
    let c = Client::musl();
    let (w, log) = world("dnsmusl");
    resolves_through_the_proxy(&c, &w, &log, &|r| {
        // NXDOMAIN is EAI_NONAME; a REFUSED or a lost answer would be
        // EAI_AGAIN (or EAI_FAIL) after musl's timeout.
        assert_eq!(r.result, "gai EAI_NONAME", "{r:?}");
    });

    // The long answer: TC=1 over UDP. musl from 1.2.4 retries over TCP,
    // which the proxy serves; 1.2.3 (bookworm) gives up, and then nothing
    // of the name opens: the truncated answer taught no address.
    let r = c.lookup(&w, "t0/musl-big", "resolv.conf", BIG_NAME, 443);
    assert!(
        w.queried(&log).contains(&format!("udp {BIG_NAME} A")),
        "{r:?}"
    );
    let opened = big_connects(&w, "t0/musl-big");
    if r.result.starts_with("ok ") {
        assert_eq!(r.addresses.len(), BIG_COUNT as usize, "{r:?}");
        assert!(w.queried(&log).contains(&format!("tcp {BIG_NAME} A")));
        assert!(opened.iter().all(|o| o == "ok"), "{opened:?}");
    } else {
        assert!(r.result.starts_with("gai "), "{r:?}");
        assert!(r.addresses.is_empty(), "{r:?}");
        assert!(opened.iter().all(|o| o == "EPERM"), "{opened:?}");
    }
}

#[test]
fn go_resolves_through_the_proxy() {
    let c = Client::go();
    let (w, log) = world("dnsgo");
    resolves_through_the_proxy(&c, &w, &log, &|r| {
        // NXDOMAIN is "no such host" (IsNotFound); a REFUSED or a lost
        // answer would be a temporary error or a timeout.
        assert!(r.result.starts_with("lookup notfound "), "{r:?}");
        assert!(r.result.contains("no such host"), "{r:?}");
    });

    // The long answer: TC=1 over UDP, Go retries over TCP through the
    // proxy, and every address of the full answer opens.
    let r = c.lookup(&w, "t0/go-big", "resolv.conf", BIG_NAME, 443);
    assert!(r.result.starts_with("ok 198.18.1."), "{r:?}");
    let mut got = r.addresses.clone();
    got.sort();
    let mut want = big_addresses();
    want.sort();
    assert_eq!(got, want, "{r:?}");
    let queried = w.queried(&log);
    assert!(queried.contains(&format!("udp {BIG_NAME} A")), "{queried}");
    assert!(queried.contains(&format!("tcp {BIG_NAME} A")), "{queried}");
    let opened = big_connects(&w, "t0/go-big");
    assert!(opened.iter().all(|o| o == "ok"), "{opened:?}");
    // The truncated UDP answer has its record too (no addresses); the TCP
    // retry's has them all.
    let q = event_of(
        &w,
        "the long answer's DNS record over TCP",
        "t0/go-big",
        |e| {
            is_dns(e, BIG_NAME)
                && e["query"]["type"] == "A"
                && e["connection_info"]["protocol_name"] == "tcp"
        },
    );
    assert_eq!(tg(&q)["verdict"], "allow", "{q}");
    assert_eq!(
        tg(&q)["addresses"].as_array().map(Vec::len),
        Some(BIG_COUNT as usize),
        "{q}"
    );

    // DNS over TCP from the start (`options use-vc`, which Go honours)
    // goes through the proxy too.
    let r = c.lookup(&w, "t0/go-tcp", "resolv-tcp.conf", "api.example.test", 443);
    assert_eq!(r.result, "ok 198.18.0.10", "{r:?}");
    assert!(w.queried(&log).contains("tcp api.example.test A"));
    let r = c.lookup(
        &w,
        "t0/go-tcp",
        "resolv-tcp.conf",
        "other.example.test",
        443,
    );
    assert!(r.result.starts_with("lookup notfound "), "{r:?}");
    assert!(!asked(&w, &log, "other.example.test"));
}

/// Connection records of cgroup `rel`.
fn conns_of(w: &World, rel: &str) -> Vec<Value> {
    let cg = w.f.cg(rel);
    w.f.events()
        .into_iter()
        .filter(|e| {
            tg(e)["kind"] == "connection" && tg(e)["workload"]["cgroup_path"] == cg.as_str()
        })
        .collect()
}

/// One line per connection record: what the SIEM sees of it.
fn summary(e: &Value) -> String {
    let t = tg(e);
    format!(
        "{} {} {} {}:{} {} fqdn={}",
        t["hook"],
        t["verdict"],
        t["reason"],
        e["dst_endpoint"]["ip"].as_str().unwrap_or("?"),
        e["dst_endpoint"]["port"],
        e["connection_info"]["protocol_name"],
        t["fqdn"]
    )
}

/// Waits until cgroup `rel` has a deny record for each of `want`
/// (`ip:port`) made with `hook` over `proto`; returns them.
fn denies(w: &World, rel: &str, hook: &str, proto: &str, want: &[String]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<Value> = conns_of(w, rel)
            .into_iter()
            .filter(|e| {
                tg(e)["verdict"] == "deny"
                    && tg(e)["hook"] == hook
                    && e["connection_info"]["protocol_name"] == proto
            })
            .collect();
        let dst = |e: &Value| {
            format!(
                "{}:{}",
                e["dst_endpoint"]["ip"].as_str().unwrap_or("?"),
                e["dst_endpoint"]["port"]
            )
        };
        let missing: Vec<&String> = want
            .iter()
            .filter(|t| !got.iter().any(|e| dst(e) == **t))
            .collect();
        if missing.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{rel}: no {hook} {proto} deny for {missing:?}; has {:?}",
            conns_of(w, rel).iter().map(summary).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Probing findings of cgroup `rel`.
fn findings_of(w: &World, rel: &str) -> Vec<Value> {
    let cg = w.f.cg(rel);
    (w.f.events().into_iter())
        .filter(|e| e["class_uid"] == 2004 && tg(e)["workload"]["cgroup_path"] == cg.as_str())
        .collect()
}

/// Waits for the sweep Create of port `port` from cgroup `rel`.
fn sweep_of(w: &World, rel: &str, port: u16) -> Value {
    event_of(w, &format!("a sweep of port {port} from {rel}"), rel, |e| {
        e["class_uid"] == 2004
            && e["activity_id"] == 1
            && tg(e)["probing"]["kind"] == "sweep"
            && tg(e)["probing"]["port"] == port
    })
}

/// Resolvers sort a multi-address answer by RFC 6724: they connect a UDP
/// socket to every address (glibc on the asked port, Go on port 9) and
/// read its source address, sending nothing. With a TCP/443-only name
/// rule each probe is denied (EPERM, which the resolvers take as "no
/// source address") and reported, with the name that gave the address,
/// but 40 of them are no probing finding. The same workloads sending
/// datagrams or connecting over TCP to those addresses on other ports, or
/// a workload connecting UDP sockets to addresses it never resolved, are.
#[test]
fn resolver_sort_probes_are_denied_and_reported_but_are_no_probing() {
    let (w, _log) = world("dnssort");
    let mut want_all = big_addresses();
    want_all.sort();
    for (c, port) in [(Client::glibc(), 443), (Client::go(), 9)] {
        let rel = format!("t0/{}-sort", c.label);
        let r = c.lookup(&w, &rel, "resolv.conf", BIG_NAME, 443);
        // The lookup succeeds with all 40 addresses (the answer is over
        // 512 bytes: both retry over TCP), and the first one opens.
        assert!(r.result.starts_with("ok 198.18.1."), "{}: {r:?}", c.label);
        let mut got = r.addresses.clone();
        got.sort();
        assert_eq!(got, want_all, "{}: {r:?}", c.label);
        // One denied UDP connect per address: still EPERM, still written.
        let want: Vec<String> = big_addresses()
            .iter()
            .map(|a| format!("{a}:{port}"))
            .collect();
        let probes = denies(&w, &rel, "connect4", "udp", &want);
        assert_eq!(probes.len(), BIG_COUNT as usize, "{}: one each", c.label);
        for e in &probes {
            let t = tg(e);
            assert_eq!(t["reason"], "no-matching-rule", "{e}");
            assert_eq!(e["disposition"], "Blocked", "{e}");
            // Which answer gave the address: the SIEM can tell a sort
            // probe from a connect to an address never resolved.
            assert_eq!(t["fqdn"], BIG_NAME, "{e}");
        }
    }
    // getaddrinfo without a service (Rust's std, tg-probe `resolve`):
    // glibc probes port 0.
    let out = w.probe("t0/std-sort", "resolv.conf", &["resolve", BIG_NAME]);
    assert_eq!(out[0].split(' ').count(), BIG_COUNT as usize, "{out:?}");
    let want: Vec<String> = big_addresses().iter().map(|a| format!("{a}:0")).collect();
    let probes = denies(&w, "t0/std-sort", "connect4", "udp", &want);
    assert!(
        probes.iter().all(|e| tg(e)["fqdn"] == BIG_NAME),
        "{probes:?}"
    );
    let agent = w.f.agent.as_ref().expect("agent");
    assert_eq!(
        agent.metric("tiergate_probing_sort_probes_total"),
        Some(f64::from(3 * BIG_COUNT))
    );
    // No finding: 40 hosts on port 9 (Go), 443 and 0 (glibc) are over the
    // sweep threshold (25); a finding is written right after the deny that
    // makes it, so a second is plenty.
    std::thread::sleep(Duration::from_secs(1));
    for rel in ["t0/glibc-sort", "t0/go-sort", "t0/std-sort"] {
        let f = findings_of(&w, rel);
        assert!(f.is_empty(), "{rel}: sort probes raised {f:?}");
    }

    // Controls. Datagrams sent to the learned addresses on port 9 (the
    // port of Go's probes): traffic, a sweep.
    let targets = |port: u16| -> Vec<String> {
        big_addresses()
            .iter()
            .map(|a| format!("{a}:{port}"))
            .collect()
    };
    let run = |rel: &str, mode: &str, targets: &[String]| {
        let mut args = vec!["connect", mode];
        args.extend(targets.iter().map(String::as_str));
        let out = w.f.probe(rel, &args);
        assert!(out.iter().all(|r| r == "EPERM"), "{rel} {mode}: {out:?}");
    };
    run("t0/go-sort", "--sendto", &targets(9));
    let f = sweep_of(&w, "t0/go-sort", 9);
    assert_eq!(tg(&f)["probing"]["distinct"], 25, "{f}");
    denies(&w, "t0/go-sort", "sendmsg4", "udp", &targets(9));
    // TCP connects to the learned addresses on a port the name does not
    // allow: a sweep; their denies name the answer too.
    run("t0/glibc-sort", "--tcp", &targets(80));
    sweep_of(&w, "t0/glibc-sort", 80);
    let tcp = denies(&w, "t0/glibc-sort", "connect4", "tcp", &targets(80));
    assert!(tcp.iter().all(|e| tg(e)["fqdn"] == BIG_NAME), "{tcp:?}");
    // UDP connects (the sort probe's very syscall) to 30 addresses the
    // workload never resolved: a sweep, and no name on the denies.
    let unresolved: Vec<String> = (1..=30).map(|i| format!("198.18.2.{i}:9")).collect();
    run("t0/udp-sweep", "--udp", &unresolved);
    sweep_of(&w, "t0/udp-sweep", 9);
    let udp = denies(&w, "t0/udp-sweep", "connect4", "udp", &unresolved);
    assert!(udp.iter().all(|e| tg(e).get("fqdn").is_none()), "{udp:?}");
    // The sort probes left out stay the resolvers' 120.
    assert_eq!(
        agent.metric("tiergate_probing_sort_probes_total"),
        Some(f64::from(3 * BIG_COUNT))
    );
}
