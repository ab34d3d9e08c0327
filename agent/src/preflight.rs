//! Checks before `tiergate agent` touches the kernel, each failing with one
//! sentence that says what is missing and what to do.

use std::path::Path;

/// Capabilities the agent needs when not root (bit numbers from capability.h).
const NEEDED_CAPS: [(u32, &str); 4] = [
    (39, "CAP_BPF"),
    (12, "CAP_NET_ADMIN"),
    (38, "CAP_PERFMON"),
    (24, "CAP_SYS_RESOURCE"),
];
const CAP_SYS_ADMIN: u32 = 21;

/// Why the agent cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "tiergate agent needs root or the capabilities CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_SYS_RESOURCE; it lacks {missing}"
    )]
    Privileges { missing: String },
    #[error(
        "kernel BTF is missing (/sys/kernel/btf/vmlinux): tiergate needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
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

/// Privileges: CAP_SYS_ADMIN covers everything; otherwise all of NEEDED_CAPS.
pub fn check_privileges() -> Result<(), PreflightError> {
    let caps = effective_caps();
    if caps & (1 << CAP_SYS_ADMIN) != 0 {
        return Ok(());
    }
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| caps & (1u64 << bit) == 0)
        .map(|(_, n)| *n)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Privileges {
            missing: missing.join(", "),
        })
    }
}

/// Kernel BTF, needed for the LSM program and CO-RE.
pub fn check_btf() -> Result<(), PreflightError> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err(PreflightError::NoBtf)
    }
}
