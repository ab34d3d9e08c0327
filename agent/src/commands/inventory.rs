//! `tiergate inventory`: the running agent's workloads, identities and tiers.

use crate::cli::InventoryArgs;
use crate::inventory::Document;

use super::agent_client;

pub fn run(args: &InventoryArgs) -> i32 {
    let path = if args.enforced {
        "/inventory?enforced=true"
    } else {
        "/inventory"
    };
    let body = match agent_client::get(args.admin_addr, path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tiergate inventory: {e}");
            return 1;
        }
    };
    if args.json {
        println!("{body}");
        return 0;
    }
    let doc: Document = match serde_json::from_str(&body) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tiergate inventory: the agent's answer is not an inventory: {e}");
            return 1;
        }
    };
    match &doc.policy {
        Some(p) => println!("node {}  policy {} ({})", doc.node, p.name, p.version),
        None => println!("node {}  no policy in force", doc.node),
    }
    println!(
        "{:<12} {:<9} {:<10} {:<48} IDENTITY",
        "TIER", "ENFORCED", "POD", "CGROUP"
    );
    for w in &doc.workloads {
        let identity = match (&w.spiffe_id, &w.pod.container) {
            (Some(s), Some(c)) => format!("{s} container={c}"),
            (Some(s), None) => s.clone(),
            (None, _) => w.systemd_unit.clone().unwrap_or_default(),
        };
        let pod_state = serde_json::to_value(w.pod_state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!(
            "{:<12} {:<9} {:<10} {:<48} {}",
            w.tier,
            if w.enforced { "yes" } else { "no" },
            pod_state,
            w.cgroup_path,
            identity
        );
    }
    0
}
