//! `tiergate inventory --store URL`: the inventory across nodes, from the
//! collector's observation store. One row per identity class, its nodes and
//! tiers merged, sorted by last attempt, oldest first (never first of all):
//! the identities that stopped using the network are on top.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tiergate_collector::store::{IdentityRow, Store};

use crate::commands::advise::when;

/// One identity class over every node that reported it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Merged {
    pub identity: String,
    pub nodes: Vec<String>,
    pub tiers: Vec<String>,
    /// The owner the most recently seen node reported, if any did.
    pub owner: Option<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// None when only DNS queries were seen.
    pub last_attempt_ms: Option<u64>,
    /// Connection attempts of any verdict, summed over the nodes.
    pub attempts: u64,
}

pub fn run(url: &str, enforced: bool, json: bool) -> i32 {
    match read(url) {
        Ok(rows) => {
            let merged = merge(rows, enforced);
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&merged).expect("serializing to a String")
                );
            } else {
                print!("{}", table(&merged));
            }
            0
        }
        Err(e) => {
            eprintln!("tiergate inventory: {e}");
            1
        }
    }
}

fn read(url: &str) -> Result<Vec<IdentityRow>, String> {
    // Not `Store::open`: it creates a store that is not there, and a typo
    // would read as an empty inventory.
    Store::open_existing(url)
        .and_then(|mut s| s.identities())
        .map_err(|e| e.to_string())
}

/// Merges the per-node rows by identity class; with `enforced`, only the
/// classes seen in a tier other than host.
pub fn merge(rows: Vec<IdentityRow>, enforced: bool) -> Vec<Merged> {
    let mut by: BTreeMap<String, (Merged, BTreeSet<String>, BTreeSet<String>, u64)> =
        BTreeMap::new();
    for r in rows {
        let (m, nodes, tiers, owner_seen) = by.entry(r.identity.clone()).or_insert_with(|| {
            let m = Merged {
                identity: r.identity.clone(),
                nodes: Vec::new(),
                tiers: Vec::new(),
                owner: None,
                first_seen_ms: r.first_seen_ms,
                last_seen_ms: r.last_seen_ms,
                last_attempt_ms: None,
                attempts: 0,
            };
            (m, BTreeSet::new(), BTreeSet::new(), 0)
        });
        if r.owner.is_some() && r.last_seen_ms >= *owner_seen {
            m.owner = r.owner;
            *owner_seen = r.last_seen_ms;
        }
        nodes.insert(r.node);
        tiers.extend(r.tiers);
        m.first_seen_ms = m.first_seen_ms.min(r.first_seen_ms);
        m.last_seen_ms = m.last_seen_ms.max(r.last_seen_ms);
        m.last_attempt_ms = m.last_attempt_ms.max(r.last_attempt_ms);
        m.attempts += r.attempts;
    }
    let mut out: Vec<Merged> = by
        .into_values()
        .map(|(mut m, nodes, tiers, _)| {
            m.nodes = nodes.into_iter().collect();
            m.tiers = tiers.into_iter().collect();
            m
        })
        .filter(|m| !enforced || m.tiers.iter().any(|t| t != crate::policy::HOST_TIER_NAME))
        .collect();
    // Stable: equal last attempts stay in identity order.
    out.sort_by_key(|m| m.last_attempt_ms);
    out
}

/// The merged rows as a table, the variable-width columns sized to fit.
pub fn table(rows: &[Merged]) -> String {
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|m| {
            [
                m.identity.clone(),
                m.nodes.join(","),
                m.tiers.join(","),
                m.owner.clone().unwrap_or_else(|| "-".into()),
                when(m.first_seen_ms),
                when(m.last_seen_ms),
                m.last_attempt_ms.map_or("-".into(), when),
                m.attempts.to_string(),
            ]
        })
        .collect();
    let header = [
        "IDENTITY",
        "NODES",
        "TIERS",
        "OWNER",
        "FIRST SEEN",
        "LAST SEEN",
        "LAST ATTEMPT",
        "ATTEMPTS",
    ]
    .map(String::from);
    let mut width = header.clone().map(|h| h.len());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        identity: &str,
        node: &str,
        tiers: &[&str],
        seen: (u64, u64),
        attempt: Option<u64>,
        n: u64,
    ) -> IdentityRow {
        IdentityRow {
            identity: identity.into(),
            node: node.into(),
            owner: None,
            tiers: tiers.iter().map(|t| t.to_string()).collect(),
            first_seen_ms: seen.0,
            last_seen_ms: seen.1,
            attempts: n,
            last_attempt_ms: attempt,
        }
    }

    #[test]
    fn nodes_merge_into_one_row_per_identity_oldest_attempt_first() {
        let mut a1 = row(
            "k8s:ns/sa",
            "node-1",
            &["t0"],
            (1_000, 5_000),
            Some(5_000),
            7,
        );
        a1.owner = Some("old-team".into());
        let mut a2 = row(
            "k8s:ns/sa",
            "node-2",
            &["t1", "t0"],
            (500, 9_000),
            Some(8_000),
            5,
        );
        a2.owner = Some("team-a".into());
        let b = row(
            "systemd:cron",
            "node-2",
            &["host"],
            (100, 200),
            Some(200),
            1,
        );
        let dns_only = row("k8s:ns/dns", "node-1", &["t0"], (300, 400), None, 0);
        let m = merge(vec![a2, b, a1, dns_only], false);
        let ids: Vec<&str> = m.iter().map(|m| m.identity.as_str()).collect();
        assert_eq!(ids, ["k8s:ns/dns", "systemd:cron", "k8s:ns/sa"]);
        assert_eq!(
            m[2],
            Merged {
                identity: "k8s:ns/sa".into(),
                nodes: vec!["node-1".into(), "node-2".into()],
                tiers: vec!["t0".into(), "t1".into()],
                owner: Some("team-a".into()),
                first_seen_ms: 500,
                last_seen_ms: 9_000,
                last_attempt_ms: Some(8_000),
                attempts: 12,
            }
        );
        let enforced: Vec<String> = merge(
            vec![
                row("systemd:cron.service", "n", &["host"], (1, 2), Some(2), 1),
                row("x", "n", &["t0"], (1, 2), None, 0),
            ],
            true,
        )
        .into_iter()
        .map(|m| m.identity)
        .collect();
        assert_eq!(enforced, ["x"]);
    }

    #[test]
    fn the_table_has_one_line_per_identity_in_aligned_columns() {
        const T: u64 = 1_764_597_000_000;
        let mut a = row(
            "k8s:ns/sa",
            "node-1",
            &["t0"],
            (T, T + 22_123),
            Some(T + 22_123),
            12,
        );
        a.owner = Some("team-a".into());
        let b = row("k8s:ns/dns", "node-2", &["t0"], (T, T), None, 0);
        let t = table(&merge(vec![a, b], false));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert_eq!(
            lines[0],
            "IDENTITY    NODES   TIERS  OWNER   FIRST SEEN                LAST SEEN                 LAST ATTEMPT              ATTEMPTS"
        );
        assert_eq!(
            lines[1],
            "k8s:ns/dns  node-2  t0     -       2025-12-01T13:50:00.000Z  2025-12-01T13:50:00.000Z  -                         0"
        );
        assert_eq!(
            lines[2],
            "k8s:ns/sa   node-1  t0     team-a  2025-12-01T13:50:00.000Z  2025-12-01T13:50:22.123Z  2025-12-01T13:50:22.123Z  12"
        );
    }

    #[test]
    fn a_missing_sqlite_store_is_not_created() {
        let dir = std::env::temp_dir().join(format!("tg-inv-{}", std::process::id()));
        let path = dir.join("nope.db");
        let e = read(&format!("sqlite:{}", path.display())).unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        assert!(!path.exists());
    }
}
