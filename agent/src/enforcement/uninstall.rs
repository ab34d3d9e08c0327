//! `tiergate uninstall`: detach and remove every pinned link and map.

use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;

use super::bpffs::PinLayout;

/// Errors removing pins.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<PathBuf>,
    pub other: Vec<PathBuf>,
}

/// Removes `<bpffs>/tiergate` entirely. Links are opened and unpinned so they
/// detach as soon as no process holds them (a running agent should be stopped
/// first; its own fds would otherwise keep its programs attached until it
/// exits).
pub fn uninstall(bpffs: &Path) -> Result<Removed, UninstallError> {
    let layout = PinLayout::new(bpffs);
    let mut removed = Removed::default();
    if !layout.root.exists() {
        return Ok(removed);
    }
    // Links first so enforcement stops before its maps disappear.
    let mut files = Vec::new();
    collect(&layout.root, &mut files);
    let (links, others): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|p| p.parent().and_then(|d| d.file_name()) == Some("links".as_ref()));
    for path in links {
        match PinnedLink::from_pin(&path) {
            Ok(link) => {
                link.unpin().map_err(|source| UninstallError::Remove {
                    path: path.clone(),
                    source,
                })?;
            }
            Err(_) => std::fs::remove_file(&path).map_err(|source| UninstallError::Remove {
                path: path.clone(),
                source,
            })?,
        }
        removed.links.push(path);
    }
    for path in others {
        std::fs::remove_file(&path).map_err(|source| UninstallError::Remove {
            path: path.clone(),
            source,
        })?;
        removed.other.push(path);
    }
    let mut dirs = Vec::new();
    collect_dirs(&layout.root, &mut dirs);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        std::fs::remove_dir(&d).map_err(|source| UninstallError::Remove {
            path: d.clone(),
            source,
        })?;
    }
    Ok(removed)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}
