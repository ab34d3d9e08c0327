//! Waiting until no eBPF program still runs with what it read before a
//! switch. The hooks run inside an RCU read-side critical section
//! (`bpf_prog_run_array_cg` takes `rcu_read_lock`), so after an RCU grace
//! period every hook that read the old `TG_AGG_CTL.slot` has returned.
//!
//! User space has no direct call for a grace period, but updating a slot of
//! an `ARRAY_OF_MAPS` map waits for one before it returns (the kernel's
//! `maybe_wait_bpf_programs`, "so that userspace, when we return to it,
//! knows that all non-sleepable programs that could be running use the new
//! map value"; the kernel's own selftests use it to the same end). The
//! barrier is a private one-slot map of maps no program reads.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::enforcement::batch::{BPF_MAP_UPDATE_ELEM, CreateAttr, ElemAttr, bpf_call, create_map};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// A private map of maps whose update waits for an RCU grace period.
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> io::Result<Self> {
        let inner = create_map(&mut CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..Default::default()
        })?;
        let outer = create_map(&mut CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd() as u32,
            ..Default::default()
        })?;
        Ok(Self { outer, inner })
    }

    /// Returns once every eBPF program running when it was called has
    /// finished.
    pub fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        bpf_call(
            BPF_MAP_UPDATE_ELEM,
            &mut ElemAttr {
                map_fd: self.outer.as_raw_fd() as u32,
                key: &key as *const u32 as u64,
                value: &value as *const u32 as u64,
                ..Default::default()
            },
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs CAP_BPF (root); skipped otherwise.
    #[test]
    fn the_barrier_can_be_made_and_waited_on() {
        let Ok(b) = RcuBarrier::new() else {
            eprintln!("skipped: cannot create BPF maps here (not root)");
            return;
        };
        let started = std::time::Instant::now();
        for _ in 0..3 {
            b.wait().expect("update waits and succeeds");
        }
        // A grace period is not free: three of them take measurable time.
        assert!(started.elapsed() > std::time::Duration::from_micros(10));
    }
}
