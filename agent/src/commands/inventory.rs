//! `tiergate inventory`: the running agent's workloads, identities, tiers
//! and last attempts; with `--store`, every node's identities merged from
//! the collector's observation store (`merged.rs`).

mod merged;

use crate::cli::InventoryArgs;
use crate::inventory::Document;
use crate::state::Usage;

use super::advise::when;
use super::agent_client;

pub fn run(args: &InventoryArgs) -> i32 {
    if let Some(url) = &args.store {
        return merged::run(url, args.enforced, args.json);
    }
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
    match serde_json::from_str::<Document>(&body) {
        Ok(doc) => {
            print!("{}", table(&doc));
            0
        }
        Err(e) => {
            eprintln!("tiergate inventory: the agent's answer is not an inventory: {e}");
            1
        }
    }
}

/// The agent's document as a table, one workload a line.
fn table(doc: &Document) -> String {
    let mut out = match &doc.policy {
        Some(p) => format!("node {}  policy {} ({})\n", doc.node, p.name, p.version),
        None => format!("node {}  no policy in force\n", doc.node),
    };
    out += &format!(
        "{:<12} {:<9} {:<10} {:<24} {:<13} {:<48} IDENTITY\n",
        "TIER", "ENFORCED", "POD", "LAST ATTEMPT", "ATTEMPTS", "CGROUP"
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
        out += &format!(
            "{:<12} {:<9} {:<10} {:<24} {:<13} {:<48} {}\n",
            w.tier,
            if w.enforced { "yes" } else { "no" },
            pod_state,
            w.usage.last_attempt_ms.map_or("-".into(), when),
            attempts(&w.usage),
            w.cgroup_path,
            identity
        );
    }
    out
}

/// `allowed/denied`, audit-denies counted as denied.
fn attempts(u: &Usage) -> String {
    let a = u.attempts;
    format!("{}/{}", a.allowed, a.denied + a.audit_denied)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    const DOC: &str = r#"{"node":"node-1","policy":{"name":"p","version":"sha256:1"},"workloads":[
        {"cgroup_id":1,"cgroup_path":"/t0/a","tier":"t0","enforced":true,"binding":0,
         "pod_state":"none","attempts":{"allowed":12,"denied":3,"audit_denied":2},
         "last_attempt_ms":1764597022123,"last_allowed_ms":1764597022123,"last_denied_ms":1764597000000},
        {"cgroup_id":2,"cgroup_path":"/system.slice/nginx.service","systemd_unit":"nginx.service",
         "tier":"host","enforced":false,"binding":null,"pod_state":"none",
         "attempts":{"allowed":0,"denied":0,"audit_denied":0},
         "last_attempt_ms":null,"last_allowed_ms":null,"last_denied_ms":null}]}"#;

    #[test]
    fn the_table_shows_last_attempt_and_attempts() {
        let doc: Document = serde_json::from_str(DOC).unwrap();
        let t = table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "node node-1  policy p (sha256:1)");
        assert!(
            lines[1].starts_with(
                "TIER         ENFORCED  POD        LAST ATTEMPT             ATTEMPTS      CGROUP"
            ),
            "{t}"
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "t0",
                "yes",
                "none",
                "2025-12-01T13:50:22.123Z",
                "12/5",
                "/t0/a"
            ]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "host",
                "no",
                "none",
                "-",
                "0/0",
                "/system.slice/nginx.service",
                "nginx.service"
            ]
        );
        // Columns line up under their headers.
        let col = |l: &str, s: &str| l.find(s).unwrap();
        assert_eq!(col(lines[1], "LAST ATTEMPT"), col(lines[2], "2025-"));
        assert_eq!(col(lines[1], "ATTEMPTS"), col(lines[2], "12/5"));
        assert_eq!(col(lines[1], "CGROUP"), col(lines[3], "/system.slice"));
    }

    #[test]
    fn an_older_agents_document_still_renders() {
        let doc: Document = serde_json::from_str(
            r#"{"node":"n","policy":null,"workloads":[{"cgroup_id":1,"cgroup_path":"/x",
                "tier":"host","enforced":false,"binding":null,"pod_state":"none"}]}"#,
        )
        .unwrap();
        let t = table(&doc);
        assert_eq!(
            t.lines()
                .nth(2)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["host", "no", "none", "-", "0/0", "/x"]
        );
    }

    fn parse(args: &[&str]) -> Result<InventoryArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["tiergate", "inventory"], args].concat())?;
        match cli.command {
            Command::Inventory(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn store_and_admin_addr_are_exclusive() {
        let a = parse(&["--store", "sqlite:/x.db"]).unwrap();
        assert_eq!(a.store.as_deref(), Some("sqlite:/x.db"));
        assert!(
            parse(&["--admin-addr", "127.0.0.1:1"])
                .unwrap()
                .store
                .is_none()
        );
        let e = parse(&["--store", "sqlite:/x.db", "--admin-addr", "127.0.0.1:1"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
    }
}
