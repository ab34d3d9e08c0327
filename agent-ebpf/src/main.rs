//! tiergate's kernel side.
//!
//! Every program here answers one question: may the calling task's cgroup
//! (its tier) do this? The answer comes from maps user space fills
//! (`agent/src/enforcement/sync.rs`); every judged attempt in an enforced tier,
//! and every metadata-service access anywhere, becomes a ring-buffer record.
//!
//! Identity is the *current task's* cgroup (`bpf_get_current_cgroup_id`), not
//! the socket's: a socket handed over from another cgroup is judged by the
//! task that uses it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod hooks;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach this; the
    // handler only exists because no_std requires one.
    unsafe { core::hint::unreachable_unchecked() }
}

/// Built for the host (e.g. `cargo clippy --workspace`) this crate is empty.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
