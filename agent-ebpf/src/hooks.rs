//! The programs and the maps they share. Cost per call on the fast path:
//! one array read (config), one hash lookup (cgroup → tier), one array read
//! (tier flags), at most one LPM-trie lookup and a bounded port scan —
//! independent of the number of rules and of workloads.

use agent_common::{
    AGG_ENTRIES, AggCtl, AggKey, AggVal, CONFIG_F_GRANTS, CONFIG_F_POLICY_LOADED,
    CONNECT_F_ELEVATED, CONNECT_F_INHERITED, CONNECT_F_LEARNED, CONNECT_F_METADATA,
    CONNECT_F_V4MAPPED, CgroupTier, Config, ConnectEvent, DNS_PORT, EVENT_CONNECT, EVENT_SOCKET,
    EventHeader, FqdnKey, GENERATIONS, GRANT_NO_TIER, Grant, HOOK_CONNECT4, HOOK_CONNECT6,
    HOOK_SENDMSG4, HOOK_SENDMSG6, Learned, LearnedKey, MAX_CGROUP_DEPTH, MAX_LEARNED_PATTERNS,
    MAX_PORT_RANGES, MAX_TIERS, OrigDst, PROTO_TCP, PROTO_UDP, PortSet, ProxyGuard, ProxyNetns,
    REASON_DNS_PROXY_PORT, REASON_DNS_UNSERVED, REASON_EGRESS_RULE, REASON_FQDN, REASON_HOST,
    REASON_LOOPBACK, REASON_METADATA_PROXY, REASON_METADATA_SERVICE, REASON_METADATA_UNFILTERED,
    REASON_NO_MATCHING_RULE, REASON_SOCKET_TYPE, RULE_KEY_FIXED_BITS, RuleKey, SocketEvent,
    TIER_F_AUDIT, TIER_F_DNS, TIER_F_METADATA_ALLOW, TIER_F_METADATA_FILTER, TIER_F_VALID,
    TIER_HOST, TierConfig, VERDICT_ALLOW, VERDICT_AUDIT_DENY, VERDICT_DENY, counter, dns_slot,
    metadata_filterable, metadata_v4, metadata_v6,
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
            bpf_get_netns_cookie, bpf_get_smp_processor_id, bpf_get_socket_cookie,
            bpf_ktime_get_boot_ns,
        },
    },
    macros::{cgroup_sock, cgroup_sock_addr, lsm, map},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
    programs::{LsmContext, SockAddrContext, SockContext},
};

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const EPERM: i32 = 1;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_UNIX: u32 = 1;
const AF_NETLINK: u32 = 16;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// socket(2) type flags (SOCK_NONBLOCK, SOCK_CLOEXEC) live above this mask.
const SOCK_TYPE_MASK: u32 = 0xf;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[map(name = "TG_CONFIG")]
static TG_CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "TG_CGROUPS")]
static TG_CGROUPS: HashMap<u64, CgroupTier> = HashMap::pinned(65536, 0);

/// Elevations in force (user space writes; pinned, so a grant ends on time
/// while no agent runs).
#[map(name = "TG_GRANTS")]
static TG_GRANTS: HashMap<u64, Grant> = HashMap::pinned(4096, 0);

#[map(name = "TG_TIERS")]
static TG_TIERS: Array<TierConfig> = Array::pinned(MAX_TIERS * GENERATIONS as u32, 0);

#[map(name = "TG_RULES")]
static TG_RULES: LpmTrie<RuleKey, PortSet> = LpmTrie::pinned(262_144, 0);

/// Sized by the agent at load time (`--ring-buffer-bytes`).
#[map(name = "TG_EVENTS")]
static TG_EVENTS: RingBuf = RingBuf::pinned(8 << 20, 0);

#[map(name = "TG_COUNTERS")]
static TG_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// Loss counts user space has already reported as loss events (written only
/// by user space; pinned so a restarted agent reports exactly the rest).
#[map(name = "TG_REPORTED")]
static TG_REPORTED: Array<u64> = Array::pinned(counter::COUNT, 0);

/// Network namespaces the agent's proxies serve (user space writes; see
/// `agent/src/dns/netns.rs`).
#[map(name = "TG_DNS_NETNS")]
static TG_DNS_NETNS: HashMap<u64, ProxyNetns> = HashMap::pinned(4096, 0);

/// Where redirected sockets meant to go (written here, read by the
/// recvmsg/getpeername hooks). LRU: entries of closed sockets age out.
#[map(name = "TG_DNS_ORIG")]
static TG_DNS_ORIG: LruHashMap<u64, OrigDst> = LruHashMap::pinned(16384, 0);

/// Who may bind the proxies' ports (user space writes before it binds).
#[map(name = "TG_GUARD")]
static TG_GUARD: Array<ProxyGuard> = Array::pinned(1, 0);

/// Addresses DNS answers taught each cgroup (the proxy writes before it
/// releases the answer). LRU: the global bound; per-cgroup caps are the
/// proxy's.
#[map(name = "TG_LEARNED")]
static TG_LEARNED: LruHashMap<LearnedKey, Learned> = LruHashMap::pinned(65536, 0);

/// Ports of each name pattern of each tier, per generation.
#[map(name = "TG_FQDN_PORTS")]
static TG_FQDN_PORTS: HashMap<FqdnKey, PortSet> = HashMap::pinned(16384, 0);

/// Aggregation of allowed attempts: on or off, and which map takes folds
/// (the agent's drainer writes it; agent/src/events/aggregate/).
#[map(name = "TG_AGG_CTL")]
static TG_AGG_CTL: Array<AggCtl> = Array::pinned(1, 0);

/// Folded allowed attempts, two maps taking turns: the drainer switches
/// `TG_AGG_CTL.slot`, waits until no program can still be writing the other
/// one (an RCU grace period), then reads and clears it.
#[map(name = "TG_AGG0")]
static TG_AGG0: PerCpuHashMap<AggKey, AggVal> = PerCpuHashMap::pinned(AGG_ENTRIES, 0);
#[map(name = "TG_AGG1")]
static TG_AGG1: PerCpuHashMap<AggKey, AggVal> = PerCpuHashMap::pinned(AGG_ENTRIES, 0);

/// Attempts folded instead of a ring record (counted before the verdict, so
/// `verdicts − folded − lost − shed` never counts a record not in the ring).
#[map(name = "TG_AGG_FOLDED")]
static TG_AGG_FOLDED: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// Pinned bookkeeping of the drainer (user space only).
#[map(name = "TG_AGG_LEDGER")]
static TG_AGG_LEDGER: Array<u64> = Array::pinned(agent_common::agg_ledger::COUNT, 0);

/// `BPF_NOEXIST`.
const NOEXIST: u64 = 1;

#[inline(always)]
fn count(slot: u32) {
    if let Some(p) = TG_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *p += 1 };
    }
}

/// The tier of the calling task and whether it was inherited from an ancestor.
struct Resolved {
    cgroup: u64,
    tier: u32,
    generation: u32,
    inherited: bool,
    /// The tier is an elevation grant's.
    elevated: bool,
}

/// Finds the calling task's tier. `None` when no policy is loaded.
#[inline(always)]
fn resolve() -> Option<Resolved> {
    let cfg = TG_CONFIG.get(0)?;
    if cfg.flags & CONFIG_F_POLICY_LOADED == 0 {
        return None;
    }
    let generation = cfg.active_gen & 1;
    let g = generation as usize;
    // SAFETY: plain helper call, valid in every program type used here.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is only read; user space writes whole entries.
    if let Some(entry) = unsafe { TG_CGROUPS.get(&cgroup) } {
        let mut r = Resolved {
            cgroup,
            tier: entry.tier[g],
            generation,
            inherited: false,
            elevated: false,
        };
        // Only known cgroups are elevated: a cgroup the agent has not seen
        // yet keeps its inherited (never elevated) tier.
        if cfg.flags & CONFIG_F_GRANTS != 0 {
            // SAFETY: read only; user space writes whole entries.
            if let Some(grant) = unsafe { TG_GRANTS.get(&cgroup) } {
                let t = grant.tier[g];
                // SAFETY: plain helper call.
                if t != GRANT_NO_TIER && unsafe { bpf_ktime_get_boot_ns() } < grant.expires_ns {
                    r.tier = t;
                    r.elevated = true;
                }
            }
        }
        return Some(r);
    }
    // Not known yet (created after user space last looked): take the nearest
    // known ancestor's verdict for unknown descendants. A cgroup with no
    // known ancestor is outside the enforced subtree: host.
    let mut tier = TIER_HOST;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: plain helper call.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == cgroup {
            break;
        }
        // SAFETY: read only.
        if let Some(entry) = unsafe { TG_CGROUPS.get(&id) } {
            tier = entry.child_tier[g];
        }
        level += 1;
    }
    count(counter::INHERITED);
    Some(Resolved {
        cgroup,
        tier,
        generation,
        inherited: true,
        elevated: false,
    })
}

#[inline(always)]
fn tier_flags(r: &Resolved) -> u32 {
    match TG_TIERS.get(r.generation * MAX_TIERS + (r.tier % MAX_TIERS)) {
        Some(t) if t.flags & TIER_F_VALID != 0 => t.flags,
        // A tier id without a slot cannot come from a consistent policy; judge
        // it as an enforced tier with no rules (fail closed).
        _ => TIER_F_VALID,
    }
}

#[inline(always)]
fn fill_header(h: &mut EventHeader, kind: u32) {
    h.kind = kind;
    // SAFETY: plain helper calls.
    unsafe {
        h.cpu = bpf_get_smp_processor_id();
        h.boot_ns = bpf_ktime_get_boot_ns();
        h.cgroup_id = bpf_get_current_cgroup_id();
    }
    h.pid_tgid = bpf_get_current_pid_tgid();
    h.uid_gid = bpf_get_current_uid_gid();
    // Straight into the record (the safe wrapper zeroes a stack buffer and
    // copies it over byte by byte). On failure the helper zero-fills.
    // SAFETY: `h.comm` is 16 writable bytes of the reserved record.
    unsafe {
        bpf_get_current_comm(h.comm.as_mut_ptr().cast(), h.comm.len() as u32);
    }
}

/// How full the ring is, read once per record (ring size, bytes not yet
/// consumed).
#[derive(Clone, Copy)]
struct RingFill {
    size: u64,
    used: u64,
}

#[inline(always)]
fn ring_fill() -> RingFill {
    RingFill {
        size: TG_EVENTS.query(BPF_RB_RING_SIZE as u64),
        used: TG_EVENTS.query(BPF_RB_AVAIL_DATA as u64),
    }
}

/// Submit flags for a record of `size` bytes reserved when the ring was
/// `fill`: wake the reader only when this record makes the ring cross 1/16
/// full. Below that, user space drains on its own short timer. The kernel's
/// default (wake whenever the ring was empty) costs an irq_work
/// self-interrupt plus a scheduler wakeup on the connecting CPU for nearly
/// every record while the reader keeps up, which was most of the hook's cost
/// on allowed connects. (Another CPU's record landing in between can make
/// this one miss the crossing; the timer covers it.)
#[inline(always)]
fn wakeup_flags(fill: RingFill, size: u64) -> u64 {
    let threshold = fill.size / 16;
    // +8: the ring's per-record header.
    if fill.used < threshold && fill.used + size + 8 >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Whether an allowed-connection event may use the ring: above 3/4 full the
/// rest is kept for denies and metadata accesses (the shed ones are counted).
#[inline(always)]
fn ring_has_room_for_allowed(fill: RingFill) -> bool {
    fill.used < fill.size - fill.size / 4
}

/// The metadata endpoint `addr:port` is, if any: (whether it is in the
/// IPv4 list, its index there).
#[inline(always)]
fn metadata_endpoint(addr: &[u8; 16], v4: bool, port: u16) -> Option<(bool, usize)> {
    if v4 {
        metadata_v4([addr[12], addr[13], addr[14], addr[15]], port).map(|i| (true, i))
    } else {
        metadata_v6(addr).map(|i| (false, i))
    }
}

/// 127.0.0.0/8, ::1, and the unspecified address (the kernel connects that
/// to the local host).
fn is_loopback(addr: &[u8; 16], v4: bool) -> bool {
    if v4 {
        addr[12] == 127 || (addr[12] | addr[13] | addr[14] | addr[15]) == 0
    } else {
        let mut acc = 0u8;
        let mut i = 0;
        while i < 15 {
            acc |= addr[i];
            i += 1;
        }
        acc == 0 && (addr[15] == 1 || addr[15] == 0)
    }
}

#[inline(always)]
fn ports_admit(set: &PortSet, port: u16, proto_bit: u32) -> bool {
    if set.any_port & proto_bit != 0 {
        return true;
    }
    let mut i = 0;
    while i < MAX_PORT_RANGES {
        if i as u32 >= set.len {
            break;
        }
        let r = &set.ranges[i];
        if r.protocols & proto_bit != 0 && port >= r.lo && port <= r.hi {
            return true;
        }
        i += 1;
    }
    false
}

/// The proxies of the calling socket's network namespace, if they serve it.
#[inline(always)]
fn served_netns(ctx: &SockAddrContext) -> Option<ProxyNetns> {
    // SAFETY: plain helper call on the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // SAFETY: read only; user space writes whole entries.
    unsafe { TG_DNS_NETNS.get(&netns) }.copied()
}

/// Sends a DNS query or a metadata connection to a proxy: 127.0.0.0/8 with
/// the cgroup's slot (the proxy learns the calling cgroup from it), on the
/// proxy's port. The original destination is kept for recvmsg/getpeername.
#[inline(always)]
fn redirect(
    ctx: &SockAddrContext,
    r: &Resolved,
    is6: bool,
    addr: &[u8; 16],
    port: u16,
    proxy_port: u16,
) {
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let orig = OrigDst {
        addr: *addr,
        port,
        proxy_port,
        _pad: 0,
    };
    // A full LRU map evicts its oldest entry, never fails for room.
    let _ = TG_DNS_ORIG.insert(&cookie, &orig, 0);
    let ip4 = (127u32 << 24) | dns_slot(r.cgroup);
    let sa = ctx.sock_addr;
    // SAFETY: writable ctx fields of connect/sendmsg programs.
    unsafe {
        if is6 {
            // IPv4-mapped: a dual-stack socket reaches the IPv4 proxy.
            (*sa).user_ip6 = [0, 0, 0xffffu32.to_be(), ip4.to_be()];
        } else {
            (*sa).user_ip4 = ip4.to_be();
        }
        (*sa).user_port = u32::from(proxy_port.to_be());
    }
}

/// Whether `port` is one of the proxies' ports (bound by the agent only).
#[inline(always)]
fn is_proxy_port(port: u16) -> bool {
    match TG_GUARD.get(0) {
        Some(g) => port != 0 && (port == g.ports[0] || port == g.ports[1]),
        None => false,
    }
}

/// Whether `addr` is 127.<the calling cgroup's slot>.
#[inline(always)]
fn is_own_slot(r: &Resolved, addr: &[u8; 16], v4: bool) -> bool {
    let slot = dns_slot(r.cgroup);
    v4 && addr[12] == 127
        && addr[13] == (slot >> 16) as u8
        && addr[14] == (slot >> 8) as u8
        && addr[15] == slot as u8
}

/// What a DNS answer taught this cgroup of an address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taught {
    /// No live entry.
    Nothing,
    /// A live entry whose patterns do not admit the port and protocol.
    Address,
    /// A live entry that admits them.
    Admits,
}

/// What a DNS answer taught this cgroup of `addr`: it admits the port now
/// when the entry is live and one of its patterns, in the active
/// generation's policy of the cgroup's tier, admits it; a live entry that
/// does not still marks the record (`CONNECT_F_LEARNED`). One lookup, as
/// before.
#[inline(always)]
fn learned(r: &Resolved, addr: &[u8; 16], port: u16, proto_bit: u32) -> Taught {
    let key = LearnedKey {
        cgroup_id: r.cgroup,
        addr: *addr,
    };
    // SAFETY: read only.
    let Some(l) = (unsafe { TG_LEARNED.get(&key) }) else {
        return Taught::Nothing;
    };
    // SAFETY: plain helper call.
    if unsafe { bpf_ktime_get_boot_ns() } >= l.expires_ns {
        return Taught::Nothing;
    }
    let mut i = 0;
    while i < MAX_LEARNED_PATTERNS {
        let pattern = l.patterns[i];
        if pattern != 0 {
            let k = FqdnKey {
                generation: r.generation,
                tier: r.tier,
                pattern,
            };
            // SAFETY: read only.
            if let Some(set) = unsafe { TG_FQDN_PORTS.get(&k) }
                && ports_admit(set, port, proto_bit)
            {
                return Taught::Admits;
            }
        }
        i += 1;
    }
    Taught::Address
}

/// Shows a redirected socket its original peer (recvmsg's source address,
/// getpeername) when the peer is the proxy.
#[inline(always)]
fn restore_peer(ctx: &SockAddrContext, is6: bool) {
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: read only.
    let Some(o) = (unsafe { TG_DNS_ORIG.get(&cookie) }) else {
        return;
    };
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields of recvmsg/getpeername programs (readable and writable).
    unsafe {
        if u16::from_be((*sa).user_port as u16) != o.proxy_port {
            return;
        }
        let from_proxy = if is6 {
            let w = (*sa).user_ip6;
            w[0] == 0 && w[1] == 0 && w[2] == 0xffffu32.to_be() && u32::from_be(w[3]) >> 24 == 127
        } else {
            u32::from_be((*sa).user_ip4) >> 24 == 127
        };
        if !from_proxy {
            return;
        }
        let a = o.addr;
        if is6 {
            (*sa).user_ip6 = [
                u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
                u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            ];
        } else {
            (*sa).user_ip4 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        }
        (*sa).user_port = u32::from(o.port.to_be());
    }
}

/// Adds one allowed attempt to `map` under `key`; false when it cannot
/// (no room, or another CPU inserted the key at the same moment): then the
/// attempt gets a ring record of its own.
#[inline(always)]
fn fold_into(map: &PerCpuHashMap<AggKey, AggVal>, key: &AggKey) -> bool {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of the entry; only this CPU writes it while
        // we run, and the drainer reads it only after the slot switched and
        // every program that could see this map has finished.
        unsafe {
            if (*v).count == 0 {
                // Another CPU created the key: this CPU's slot starts here.
                (*v).first_ns = now;
                (*v).pid_tgid = bpf_get_current_pid_tgid();
                (*v).uid_gid = bpf_get_current_uid_gid();
                bpf_get_current_comm((*v).comm.as_mut_ptr().cast(), 16);
            }
            (*v).count += 1;
            (*v).last_ns = now;
        }
        return true;
    }
    let mut v = AggVal {
        count: 1,
        first_ns: now,
        last_ns: now,
        pid_tgid: bpf_get_current_pid_tgid(),
        uid_gid: bpf_get_current_uid_gid(),
        comm: [0; 16],
    };
    // SAFETY: 16 writable bytes on our stack.
    unsafe {
        bpf_get_current_comm(v.comm.as_mut_ptr().cast(), 16);
    }
    map.insert(key, &v, NOEXIST).is_ok()
}

/// Folds an allowed attempt when aggregation is on; true when folded.
#[inline(always)]
fn fold(r: &Resolved, key: &mut AggKey) -> bool {
    let Some(ctl) = TG_AGG_CTL.get(0) else {
        return false;
    };
    if ctl.enabled == 0 {
        return false;
    }
    key.cgroup_id = r.cgroup;
    key.tier = r.tier;
    key.generation = r.generation;
    let pid_tgid = bpf_get_current_pid_tgid();
    key.tgid = (pid_tgid >> 32) as u32;
    key.uid = bpf_get_current_uid_gid() as u32;
    let folded = if ctl.slot == 0 {
        fold_into(&TG_AGG0, key)
    } else {
        fold_into(&TG_AGG1, key)
    };
    if folded && let Some(p) = TG_AGG_FOLDED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *p += 1 };
    }
    folded
}

/// Judges one connect()/sendmsg() and reports it. Returns ALLOW or REJECT.
#[inline(always)]
fn judge(ctx: &SockAddrContext, hook: u8) -> i32 {
    let Some(r) = resolve() else { return ALLOW };
    let sa = ctx.sock_addr;
    let is6 = hook == HOOK_CONNECT6 || hook == HOOK_SENDMSG6;
    let mut addr = [0u8; 16];
    let mut flags = 0u32;
    // SAFETY: ctx fields of a sock_addr program; the verifier checks offsets.
    let (port_be, sock_type, protocol) = unsafe {
        if is6 {
            let w = [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ];
            let mut i = 0;
            while i < 4 {
                let b = w[i].to_ne_bytes();
                addr[i * 4] = b[0];
                addr[i * 4 + 1] = b[1];
                addr[i * 4 + 2] = b[2];
                addr[i * 4 + 3] = b[3];
                i += 1;
            }
        } else {
            let b = (*sa).user_ip4.to_ne_bytes();
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12] = b[0];
            addr[13] = b[1];
            addr[14] = b[2];
            addr[15] = b[3];
        }
        ((*sa).user_port, (*sa).type_, (*sa).protocol)
    };
    // IPv4-mapped IPv6 (::ffff:a.b.c.d) is judged as the IPv4 address.
    let v4 = !is6 || (addr[0..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff);
    if is6 && v4 {
        flags |= CONNECT_F_V4MAPPED;
    }
    if r.inherited {
        flags |= CONNECT_F_INHERITED;
    }
    if r.elevated {
        flags |= CONNECT_F_ELEVATED;
    }
    let port = u16::from_be(port_be as u16);
    let udp = protocol == IPPROTO_UDP || (protocol != IPPROTO_TCP && sock_type == SOCK_DGRAM);
    let proto_bit = if udp { PROTO_UDP } else { PROTO_TCP };
    let endpoint = metadata_endpoint(&addr, v4, port);
    let metadata = endpoint.is_some();
    if metadata {
        flags |= CONNECT_F_METADATA;
    }

    let (verdict, reason) = if r.tier == TIER_HOST {
        if !metadata {
            // Host cgroups are not enforced and, apart from metadata
            // accesses, neither reported nor counted (the verdict counters
            // count records: accounting.rs in the agent relies on it).
            return ALLOW;
        }
        (VERDICT_ALLOW, REASON_HOST)
    } else {
        if is_loopback(&addr, v4) && is_proxy_port(port) && is_own_slot(&r, &addr, v4) {
            // The IPv4 half of a redirect: a datagram an IPv6 socket sent
            // was rewritten to ::ffff:127.<slot>, and the kernel runs the
            // IPv4 sendmsg hook on it again. Its own slot is what the
            // redirect would choose, so this poses as nobody else.
            return ALLOW;
        }
        let tflags = tier_flags(&r);
        let dns = tflags & TIER_F_DNS != 0;
        if dns && port == DNS_PORT {
            if let Some(p) = served_netns(ctx).filter(|p| p.dns_port != 0) {
                redirect(ctx, &r, is6, &addr, port, p.dns_port);
                return ALLOW;
            }
        }
        let (allowed, reason) = if dns && port == DNS_PORT {
            // No proxy in this namespace yet: the query must not slip past
            // the name filter (audit tiers let it go, reported).
            (false, REASON_DNS_UNSERVED)
        } else if is_loopback(&addr, v4) && is_proxy_port(port) {
            // Only the hook may choose a proxy slot: a direct connection
            // could pose as another cgroup.
            (false, REASON_DNS_PROXY_PORT)
        } else if is_loopback(&addr, v4) {
            (true, REASON_LOOPBACK)
        } else if let Some((in_v4, index)) = endpoint {
            // metadata: deny wins over any egress rule.
            if tflags & TIER_F_METADATA_FILTER == 0 {
                (tflags & TIER_F_METADATA_ALLOW != 0, REASON_METADATA_SERVICE)
            } else {
                let to = if !udp && metadata_filterable(in_v4, index, port) {
                    served_netns(ctx).map_or(0, |p| p.metadata_port)
                } else {
                    0
                };
                if to != 0 {
                    // Reported with the original destination below; the
                    // proxy reports each request on it.
                    redirect(ctx, &r, is6, &addr, port, to);
                    (true, REASON_METADATA_PROXY)
                } else {
                    // Not HTTP to a service the proxy filters, or no proxy
                    // here (agent away): never straight through.
                    (false, REASON_METADATA_UNFILTERED)
                }
            }
        } else {
            let key = Key::new(
                RULE_KEY_FIXED_BITS + 128,
                RuleKey {
                    generation: r.generation,
                    tier: r.tier,
                    addr,
                },
            );
            match TG_RULES.get(&key) {
                Some(set) if ports_admit(set, port, proto_bit) => (true, REASON_EGRESS_RULE),
                _ if dns => match learned(&r, &addr, port, proto_bit) {
                    Taught::Admits => {
                        flags |= CONNECT_F_LEARNED;
                        (true, REASON_FQDN)
                    }
                    Taught::Address => {
                        // Denied, but the record says the workload was
                        // given this address (a resolver's sort probe).
                        flags |= CONNECT_F_LEARNED;
                        (false, REASON_NO_MATCHING_RULE)
                    }
                    Taught::Nothing => (false, REASON_NO_MATCHING_RULE),
                },
                _ => (false, REASON_NO_MATCHING_RULE),
            }
        };
        if allowed {
            (VERDICT_ALLOW, reason)
        } else if tflags & TIER_F_AUDIT != 0 {
            (VERDICT_AUDIT_DENY, reason)
        } else {
            (VERDICT_DENY, reason)
        }
    };

    // Repeated allowed attempts are folded when aggregation is on: never a
    // metadata access, an address a DNS answer opened, or one made under a
    // grant (those records say which answer or grant; each is its own).
    if verdict == VERDICT_ALLOW
        && !metadata
        && !r.elevated
        && (reason == REASON_EGRESS_RULE || reason == REASON_LOOPBACK)
    {
        let mut key = AggKey {
            cgroup_id: 0,
            addr,
            port,
            hook,
            protocol: if udp {
                IPPROTO_UDP as u8
            } else {
                IPPROTO_TCP as u8
            },
            reason,
            _pad: [0; 3],
            flags,
            tier: 0,
            generation: 0,
            tgid: 0,
            uid: 0,
            _pad2: 0,
        };
        if fold(&r, &mut key) {
            count(counter::ALLOW);
            return ALLOW;
        }
    }
    let must_report = verdict != VERDICT_ALLOW || metadata;
    let fill = ring_fill();
    if must_report || ring_has_room_for_allowed(fill) {
        match TG_EVENTS.reserve::<ConnectEvent>(0) {
            Some(mut entry) => {
                let ev = entry.as_mut_ptr();
                // SAFETY: the reservation is sized for ConnectEvent and owned
                // by us until submit.
                unsafe {
                    fill_header(&mut (*ev).header, EVENT_CONNECT);
                    (*ev).addr = addr;
                    (*ev).port = port;
                    (*ev).hook = hook;
                    (*ev).protocol = if udp {
                        IPPROTO_UDP as u8
                    } else {
                        IPPROTO_TCP as u8
                    };
                    (*ev).verdict = verdict;
                    (*ev).reason = reason;
                    (*ev)._pad = [0; 2];
                    (*ev).flags = flags;
                    (*ev).tier = r.tier;
                    (*ev).generation = r.generation;
                    (*ev)._pad2 = 0;
                }
                entry.submit(wakeup_flags(
                    fill,
                    core::mem::size_of::<ConnectEvent>() as u64,
                ));
            }
            None => count(counter::RINGBUF_LOST),
        }
    } else {
        count(counter::ALLOW_SHED);
    }
    // Counted after the record is in the ring (or counted lost): user space
    // takes `verdicts − lost − shed` as records already submitted
    // (agent/src/events/pipeline/accounting.rs).
    count(match verdict {
        VERDICT_ALLOW => counter::ALLOW,
        VERDICT_DENY => counter::DENY,
        _ => counter::AUDIT_DENY,
    });

    if verdict == VERDICT_DENY {
        REJECT
    } else {
        ALLOW
    }
}

#[cgroup_sock_addr(connect4)]
pub fn tg_connect4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, HOOK_CONNECT4)
}

#[cgroup_sock_addr(connect6)]
pub fn tg_connect6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, HOOK_CONNECT6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn tg_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, HOOK_SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn tg_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, HOOK_SENDMSG6)
}

/// Refuses a bind to a proxy port by anyone but the agent, so that while
/// the agent is away no other process can take its place.
#[inline(always)]
fn guard_bind(ctx: &SockAddrContext) -> i32 {
    let Some(g) = TG_GUARD.get(0) else {
        return ALLOW;
    };
    // SAFETY: ctx field of a bind program.
    let port = u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16);
    if g.agent_cgroup == 0 || port == 0 || (port != g.ports[0] && port != g.ports[1]) {
        return ALLOW;
    }
    // SAFETY: plain helper call.
    if unsafe { bpf_get_current_cgroup_id() } == g.agent_cgroup {
        ALLOW
    } else {
        REJECT
    }
}

#[cgroup_sock_addr(bind4)]
pub fn tg_bind4(ctx: SockAddrContext) -> i32 {
    guard_bind(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn tg_bind6(ctx: SockAddrContext) -> i32 {
    guard_bind(&ctx)
}

/// recvmsg/getpeername programs must return 1.
#[cgroup_sock_addr(recvmsg4)]
pub fn tg_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn tg_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, true);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn tg_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn tg_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, true);
    ALLOW
}

/// Socket kinds an enforced tier may create: TCP and UDP over IPv4/IPv6
/// (which the connect/sendmsg hooks judge), plus local-only families. Raw,
/// packet, ICMP "ping", SCTP, UDP-Lite, MPTCP and every other family would
/// reach the network around those hooks.
#[inline(always)]
fn socket_kind_allowed(family: u32, sock_type: u32, protocol: u32) -> bool {
    let t = sock_type & SOCK_TYPE_MASK;
    match family {
        AF_INET | AF_INET6 => {
            (t == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP))
                || (t == SOCK_DGRAM && (protocol == 0 || protocol == IPPROTO_UDP))
        }
        AF_UNIX | AF_NETLINK => true,
        _ => false,
    }
}

/// Judges a socket() call. Returns true when it may proceed.
#[inline(always)]
fn judge_socket(family: u32, sock_type: u32, protocol: u32) -> bool {
    if socket_kind_allowed(family, sock_type, protocol) {
        return true;
    }
    let Some(r) = resolve() else { return true };
    if r.tier == TIER_HOST {
        return true;
    }
    let audit = tier_flags(&r) & TIER_F_AUDIT != 0;
    let verdict = if audit {
        VERDICT_AUDIT_DENY
    } else {
        VERDICT_DENY
    };
    let fill = ring_fill();
    match TG_EVENTS.reserve::<SocketEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            // SAFETY: reservation sized for SocketEvent, owned until submit.
            unsafe {
                fill_header(&mut (*ev).header, EVENT_SOCKET);
                (*ev).family = family;
                (*ev).sock_type = sock_type;
                (*ev).protocol = protocol;
                (*ev).verdict = verdict;
                (*ev).reason = REASON_SOCKET_TYPE;
                (*ev)._pad = [0; 2];
                (*ev).tier = r.tier;
                (*ev).generation = r.generation;
            }
            entry.submit(wakeup_flags(
                fill,
                core::mem::size_of::<SocketEvent>() as u64,
            ));
        }
        None => count(counter::RINGBUF_LOST),
    }
    // After the submit, as for connects.
    count(counter::SOCKET_DENY);
    audit
}

/// Backstop on every cgroup-v2 kernel: IPv4/IPv6 sockets of other protocols.
#[cgroup_sock(sock_create)]
pub fn tg_sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: ctx fields of a sock_create program.
    let (family, sock_type, protocol) = unsafe { ((*sk).family, (*sk).type_, (*sk).protocol) };
    if judge_socket(family, sock_type, protocol) {
        ALLOW
    } else {
        REJECT
    }
}

/// With the BPF LSM active: every family (packet, vsock, ...), for every task.
#[lsm(hook = "socket_create")]
pub fn tg_socket_create(ctx: LsmContext) -> i32 {
    // int socket_create(int family, int type, int protocol, int kern)
    let family: i32 = ctx.arg(0);
    let sock_type: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return prev;
    }
    if kern != 0 || judge_socket(family as u32, sock_type as u32, protocol as u32) {
        0
    } else {
        -EPERM
    }
}
