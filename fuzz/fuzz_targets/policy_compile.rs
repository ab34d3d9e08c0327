//! Differential: the compiled kernel entries (`TG_TIERS`, the `TG_RULES`
//! LPM trie) against the reference evaluator `policy explain` uses
//! (`Policy::evaluate`). Random policies are written as policy files and go
//! through the parser; random destinations (inside the policy's CIDRs, or
//! anywhere) are judged both ways and must get the same verdict.
#![no_main]

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::{PROTO_TCP, PROTO_UDP, TIER_F_AUDIT, TIER_F_METADATA_ALLOW, TIER_F_VALID};
use arbitrary::Arbitrary;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;
use tiergate::policy::{
    CompileError, Compiled, Mode, Proto, TierRef, Verdict, is_loopback, is_metadata_endpoint,
    normalize_addr, parse_str,
};

#[derive(Arbitrary, Debug)]
struct Input {
    audit: bool,
    tiers: Vec<TierIn>,
    probes: Vec<Probe>,
}

#[derive(Arbitrary, Debug)]
struct TierIn {
    mode: Option<bool>,
    metadata_allow: bool,
    rules: Vec<RuleIn>,
}

#[derive(Arbitrary, Debug)]
struct RuleIn {
    cidrs: Vec<NetIn>,
    ports: Option<Vec<(u16, u8)>>,
    protocols: u8,
}

#[derive(Arbitrary, Debug)]
struct NetIn {
    v6: bool,
    base: u8,
    bits: u64,
    len: u8,
}

#[derive(Arbitrary, Debug)]
struct Probe {
    tier: u8,
    /// Some: a destination inside that CIDR of the tier's rules.
    near: Option<u8>,
    host: u128,
    port: u16,
    udp: bool,
    mapped: bool,
}

/// Small pools of bases and lengths, so prefixes nest, overlap and repeat.
fn net(n: &NetIn) -> IpNet {
    if !n.v6 {
        let bases = [
            0x0a00_0000u32,
            0x0a01_0000,
            0x0a01_0200,
            0xc000_0200,
            0,
            0xa9fe_0000,
        ];
        let base = bases[usize::from(n.base) % bases.len()] | (n.bits as u32 & 0x0003_0f0f);
        let len = [0u8, 1, 8, 16, 20, 24, 28, 31, 32][usize::from(n.len) % 9];
        IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(base), len)
                .expect("len")
                .trunc(),
        )
    } else {
        let bases: [u128; 5] = [
            0x2001_0db8 << 96,
            (0x2001_0db8 << 96) | (1 << 80),
            0,
            0xffff_0000_0000, // ::ffff:0:0, IPv6 prefixes over the mapped range
            0xfd00 << 112,
        ];
        let base = bases[usize::from(n.base) % bases.len()] | u128::from(n.bits & 0xf00f_0000_f00f);
        let len = [0u8, 1, 32, 48, 64, 80, 95, 96, 100, 127, 128][usize::from(n.len) % 11];
        IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(base), len)
                .expect("len")
                .trunc(),
        )
    }
}

/// The policy file for the input, and the CIDRs of each tier.
fn policy_file(input: &Input) -> (String, Vec<Vec<IpNet>>) {
    let mode = if input.audit { "audit" } else { "enforce" };
    let mut y = format!(
        "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata: {{name: fuzz}}\n\
         spec:\n  mode: {mode}\n  defaultTier: t0\n  tiers:\n"
    );
    let mut nets = Vec::new();
    for (i, t) in input.tiers.iter().take(4).enumerate() {
        let _ = writeln!(y, "    - name: t{i}");
        if let Some(audit) = t.mode {
            let _ = writeln!(y, "      mode: {}", if audit { "audit" } else { "enforce" });
        }
        if t.metadata_allow {
            let _ = writeln!(y, "      metadata: allow");
        }
        let mut tier_nets = Vec::new();
        let rules: Vec<&RuleIn> = t
            .rules
            .iter()
            .filter(|r| !r.cidrs.is_empty())
            .take(8)
            .collect();
        if rules.is_empty() {
            y.push_str("      egress: []\n");
        } else {
            y.push_str("      egress:\n");
        }
        for r in rules {
            let cidrs: Vec<IpNet> = r.cidrs.iter().take(3).map(net).collect();
            let shown: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
            let _ = writeln!(y, "        - cidrs: [{}]", shown.join(", "));
            tier_nets.extend(cidrs);
            if let Some(ports) = r.ports.as_ref().filter(|p| !p.is_empty()) {
                let shown: Vec<String> = ports
                    .iter()
                    .take(4)
                    .map(|&(lo, span)| {
                        let lo = lo.max(1);
                        let hi = lo.saturating_add(u16::from(span % 8));
                        if lo == hi {
                            format!("\"{lo}\"")
                        } else {
                            format!("\"{lo}-{hi}\"")
                        }
                    })
                    .collect();
                let _ = writeln!(y, "          ports: [{}]", shown.join(", "));
            }
            match r.protocols % 4 {
                0 => y.push_str("          protocols: [tcp]\n"),
                1 => y.push_str("          protocols: [udp]\n"),
                2 => y.push_str("          protocols: [tcp, udp]\n"),
                _ => {}
            }
        }
        nets.push(tier_nets);
    }
    if nets.is_empty() {
        y.push_str("    - name: t0\n");
        nets.push(Vec::new());
    }
    (y, nets)
}

const MAPPED_BASE: u128 = 0xffff_0000_0000;

fn mask(addr: u128, len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - len))
    }
}

/// What the kernel decides (agent-ebpf `judge`, for destinations that are
/// neither loopback nor a metadata endpoint): the most specific prefix of
/// the tier in the trie, then its port set; a miss or no port is a deny,
/// which an audit tier lets through.
fn kernel(c: &Compiled, tier: u32, dst: IpAddr, port: u16, proto: Proto) -> Verdict {
    let key = match normalize_addr(dst) {
        IpAddr::V4(a) => MAPPED_BASE | u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let best = c
        .rules
        .iter()
        .filter(|r| r.tier == tier && mask(key, r.prefix_len) == u128::from_be_bytes(r.addr))
        .max_by_key(|r| r.prefix_len);
    let bit = match proto {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
    };
    let allowed = best.is_some_and(|b| {
        b.ports.any_port & bit != 0
            || b.ports.ranges[..b.ports.len as usize]
                .iter()
                .any(|r| r.protocols & bit != 0 && r.lo <= port && port <= r.hi)
    });
    match (allowed, c.tier_flags[tier as usize] & TIER_F_AUDIT != 0) {
        (true, _) => Verdict::Allow,
        (false, true) => Verdict::AuditDeny,
        (false, false) => Verdict::Deny,
    }
}

fn inside(net: IpNet, host: u128) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let h = host as u32 & u32::from(n.hostmask());
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | h))
        }
        IpNet::V6(n) => {
            let h = host & u128::from(n.hostmask());
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | h))
        }
    }
}

fuzz_target!(|input: Input| {
    let (file, nets) = policy_file(&input);
    let policy = match parse_str(&file, "fuzz.yaml") {
        Ok(p) => p,
        Err(e) => panic!("a valid policy was refused:\n{e}\n{file}"),
    };
    let compiled = match policy.compile() {
        Ok(c) => c,
        // More than 16 merged port ranges under one prefix: a documented limit.
        Err(CompileError::TooManyPortRanges { .. }) => return,
        Err(e) => panic!("{e}\n{file}"),
    };
    assert_eq!(compiled.tier_flags.len(), policy.tiers.len());
    for (i, t) in policy.tiers.iter().enumerate() {
        let f = compiled.tier_flags[i];
        assert!(f & TIER_F_VALID != 0);
        assert_eq!(
            f & TIER_F_AUDIT != 0,
            t.effective_mode(policy.mode) == Mode::Audit
        );
        assert_eq!(
            f & TIER_F_METADATA_ALLOW != 0,
            t.metadata == tiergate::policy::MetadataAccess::Allow
        );
    }
    // Each (tier, prefix) has one entry.
    let mut keys: Vec<_> = compiled
        .rules
        .iter()
        .map(|r| (r.tier, r.addr, r.prefix_len))
        .collect();
    keys.dedup();
    assert_eq!(
        keys.len(),
        compiled.rules.len(),
        "duplicate entries\n{file}"
    );

    for p in input.probes.iter().take(64) {
        let tier = usize::from(p.tier) % policy.tiers.len();
        let tier_nets = &nets[tier];
        let mut dst = match p.near {
            Some(k) if !tier_nets.is_empty() => {
                inside(tier_nets[usize::from(k) % tier_nets.len()], p.host)
            }
            _ if p.host & 1 == 0 => IpAddr::V4(Ipv4Addr::from((p.host >> 1) as u32)),
            _ => IpAddr::V6(Ipv6Addr::from(p.host)),
        };
        if let IpAddr::V4(a) = dst
            && p.mapped
        {
            dst = IpAddr::V6(a.to_ipv6_mapped());
        }
        let plain = normalize_addr(dst);
        if is_loopback(plain) || is_metadata_endpoint(plain) {
            continue;
        }
        let proto = if p.udp { Proto::Udp } else { Proto::Tcp };
        let want = policy.evaluate(TierRef::Tier(tier), dst, p.port, proto);
        let got = kernel(&compiled, tier as u32, dst, p.port, proto);
        assert_eq!(
            got, want.verdict,
            "tier t{tier} {dst} port {} {proto:?}: kernel {got:?}, explain {want:?}\n{file}",
            p.port
        );
        if let Some((t, r)) = want.rule {
            assert_eq!(t, tier);
            assert!(policy.tiers[t].egress[r].admits(plain, p.port, proto));
        }
    }
});
