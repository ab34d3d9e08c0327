//! `tiergate policy explain`: the user-space replica of the kernel's verdict.

use super::agent_client;
use crate::cli::{Destination, ExplainArgs};
use crate::dns::learn::Opened;
use crate::identity::cgroupfs;
use crate::inventory::Document;
use crate::policy::{self, Proto, TierRef, Workload};

/// Prints which binding and tier apply and the verdict with its reason.
pub fn run(args: &ExplainArgs) -> i32 {
    let p = match policy::load(&args.policy) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let path = match (&args.cgroup, args.pid) {
        (Some(c), _) => c.clone(),
        (None, Some(pid)) => match cgroupfs::path_of_pid(pid) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("--pid {pid}: {e}");
                return 1;
            }
        },
        (None, None) => unreachable!("clap requires --cgroup or --pid"),
    };
    // Pod identity comes from the running agent's Kubernetes watch.
    let pod = args.agent.and_then(|addr| {
        let q = format!("/inventory?cgroup={}", agent_client::encode(&path));
        match agent_client::get(addr, &q).map(|b| serde_json::from_str::<Document>(&b)) {
            Ok(Ok(doc)) => doc.workloads.first().and_then(|r| r.pod_identity()),
            Ok(Err(e)) => {
                eprintln!(
                    "note: the agent's inventory is unreadable ({e}); using the cgroup path only"
                );
                None
            }
            Err(e) => {
                eprintln!("note: {e}; using the cgroup path only");
                None
            }
        }
    });
    let assignment = p.assign(&Workload {
        cgroup_path: &path,
        pod: pod.as_ref(),
    });
    let spiffe_id = pod
        .as_ref()
        .map(|i| p.spiffe_id(&i.namespace, &i.service_account));
    let proto = if args.udp { Proto::Udp } else { Proto::Tcp };
    let (verdict, reason, rule, metadata_service, allow_private) = match &args.to {
        Destination::Addr(a) => {
            let d = p.evaluate(assignment.tier, a.ip(), a.port(), proto);
            (
                d.verdict,
                d.reason.as_str(),
                d.rule,
                d.metadata_service,
                false,
            )
        }
        Destination::Name(n, port) => match p.evaluate_name(assignment.tier, n, *port, proto) {
            Ok(d) => (d.verdict, d.reason, d.rule, false, d.allow_private),
            Err(e) => {
                eprintln!("--to {n}: {e}");
                return 1;
            }
        },
    };
    let tier = match assignment.tier {
        TierRef::Host => "host".to_string(),
        TierRef::Tier(i) => p.tiers[i].name.clone(),
    };
    let binding = match assignment.binding {
        Some(i) => format!("spec.bindings[{i}]"),
        None if matches!(assignment.tier, TierRef::Host) => "none (host: not enforced)".to_string(),
        None => "none (defaultTier)".to_string(),
    };
    let rule_uid =
        rule.map(|(t, r)| crate::policy::rule_uid(&p.tiers[t].name, &p.tiers[t].egress[r]));
    let rule = rule.map(|(t, r)| format!("spec.tiers[{t}].egress[{r}]"));
    if args.json {
        let j = serde_json::json!({
            "policy": {"name": p.name, "version": p.version},
            "cgroup_path": path,
            "pod": pod.as_ref().map(|i| serde_json::json!({
                "namespace": i.namespace, "pod": i.pod, "pod_uid": i.pod_uid,
                "service_account": i.service_account, "container": i.container,
                "container_id": i.container_id,
            })),
            "spiffe_id": spiffe_id,
            "binding": assignment.binding,
            "tier": tier,
            "destination": args.to.to_string(),
            "protocol": if args.udp { "udp" } else { "tcp" },
            "verdict": verdict.as_str(),
            "reason": reason,
            "rule": rule,
            "rule_uid": rule_uid,
            "metadata_service": metadata_service,
        });
        println!("{j}");
    } else {
        println!("policy:      {} ({})", p.name, p.version);
        println!("cgroup:      {path}");
        if let Some(i) = &pod {
            println!(
                "pod:         {}/{} (uid {}) service account {}",
                i.namespace, i.pod, i.pod_uid, i.service_account
            );
            if let Some(c) = &i.container {
                println!("container:   {c}");
            }
        }
        if let Some(s) = &spiffe_id {
            println!("spiffe id:   {s}");
        }
        println!("binding:     {binding}");
        println!("tier:        {tier}");
        println!(
            "destination: {} {}",
            args.to,
            if args.udp { "udp" } else { "tcp" }
        );
        println!("verdict:     {}", verdict.as_str());
        println!("reason:      {reason}");
        if let Some(r) = rule {
            println!("rule:        {r} ({})", rule_uid.as_deref().unwrap_or("-"));
        }
        if reason == "fqdn" {
            println!(
                "note:        for the addresses the name's answers teach this workload; {}",
                if allow_private {
                    "private ones included (allowPrivate), never loopback, link-local or metadata"
                } else {
                    "public ones only (no allowPrivate)"
                }
            );
        }
        if let (Some(addr), Destination::Addr(a)) = (args.agent, &args.to) {
            let q = format!(
                "/dns/learned?cgroup={}&ip={}",
                agent_client::encode(&path),
                a.ip()
            );
            match agent_client::get(addr, &q).map(|b| serde_json::from_str::<Opened>(&b)) {
                Ok(Ok(o)) => println!(
                    "opened by:   the DNS answer for {} (learned at {} ms, open until {} ms, epoch)",
                    o.name, o.learned_at, o.expires
                ),
                Ok(Err(_)) | Err(_) => {
                    println!("opened by:   no DNS answer (the agent knows none for this address)")
                }
            }
        }
        if metadata_service {
            println!("note:        the destination is a cloud metadata endpoint");
        }
        match reason {
            "metadata-proxy" => println!(
                "note:        the connection goes to the agent's metadata proxy, which decides each HTTP request by the tier's metadata rules"
            ),
            "metadata-unfiltered" => println!(
                "note:        a metadata: filter tier reaches only TCP port 80 of the instance metadata services, through the proxy; give the tier allow for this endpoint"
            ),
            _ => {}
        }
    }
    0
}
