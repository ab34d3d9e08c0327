//! Types shared by the tiergate eBPF programs (`agent-ebpf`) and the agent.
//!
//! Everything here crosses the kernel/user boundary, so every type is
//! `#[repr(C)]`, has explicit padding (no implicit holes the verifier or the
//! decoder could trip over) and uses integers instead of `bool`. Numeric
//! constants (event kinds, verdicts, reasons, counter slots) are part of the
//! pinned-map ABI: never renumber them, only append. A change of layout bumps
//! [`ABI_VERSION`], which names the bpffs pin directory, so an upgraded agent
//! never reads maps written with another layout.
#![no_std]
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]

/// Layout version of maps and events; part of the pin directory name.
pub const ABI_VERSION: u32 = 1;

/// Number of policy generations kept side by side for atomic swaps.
pub const GENERATIONS: usize = 2;
/// Tier ids are indices `0..MAX_TIERS` into the policy's tier list.
pub const MAX_TIERS: u32 = 256;
/// Tier id of a cgroup that is not enforced (a host cgroup no binding covers).
pub const TIER_HOST: u32 = u32::MAX;
/// Port ranges one destination prefix of one tier may carry (after merging).
pub const MAX_PORT_RANGES: usize = 16;
/// Deepest cgroup level the kernel walks when it meets an unknown cgroup.
pub const MAX_CGROUP_DEPTH: i32 = 32;

/// Names of the maps in the eBPF object (also their pin file names).
pub mod map_names {
    pub const CONFIG: &str = "TG_CONFIG";
    pub const CGROUPS: &str = "TG_CGROUPS";
    pub const TIERS: &str = "TG_TIERS";
    pub const RULES: &str = "TG_RULES";
    pub const EVENTS: &str = "TG_EVENTS";
    pub const COUNTERS: &str = "TG_COUNTERS";
    pub const REPORTED: &str = "TG_REPORTED";
    pub const DNS_NETNS: &str = "TG_DNS_NETNS";
    pub const DNS_ORIG: &str = "TG_DNS_ORIG";
    pub const LEARNED: &str = "TG_LEARNED";
    pub const FQDN_PORTS: &str = "TG_FQDN_PORTS";
    pub const GUARD: &str = "TG_GUARD";
    pub const GRANTS: &str = "TG_GRANTS";
    pub const AGG_CTL: &str = "TG_AGG_CTL";
    pub const AGG0: &str = "TG_AGG0";
    pub const AGG1: &str = "TG_AGG1";
    pub const AGG_FOLDED: &str = "TG_AGG_FOLDED";
    pub const AGG_LEDGER: &str = "TG_AGG_LEDGER";
    pub const ALL: [&str; 18] = [
        CONFIG, CGROUPS, TIERS, RULES, EVENTS, COUNTERS, REPORTED, DNS_NETNS, DNS_ORIG, LEARNED,
        FQDN_PORTS, GUARD, GRANTS, AGG_CTL, AGG0, AGG1, AGG_FOLDED, AGG_LEDGER,
    ];
}

/// Names of the programs in the eBPF object (also their link pin names).
pub mod prog_names {
    pub const CONNECT4: &str = "tg_connect4";
    pub const CONNECT6: &str = "tg_connect6";
    pub const SENDMSG4: &str = "tg_sendmsg4";
    pub const SENDMSG6: &str = "tg_sendmsg6";
    pub const SOCK_CREATE: &str = "tg_sock_create";
    pub const RECVMSG4: &str = "tg_recvmsg4";
    pub const RECVMSG6: &str = "tg_recvmsg6";
    pub const GETPEERNAME4: &str = "tg_getpeername4";
    pub const GETPEERNAME6: &str = "tg_getpeername6";
    pub const BIND4: &str = "tg_bind4";
    pub const BIND6: &str = "tg_bind6";
    pub const LSM_SOCKET_CREATE: &str = "tg_socket_create";
}

/// Global switches, `TG_CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Generation (0 or 1) of policy data the programs read now.
    pub active_gen: u32,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// Tier of a cgroup whose identity is unknown, per generation.
    pub default_tier: [u32; GENERATIONS],
}

/// A policy is loaded; before that every program allows (and reports nothing),
/// so that loading the object alone never changes the node.
pub const CONFIG_F_POLICY_LOADED: u32 = 1;

/// Elevation grants exist: the programs look a known cgroup up in
/// `TG_GRANTS` (a bit test and nothing more while there are none).
pub const CONFIG_F_GRANTS: u32 = 1 << 1;

/// `TG_GRANTS[cgroup_id]`: a time-boxed elevation. Until `expires_ns` the
/// cgroup is judged by `tier[generation]` instead of its own tier; after it,
/// by its own again, whether or not an agent runs to remove the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The tier granted, per generation ([`GRANT_NO_TIER`]: the policy of
    /// that generation has no such tier, so nothing is granted in it).
    pub tier: [u32; GENERATIONS],
    /// `bpf_ktime_get_boot_ns()` at which the grant ends.
    pub expires_ns: u64,
    /// The grant's id (user space's), for diagnostics.
    pub id: u64,
}

/// `TG_AGG_CTL[0]`: whether allowed attempts are aggregated, and into which
/// of `TG_AGG0`/`TG_AGG1` (written only by the agent's aggregation drainer;
/// see agent/src/events/aggregate/).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggCtl {
    /// 1: fold repeated allowed attempts; 0: a ring record for each.
    pub enabled: u32,
    /// 0: `TG_AGG0` takes folds, 1: `TG_AGG1`.
    pub slot: u32,
}

/// Entries each of `TG_AGG0`/`TG_AGG1` holds; an attempt whose key does not
/// fit gets a ring record of its own (nothing is lost for room).
pub const AGG_ENTRIES: u32 = 16_384;

/// What identical allowed attempts share: one aggregated record per key and
/// window. The process (tgid, uid) is part of it, so a record still names
/// one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub cgroup_id: u64,
    /// Destination, IPv6 form (IPv4 as `::ffff:a.b.c.d`), network order.
    pub addr: [u8; 16],
    /// Destination port, host order.
    pub port: u16,
    /// `HOOK_*`.
    pub hook: u8,
    /// 6 (tcp) or 17 (udp).
    pub protocol: u8,
    /// `REASON_*`.
    pub reason: u8,
    pub _pad: [u8; 3],
    /// `CONNECT_F_*`.
    pub flags: u32,
    pub tier: u32,
    pub generation: u32,
    /// Thread group id and uid of the caller.
    pub tgid: u32,
    pub uid: u32,
    pub _pad2: u32,
}

/// Per CPU: how many attempts of the key this CPU folded, when, and the
/// first attempt's header fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggVal {
    pub count: u64,
    /// `bpf_ktime_get_boot_ns()` of the first and the last attempt.
    pub first_ns: u64,
    pub last_ns: u64,
    pub pid_tgid: u64,
    pub uid_gid: u64,
    pub comm: [u8; 16],
}

/// Slots of `TG_AGG_LEDGER` (user space only, pinned): which drained window
/// reached the sinks, so an agent killed between taking a window and
/// writing it re-sends it instead of losing it.
pub mod agg_ledger {
    /// Windows taken so far (the slot drained last took this number).
    pub const EPOCH: u32 = 0;
    /// The last window whose records the sinks wrote.
    pub const WRITTEN: u32 = 1;
    /// The window being written, and its last record's seq.
    pub const PENDING: u32 = 2;
    pub const PENDING_SEQ: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// `Grant::tier` of a generation whose policy lacks the granted tier.
pub const GRANT_NO_TIER: u32 = u32::MAX;

/// `TG_CGROUPS[cgroup_id]`: the tier of a known cgroup, per generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupTier {
    /// Tier of processes in this cgroup.
    pub tier: [u32; GENERATIONS],
    /// Tier of a descendant cgroup user space has not learned of yet. The
    /// kernel uses it for a cgroup created after the agent last looked, so a
    /// new cgroup under a bound path is enforced from its first connect.
    pub child_tier: [u32; GENERATIONS],
}

/// `TG_TIERS[gen * MAX_TIERS + tier]`: per-tier switches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierConfig {
    /// `TIER_F_*` bits.
    pub flags: u32,
    /// Explicit padding so the value has no implicit hole.
    pub _pad: u32,
}

/// The slot holds a tier of the generation.
pub const TIER_F_VALID: u32 = 1;
/// Would-be denials are reported as `audit-deny` and let through.
pub const TIER_F_AUDIT: u32 = 1 << 1;
/// Cloud metadata endpoints are reachable (`metadata: allow`).
pub const TIER_F_METADATA_ALLOW: u32 = 1 << 2;

/// The tier has `fqdns` rules: its DNS (port 53, UDP and TCP, any address)
/// goes to the agent's DNS proxy, and addresses its answers taught open.
pub const TIER_F_DNS: u32 = 1 << 3;

/// `metadata: filter`: the tier's HTTP connections to the instance metadata
/// service go to the agent's metadata proxy, which decides each request.
pub const TIER_F_METADATA_FILTER: u32 = 1 << 4;

/// Index of a tier slot in `TG_TIERS`.
pub const fn tier_slot(generation: u32, tier: u32) -> u32 {
    generation * MAX_TIERS + tier
}

/// Data part of an `TG_RULES` LPM-trie key. The trie matches bit prefixes of
/// the bytes in order, so `generation` and `tier` (always fully inside the
/// prefix) come first and the address, in network order, last. IPv4
/// destinations are stored as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleKey {
    pub generation: u32,
    pub tier: u32,
    pub addr: [u8; 16],
}

/// Bits of the LPM prefix taken by `generation` and `tier`.
pub const RULE_KEY_FIXED_BITS: u32 = 64;

/// Protocol bits used in port sets.
pub const PROTO_TCP: u32 = 1;
pub const PROTO_UDP: u32 = 1 << 1;

/// One inclusive port range and the protocols it admits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    /// `PROTO_*` bits.
    pub protocols: u32,
}

/// `TG_RULES` value: what a destination prefix admits. It already holds the
/// union of every rule of the tier whose CIDR contains this prefix, because
/// the trie returns only the most specific match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    /// `PROTO_*` bits admitted on every port.
    pub any_port: u32,
    /// Used entries of `ranges`.
    pub len: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

/// The DNS port every query of a DNS tier is taken from.
pub const DNS_PORT: u16 = 53;

/// `TG_DNS_NETNS[netns cookie]`: the agent's proxies serve this network
/// namespace (they hold sockets there) on these ports of the whole of
/// 127.0.0.0/8. A port of 0 is not served: the hook refuses what would go
/// there. (The map keeps its first name: pins are ABI.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyNetns {
    /// DNS proxy port, host order.
    pub dns_port: u16,
    /// Metadata proxy port, host order (0: none in this namespace).
    pub metadata_port: u16,
    pub _pad: [u8; 4],
}

/// `TG_DNS_ORIG[socket cookie]`: where a socket the hook redirected to a
/// proxy (DNS or metadata) meant to go, so `recvmsg`/`getpeername` show the
/// application that peer again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Original destination, IPv6 form (IPv4 as `::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// Original port, host order.
    pub port: u16,
    /// The proxy port the socket was sent to, host order.
    pub proxy_port: u16,
    pub _pad: u32,
}

/// `TG_GUARD[0]`: who may bind the proxies' ports. While the agent is
/// dead its listeners are gone; without this another process could take a
/// port and answer the redirected queries and requests as if it were the
/// agent. Written by the agent before it binds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyGuard {
    /// The agent's cgroup: the only one that may bind the ports (0: no guard).
    pub agent_cgroup: u64,
    /// The DNS and metadata proxy ports, host order (0 = unused).
    pub ports: [u16; 2],
    pub _pad: u32,
}

/// The proxy address a cgroup's queries are sent to: 127.0.0.0/8 with the
/// cgroup's slot in the low 24 bits, so the proxy knows the asking cgroup
/// from the address the packet arrived on, whoever sent it (the hook rewrites
/// every port-53 destination, and direct sends to the proxy port are denied).
/// Slots run 1..=0xfffffe (never the network or broadcast address).
pub const fn dns_slot(cgroup_id: u64) -> u32 {
    ((cgroup_id % 0xff_fffe) + 1) as u32
}

/// `TG_LEARNED` key: an address a cgroup learned from a DNS answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    pub cgroup_id: u64,
    /// IPv6 form (IPv4 as `::ffff:a.b.c.d`).
    pub addr: [u8; 16],
}

/// Name patterns one learned address may carry.
pub const MAX_LEARNED_PATTERNS: usize = 4;

/// `TG_LEARNED` value: until when, and by which name patterns. The ports
/// come from `TG_FQDN_PORTS` of the *active* generation, so a reload that
/// drops or narrows a pattern takes effect with the generation flip.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// `bpf_ktime_get_boot_ns()` after which the entry no longer opens.
    pub expires_ns: u64,
    /// Pattern ids (0 = unused).
    pub patterns: [u64; MAX_LEARNED_PATTERNS],
}

/// `TG_FQDN_PORTS` key: a name pattern of a tier in a generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FqdnKey {
    pub generation: u32,
    pub tier: u32,
    /// Stable id of (pattern, allowPrivate): see the agent's `pattern_id`.
    pub pattern: u64,
}

/// Event kinds; the first field of every ring-buffer record.
pub const EVENT_CONNECT: u32 = 1;
pub const EVENT_SOCKET: u32 = 2;

/// Common header of every ring-buffer record (decoders rely on its offset).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `EVENT_*`.
    pub kind: u32,
    /// CPU the hook ran on (for ordering diagnostics).
    pub cpu: u32,
    /// `bpf_ktime_get_boot_ns()`.
    pub boot_ns: u64,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the upper half.
    pub pid_tgid: u64,
    /// `bpf_get_current_uid_gid()`: gid in the upper half.
    pub uid_gid: u64,
    pub comm: [u8; 16],
}

/// Which hook judged a connection attempt.
pub const HOOK_CONNECT4: u8 = 1;
pub const HOOK_CONNECT6: u8 = 2;
pub const HOOK_SENDMSG4: u8 = 3;
pub const HOOK_SENDMSG6: u8 = 4;

/// Verdicts.
pub const VERDICT_ALLOW: u8 = 0;
pub const VERDICT_DENY: u8 = 1;
pub const VERDICT_AUDIT_DENY: u8 = 2;

/// Reasons.
pub const REASON_LOOPBACK: u8 = 1;
pub const REASON_EGRESS_RULE: u8 = 2;
pub const REASON_NO_MATCHING_RULE: u8 = 3;
pub const REASON_METADATA_SERVICE: u8 = 4;
pub const REASON_HOST: u8 = 5;
pub const REASON_SOCKET_TYPE: u8 = 6;
/// Allowed by an address a DNS answer taught this cgroup (`fqdns` rule).
pub const REASON_FQDN: u8 = 7;
/// A DNS query from a network namespace the DNS proxy does not serve yet.
pub const REASON_DNS_UNSERVED: u8 = 8;
/// A direct send to the DNS proxy's port (only the hook may send there).
pub const REASON_DNS_PROXY_PORT: u8 = 9;
/// A DNS query of a tier with name rules, sent to the proxy. The hook makes
/// no record of it (the proxy reports the query); `policy explain` uses it.
pub const REASON_DNS_PROXY: u8 = 10;
/// A metadata connection of a `filter` tier, sent to the metadata proxy
/// (which reports each request).
pub const REASON_METADATA_PROXY: u8 = 11;
/// A metadata connection of a `filter` tier from a network namespace the
/// metadata proxy does not serve (yet), or to an endpoint it cannot filter.
pub const REASON_METADATA_UNFILTERED: u8 = 12;

/// `ConnectEvent::flags`: the destination is a cloud metadata endpoint.
pub const CONNECT_F_METADATA: u32 = 1;
/// The caller wrote an IPv4-mapped IPv6 address; `addr` holds it mapped.
pub const CONNECT_F_V4MAPPED: u32 = 1 << 1;
/// The tier came from an ancestor: user space had not learned this cgroup.
pub const CONNECT_F_INHERITED: u32 = 1 << 2;
/// The attempt was judged by an elevation grant's tier (`TG_GRANTS`).
pub const CONNECT_F_ELEVATED: u32 = 1 << 3;
/// The destination is an address a live DNS answer taught this cgroup
/// (`TG_LEARNED`), whatever the port: set in tiers with names when no
/// address rule admitted the attempt. A denied UDP connect with it is what
/// a resolver's RFC 6724 sort does (the probing detector leaves it out).
pub const CONNECT_F_LEARNED: u32 = 1 << 4;

/// A judged connect()/sendmsg() (`EVENT_CONNECT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    pub header: EventHeader,
    /// Destination, IPv6 form (IPv4 as `::ffff:a.b.c.d`), network order.
    pub addr: [u8; 16],
    /// Destination port, host order.
    pub port: u16,
    /// `HOOK_*`.
    pub hook: u8,
    /// 6 (tcp) or 17 (udp).
    pub protocol: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `REASON_*`.
    pub reason: u8,
    pub _pad: [u8; 2],
    /// `CONNECT_F_*`.
    pub flags: u32,
    /// Tier id in `generation`, or `TIER_HOST`.
    pub tier: u32,
    pub generation: u32,
    pub _pad2: u32,
}

/// A socket() call a tier may not make (`EVENT_SOCKET`), e.g. raw or packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketEvent {
    pub header: EventHeader,
    pub family: u32,
    pub sock_type: u32,
    pub protocol: u32,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `REASON_*`.
    pub reason: u8,
    pub _pad: [u8; 2],
    pub tier: u32,
    pub generation: u32,
}

/// Slots of the per-CPU `TG_COUNTERS` array.
pub mod counter {
    pub const ALLOW: u32 = 0;
    pub const DENY: u32 = 1;
    pub const AUDIT_DENY: u32 = 2;
    /// Events that did not fit in the ring buffer (lost).
    pub const RINGBUF_LOST: u32 = 3;
    /// Allowed-connection events not written because the ring was filling up
    /// (room kept for denies and metadata accesses). Counted exactly.
    pub const ALLOW_SHED: u32 = 4;
    /// Verdicts that used an ancestor's tier (cgroup not yet known).
    pub const INHERITED: u32 = 5;
    pub const SOCKET_DENY: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// Slots of `TG_REPORTED` (written only by user space, pinned): the loss
/// counts already reported sit at their `counter` slot (`RINGBUF_LOST`,
/// `ALLOW_SHED`); the others keep the ledger of records a killed agent took
/// from the ring and never wrote (agent/src/events/pipeline/accounting.rs).
pub mod reported {
    /// Kernel records written to the sinks or reported lost, since the
    /// baseline.
    pub const HANDLED: u32 = 0;
    /// HANDLED as it will be once the flush in progress is written.
    pub const HANDLED_PENDING: u32 = 1;
    /// The last seq of the flush in progress.
    pub const PENDING_SEQ: u32 = 2;
    /// Records lost by killed agents, already reported.
    pub const RESTART_LOST: u32 = 5;
    /// 1 once HANDLED has a baseline.
    pub const BASELINE: u32 = 6;

    const _: () = {
        use super::counter::{ALLOW_SHED, COUNT, RINGBUF_LOST};
        let slots = [
            HANDLED,
            HANDLED_PENDING,
            PENDING_SEQ,
            RESTART_LOST,
            BASELINE,
        ];
        let mut i = 0;
        while i < slots.len() {
            assert!(slots[i] < COUNT && slots[i] != RINGBUF_LOST && slots[i] != ALLOW_SHED);
            i += 1;
        }
    };
}

/// The built-in cloud metadata endpoints (CONTRACT 2.1, sources in the
/// README), IPv4 in network order: every port of these addresses.
pub const METADATA_V4: [[u8; 4]; 7] = [
    // AWS, GCP, Azure, OpenStack, DigitalOcean... instance metadata (HTTP).
    [169, 254, 169, 254],
    // AWS ECS task credentials.
    [169, 254, 170, 2],
    // AWS EKS Pod Identity.
    [169, 254, 170, 23],
    // Alibaba Cloud.
    [100, 100, 100, 200],
    // Oracle Cloud (OCI).
    [192, 0, 0, 192],
    // GKE metadata server (Workload Identity, port 988).
    [169, 254, 169, 252],
    // Azure WireServer: only on its metadata ports, see METADATA_PORTS_V4.
    [168, 63, 129, 16],
];
/// The one entry of [`METADATA_V4`] that is metadata only on some ports:
/// Azure's WireServer also answers the VM's DNS on 53.
pub const WIRESERVER_V4: [u8; 4] = [168, 63, 129, 16];
pub const WIRESERVER_PORTS: [u16; 2] = [80, 32526];
/// IPv6 metadata endpoints.
pub const METADATA_V6: [[u8; 16]; 5] = [
    // AWS IMDS (Nitro).
    [
        0xfd, 0, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54,
    ],
    // AWS EKS Pod Identity.
    [0xfd, 0, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x23],
    // Oracle Cloud (OCI): fd00:c1::a9fe:a9fe.
    [
        0xfd, 0, 0, 0xc1, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0xa9, 0xfe,
    ],
    // OpenStack: fe80::a9fe:a9fe.
    [
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0xa9, 0xfe,
    ],
    // GCP (IPv6 instances): fd20:ce::254.
    [
        0xfd, 0x20, 0, 0xce, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54,
    ],
];
/// The port of the HTTP instance metadata services a `filter` tier's
/// connections are sent to the proxy on.
pub const METADATA_HTTP_PORT: u16 = 80;
/// Endpoints whose HTTP instance metadata service the proxy can filter
/// (indices into [`METADATA_V4`] / [`METADATA_V6`]). The others either
/// identify callers by source address (GKE's metadata server), are not
/// HTTP metadata (WireServer) or serve credentials only (ECS, EKS Pod
/// Identity): a `filter` tier is denied them.
pub const FILTERABLE_V4: [usize; 3] = [0, 3, 4];
pub const FILTERABLE_V6: [usize; 3] = [0, 2, 4];

/// Whether `index` is in `list` (bounded loop: also runs in the kernel).
#[inline(always)]
const fn listed(list: &[usize], index: usize) -> bool {
    let mut i = 0;
    while i < list.len() {
        if list[i] == index {
            return true;
        }
        i += 1;
    }
    false
}

/// The [`METADATA_V4`] entry `(a, port)` reaches, if it is a metadata endpoint.
#[inline(always)]
pub const fn metadata_v4(a: [u8; 4], port: u16) -> Option<usize> {
    let mut i = 0;
    while i < METADATA_V4.len() {
        let m = METADATA_V4[i];
        if m[0] == a[0] && m[1] == a[1] && m[2] == a[2] && m[3] == a[3] {
            let wire = a[0] == WIRESERVER_V4[0]
                && a[1] == WIRESERVER_V4[1]
                && a[2] == WIRESERVER_V4[2]
                && a[3] == WIRESERVER_V4[3];
            if wire && port != WIRESERVER_PORTS[0] && port != WIRESERVER_PORTS[1] {
                return None;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The [`METADATA_V6`] entry `a` is, if it is a metadata endpoint.
#[inline(always)]
pub const fn metadata_v6(a: &[u8; 16]) -> Option<usize> {
    let mut i = 0;
    while i < METADATA_V6.len() {
        let m = &METADATA_V6[i];
        let mut j = 0;
        let mut same = true;
        while j < 16 {
            if m[j] != a[j] {
                same = false;
            }
            j += 1;
        }
        if same {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Whether a connection to metadata entry `index` (of the v4 or v6 list) on
/// `port` over TCP is one the metadata proxy can filter.
#[inline(always)]
pub const fn metadata_filterable(v4: bool, index: usize, port: u16) -> bool {
    port == METADATA_HTTP_PORT
        && if v4 {
            listed(&FILTERABLE_V4, index)
        } else {
            listed(&FILTERABLE_V6, index)
        }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] with only integer fields and explicit
    // padding, so every bit pattern is valid and there are no holes.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for CgroupTier {}
    unsafe impl aya::Pod for Grant {}
    unsafe impl aya::Pod for AggCtl {}
    unsafe impl aya::Pod for AggKey {}
    unsafe impl aya::Pod for AggVal {}
    unsafe impl aya::Pod for TierConfig {}
    unsafe impl aya::Pod for RuleKey {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for PortSet {}
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for ConnectEvent {}
    unsafe impl aya::Pod for SocketEvent {}
    unsafe impl aya::Pod for ProxyNetns {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for ProxyGuard {}
    unsafe impl aya::Pod for LearnedKey {}
    unsafe impl aya::Pod for Learned {}
    unsafe impl aya::Pod for FqdnKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    // The kernel and the agent must agree on these sizes; a change here is an
    // ABI change (bump ABI_VERSION).
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(size_of::<CgroupTier>(), 16);
        assert_eq!(size_of::<TierConfig>(), 8);
        assert_eq!(size_of::<RuleKey>(), 24);
        assert_eq!(size_of::<PortRange>(), 8);
        assert_eq!(size_of::<PortSet>(), 8 + 8 * MAX_PORT_RANGES);
        assert_eq!(size_of::<EventHeader>(), 56);
        assert_eq!(
            size_of::<ConnectEvent>(),
            56 + 16 + 2 + 1 + 1 + 1 + 1 + 2 + 4 + 4 + 4 + 4
        );
        assert_eq!(size_of::<SocketEvent>(), 56 + 12 + 4 + 8);
        assert_eq!(size_of::<AggCtl>(), 8);
        assert_eq!(size_of::<AggKey>(), 8 + 16 + 2 + 1 + 1 + 1 + 3 + 4 * 6);
        assert_eq!(size_of::<AggVal>(), 8 * 5 + 16);
        assert_eq!(size_of::<ProxyNetns>(), 8);
        assert_eq!(size_of::<OrigDst>(), 24);
        assert_eq!(size_of::<ProxyGuard>(), 16);
        assert_eq!(size_of::<LearnedKey>(), 24);
        assert_eq!(size_of::<Learned>(), 8 + 8 * MAX_LEARNED_PATTERNS);
        assert_eq!(size_of::<FqdnKey>(), 16);
    }

    #[test]
    fn dns_slots_avoid_network_and_broadcast() {
        assert_eq!(dns_slot(0), 1);
        assert_eq!(dns_slot(0xff_fffd), 0xff_fffe);
        assert_eq!(dns_slot(0xff_fffe), 1);
        assert_eq!(dns_slot(u64::MAX) & !0xff_ffff, 0);
    }

    #[test]
    fn metadata_endpoints_by_address_and_port() {
        assert_eq!(metadata_v4([169, 254, 169, 254], 80), Some(0));
        assert_eq!(metadata_v4([169, 254, 169, 254], 53), Some(0));
        assert_eq!(metadata_v4([168, 63, 129, 16], 80), Some(6));
        assert_eq!(metadata_v4([168, 63, 129, 16], 32526), Some(6));
        assert_eq!(metadata_v4([168, 63, 129, 16], 53), None);
        assert_eq!(metadata_v4([10, 0, 0, 1], 80), None);
        assert!(metadata_filterable(true, 0, 80));
        assert!(!metadata_filterable(true, 0, 443));
        assert!(!metadata_filterable(true, 1, 80), "ECS credentials");
        assert!(!metadata_filterable(true, 5, 80), "GKE metadata server");
        let oci6 = METADATA_V6[2];
        assert_eq!(metadata_v6(&oci6), Some(2));
        assert!(metadata_filterable(false, 2, 80));
        assert_eq!(metadata_v6(&[0; 16]), None);
    }

    #[test]
    fn tier_slots_do_not_overlap_between_generations() {
        assert_eq!(tier_slot(0, MAX_TIERS - 1) + 1, tier_slot(1, 0));
    }
}
