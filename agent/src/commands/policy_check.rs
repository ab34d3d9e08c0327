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
            "  {:<20} mode={:<7} metadata={:<5} egress rules={}",
            t.name,
            mode_str(t.effective_mode(p.mode)),
            if matches!(t.metadata, policy::MetadataAccess::Allow) {
                "allow"
            } else {
                "deny"
            },
            t.egress.len()
        );
    }
    println!("bindings: {}", p.bindings.len());
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
