//! The nftables side: the policy as `socket cgroupv2` rules (chain, set, vmap), loaded.

use std::fmt::Write as _;

use anyhow::Result;

use crate::sh;
use crate::world::World;

impl World {
    pub(crate) fn nft(&self, rules: Option<&str>) -> Result<()> {
        let _ = sh(
            "ip",
            &["netns", "exec", &self.netns, "nft", "flush", "ruleset"],
        );
        if let Some(r) = rules {
            let f = self.dir.join("rules.nft");
            std::fs::write(&f, r)?;
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.netns,
                    "sh",
                    "-c",
                    &format!(
                        "mount -t cgroup2 none /sys/fs/cgroup && nft -f {}",
                        f.display()
                    ),
                ],
            )?;
        }
        Ok(())
    }

    /// The same policy as `policy(n, true)` for the `plain` side, as
    /// nftables `socket cgroupv2` rules: "chain", "set" or "vmap".
    pub(crate) fn nft_rules(&self, n: usize, form: &str) -> String {
        let ips: Vec<String> = (0..n)
            .map(|i| {
                // As in `policy`: the allowed destination in the middle.
                if i == n / 2 {
                    "10.20.0.1".into()
                } else {
                    format!("10.64.{}.{}", i / 250, i % 250 + 1)
                }
            })
            .collect();
        let elements = |verdict: &str| {
            ips.iter()
                .map(|ip| format!("{ip} . 80{verdict}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cg = format!("{}/plain/t0", &self.cg_path[1..]);
        let mut s = String::from("table inet tgbench {\n");
        match form {
            "set" => {
                s += "  set allow { type ipv4_addr . inet_service; elements = { ";
                s += &elements("");
                s += " } }\n  chain t0 {\n    ip daddr . th dport @allow accept\n";
            }
            "vmap" => {
                s += "  map allow { type ipv4_addr . inet_service : verdict; elements = { ";
                s += &elements(" : accept");
                s += " } }\n  chain t0 {\n    ip daddr . th dport vmap @allow\n";
            }
            _ => {
                s += "  chain t0 {\n";
                for ip in &ips {
                    let _ = writeln!(s, "    ip daddr {ip} th dport 80 accept");
                }
            }
        }
        s += "    meta l4proto tcp reject with tcp reset\n    drop\n  }\n";
        let _ = write!(
            s,
            "  chain output {{\n    type filter hook output priority 0; policy accept;\n    socket cgroupv2 level 3 \"{cg}\" jump t0\n  }}\n}}\n"
        );
        s
    }
}
