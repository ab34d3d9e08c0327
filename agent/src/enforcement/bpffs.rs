//! The BPF filesystem where programs' links and maps are pinned, so that
//! enforcement outlives the agent process (crash, upgrade, `kill -9`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use agent_common::ABI_VERSION;

/// statfs f_type of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors preparing the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount bpffs at {path}: {source} (mount it yourself: mount -t bpf bpf {path})")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where this agent pins its objects under a bpffs path.
#[derive(Clone, Debug)]
pub struct PinLayout {
    /// `<bpffs>/tiergate`: everything tiergate pins; `uninstall` removes it.
    pub root: PathBuf,
    /// `<root>/v<ABI>`: this map/event layout version.
    pub versioned: PathBuf,
    pub maps: PathBuf,
    pub links: PathBuf,
}

impl PinLayout {
    pub fn new(bpffs: &Path) -> Self {
        let root = bpffs.join("tiergate");
        let versioned = root.join(format!("v{ABI_VERSION}"));
        Self {
            maps: versioned.join("maps"),
            links: versioned.join("links"),
            versioned,
            root,
        }
    }
}

/// True when `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; c is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure `bpffs` is a bpf filesystem (mounting one if the path is not on
/// one yet) and creates the pin directories.
pub fn prepare(bpffs: &Path) -> Result<PinLayout, BpffsError> {
    std::fs::create_dir_all(bpffs).map_err(|source| BpffsError::Create {
        path: bpffs.into(),
        source,
    })?;
    if !is_bpffs(bpffs) {
        let target = CString::new(bpffs.as_os_str().as_bytes()).expect("path has no NUL");
        // SAFETY: all pointers are valid NUL-terminated strings for the call.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(BpffsError::Mount {
                path: bpffs.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        tracing::info!(path = %bpffs.display(), "mounted bpffs");
    }
    let layout = PinLayout::new(bpffs);
    for dir in [&layout.maps, &layout.links] {
        std::fs::create_dir_all(dir).map_err(|source| BpffsError::Create {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(layout)
}
