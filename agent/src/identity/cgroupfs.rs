//! The cgroup v2 hierarchy on disk: where it is mounted, and the mapping
//! between a cgroup directory, its id (the kernel's `bpf_get_current_cgroup_id`
//! is the directory's inode number) and its path as `/proc/<pid>/cgroup`
//! shows it (`0::<path>`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors finding or reading the cgroup v2 hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 (cgroup2) filesystem is mounted (looked in /proc/self/mountinfo)")]
    NotMounted,
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not inside the cgroup v2 mount at {mount}")]
    OutsideMount { path: PathBuf, mount: PathBuf },
    #[error("process {pid} has no cgroup v2 entry (\"0::\") in /proc/{pid}/cgroup")]
    NoV2Entry { pid: u32 },
    #[error(
        "the cgroup v2 mount {mount} has the root {root} from this process's own cgroup namespace, and no namespace where it reads / could be entered ({tried}): run the agent in the host's PID namespace with CAP_SYS_ADMIN and CAP_SYS_PTRACE"
    )]
    ForeignNamespace {
        mount: PathBuf,
        root: String,
        tried: String,
    },
}

/// The cgroup v2 mount this agent works on.
#[derive(Clone, Debug)]
pub struct CgroupFs {
    /// Where the hierarchy is mounted, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified.
    pub mount: PathBuf,
    /// The hierarchy path of the mount's root (the mountinfo "root" field;
    /// "/" unless the agent runs in a cgroup namespace or a bind mount).
    pub mount_root: String,
}

impl CgroupFs {
    /// Finds the cgroup v2 mount from /proc/self/mountinfo.
    pub fn discover() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|source| CgroupError::Io {
            path: path.into(),
            source,
        })?;
        parse_mountinfo(&text).ok_or(CgroupError::NotMounted)
    }

    /// The hierarchy path (as /proc/<pid>/cgroup shows it) of a directory
    /// inside the mount.
    pub fn path_of(&self, dir: &Path) -> Result<String, CgroupError> {
        let rel = dir
            .strip_prefix(&self.mount)
            .map_err(|_| CgroupError::OutsideMount {
                path: dir.into(),
                mount: self.mount.clone(),
            })?;
        Ok(join_hierarchy(&self.mount_root, &rel.to_string_lossy()))
    }

    /// The directory of a hierarchy path, if it is inside this mount.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rest = if self.mount_root == "/" {
            path
        } else {
            path.strip_prefix(self.mount_root.as_str())?
        };
        let rest = rest.trim_start_matches('/');
        Some(if rest.is_empty() {
            self.mount.clone()
        } else {
            self.mount.join(rest)
        })
    }
}

fn join_hierarchy(root: &str, rel: &str) -> String {
    let rel = rel.trim_matches('/');
    match (root.trim_end_matches('/'), rel) {
        ("", "") => "/".to_string(),
        ("", r) => format!("/{r}"),
        (r, "") => r.to_string(),
        (r, s) => format!("{r}/{s}"),
    }
}

/// The cgroup id of a cgroup directory: its inode number.
pub fn cgroup_id(dir: &Path) -> Result<u64, CgroupError> {
    fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Io {
            path: dir.into(),
            source,
        })
}

/// The cgroup v2 path of a process, from /proc/<pid>/cgroup.
pub fn path_of_pid(pid: u32) -> Result<String, CgroupError> {
    let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text =
        fs::read_to_string(&file).map_err(|source| CgroupError::Io { path: file, source })?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
        .ok_or(CgroupError::NoV2Entry { pid })
}

/// Parses /proc/self/mountinfo and returns the first cgroup2 mount.
fn parse_mountinfo(text: &str) -> Option<CgroupFs> {
    for line in text.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        if fields.len() < 5 {
            continue;
        }
        return Some(CgroupFs {
            mount: PathBuf::from(unescape_mountinfo(fields[4])),
            mount_root: unescape_mountinfo(fields[3]),
        });
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes the cgroup v2 mount read as the node's hierarchy when this process
/// sits in a cgroup namespace of its own, and says whose namespace it
/// entered. Container runtimes on cgroup v2 nodes (containerd, CRI-O) give
/// every container such a namespace; there the node's mount (the
/// DaemonSet's hostPath) has the root `/../..` in mountinfo and
/// `/proc/<pid>/cgroup` reads relative to the container, not as the paths
/// bindings, events and pod identity use. The fix is to enter a namespace
/// rooted at the mount's root: PID 1's (with the DaemonSet's `hostPID`,
/// the node's init), else that of a process in the mount's root cgroup
/// (kernel threads: their namespace is always rooted there). Each is
/// checked by re-reading mountinfo. Needs CAP_SYS_ADMIN (`setns`) and
/// CAP_SYS_PTRACE (`/proc/<pid>/ns/cgroup`): the agent's set. A namespace
/// belongs to a thread: call this before any thread starts.
pub fn join_node_cgroup_namespace() -> Result<Option<u32>, CgroupError> {
    let Ok(fs) = CgroupFs::discover() else {
        return Ok(None); // no cgroup v2: the start check says so
    };
    if !outside_namespace(&fs.mount_root) {
        return Ok(None);
    }
    let mut candidates = vec![1u32];
    if let Ok(text) = fs::read_to_string(fs.mount.join("cgroup.procs")) {
        candidates.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    let mut tried = Vec::new();
    for pid in candidates.into_iter().take(64) {
        if let Err(e) = enter_cgroup_namespace(pid) {
            tried.push(format!("PID {pid}: {e}"));
            continue;
        }
        match CgroupFs::discover() {
            Ok(now) if !outside_namespace(&now.mount_root) => return Ok(Some(pid)),
            Ok(now) => tried.push(format!("PID {pid}: root still {}", now.mount_root)),
            Err(e) => tried.push(format!("PID {pid}: {e}")),
        }
    }
    Err(CgroupError::ForeignNamespace {
        mount: fs.mount,
        root: fs.mount_root,
        tried: tried.join("; "),
    })
}

/// A mountinfo root above this process's cgroup namespace (`/..`, `/../..`).
fn outside_namespace(mount_root: &str) -> bool {
    mount_root == "/.." || mount_root.starts_with("/../")
}

fn enter_cgroup_namespace(pid: u32) -> std::io::Result<()> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/cgroup"))?;
    // SAFETY: setns on a descriptor of a cgroup namespace file we hold; it
    // changes only the calling (still single) thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWCGROUP) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every cgroup directory under `root` (including it), depth first.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// The systemd unit a cgroup path names, if any (`.../foo.service` or
/// `.../session-3.scope`): the deepest segment that is a unit.
pub fn systemd_unit(path: &str) -> Option<&str> {
    path.rsplit('/').find(|seg| {
        [".service", ".scope", ".socket", ".mount", ".swap"]
            .iter()
            .any(|suffix| seg.ends_with(suffix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let fs = parse_mountinfo(HYBRID).expect("cgroup2 mount");
        assert_eq!(fs.mount, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(fs.mount_root, "/");
    }

    #[test]
    fn a_root_above_the_namespace_is_outside() {
        assert!(outside_namespace("/.."));
        assert!(outside_namespace("/../.."));
        assert!(outside_namespace("/../../kubepods.slice"));
        assert!(!outside_namespace("/"));
        assert!(!outside_namespace("/kubepods.slice"));
        assert!(!outside_namespace("/..foo"));
        let private = "41 31 0:38 /../.. /sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw";
        assert!(outside_namespace(
            &parse_mountinfo(private).expect("mount").mount_root
        ));
    }

    #[test]
    fn no_cgroup2_is_none() {
        let v1_only = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_mountinfo(&v1_only).is_none());
    }

    #[test]
    fn unescapes_octal_mount_points() {
        let line = "32 31 0:27 / /mnt/cg\\040v2 rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(line).unwrap().mount,
            PathBuf::from("/mnt/cg v2")
        );
    }

    #[test]
    fn hierarchy_paths_round_trip() {
        let fs = CgroupFs {
            mount: "/sys/fs/cgroup".into(),
            mount_root: "/".into(),
        };
        assert_eq!(fs.path_of(Path::new("/sys/fs/cgroup")).unwrap(), "/");
        assert_eq!(fs.path_of(Path::new("/sys/fs/cgroup/a/b")).unwrap(), "/a/b");
        assert_eq!(
            fs.dir_of("/a/b").unwrap(),
            PathBuf::from("/sys/fs/cgroup/a/b")
        );
        assert!(fs.path_of(Path::new("/tmp/x")).is_err());
        let ns = CgroupFs {
            mount: "/sys/fs/cgroup".into(),
            mount_root: "/kubepods/pod1".into(),
        };
        assert_eq!(
            ns.path_of(Path::new("/sys/fs/cgroup/c1")).unwrap(),
            "/kubepods/pod1/c1"
        );
        assert_eq!(
            ns.dir_of("/kubepods/pod1/c1").unwrap(),
            PathBuf::from("/sys/fs/cgroup/c1")
        );
        assert_eq!(ns.dir_of("/other"), None);
    }

    #[test]
    fn systemd_units_from_paths() {
        assert_eq!(
            systemd_unit("/system.slice/nginx.service"),
            Some("nginx.service")
        );
        assert_eq!(
            systemd_unit("/user.slice/user-0.slice/session-3.scope"),
            Some("session-3.scope")
        );
        assert_eq!(
            systemd_unit("/system.slice/foo.service/worker"),
            Some("foo.service")
        );
        assert_eq!(systemd_unit("/agents/tier0"), None);
    }
}
