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

use std::path::PathBuf;

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
