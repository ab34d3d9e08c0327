//! `tiergate policy check FILE`.

use std::path::Path;

use crate::policy::{self, Mode, TierRef};

/// Prints a summary (exit 0) or every error as FILE:LINE:COL: message (exit 1).
pub fn run(file: &Path) -> i32 {
    let p = match policy::load(file) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let compiled = match p.compile() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return 1;
        }
    };
    println!("{}: ok", file.display());
    println!("policy:   {}", p.name);
    println!("version:  {}", p.version);
    println!("mode:     {}", mode_str(p.mode));
    println!("trust domain: {}", p.trust_domain);
    let default = match TierRef::Tier(p.default_tier) {
        TierRef::Tier(i) => p.tiers[i].name.as_str(),
        TierRef::Host => "host",
    };
    println!("default tier: {default}");
    println!("tiers ({}):", p.tiers.len());
    for t in &p.tiers {
        println!(
            "  {:<20} mode={:<7} metadata={:<6} egress rules={}",
            t.name,
            mode_str(t.effective_mode(p.mode)),
            t.metadata.as_str(),
            t.egress.len()
        );
        if let policy::MetadataAccess::Filter(f) = &t.metadata {
            println!(
                "    metadata filter: require={} allowPaths={} denyPaths={}",
                if f.require_imdsv2 { "imdsv2" } else { "none" },
                if f.allow_paths.is_empty() {
                    "(any path not denied)".to_owned()
                } else {
                    f.allow_paths.join(" ")
                },
                if f.deny_paths.is_empty() {
                    "(none)".to_owned()
                } else {
                    f.deny_paths.join(" ")
                },
            );
        }
    }
    if p.tiers.iter().any(|t| t.filters_metadata()) {
        println!(
            "note: metadata: filter sends requests from the agent's address; on nodes where the \
             metadata service identifies callers by source address (the GKE metadata server of \
             Workload Identity, kiam, aad-pod-identity NMI) it would see the agent as every \
             caller: give tiers allow or deny there (the agent refuses to start with \
             --metadata-upstream at the GKE metadata server)."
        );
    }
    println!("bindings: {}", p.bindings.len());
    if p.elevation.is_empty() {
        println!("elevations: none");
    } else {
        println!("elevations ({}):", p.elevation.len());
        for e in &p.elevation {
            println!("  {}", p.describe_elevation(e));
        }
    }
    println!("kernel prefix entries: {}", compiled.rules.len());
    if let Some(dns) = &p.dns {
        let resolvers: Vec<String> = dns.resolvers.iter().map(|r| r.to_string()).collect();
        println!(
            "dns: resolvers {} minTTL {}{}; name patterns in the kernel: {}",
            resolvers.join(", "),
            dns.min_ttl,
            dns.max_ttl
                .map_or(String::new(), |m| format!(" maxTTL {m}")),
            compiled.names.len()
        );
    }
    0
}

fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    }
}
