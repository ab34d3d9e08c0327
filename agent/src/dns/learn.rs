//! Committing learned addresses to the kernel (`TG_LEARNED`) before an
//! answer is released, and remembering which name taught each one (for
//! connection events and `policy explain --agent`).
//!
//! The write is a synchronous `bpf(BPF_MAP_UPDATE_ELEM)`: when it returns,
//! the next `connect()` anywhere sees the entry. The proxy sends the answer
//! only after every write of it returned, so there is no window where the
//! application knows an address the kernel would still refuse, and no
//! timeout that releases an answer early (Cilium's 100 ms).

use std::collections::{HashMap as StdHashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use agent_common::{Learned, LearnedKey, MAX_LEARNED_PATTERNS};
use aya::maps::{HashMap, MapData, MapError};

/// How many addresses one workload, and one name of one workload, may hold
/// open at once; beyond either, the oldest learned goes (the kernel map's
/// own LRU bound is the global one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_workload: usize,
    pub per_name: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_workload: 4096,
            per_name: 256,
        }
    }
}

/// Which cap made room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    Workload,
    Name,
}

impl Cap {
    /// The event and metric spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Cap::Workload => "workload",
            Cap::Name => "name",
        }
    }
}

/// What opened an address, as `/dns/learned` serves it to `explain --agent`.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Opened {
    pub name: String,
    /// Epoch milliseconds.
    pub learned_at: u64,
    pub expires: u64,
}

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

/// The proxy's account of learned addresses: their origin, and their order
/// per workload and per name, so the caps evict the oldest. Pure: the
/// kernel writes are the caller's.
#[derive(Debug, Default)]
pub struct Book {
    limits: Limits,
    entries: StdHashMap<(u64, IpAddr), Origin>,
    per_workload: StdHashMap<u64, VecDeque<IpAddr>>,
    per_name: StdHashMap<(u64, String), VecDeque<IpAddr>>,
}

impl Book {
    pub fn new(limits: Limits) -> Self {
        Book {
            limits,
            ..Default::default()
        }
    }

    /// Records `addr` learned by `cgroup` from `origin.name`; returns the
    /// addresses of `cgroup` to close to stay within the caps, and the cap
    /// that made room (the name's first).
    pub fn record(
        &mut self,
        cgroup: u64,
        addr: IpAddr,
        origin: Origin,
    ) -> (Vec<IpAddr>, Option<Cap>) {
        let name_key = (cgroup, origin.name.clone());
        if let Some(old) = self.entries.insert((cgroup, addr), origin) {
            if old.name == name_key.1 {
                return (Vec::new(), None);
            }
            // Learned again under another name: it now counts for this one.
            self.unlink_name(cgroup, &old.name, addr);
        } else {
            self.per_workload.entry(cgroup).or_default().push_back(addr);
        }
        self.per_name
            .entry(name_key.clone())
            .or_default()
            .push_back(addr);
        let mut evicted = Vec::new();
        let mut cap = None;
        while self
            .per_name
            .get(&name_key)
            .is_some_and(|q| q.len() > self.limits.per_name)
        {
            let old = self
                .per_name
                .get_mut(&name_key)
                .and_then(VecDeque::pop_front)
                .expect("non-empty");
            self.forget(cgroup, old, false);
            evicted.push(old);
            cap = Some(Cap::Name);
        }
        while self
            .per_workload
            .get(&cgroup)
            .is_some_and(|q| q.len() > self.limits.per_workload)
        {
            let old = self
                .per_workload
                .get_mut(&cgroup)
                .and_then(VecDeque::pop_front)
                .expect("non-empty");
            if let Some(o) = self.entries.remove(&(cgroup, old)) {
                self.unlink_name(cgroup, &o.name, old);
            }
            evicted.push(old);
            cap = cap.or(Some(Cap::Workload));
        }
        (evicted, cap)
    }

    fn unlink_name(&mut self, cgroup: u64, name: &str, addr: IpAddr) {
        let k = (cgroup, name.to_owned());
        if let Some(q) = self.per_name.get_mut(&k) {
            q.retain(|a| *a != addr);
            if q.is_empty() {
                self.per_name.remove(&k);
            }
        }
    }

    /// Drops `addr` of `cgroup` from the entries and the workload's order
    /// (and from its name's order when `unlink` is set).
    fn forget(&mut self, cgroup: u64, addr: IpAddr, unlink: bool) {
        if let Some(o) = self.entries.remove(&(cgroup, addr))
            && unlink
        {
            self.unlink_name(cgroup, &o.name, addr);
        }
        if let Some(q) = self.per_workload.get_mut(&cgroup) {
            q.retain(|a| *a != addr);
            if q.is_empty() {
                self.per_workload.remove(&cgroup);
            }
        }
    }

    /// Forgets every cgroup `live` rejects; returns their addresses.
    pub fn retain(&mut self, live: impl Fn(u64) -> bool) -> Vec<(u64, IpAddr)> {
        let dead: Vec<u64> = self
            .per_workload
            .keys()
            .copied()
            .filter(|c| !live(*c))
            .collect();
        let mut gone = Vec::new();
        for c in dead {
            for a in self.per_workload.remove(&c).unwrap_or_default() {
                self.entries.remove(&(c, a));
                gone.push((c, a));
            }
        }
        self.per_name.retain(|(c, _), _| live(*c));
        gone
    }

    pub fn origin(&self, cgroup: u64, addr: IpAddr) -> Option<&Origin> {
        self.entries.get(&(cgroup, addr))
    }

    /// Addresses of `cgroup` held now.
    pub fn count(&self, cgroup: u64) -> usize {
        self.per_workload.get(&cgroup).map_or(0, VecDeque::len)
    }
}

/// The writer of `TG_LEARNED`.
pub struct Learner {
    map: Mutex<HashMap<MapData, LearnedKey, Learned>>,
    book: Mutex<Book>,
    /// Addresses closed to keep within a cap, by cap.
    pub evicted_workload: AtomicU64,
    pub evicted_name: AtomicU64,
}

/// `CLOCK_BOOTTIME` in nanoseconds: the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    crate::events::pipeline::clock_ns(libc::CLOCK_BOOTTIME) as u64
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

/// What one learn did beyond opening the address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned1 {
    /// Addresses of the workload closed to stay within a cap.
    pub evicted: usize,
    pub cap: Option<Cap>,
}

impl Learner {
    /// Takes the map handle.
    pub fn new(map: HashMap<MapData, LearnedKey, Learned>, limits: Limits) -> Self {
        Self {
            map: Mutex::new(map),
            book: Mutex::new(Book::new(limits)),
            evicted_workload: AtomicU64::new(0),
            evicted_name: AtomicU64::new(0),
        }
    }

    /// Opens `addr` for `cgroup` for `lifetime` under `patterns` (ids of the
    /// name patterns that allowed the question). Returns when the kernel has
    /// it (and has closed what the caps evicted).
    pub fn learn(
        &self,
        cgroup: u64,
        addr: IpAddr,
        lifetime: Duration,
        patterns: &[u64],
        name: &str,
    ) -> Result<Learned1, MapError> {
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
        let wall = SystemTime::now();
        let (evicted, cap) = self.book.lock().expect("book lock").record(
            cgroup,
            addr,
            Origin {
                name: name.to_owned(),
                at: wall,
                until: wall + lifetime,
            },
        );
        for a in &evicted {
            let k = LearnedKey {
                cgroup_id: cgroup,
                addr: kernel_addr(*a),
            };
            match map.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        match cap {
            Some(Cap::Workload) => &self.evicted_workload,
            Some(Cap::Name) => &self.evicted_name,
            None => return Ok(Learned1::default()),
        }
        .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        Ok(Learned1 {
            evicted: evicted.len(),
            cap,
        })
    }

    /// The name that opened `addr` for `cgroup`, if it is still held.
    pub fn origin(&self, cgroup: u64, addr: IpAddr) -> Option<Origin> {
        self.book
            .lock()
            .expect("book lock")
            .origin(cgroup, addr)
            .cloned()
    }

    /// Closes and forgets the addresses of cgroups `live` rejects (gone
    /// workloads: their entries would only take room).
    pub fn retain_cgroups(&self, live: impl Fn(u64) -> bool) {
        let gone = self.book.lock().expect("book lock").retain(live);
        let mut map = self.map.lock().expect("learned map lock");
        for (c, a) in gone {
            let _ = map.remove(&LearnedKey {
                cgroup_id: c,
                addr: kernel_addr(a),
            });
        }
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

    fn origin(name: &str) -> Origin {
        Origin {
            name: name.into(),
            at: SystemTime::UNIX_EPOCH,
            until: SystemTime::UNIX_EPOCH,
        }
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i))
    }

    #[test]
    fn the_name_cap_evicts_that_names_oldest() {
        let mut b = Book::new(Limits {
            per_workload: 100,
            per_name: 3,
        });
        for i in 0..3 {
            assert_eq!(b.record(1, ip(i), origin("s3")), (vec![], None));
        }
        // Another name, and another workload, are not counted against it.
        assert_eq!(b.record(1, ip(50), origin("other")), (vec![], None));
        assert_eq!(b.record(2, ip(60), origin("s3")), (vec![], None));
        assert_eq!(
            b.record(1, ip(3), origin("s3")),
            (vec![ip(0)], Some(Cap::Name))
        );
        assert!(b.origin(1, ip(0)).is_none());
        assert_eq!(b.origin(1, ip(3)).map(|o| o.name.as_str()), Some("s3"));
        // Learned again: no growth, nothing evicted.
        assert_eq!(b.record(1, ip(3), origin("s3")), (vec![], None));
        assert_eq!(b.count(1), 4);
    }

    #[test]
    fn the_workload_cap_evicts_the_workloads_oldest_and_memory_stays_flat() {
        let mut b = Book::new(Limits {
            per_workload: 50,
            per_name: 10,
        });
        // 10,000 fresh names (one address each) from one workload.
        let mut evicted = 0;
        for i in 0..10_000 {
            let (e, cap) = b.record(7, ip(i), origin(&format!("n{i}.bulk.test")));
            if i >= 50 {
                assert_eq!(
                    (e.as_slice(), cap),
                    (&[ip(i - 50)][..], Some(Cap::Workload))
                );
            }
            evicted += e.len();
        }
        assert_eq!(evicted, 10_000 - 50);
        assert_eq!(b.count(7), 50);
        assert_eq!(b.entries.len(), 50);
        assert_eq!(b.per_name.len(), 50);
        // A gone workload is forgotten with its addresses.
        assert_eq!(b.retain(|c| c != 7).len(), 50);
        assert_eq!((b.entries.len(), b.per_name.len(), b.count(7)), (0, 0, 0));
    }

    #[test]
    fn an_address_relearned_under_another_name_moves_to_it() {
        let mut b = Book::new(Limits {
            per_workload: 10,
            per_name: 1,
        });
        b.record(1, ip(1), origin("a"));
        b.record(1, ip(1), origin("b"));
        assert_eq!(b.origin(1, ip(1)).map(|o| o.name.as_str()), Some("b"));
        // "a" holds nothing now, so it has room; "b" is full.
        assert_eq!(b.record(1, ip(2), origin("a")), (vec![], None));
        assert_eq!(
            b.record(1, ip(3), origin("b")),
            (vec![ip(1)], Some(Cap::Name))
        );
        assert_eq!(b.count(1), 2);
    }

    #[test]
    fn boot_clock_moves_forward() {
        let a = boot_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(boot_ns() >= a + 1_000_000);
    }
}
