//! Probing detection (issue 13): a workload that meets many *distinct*
//! denied (destination, port) pairs within a sliding window raises one
//! finding, created, updated while it goes on, then closed.
//!
//! Two kinds, counted apart (Zeek's scan detection): a *sweep* is at least
//! `hosts` distinct hosts on one port, a *scan* at least `ports` distinct
//! ports on one host. Each (workload, kind, port or host) has at most one
//! open finding. Pure and deterministic: the caller passes the time (a
//! monotonic clock in milliseconds), so tests are exact and fast.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

/// Distinct denied pairs tracked per workload. Beyond it the oldest is
/// forgotten, so counts saturate here: a workload never holds more, and a
/// threshold above it could never be met (the flags refuse one).
pub const MAX_PAIRS: usize = 4096;
/// Workloads tracked at once. Beyond it the one whose last new pair is the
/// oldest is forgotten (its open findings are closed, `evicted`).
pub const MAX_WORKLOADS: usize = 4096;
/// Distinct pairs tracked for all workloads together (about 26 MiB); beyond
/// it workloads are forgotten as beyond [`MAX_WORKLOADS`].
pub const MAX_TOTAL_PAIRS: usize = 64 * MAX_PAIRS;
/// Destinations a finding names as examples.
pub const MAX_SAMPLES: usize = 10;
/// The longest wait between two Updates of a growing finding.
const MAX_UPDATE_INTERVAL: Duration = Duration::from_secs(30);

/// A denied destination.
pub type Pair = (IpAddr, u16);

/// One denied attempt as the detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub dst: Pair,
    /// A connect() of a UDP socket: judged before any datagram is sent
    /// (a UDP sendmsg with an address, and every TCP connect, are not).
    pub udp_connect: bool,
    /// The kernel found `dst`'s address among those a live DNS answer
    /// taught this workload (`CONNECT_F_LEARNED`).
    pub learned: bool,
}

impl From<Pair> for Attempt {
    /// A TCP connect or a datagram: always counted.
    fn from(dst: Pair) -> Self {
        Attempt {
            dst,
            udp_connect: false,
            learned: false,
        }
    }
}

impl Attempt {
    /// What a resolver's RFC 6724 sort does (glibc's `rfc3484_sort`, Go's
    /// `srcAddrs`): connect a UDP socket to each address it was just
    /// answered, read the source address, close it, send nothing. Not
    /// counted: the workload resolved these addresses through a name the
    /// policy allows, and a sweep is made of addresses it did not resolve,
    /// or of datagrams or TCP connects, which are counted.
    pub fn is_sort_probe(&self) -> bool {
        self.udp_connect && self.learned
    }
}

/// Thresholds and window (`--probe-window`, `--probe-hosts`, `--probe-ports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub window: Duration,
    /// Distinct hosts on one port that make a sweep; 0: sweeps not detected.
    pub hosts: u32,
    /// Distinct ports on one host that make a scan; 0: scans not detected.
    pub ports: u32,
}

impl Default for Config {
    /// Zeek's defaults: 25 hosts on one port or 15 ports on one host in 5
    /// minutes.
    fn default() -> Self {
        Config {
            window: Duration::from_secs(300),
            hosts: 25,
            ports: 15,
        }
    }
}

impl Config {
    /// Something to detect.
    pub fn enabled(&self) -> bool {
        self.hosts > 0 || self.ports > 0
    }

    /// The least time between two Updates of one finding: a third of the
    /// window, at most 30 s, so a long sweep gives a bounded number of
    /// records and a short test window still sees its Updates.
    pub fn update_interval(&self) -> Duration {
        (self.window / 3).min(MAX_UPDATE_INTERVAL)
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// Many hosts on this port.
    Sweep(u16),
    /// Many ports on this host.
    Scan(IpAddr),
}

impl Key {
    /// `sweep` or `scan`.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Sweep(_) => "sweep",
            Key::Scan(_) => "scan",
        }
    }

    fn covers(&self, (ip, port): &Pair) -> bool {
        match self {
            Key::Sweep(p) => p == port,
            Key::Scan(h) => h == ip,
        }
    }
}

/// OCSF activity of a finding record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Create,
    Update,
    Close,
}

impl Activity {
    /// `create`, `update` or `close` (the metric's label).
    pub fn name(self) -> &'static str {
        match self {
            Activity::Create => "create",
            Activity::Update => "update",
            Activity::Close => "close",
        }
    }
}

/// Why a finding closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// No new distinct denied pair of its kind and key for one window.
    Quiet,
    /// The workload was forgotten to make room for another.
    Evicted,
    /// The agent stopped (a new agent starts with nothing tracked).
    Stopped,
}

impl End {
    /// `quiet`, `evicted` or `agent-stopped` (`probing.end`).
    pub fn as_str(self) -> &'static str {
        match self {
            End::Quiet => "quiet",
            End::Evicted => "evicted",
            End::Stopped => "agent-stopped",
        }
    }
}

/// One finding record to write. `C` is what the caller tagged the
/// workload's last denied attempt with (its tier and policy).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding<C> {
    pub activity: Activity,
    /// Numbers the findings of one detector from 1: the same for a
    /// finding's Create, Updates and Close.
    pub serial: u64,
    pub cgroup_id: u64,
    pub key: Key,
    /// The most distinct destinations of this key seen within one window.
    pub distinct: u32,
    /// New distinct destinations of this key since the finding began
    /// (one that left the window and came back counts again).
    pub total: u32,
    pub threshold: u32,
    pub window: Duration,
    /// The first attempt still in the window at Create; the last new pair.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Up to [`MAX_SAMPLES`] destinations, first seen first.
    pub samples: Vec<Pair>,
    /// Set on Close.
    pub end: Option<End>,
    pub ctx: C,
}

/// When a pair was first and last attempted within the window.
#[derive(Debug, Clone, Copy)]
struct Seen {
    first: u64,
    last: u64,
}

#[derive(Debug)]
struct Open {
    serial: u64,
    first_seen: u64,
    last_seen: u64,
    peak: u32,
    total: u32,
    /// `peak` as last written, and when.
    reported: u32,
    reported_at: u64,
    samples: Vec<Pair>,
}

#[derive(Debug)]
struct Workload<C> {
    ctx: C,
    pairs: HashMap<Pair, Seen>,
    /// (last attempt, pair): expiry and eviction order.
    by_time: BTreeSet<(u64, Pair)>,
    hosts_on_port: HashMap<u16, u32>,
    ports_on_host: HashMap<IpAddr, u32>,
    open: BTreeMap<Key, Open>,
    /// The last new distinct pair (eviction order of workloads).
    last_new: u64,
}

impl<C> Workload<C> {
    fn new(ctx: C, now: u64) -> Self {
        Workload {
            ctx,
            pairs: HashMap::new(),
            by_time: BTreeSet::new(),
            hosts_on_port: HashMap::new(),
            ports_on_host: HashMap::new(),
            open: BTreeMap::new(),
            last_new: now,
        }
    }

    fn count(&self, key: &Key) -> u32 {
        match key {
            Key::Sweep(port) => self.hosts_on_port.get(port).copied().unwrap_or(0),
            Key::Scan(host) => self.ports_on_host.get(host).copied().unwrap_or(0),
        }
    }

    /// Forgets the pair attempted longest ago; false when there was none.
    fn forget_oldest(&mut self) -> bool {
        let Some((_, pair)) = self.by_time.pop_first() else {
            return false;
        };
        self.pairs.remove(&pair);
        let (ip, port) = pair;
        decrement(&mut self.hosts_on_port, port);
        decrement(&mut self.ports_on_host, ip);
        true
    }
}

/// Takes one from a counter, dropping it at 0 (the maps hold only keys
/// with pairs in the window).
fn decrement<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: K) {
    if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

/// The detector: per workload (cgroup id), the distinct denied pairs of the
/// last window and the open findings.
#[derive(Debug)]
pub struct Detector<C> {
    cfg: Config,
    window_ms: u64,
    workloads: BTreeMap<u64, Workload<C>>,
    /// Pairs of all workloads.
    pairs: usize,
    serial: u64,
    now: u64,
}

impl<C: Clone> Detector<C> {
    /// A detector with nothing tracked.
    pub fn new(cfg: Config) -> Self {
        Detector {
            cfg,
            window_ms: cfg.window.as_millis() as u64,
            workloads: BTreeMap::new(),
            pairs: 0,
            serial: 0,
            now: 0,
        }
    }

    /// Its window and thresholds.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Workloads and pairs tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        (self.workloads.len(), self.pairs)
    }

    /// One denied attempt of workload `cgroup_id` at `now_ms`; pushes the
    /// finding records it causes onto `out`. Returns false when it was not
    /// counted (detection off, or a resolver's sort probe).
    pub fn observe(
        &mut self,
        now_ms: u64,
        cgroup_id: u64,
        attempt: impl Into<Attempt>,
        ctx: C,
        out: &mut Vec<Finding<C>>,
    ) -> bool {
        let attempt = attempt.into();
        if !self.cfg.enabled() || attempt.is_sort_probe() {
            return false;
        }
        let dst = attempt.dst;
        // Events may reach the writer a little out of order: time never
        // goes back.
        let now = now_ms.max(self.now);
        self.now = now;
        if !self.workloads.contains_key(&cgroup_id) && self.workloads.len() >= MAX_WORKLOADS {
            self.evict_quietest(cgroup_id, out);
        }
        while self.pairs >= MAX_TOTAL_PAIRS && self.evict_quietest(cgroup_id, out) {}
        let (window_ms, cfg) = (self.window_ms, self.cfg);
        let w = self
            .workloads
            .entry(cgroup_id)
            .or_insert_with(|| Workload::new(ctx.clone(), now));
        w.ctx = ctx;
        self.pairs -= Self::expire(w, cgroup_id, now, window_ms, cfg, out);
        if let Some(seen) = w.pairs.get_mut(&dst) {
            // Attempted again: it stays in the window, but is not new.
            w.by_time.remove(&(seen.last, dst));
            seen.last = now;
            w.by_time.insert((now, dst));
            return true;
        }
        if w.pairs.len() >= MAX_PAIRS && w.forget_oldest() {
            self.pairs -= 1;
        }
        self.pairs += 1;
        w.pairs.insert(
            dst,
            Seen {
                first: now,
                last: now,
            },
        );
        w.by_time.insert((now, dst));
        *w.hosts_on_port.entry(dst.1).or_insert(0) += 1;
        *w.ports_on_host.entry(dst.0).or_insert(0) += 1;
        w.last_new = now;
        let keys = [
            (cfg.hosts > 0).then_some((Key::Sweep(dst.1), cfg.hosts)),
            (cfg.ports > 0).then_some((Key::Scan(dst.0), cfg.ports)),
        ];
        for (key, threshold) in keys.into_iter().flatten() {
            let count = w.count(&key);
            if let Some(o) = w.open.get_mut(&key) {
                o.last_seen = now;
                o.total += 1;
                o.peak = o.peak.max(count);
                if o.samples.len() < MAX_SAMPLES {
                    o.samples.push(dst);
                }
                Self::update_if_due(cfg, cgroup_id, key, o, &w.ctx, now, out);
            } else if count >= threshold {
                self.serial += 1;
                let mut covered: Vec<(u64, Pair)> = (w.pairs.iter())
                    .filter(|(p, _)| key.covers(p))
                    .map(|(p, seen)| (seen.first, *p))
                    .collect();
                covered.sort_unstable();
                let first_seen = covered.first().map_or(now, |(t, _)| *t);
                let samples = covered.iter().take(MAX_SAMPLES).map(|(_, p)| *p).collect();
                let o = Open {
                    serial: self.serial,
                    first_seen,
                    last_seen: now,
                    peak: count,
                    total: count,
                    reported: count,
                    reported_at: now,
                    samples,
                };
                out.push(Self::record(
                    Activity::Create,
                    cgroup_id,
                    key,
                    &o,
                    &w.ctx,
                    cfg,
                ));
                w.open.insert(key, o);
            }
        }
        true
    }

    /// The passing of time: pairs leave the window, quiet findings close,
    /// grown ones are updated once their interval has passed, and workloads
    /// with nothing left are forgotten.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Finding<C>>) {
        let now = now_ms.max(self.now);
        self.now = now;
        let (window_ms, cfg) = (self.window_ms, self.cfg);
        for (&cgroup_id, w) in &mut self.workloads {
            self.pairs -= Self::expire(w, cgroup_id, now, window_ms, cfg, out);
            for (key, o) in &mut w.open {
                Self::update_if_due(cfg, cgroup_id, *key, o, &w.ctx, now, out);
            }
        }
        self.workloads
            .retain(|_, w| !w.pairs.is_empty() || !w.open.is_empty());
    }

    /// An Update when `o` has grown and its update interval has passed.
    fn update_if_due(
        cfg: Config,
        cgroup_id: u64,
        key: Key,
        o: &mut Open,
        ctx: &C,
        now: u64,
        out: &mut Vec<Finding<C>>,
    ) {
        if o.peak > o.reported && now >= o.reported_at + cfg.update_interval().as_millis() as u64 {
            o.reported = o.peak;
            o.reported_at = now;
            out.push(Self::record(Activity::Update, cgroup_id, key, o, ctx, cfg));
        }
    }

    /// Pairs last attempted a window ago or more leave it; findings with no
    /// new pair for a window close. Returns how many pairs left.
    fn expire(
        w: &mut Workload<C>,
        cgroup_id: u64,
        now: u64,
        window_ms: u64,
        cfg: Config,
        out: &mut Vec<Finding<C>>,
    ) -> usize {
        let mut gone = 0;
        while w.by_time.first().is_some_and(|(t, _)| t + window_ms <= now) {
            w.forget_oldest();
            gone += 1;
        }
        let quiet: Vec<Key> = w
            .open
            .iter()
            .filter(|(_, o)| o.last_seen + window_ms <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in quiet {
            let o = w.open.remove(&key).expect("listed above");
            let mut f = Self::record(Activity::Close, cgroup_id, key, &o, &w.ctx, cfg);
            f.end = Some(End::Quiet);
            out.push(f);
        }
        gone
    }

    /// Closes every open finding and forgets everything (the agent stops).
    pub fn close_all(&mut self, out: &mut Vec<Finding<C>>) {
        for (id, w) in std::mem::take(&mut self.workloads) {
            Self::close_workload(id, &w, End::Stopped, self.cfg, out);
        }
        self.pairs = 0;
    }

    /// Forgets the workload, other than `keep`, whose last new pair is the
    /// oldest, closing its open findings; false when there is none.
    fn evict_quietest(&mut self, keep: u64, out: &mut Vec<Finding<C>>) -> bool {
        let quietest = (self.workloads.iter())
            .filter(|(id, _)| **id != keep)
            .min_by_key(|(_, w)| w.last_new);
        let Some((&id, _)) = quietest else {
            return false;
        };
        let w = self.workloads.remove(&id).expect("found above");
        self.pairs -= w.pairs.len();
        Self::close_workload(id, &w, End::Evicted, self.cfg, out);
        true
    }

    fn close_workload(id: u64, w: &Workload<C>, end: End, cfg: Config, out: &mut Vec<Finding<C>>) {
        for (key, o) in &w.open {
            let mut f = Self::record(Activity::Close, id, *key, o, &w.ctx, cfg);
            f.end = Some(end);
            out.push(f);
        }
    }

    fn record(
        activity: Activity,
        cgroup_id: u64,
        key: Key,
        o: &Open,
        ctx: &C,
        cfg: Config,
    ) -> Finding<C> {
        Finding {
            activity,
            serial: o.serial,
            cgroup_id,
            key,
            distinct: o.peak,
            total: o.total,
            threshold: match key {
                Key::Sweep(_) => cfg.hosts,
                Key::Scan(_) => cfg.ports,
            },
            window: cfg.window,
            first_seen_ms: o.first_seen,
            last_seen_ms: o.last_seen,
            samples: o.samples.clone(),
            end: None,
            ctx: ctx.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
