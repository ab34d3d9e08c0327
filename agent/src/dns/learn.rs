//! Committing learned addresses to the kernel (`TG_LEARNED`) before an
//! answer is released, and remembering which name taught each one (for
//! connection events and `policy explain --agent`).
//!
//! The write is a synchronous `bpf(BPF_MAP_UPDATE_ELEM)`: when it returns,
//! the next `connect()` anywhere sees the entry. The proxy sends the answer
//! only after every write of it returned, so there is no window where the
//! application knows an address the kernel would still refuse, and no
//! timeout that releases an answer early (Cilium's 100 ms).

use std::collections::HashMap as StdHashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use agent_common::{Learned, LearnedKey, MAX_LEARNED_PATTERNS};
use aya::maps::{HashMap, MapData, MapError};

/// Learned addresses kept in user space for naming (the kernel map is the
/// authority; this is for events). Bounded like the kernel map.
const NAMES_CAP: usize = 65_536;

/// What taught an address, for events and `explain --agent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The queried name.
    pub name: String,
    /// When the answer was committed.
    pub at: SystemTime,
    /// Until when the address opens.
    pub until: SystemTime,
}

/// The writer of `TG_LEARNED`.
pub struct Learner {
    map: Mutex<HashMap<MapData, LearnedKey, Learned>>,
    names: Mutex<StdHashMap<(u64, IpAddr), Origin>>,
}

/// `CLOCK_BOOTTIME` in nanoseconds: the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's form of an address (IPv4 as `::ffff:a.b.c.d`).
pub fn kernel_addr(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Merges `patterns` into `into` (unused slots are 0); when the slots are
/// full the newest patterns win, the oldest are dropped first.
fn merge_patterns(into: &mut [u64; MAX_LEARNED_PATTERNS], patterns: &[u64]) {
    for &p in patterns {
        if p == 0 || into.contains(&p) {
            continue;
        }
        if let Some(free) = into.iter_mut().find(|s| **s == 0) {
            *free = p;
        } else {
            into.rotate_left(1);
            into[MAX_LEARNED_PATTERNS - 1] = p;
        }
    }
}

impl Learner {
    /// Takes the map handle.
    pub fn new(map: HashMap<MapData, LearnedKey, Learned>) -> Self {
        Self {
            map: Mutex::new(map),
            names: Mutex::new(StdHashMap::new()),
        }
    }

    /// Opens `addr` for `cgroup` for `lifetime` under `patterns` (ids of the
    /// name patterns that allowed the question). Returns when the kernel has it.
    pub fn learn(
        &self,
        cgroup: u64,
        addr: IpAddr,
        lifetime: Duration,
        patterns: &[u64],
        name: &str,
    ) -> Result<(), MapError> {
        let key = LearnedKey {
            cgroup_id: cgroup,
            addr: kernel_addr(addr),
        };
        let now = boot_ns();
        let expires_ns = now.saturating_add(lifetime.as_nanos().min(u128::from(u64::MAX)) as u64);
        let mut map = self.map.lock().expect("learned map lock");
        // A live entry keeps its patterns and the later expiry; an expired
        // one starts afresh (its patterns no longer hold).
        let mut value = match map.get(&key, 0) {
            Ok(old) if old.expires_ns > now => Learned {
                expires_ns: old.expires_ns.max(expires_ns),
                patterns: old.patterns,
            },
            _ => Learned {
                expires_ns,
                patterns: [0; MAX_LEARNED_PATTERNS],
            },
        };
        merge_patterns(&mut value.patterns, patterns);
        map.insert(key, value, 0)?;
        drop(map);
        let wall = SystemTime::now();
        let mut names = self.names.lock().expect("learned names lock");
        if names.len() >= NAMES_CAP {
            names.retain(|_, o| o.until > wall);
            if names.len() >= NAMES_CAP {
                names.clear();
            }
        }
        names.insert(
            (cgroup, addr),
            Origin {
                name: name.to_owned(),
                at: wall,
                until: wall + lifetime,
            },
        );
        Ok(())
    }

    /// The name that opened `addr` for `cgroup`, if any is remembered.
    pub fn origin(&self, cgroup: u64, addr: IpAddr) -> Option<Origin> {
        self.names
            .lock()
            .expect("learned names lock")
            .get(&(cgroup, addr))
            .cloned()
    }

    /// Entries in the kernel map now (for metrics; walks the map).
    pub fn kernel_entries(&self) -> usize {
        self.map.lock().expect("learned map lock").keys().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_merge_without_repeats_and_keep_the_newest() {
        let mut p = [0u64; MAX_LEARNED_PATTERNS];
        merge_patterns(&mut p, &[5, 0, 5, 7]);
        assert_eq!(p, [5, 7, 0, 0]);
        merge_patterns(&mut p, &[8, 9]);
        assert_eq!(p, [5, 7, 8, 9]);
        merge_patterns(&mut p, &[7, 10]);
        assert_eq!(p, [7, 8, 9, 10]);
    }

    #[test]
    fn kernel_addresses_are_the_ipv6_form() {
        let a: IpAddr = "198.18.0.1".parse().expect("v4");
        assert_eq!(
            kernel_addr(a),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1]
        );
        let b: IpAddr = "2001:db8::1".parse().expect("v6");
        assert_eq!(kernel_addr(b)[0..2], [0x20, 0x01]);
    }

    #[test]
    fn boot_clock_moves_forward() {
        let a = boot_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(boot_ns() >= a + 1_000_000);
    }
}
