//! `tiergate proxy`: the DNS (and metadata) proxies in their own process,
//! beside an agent run with `--proxies separate`, on the real kernel. The
//! point of the split: the agent's death (`kill -9`, an upgrade) is not a
//! DNS outage, new names included; the proxy's own death fails fast and
//! closed; and every record still reaches the event stream through the
//! agent, attributed, also those made while no agent ran.

use std::time::Duration;

use serde_json::Value;
use tiergate_tests::dns_world::{NAMES, World, dns_policy, ends_cleanly, eventually, is_dns};
use tiergate_tests::tg;

/// The agent (separate proxies) and the proxy, serving `t0/a`'s namespace.
fn world(name: &str) -> (World, String) {
    let mut w = World::new(name);
    let root = w.f.cg_path.clone();
    let p = dns_policy(
        &root,
        "enforce",
        &format!("{NAMES}, \"**.fresh.test\", \"slow.example.test\""),
    );
    let sep = w.separate();
    let sep: Vec<&str> = sep.iter().map(String::as_str).collect();
    w.f.start_agent_with(&p, &sep);
    w.start_proxy();
    w.warm_up("t0/a");
    (w, p)
}

fn dns_events(w: &World, name: &str) -> Vec<Value> {
    w.f.events()
        .into_iter()
        .filter(|e| is_dns(e, name))
        .collect()
}

#[test]
fn a_separate_proxy_serves_names_and_the_agent_reports_them() {
    let (w, _) = world("dnssep");
    // The agent serves no namespace itself; the proxy does.
    assert_eq!(
        w.f.agent
            .as_ref()
            .expect("agent")
            .metric("tiergate_dns_namespaces"),
        Some(0.0)
    );
    assert_eq!(
        w.f.agent
            .as_ref()
            .expect("agent")
            .metric("tiergate_proxy_connections"),
        Some(1.0)
    );
    assert_eq!(
        w.resolve_connect("t0/b", "www.example.test", 443),
        "ok 198.18.0.12"
    );
    // Learned for the asking workload only.
    assert_eq!(w.f.tcp("t0/c", "198.18.0.12:443"), "EPERM");
    // A name no rule allows: NXDOMAIN, never asked upstream.
    let r = w.resolve_connect("t0/b", "exfil-c2VjcmV0.attacker.test", 443);
    assert!(r.starts_with("resolve-error"), "{r}");
    assert!(!w.queried(&w.log).contains("attacker"));

    // Both reach the event stream through the agent, attributed to the
    // workload, with the policy that judged them; the connection opened by
    // the name carries it (the agent's mirror of what the proxy learned).
    let b = w.f.cg("t0/b");
    let q = w.f.wait_event("the proxy's DNS record", |e| {
        is_dns(e, "www.example.test")
            && e["query"]["type"] == "A"
            && tg(e)["workload"]["cgroup_path"] == b
    });
    let t = tg(&q);
    assert_eq!(t["verdict"], "allow");
    assert_eq!(t["tier"], "t0");
    assert_eq!(t["addresses"][0]["ip"], "198.18.0.12");
    assert_eq!(t["addresses"][0]["learned"], true);
    assert_eq!(t["policy"]["name"], "e2e-dns");
    assert!(
        t["policy"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "{q}"
    );
    // (Names are reported in lower case.)
    let refused = w.f.wait_event("the refused query", |e| {
        is_dns(e, "exfil-c2vjcmv0.attacker.test")
    });
    assert_eq!(tg(&refused)["verdict"], "deny");
    assert_eq!(refused["rcode"], "NXDomain");
    let c = w.f.wait_event("the connection opened by the name", |e| {
        e["class_uid"] == 4001
            && e["dst_endpoint"]["ip"] == "198.18.0.12"
            && tg(e)["workload"]["cgroup_path"] == b
    });
    assert_eq!(tg(&c)["reason"], "fqdn");
    assert_eq!(tg(&c)["fqdn"], "www.example.test");
}

#[test]
fn dns_outlives_the_agent_new_names_included() {
    let (mut w, p) = world("dnsoutlive");
    // Lookups of names never asked before run on while the agent is killed
    // twice and restarted: every one answers, and its address opens at once.
    const N: u32 = 600;
    let a = w.f.cgroup("t0/loop");
    let (ns, resolv) = (w.f.netns.clone(), w.resolv("resolv.conf"));
    let looped = std::thread::spawn(move || {
        let out = std::process::Command::new(tiergate_tests::probe_bin())
            .args(["--cgroup", a.to_str().expect("utf-8")])
            .args(["--netns", &ns, "--resolv", &resolv])
            .args([
                "resolve-connect-seq",
                "0",
                &N.to_string(),
                ".fresh.test",
                "443",
            ])
            .output()
            .expect("probe");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    let sep = w.separate();
    let sep: Vec<&str> = sep.iter().map(String::as_str).collect();
    for i in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        // A stopped agent takes records into its socket buffer and writes
        // none: the kill loses them there, and only the proxy's copy (kept
        // until acknowledged) brings them to the next agent.
        let agent = w.f.agent.as_mut().expect("agent");
        agent.signal(libc::SIGSTOP);
        let r = w.resolve_connect("t0/a", &format!("stopped{i}.fresh.test"), 443);
        assert!(r.starts_with("ok 198.19."), "{r}");
        std::thread::sleep(Duration::from_millis(100));
        w.f.agent.as_mut().expect("agent").kill9();
        // With no agent at all: a new name answers and opens; a refused
        // one is still refused and never asked upstream.
        let r = w.resolve_connect("t0/a", &format!("dead{i}.fresh.test"), 443);
        assert!(r.starts_with("ok 198.19."), "{r}");
        let r = w.resolve_connect("t0/a", "leak-while-dead.attacker.test", 443);
        assert!(r.starts_with("resolve-error"), "{r}");
        assert_eq!(w.f.tcp("t0/a", "198.18.0.11:443"), "EPERM");
        std::thread::sleep(Duration::from_millis(300));
        w.f.start_agent_with(&p, &sep);
    }
    let (out, err) = looped.join().expect("loop");
    assert_eq!(out, format!("ok {N} eperm 0 other 0"), "{err}");
    assert!(!w.queried(&w.log).contains("attacker"));

    // What the proxy answered while no agent ran reaches the stream once
    // an agent is back (the records waited in the proxy's queue).
    for name in [
        "leak-while-dead.attacker.test",
        "dead1.fresh.test",
        "stopped0.fresh.test",
        "stopped1.fresh.test",
    ] {
        w.f.wait_event(name, |e| is_dns(e, name));
    }
    let mut seen = 0;
    eventually("every loop lookup is reported", || {
        let names: std::collections::HashSet<String> =
            w.f.events()
                .iter()
                .filter(|e| e["class_uid"] == 4003)
                .filter_map(|e| e["query"]["hostname"].as_str().map(str::to_string))
                .filter(|n| n.ends_with(".fresh.test") && n.starts_with('n'))
                .collect();
        seen = names.len();
        eprintln!("reported {seen} of {N}");
        seen == N as usize
    });
    let losses: Vec<Value> =
        w.f.events()
            .into_iter()
            .filter(|e| tg(e)["kind"] == "loss")
            .collect();
    assert!(losses.is_empty(), "no record was lost: {losses:?}");
}

#[test]
fn a_dead_proxy_fails_fast_and_closed_then_serves_again() {
    let (mut w, _) = world("dnsproxykill");
    w.proxy.as_mut().expect("proxy").kill9();
    w.assert_unserved_fails_fast_and_closed("t0/a");
    // The agent notices; a new proxy serves the namespace again.
    eventually("the agent sees the proxy gone", || {
        w.f.agent
            .as_ref()
            .expect("agent")
            .metric("tiergate_proxy_connections")
            == Some(0.0)
    });
    w.start_proxy();
    eventually("a restarted proxy serves the namespace", || {
        w.resolve_connect("t0/a", "www.example.test", 443) == "ok 198.18.0.12"
    });
    assert!(!dns_events(&w, "www.example.test").is_empty());
}

/// A proxy told to stop (SIGTERM: an upgrade, a restart) answers the
/// queries it has already taken, hands their records to the agent, and
/// ends by itself; from the signal on, new lookups fail at once and
/// closed. (Without the drain, the lookup in flight fails: its queries
/// die with the proxy's sockets.)
#[test]
fn a_stopping_proxy_answers_what_it_took_then_fails_fast() {
    let (mut w, _) = world("dnsproxydrain");
    let pid = w.proxy.as_ref().expect("proxy").child.id() as i32;
    w.sigterm_answers_what_was_taken(pid);
    let mut proxy = w.proxy.take().expect("proxy");
    ends_cleanly(&mut proxy);
    w.assert_slow_lookup_reported();
    w.assert_unserved_fails_fast_and_closed("t0/a");
}

/// A proxy whose own cgroup a binding puts in a tier with names is host
/// all the same: its upstream queries are neither sent to a proxy (itself:
/// the node would have no DNS) nor judged by the tier. With the agent
/// running (it reads `TG_GUARD`) and with none (the proxy's own entry).
#[test]
fn the_proxy_is_never_its_own_client() {
    let mut w = World::new("dnsself");
    let root = w.f.cg_path.clone();
    let p = dns_policy(&root, "enforce", NAMES);
    let sep = w.separate();
    let sep: Vec<&str> = sep.iter().map(String::as_str).collect();
    w.f.start_agent_with(&p, &sep);
    let dir = w.f.cgroup("t0/proxy");
    w.start_proxy_in(Some(&dir));
    eventually("the agent knows the proxy's cgroup as host", || {
        let inv = w.f.agent.as_ref().expect("agent").get("/inventory");
        inv.is_some_and(|(_, body)| {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            v["workloads"].as_array().is_some_and(|ws| {
                ws.iter().any(|x| {
                    x["cgroup_path"]
                        .as_str()
                        .is_some_and(|c| c.ends_with("/t0/proxy"))
                        && x["tier"] == "host"
                })
            })
        })
    });
    // (Before it did, the proxy's own namespace was one of a t0 process.)
    eventually("the proxy serves no namespace of its own", || {
        w.server().metric("tiergate_dns_namespaces") == Some(0.0)
    });
    w.warm_up("t0/a");
    assert_eq!(
        w.resolve_connect("t0/b", "www.example.test", 443),
        "ok 198.18.0.12"
    );

    // No agent: a proxy restarted in a cgroup the kernel has never been
    // told of (it inherits t0) still reaches the resolver.
    w.f.agent.as_mut().expect("agent").kill9();
    w.proxy.as_mut().expect("proxy").kill9();
    let dir = w.f.cgroup("t0/proxy2");
    w.start_proxy_in(Some(&dir));
    eventually("the new proxy serves the namespace", || {
        w.resolve_connect("t0/a", "short.example.test", 443) == "ok 198.18.0.13"
    });
}

/// `tiergate proxy` needs exactly CAP_SYS_ADMIN and CAP_SYS_PTRACE (the
/// tiergate-proxy DaemonSet adds those two): with only them it serves; with
/// either missing it refuses to start, naming it.
#[test]
fn the_proxy_runs_with_exactly_two_capabilities() {
    let mut w = World::new("dnscaps");
    let root = w.f.cg_path.clone();
    let p = dns_policy(&root, "enforce", NAMES);
    let sep = w.separate();
    let sep: Vec<&str> = sep.iter().map(String::as_str).collect();
    w.f.start_agent_with(&p, &sep);
    for (drop, name) in [
        ("sys_admin", "CAP_SYS_ADMIN"),
        ("sys_ptrace", "CAP_SYS_PTRACE"),
    ] {
        let keep = if drop == "sys_admin" {
            "+sys_ptrace"
        } else {
            "+sys_admin"
        };
        let bounding = format!("--bounding-set=-all,{keep}");
        let out = w
            .proxy_command(tiergate_tests::free_port(), &["setpriv", &bounding, "--"])
            .output()
            .expect("run tiergate proxy");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("tiergate proxy lacks {name}")),
            "{err}"
        );
    }
    w.start_proxy_with(
        None,
        &[
            "setpriv",
            "--bounding-set=-all,+sys_admin,+sys_ptrace",
            "--",
        ],
    );
    w.warm_up("t0/a");
    assert_eq!(
        w.resolve_connect("t0/b", "www.example.test", 443),
        "ok 198.18.0.12"
    );
}
