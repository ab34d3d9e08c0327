//! Watches the cgroup tree for created and removed cgroups (inotify on every
//! directory), so user space learns of a new cgroup within milliseconds.
//! Correctness does not hang on this speed: until user space has written a
//! cgroup's entry, the kernel judges it by its nearest known ancestor's
//! child tier. A periodic full rescan catches anything inotify missed
//! (queue overflow).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc;

use super::cgroupfs;

/// A change in the cgroup tree.
#[derive(Debug)]
pub enum CgroupChange {
    Created(PathBuf),
    Removed(PathBuf),
    /// Events may have been missed: rescan everything.
    Rescan,
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);

struct Tree {
    watches: Watches,
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

impl Tree {
    /// Watches `dir` and everything below it; reports each as created.
    fn add_subtree(&mut self, dir: &Path, tx: &mpsc::UnboundedSender<CgroupChange>, report: bool) {
        for d in cgroupfs::walk(dir) {
            match self.watches.add(&d, MASK) {
                Ok(wd) => {
                    self.dirs.insert(wd, d.clone());
                }
                // Gone again already: nothing to watch or report.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => tracing::warn!(dir = %d.display(), error = %e, "cannot watch cgroup"),
            }
            if report {
                let _ = tx.send(CgroupChange::Created(d));
            }
        }
    }
}

/// Starts watching `root`; returns once the initial watches are in place, so
/// any cgroup created after this call is reported (earlier ones are found by
/// the caller's own scan).
pub fn spawn(
    root: PathBuf,
    tx: mpsc::UnboundedSender<CgroupChange>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let inotify = Inotify::init()?;
    let mut stream = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
    let mut tree = Tree {
        watches: stream.watches(),
        dirs: HashMap::new(),
    };
    tree.add_subtree(&root, &tx, false);
    Ok(tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::error!(error = %e, "cgroup watch failed; falling back to periodic rescans");
                    return;
                }
            };
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                let _ = tx.send(CgroupChange::Rescan);
                continue;
            }
            if ev.mask.contains(EventMask::IGNORED) {
                tree.dirs.remove(&ev.wd);
                continue;
            }
            if !ev.mask.contains(EventMask::ISDIR) {
                continue;
            }
            let (Some(parent), Some(name)) = (tree.dirs.get(&ev.wd).cloned(), ev.name) else {
                continue;
            };
            let dir = parent.join::<&OsStr>(name.as_ref());
            if ev.mask.contains(EventMask::CREATE) {
                tree.add_subtree(&dir, &tx, true);
            } else if ev.mask.contains(EventMask::DELETE) {
                let _ = tx.send(CgroupChange::Removed(dir));
            }
        }
    }))
}
