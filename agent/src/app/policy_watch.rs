//! The policy file watch: which file-system events mean the policy file
//! changed, and when a change is complete enough to read.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

/// What a file event means for the policy watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PolicyFileEvent {
    /// The file was replaced (rename, create, a ConfigMap's `..data` swap)
    /// or an in-place write finished: read it now.
    Complete,
    /// An in-place write is under way: read it once the writes settle.
    Writing,
}

/// Classifies a file-system event for the policy file `name`: `None` for
/// events about other files in its directory (a temporary file being
/// written before the rename) and for reads.
fn classify_policy_event(ev: &notify::Event, name: &std::ffi::OsStr) -> Option<PolicyFileEvent> {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    let is_ours = |p: &std::path::PathBuf| {
        p.file_name()
            .is_some_and(|f| f == name || f == std::ffi::OsStr::new("..data"))
    };
    if !ev.paths.iter().any(is_ours) {
        return None;
    }
    match ev.kind {
        K::Access(AccessKind::Close(AccessMode::Write)) => Some(PolicyFileEvent::Complete),
        K::Access(_) => None,
        // Created or written in place (`>`, `cp`): read once it is closed.
        K::Modify(ModifyKind::Data(_)) | K::Create(_) => Some(PolicyFileEvent::Writing),
        // Moved away or removed (an editor's save, `rm` + `cp`): the new
        // file usually follows at once; reading now would only report it
        // missing.
        K::Modify(ModifyKind::Name(RenameMode::From)) | K::Remove(_) => {
            Some(PolicyFileEvent::Writing)
        }
        // A rename seen from both ends: ours only if the policy file (or
        // `..data`) is where it went.
        K::Modify(ModifyKind::Name(RenameMode::Both)) => {
            if ev.paths.get(1).is_some_and(is_ours) {
                Some(PolicyFileEvent::Complete)
            } else {
                Some(PolicyFileEvent::Writing)
            }
        }
        _ => Some(PolicyFileEvent::Complete),
    }
}

/// Watches the policy file's directory (editors and ConfigMaps replace the
/// file rather than write it in place) and signals a reload on a change of
/// the policy file.
pub(super) fn watch_policy_file(
    path: &Path,
    tx: mpsc::UnboundedSender<PolicyFileEvent>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path
        .file_name()
        .context("the policy path names no file")?
        .to_os_string();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && let Some(what) = classify_policy_event(&ev, &name)
        {
            let _ = tx.send(what);
        }
    })
    .context("cannot start the policy file watch")?;
    w.watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    Ok(w)
}

/// Waits until the change that began with `first` is complete. A replaced
/// file is read at once (the reload's latency is the time to enforcement).
/// An in-place write is read when it is closed or, if that never comes,
/// 20 ms after the last write; a half-written file would only be rejected.
pub(super) async fn settle(
    events: &mut mpsc::UnboundedReceiver<PolicyFileEvent>,
    first: PolicyFileEvent,
) {
    let mut complete = first == PolicyFileEvent::Complete;
    while !complete {
        match tokio::time::timeout(Duration::from_millis(20), events.recv()).await {
            Ok(Some(PolicyFileEvent::Writing)) => {}
            Ok(Some(PolicyFileEvent::Complete)) | Ok(None) | Err(_) => complete = true,
        }
    }
    while events.try_recv().is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::{PolicyFileEvent, classify_policy_event};
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RenameMode,
    };
    use std::ffi::OsStr;

    fn ev(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(path.into())
    }

    #[test]
    fn policy_watch_reacts_to_the_policy_file_only() {
        let name = OsStr::new("policy.yaml");
        let c = |kind, path| classify_policy_event(&ev(kind, path), name);
        // A rename into place (editors, `mv`, the bench) is read at once.
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Complete)
        );
        // A file created in place is read once it is closed (`>` creates
        // it empty first).
        assert_eq!(
            c(EventKind::Create(CreateKind::File), "/etc/tg/policy.yaml"),
            Some(PolicyFileEvent::Writing)
        );
        // A ConfigMap volume swaps its `..data` symlink.
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/tg/..data"
            ),
            Some(PolicyFileEvent::Complete)
        );
        // An in-place write settles until the file is closed.
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Writing)
        );
        assert_eq!(
            c(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Complete)
        );
        // Moved away or removed: wait for what replaces it.
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Writing)
        );
        assert_eq!(
            c(
                EventKind::Remove(notify::event::RemoveKind::File),
                "/etc/tg/policy.yaml"
            ),
            Some(PolicyFileEvent::Writing)
        );
        let both = |from: &str, to: &str| {
            let ev = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
                .add_path(from.into())
                .add_path(to.into());
            classify_policy_event(&ev, name)
        };
        // vim: policy.yaml → policy.yaml~, then the new file → policy.yaml.
        assert_eq!(
            both("/etc/tg/policy.yaml", "/etc/tg/policy.yaml~"),
            Some(PolicyFileEvent::Writing)
        );
        assert_eq!(
            both("/etc/tg/.policy.tmp", "/etc/tg/policy.yaml"),
            Some(PolicyFileEvent::Complete)
        );
        assert_eq!(
            both("/etc/tg/..data_tmp", "/etc/tg/..data"),
            Some(PolicyFileEvent::Complete)
        );
        // Reads, and the temporary file written before a rename, are not changes.
        assert_eq!(
            c(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/etc/tg/policy.yaml"
            ),
            None
        );
        assert_eq!(
            c(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "/etc/tg/.policy.yaml.tmp"
            ),
            None
        );
        assert_eq!(
            c(EventKind::Create(CreateKind::File), "/etc/tg/other.yaml"),
            None
        );
    }
}
