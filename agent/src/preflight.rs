//! Checks before `tiergate agent` touches the kernel, each failing with one
//! sentence that says what is missing and what to do.
//!
//! The capabilities are the least the agent runs with, found by running it
//! in a container with each one removed (README, "Least privilege"; the
//! test `tests/tests/container.rs` runs the image with exactly this set):
//!
//! - `CAP_SYS_ADMIN`: the DNS and metadata proxies open their sockets inside
//!   workloads' network namespaces with `setns(CLONE_NEWNET)`, which the
//!   kernel allows only with CAP_SYS_ADMIN (`netns_install`); no narrower
//!   capability exists for it. It also covers every BPF operation the agent
//!   makes: wherever the kernel asks for CAP_BPF, CAP_PERFMON or (for
//!   cgroup programs) CAP_NET_ADMIN it accepts CAP_SYS_ADMIN instead
//!   (`bpf_capable`, `perfmon_capable`, `bpf_net_capable`,
//!   `bpf_token_capable`), so those three would add nothing but power
//!   (CAP_NET_ADMIN: reconfiguring the node's network).
//! - `CAP_SYS_PTRACE`: the proxies find a workload's namespace at
//!   `/proc/<pid>/ns/net`, which the kernel opens only under
//!   `ptrace_may_access`: a process of another user, or one holding a
//!   capability the agent lacks (every container's default set), needs it.
//!
//! Both also let the agent leave a container's own cgroup namespace for the
//! node's (`identity::cgroupfs::join_node_cgroup_namespace`).
//! - `CAP_NET_ADMIN`: when an elevation grant ends, the connections it
//!   opened to destinations the workload's own tier does not allow are
//!   closed with sock_diag `SOCK_DESTROY` (`elevation/sockets.rs`), which the
//!   kernel allows only with CAP_NET_ADMIN (`sock_diag_destroy`);
//!   CAP_SYS_ADMIN does not stand in for it there.
//! - `CAP_SYS_RESOURCE`, only before Linux 5.11 and only when the hard
//!   `RLIMIT_MEMLOCK` is not already unlimited: BPF maps and programs were
//!   charged to that limit until 5.11 (memory cgroup since), and the agent
//!   raises it.

use std::path::Path;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

/// One capability the agent needs, and why (the error names both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Bit number (capability.h).
    pub bit: u32,
    pub name: &'static str,
    pub why: &'static str,
}

pub const SYS_ADMIN: Capability = Capability {
    bit: CAP_SYS_ADMIN,
    name: "CAP_SYS_ADMIN",
    why: "to load and attach the eBPF programs and to enter other namespaces: workloads' network namespaces for the DNS and metadata proxies, the node's cgroup namespace",
};
/// `tiergate proxy`'s CAP_SYS_ADMIN.
pub const PROXY_SYS_ADMIN: Capability = Capability {
    bit: CAP_SYS_ADMIN,
    name: "CAP_SYS_ADMIN",
    why: "to enter workloads' network namespaces (the proxies' sockets live there) and the node's cgroup namespace, and to write the pinned maps",
};
pub const SYS_PTRACE: Capability = Capability {
    bit: CAP_SYS_PTRACE,
    name: "CAP_SYS_PTRACE",
    why: "to open other processes' /proc/<pid>/ns/*: workloads' network namespaces for the DNS and metadata proxies, the node's cgroup namespace",
};
pub const NET_ADMIN: Capability = Capability {
    bit: CAP_NET_ADMIN,
    name: "CAP_NET_ADMIN",
    why: "to close the connections an elevation grant opened when it ends (sock_diag SOCK_DESTROY)",
};
pub const SYS_RESOURCE: Capability = Capability {
    bit: CAP_SYS_RESOURCE,
    name: "CAP_SYS_RESOURCE",
    why: "to raise RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF memory to",
};

/// A kernel release: major and minor of `uname -r`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kernel {
    pub major: u32,
    pub minor: u32,
}

impl Kernel {
    /// The running kernel (`/proc/sys/kernel/osrelease`), if readable.
    pub fn current() -> Option<Kernel> {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|s| Kernel::parse(&s))
    }

    /// `6.18.44-fc-v669` → 6.18; `5.10.0-35-amd64` → 5.10.
    pub fn parse(release: &str) -> Option<Kernel> {
        let mut parts = release.trim().split(['.', '-', '+', '_']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Kernel { major, minor })
    }

    /// Whether BPF memory is charged to the memory cgroup (5.11 and later)
    /// rather than to RLIMIT_MEMLOCK.
    pub fn bpf_memcg_accounting(self) -> bool {
        self >= Kernel {
            major: 5,
            minor: 11,
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Linux {}.{}", self.major, self.minor)
    }
}

/// Why the agent cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "tiergate {daemon} lacks {missing}: on {kernel} it needs exactly {needed} (README, Least privilege)"
    )]
    Privileges {
        /// `agent` or `proxy`.
        daemon: &'static str,
        /// Each missing capability with what it is for.
        missing: String,
        /// The whole set for this kernel.
        needed: String,
        /// `Linux X.Y`, or `this kernel` when the release is unreadable.
        kernel: String,
    },
    #[error(
        "tiergate agent cannot raise RLIMIT_MEMLOCK to unlimited ({source}): {kernel} charges BPF memory to it; grant CAP_SYS_RESOURCE or set the limit to unlimited"
    )]
    Memlock {
        kernel: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kernel BTF is missing (/sys/kernel/btf/vmlinux): tiergate needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
}

/// The capabilities `tiergate agent` needs on `kernel` (unknown: a current
/// kernel), given the hard RLIMIT_MEMLOCK (`None`: unlimited).
pub fn needed_capabilities(kernel: Option<Kernel>, memlock_hard: Option<u64>) -> Vec<Capability> {
    let mut needed = vec![SYS_ADMIN, SYS_PTRACE, NET_ADMIN];
    if needs_memlock(kernel) && memlock_hard.is_some() {
        needed.push(SYS_RESOURCE);
    }
    needed
}

/// Whether BPF memory counts against RLIMIT_MEMLOCK on `kernel`.
fn needs_memlock(kernel: Option<Kernel>) -> bool {
    kernel.is_some_and(|k| !k.bpf_memcg_accounting())
}

/// The check itself, on an effective capability mask.
pub fn check_caps(
    effective: u64,
    kernel: Option<Kernel>,
    memlock_hard: Option<u64>,
) -> Result<(), PreflightError> {
    check_set(
        "agent",
        effective,
        kernel,
        &needed_capabilities(kernel, memlock_hard),
    )
}

/// The capabilities `tiergate proxy` needs (it loads nothing: the agent's
/// pinned maps are there already).
pub fn proxy_capabilities() -> Vec<Capability> {
    vec![PROXY_SYS_ADMIN, SYS_PTRACE]
}

/// `tiergate proxy`'s check: [`proxy_capabilities`].
pub fn check_proxy_privileges() -> Result<(), PreflightError> {
    check_set(
        "proxy",
        effective_caps(),
        Kernel::current(),
        &proxy_capabilities(),
    )
}

fn check_set(
    daemon: &'static str,
    effective: u64,
    kernel: Option<Kernel>,
    needed: &[Capability],
) -> Result<(), PreflightError> {
    let missing: Vec<String> = needed
        .iter()
        .filter(|c| effective & (1u64 << c.bit) == 0)
        .map(|c| format!("{} ({})", c.name, c.why))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = needed.iter().map(|c| c.name).collect();
    Err(PreflightError::Privileges {
        daemon,
        missing: and_list(&missing),
        needed: and_list(&names),
        kernel: kernel_name(kernel),
    })
}

fn kernel_name(kernel: Option<Kernel>) -> String {
    kernel.map_or_else(|| "this kernel".to_string(), |k| k.to_string())
}

/// "a", "a and b", "a, b and c".
fn and_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_string(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(AsRef::as_ref).collect();
            format!("{} and {}", init.join(", "), last.as_ref())
        }
    }
}

/// Effective capability set of this process.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The hard RLIMIT_MEMLOCK of this process (`None`: unlimited).
fn memlock_hard() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return Some(0);
    }
    (r.rlim_max != libc::RLIM_INFINITY).then_some(r.rlim_max)
}

/// Privileges: every capability [`needed_capabilities`] names for the
/// running kernel, whoever the user is (uid 0 alone grants nothing here).
/// Before 5.11, also raises RLIMIT_MEMLOCK to unlimited.
pub fn check_privileges() -> Result<(), PreflightError> {
    let kernel = Kernel::current();
    check_caps(effective_caps(), kernel, memlock_hard())?;
    if needs_memlock(kernel) {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
            return Err(PreflightError::Memlock {
                kernel: kernel_name(kernel),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Kernel BTF, needed for the LSM program and CO-RE.
pub fn check_btf() -> Result<(), PreflightError> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err(PreflightError::NoBtf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K618: Option<Kernel> = Some(Kernel {
        major: 6,
        minor: 18,
    });
    const K510: Option<Kernel> = Some(Kernel {
        major: 5,
        minor: 10,
    });
    const ALL: u64 = 0x1ff_ffff_ffff;

    fn mask(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1 << c.bit)
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(Kernel::parse("6.18.44-fc-v669\n"), K618);
        assert_eq!(Kernel::parse("5.10.0-35-amd64"), K510);
        assert_eq!(
            Kernel::parse("5.11"),
            Some(Kernel {
                major: 5,
                minor: 11
            })
        );
        assert_eq!(
            Kernel::parse("4.19.0+"),
            Some(Kernel {
                major: 4,
                minor: 19
            })
        );
        assert_eq!(Kernel::parse("linux"), None);
        assert_eq!(Kernel::parse("6"), None);
        assert_eq!(Kernel::parse(""), None);
    }

    #[test]
    fn memcg_accounting_from_5_11() {
        let k = |major, minor| Kernel { major, minor };
        assert!(!k(4, 19).bpf_memcg_accounting());
        assert!(!k(5, 10).bpf_memcg_accounting());
        assert!(k(5, 11).bpf_memcg_accounting());
        assert!(k(5, 15).bpf_memcg_accounting());
        assert!(k(6, 1).bpf_memcg_accounting());
        assert!(k(6, 18).bpf_memcg_accounting());
    }

    #[test]
    fn the_set_per_kernel() {
        assert_eq!(
            needed_capabilities(K618, Some(8 << 20)),
            vec![SYS_ADMIN, SYS_PTRACE, NET_ADMIN]
        );
        // An unreadable release is taken for a current kernel.
        assert_eq!(
            needed_capabilities(None, Some(0)),
            vec![SYS_ADMIN, SYS_PTRACE, NET_ADMIN]
        );
        assert_eq!(
            needed_capabilities(K510, Some(64 << 10)),
            vec![SYS_ADMIN, SYS_PTRACE, NET_ADMIN, SYS_RESOURCE]
        );
        // Before 5.11 with an unlimited hard limit, raising needs nothing.
        assert_eq!(
            needed_capabilities(K510, None),
            vec![SYS_ADMIN, SYS_PTRACE, NET_ADMIN]
        );
    }

    #[test]
    fn exactly_the_set_passes() {
        let set = mask(&[SYS_ADMIN, SYS_PTRACE, NET_ADMIN]);
        assert!(check_caps(set, K618, Some(0)).is_ok());
        assert!(check_caps(ALL, K618, Some(0)).is_ok());
        assert!(check_caps(set | mask(&[SYS_RESOURCE]), K510, Some(0)).is_ok());
        assert!(check_caps(set, K510, None).is_ok());
    }

    #[test]
    fn each_missing_capability_is_named_in_one_sentence() {
        let set = [SYS_ADMIN, SYS_PTRACE, NET_ADMIN];
        for gone in set {
            let caps = mask(&set) & !(1 << gone.bit);
            let msg = check_caps(caps, K618, Some(0)).unwrap_err().to_string();
            assert_eq!(
                msg,
                format!(
                    "tiergate agent lacks {} ({}): on Linux 6.18 it needs exactly \
                     CAP_SYS_ADMIN, CAP_SYS_PTRACE and CAP_NET_ADMIN (README, Least privilege)",
                    gone.name, gone.why
                )
            );
            assert_eq!(msg.lines().count(), 1);
        }
        let msg = check_caps(mask(&set), K510, Some(64 << 10))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("tiergate agent lacks CAP_SYS_RESOURCE (to raise RLIMIT_MEMLOCK"),
            "{msg}"
        );
        assert!(
            msg.ends_with(
                "on Linux 5.10 it needs exactly CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN \
                 and CAP_SYS_RESOURCE (README, Least privilege)"
            ),
            "{msg}"
        );
    }

    #[test]
    fn the_old_set_without_sys_admin_is_refused() {
        // CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON (and CAP_SYS_RESOURCE): the
        // programs would load, but no namespace could be entered.
        let old = (1 << 39) | (1 << 12) | (1 << 38) | (1 << 24);
        let msg = check_caps(old, K618, Some(0)).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "tiergate agent lacks CAP_SYS_ADMIN ({}) and CAP_SYS_PTRACE ({})",
                SYS_ADMIN.why, SYS_PTRACE.why
            )),
            "{msg}"
        );
        let msg = check_caps(0, None, None).unwrap_err().to_string();
        assert!(msg.contains(": on this kernel it needs exactly"), "{msg}");
    }

    #[test]
    fn lists_read_as_english() {
        assert_eq!(and_list::<&str>(&[]), "");
        assert_eq!(and_list(&["a"]), "a");
        assert_eq!(and_list(&["a", "b"]), "a and b");
        assert_eq!(and_list(&["a", "b", "c"]), "a, b and c");
    }
}
