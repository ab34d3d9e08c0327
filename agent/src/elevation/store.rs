//! Grants survive agent restarts: every change rewrites `--grants-file`
//! (write to a temporary file, fsync, rename, fsync the directory), and a
//! starting agent reads it back. The kernel entries are pinned and end on
//! time by themselves; the file keeps who granted what and why, and which
//! workloads a grant covers (cgroups created later included).
//!
//! A file that cannot be read as grants is set aside (`FILE.bad-<ms>`), the
//! agent starts with no grants (fail closed: nothing stays elevated that it
//! cannot account for) and says so.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::grant::Grant;

const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    grants: Vec<Grant>,
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    Grants(Vec<Grant>),
    /// The file was unreadable as grants: set aside at `moved_to`.
    SetAside {
        reason: String,
        moved_to: PathBuf,
    },
}

/// Reads the grants file (absent: none).
pub fn load(path: &Path, now_ms: u64) -> std::io::Result<Loaded> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Grants(vec![])),
        Err(e) => return Err(e),
    };
    let reason = match serde_json::from_slice::<File>(&bytes) {
        Ok(f) if f.format == FORMAT => return Ok(Loaded::Grants(f.grants)),
        Ok(f) => format!("format {} is not one this agent reads ({FORMAT})", f.format),
        Err(e) => e.to_string(),
    };
    let moved_to = PathBuf::from(format!("{}.bad-{now_ms}", path.display()));
    std::fs::rename(path, &moved_to)?;
    Ok(Loaded::SetAside { reason, moved_to })
}

/// Replaces the grants file with `grants`, durably.
pub fn save(path: &Path, grants: &[Grant]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("grants")
    ));
    let text = serde_json::to_vec_pretty(&File {
        format: FORMAT,
        grants: grants.to_vec(),
    })
    .expect("grants serialize");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elevation::grant::{Principal, Target};

    fn grant(id: &str) -> Grant {
        Grant {
            id: id.into(),
            seq: 1,
            target: Target::Cgroup("/a".into()),
            from: "t0".into(),
            to: "t2".into(),
            granted_ms: 1,
            expires_ms: 2,
            ticket: "INC-1".into(),
            reason: "why".into(),
            granted_by: Principal {
                id: "uid:0".into(),
                name: Some("root".into()),
            },
            object: None,
        }
    }

    #[test]
    fn round_trip_absent_and_corrupt() {
        let dir = std::env::temp_dir().join(format!("tg-grants-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/grants.json");
        assert!(matches!(load(&path, 5).unwrap(), Loaded::Grants(g) if g.is_empty()));
        save(&path, &[grant("g-1"), grant("g-2")]).unwrap();
        match load(&path, 5).unwrap() {
            Loaded::Grants(g) => assert_eq!(g, [grant("g-1"), grant("g-2")]),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, b"{\"format\":1,\"grants\":[{\"id\":").unwrap();
        match load(&path, 7).unwrap() {
            Loaded::SetAside { moved_to, reason } => {
                assert!(moved_to.ends_with("grants.json.bad-7"), "{moved_to:?}");
                assert!(!reason.is_empty());
                assert!(!path.exists() && moved_to.exists());
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, b"{\"format\":9,\"grants\":[]}").unwrap();
        assert!(
            matches!(load(&path, 8).unwrap(), Loaded::SetAside { reason, .. } if reason.contains("format 9"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
