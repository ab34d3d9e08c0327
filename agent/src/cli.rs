//! Command line (CONTRACT section 1).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
pub use tiergate_collector::CollectorArgs;

/// tiergate: eBPF node agent that enforces per-workload egress tiers.
#[derive(Debug, Parser)]
#[command(name = "tiergate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon: load the eBPF programs, enforce the policy, report events.
    Agent(Box<AgentArgs>),
    /// Validate and explain tier policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Receive event streams from agents (gRPC + mTLS) and write them to sinks.
    Collector(CollectorCommand),
    /// List the workloads the running agent has seen (identity, tier, enforced, last attempt), or every node's from the collector's store.
    Inventory(InventoryArgs),
    /// Detach and remove every pinned program, link and map.
    Uninstall(UninstallArgs),
    /// Time-boxed tier elevation: grant (to a pod, cgroup or SPIFFE ID), list, revoke.
    Elevate(Box<crate::commands::elevate::ElevateArgs>),
    /// Least privilege from evidence: granted vs used per identity, and a proposed tighter policy.
    Advise(Box<crate::commands::advise::AdviseArgs>),
    /// Serve the DNS and metadata proxies in their own process (next to `agent --proxies separate`), so DNS outlives the agent.
    Proxy(Box<ProxyArgs>),
}

/// `tiergate collector`: the collector's own flags, then the log format every
/// daemon subcommand shares.
#[derive(Debug, Args)]
pub struct CollectorCommand {
    #[command(flatten)]
    pub args: CollectorArgs,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").args(["admin_addr", "store"])))]
pub struct InventoryArgs {
    /// The agent's --admin-addr.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,
    /// Instead of one agent: the collector's observation store
    /// (sqlite:PATH or postgres://...), every node's identities merged.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Only enforced workloads (with --store: identities seen in a tier other than host).
    #[arg(long)]
    pub enforced: bool,
    /// Print JSON: the agent's document, or with --store the merged rows.
    #[arg(long)]
    pub json: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Tier policy file; re-read on change and on SIGHUP.
    #[arg(long)]
    pub policy: PathBuf,
    /// Unix socket (mode 0600) on which the agent takes elevation grants.
    #[arg(long, value_name = "PATH", default_value = crate::commands::elevate::DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    /// Where elevation grants are kept across restarts.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/tiergate/grants.json"
    )]
    pub grants_file: PathBuf,
    /// Also write every event as one JSON object per line to FILE (`-` = stdout).
    #[arg(long, value_name = "FILE")]
    pub events: Option<String>,
    /// cgroup v2 directory whose subtree is watched and enforced [default: the cgroup v2 mount].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// Where programs, links and maps are pinned (bpffs is mounted there if absent).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// Node name used in events [default: the hostname].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// kubeconfig of the API server whose pods of this node are watched
    /// [default: in-cluster config when running in a pod, else no Kubernetes].
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of /metrics, /healthz, /readyz, and of /inventory and
    /// /dns/learned (workload identities: answered to loopback clients only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,
    /// Size of the kernel event ring buffer in bytes (a power of two).
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20, value_parser = parse_ring_size)]
    pub ring_buffer_bytes: u32,
    /// Full rescan of the cgroup tree every this many seconds (a safety net
    /// under the inotify watch).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub rescan_interval: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Who serves the DNS and metadata proxies: `agent` (this process) or
    /// `separate` (a `tiergate proxy` process, which outlives the agent:
    /// the agent publishes what it knows into --proxy-dir and receives the
    /// proxies' records there).
    #[arg(long, value_enum, default_value = "agent")]
    pub proxies: ProxyMode,
    /// With `--proxies separate`: the directory shared with `tiergate
    /// proxy` (the agent's view of workloads and policies, and the socket
    /// on which the proxy hands its records over).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PROXY_DIR)]
    pub proxy_dir: PathBuf,
    #[command(flatten)]
    pub proxy: ProxyOptions,
    /// Aggregate repeated allowed attempts in the kernel: one record per
    /// (workload, process, destination, port, protocol) per DURATION with
    /// `count`, `start_time` and `end_time` (100ms to 1h). Off by default:
    /// every attempt has its own record. Denies, metadata accesses, DNS-
    /// opened addresses and attempts under a grant are never aggregated.
    #[arg(long, value_name = "DURATION", value_parser = parse_aggregate_window)]
    pub aggregate_allowed: Option<std::time::Duration>,
    /// Probing detection: distinct denied destinations are counted over the
    /// last DURATION (whole seconds, 1s to 1d).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_probe_window)]
    pub probe_window: std::time::Duration,
    /// Distinct denied hosts on one port within the window that raise a
    /// sweep finding (0: sweeps are not detected).
    #[arg(long, value_name = "N", default_value_t = 25, value_parser = parse_probe_threshold)]
    pub probe_hosts: u32,
    /// Distinct denied ports on one host within the window that raise a
    /// scan finding (0: scans are not detected).
    #[arg(long, value_name = "N", default_value_t = 15, value_parser = parse_probe_threshold)]
    pub probe_ports: u32,
    /// Collector to stream events to: `https://HOST:PORT` (mTLS; needs the
    /// --tls-* files and --spool).
    #[arg(long, value_name = "URL", requires_all = ["tls_ca", "tls_cert", "tls_key"])]
    pub collector: Option<String>,
    /// Trust bundle (PEM) the collector's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// The agent's X.509-SVID (PEM); re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The SVID's private key (PEM); re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// SPIFFE ID pattern the collector must present (then no hostname check).
    #[arg(long, value_name = "PATTERN")]
    pub collector_spiffe_id: Option<String>,
    /// Disk buffer for events the collector has not acknowledged.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/tiergate/spool")]
    pub spool: PathBuf,
    /// Size limit of the spool; above it allowed-connection events are given
    /// up first (reported as loss records).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
}

/// Default `--proxy-dir`.
pub const DEFAULT_PROXY_DIR: &str = "/run/tiergate/proxy";

/// Who serves the proxies.
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum ProxyMode {
    Agent,
    Separate,
}

/// What the DNS and metadata proxies need, whoever serves them.
#[derive(Debug, Clone, Args)]
pub struct ProxyOptions {
    /// Port of the DNS proxy on 127.0.0.0/8 in each network namespace it
    /// serves (tiers with `fqdns` rules send their DNS there). Pick one no
    /// workload binds.
    #[arg(long, value_name = "PORT", default_value_t = 15053, value_parser = clap::value_parser!(u16).range(1..))]
    pub dns_proxy_port: u16,
    /// Learned addresses one workload may hold open; beyond it its oldest
    /// close (re-resolving opens them again).
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub dns_max_per_workload: u64,
    /// Learned addresses one name may hold open for one workload.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub dns_max_per_name: u64,
    /// Port of the metadata proxy on 127.0.0.0/8 in each network namespace
    /// it serves (`metadata: filter` tiers' metadata connections go there).
    /// Only the process serving the proxies may bind it. Pick one no workload binds.
    #[arg(long, value_name = "PORT", default_value_t = 15054, value_parser = clap::value_parser!(u16).range(1..))]
    pub metadata_proxy_port: u16,
    /// Where the metadata proxy forwards the requests it allows: the
    /// instance metadata service (one per node and cloud), as
    /// `http://IP[:PORT]` or `IP:PORT` (an address: the agent resolves no
    /// name for it). Connected from the agent's own network namespace.
    #[arg(long, value_name = "URL", default_value = "http://169.254.169.254:80", value_parser = parse_upstream)]
    pub metadata_upstream: std::net::SocketAddr,
}

impl ProxyOptions {
    /// The learned-address caps.
    pub fn limits(&self) -> crate::dns::learn::Limits {
        crate::dns::learn::Limits {
            per_workload: self.dns_max_per_workload as usize,
            per_name: self.dns_max_per_name as usize,
        }
    }
}

/// `tiergate proxy`: the DNS and metadata proxies in a process of their
/// own, next to an agent run with `--proxies separate`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The agent's --proxy-dir.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PROXY_DIR)]
    pub proxy_dir: PathBuf,
    /// The agent's --bpffs (the proxies write the pinned maps there).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// Address of /metrics, /healthz and /readyz (ready: serving the
    /// agent's view).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub proxy: ProxyOptions,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two of at least 4096"));
    }
    Ok(v)
}

/// `--aggregate-allowed`: 100ms to 1h.
fn parse_aggregate_window(s: &str) -> Result<std::time::Duration, String> {
    let d = s.parse::<crate::duration::Span>()?.get();
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("{s}: give a window from 100ms to 1h"));
    }
    Ok(d)
}

/// `--probe-window`: the product's duration syntax, whole seconds from 1s
/// to 1d (findings report the window in seconds).
fn parse_probe_window(s: &str) -> Result<std::time::Duration, String> {
    let d = s.parse::<crate::duration::Span>()?.get();
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(86_400) {
        return Err(format!("{s}: give a window from 1s to 1d"));
    }
    if d.subsec_millis() != 0 {
        return Err(format!("{s}: give whole seconds (e.g. 2s)"));
    }
    Ok(d)
}

/// `--probe-hosts`, `--probe-ports`: 0 (off) or 2 to the distinct
/// destinations the detector tracks per workload.
fn parse_probe_threshold(s: &str) -> Result<u32, String> {
    let max = crate::events::probing::MAX_PAIRS as u32;
    match s.parse::<u32>() {
        Ok(n) if n == 0 || (2..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s}: give 0 (off) or a count from 2 to {max} (the distinct denied destinations tracked per workload)"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a tier policy file: exit 0 with a summary, or 1 with every error as FILE:LINE:COL: message.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Say which binding and tier apply to a workload and whether a connection would be allowed, and why.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["cgroup", "pid"])))]
pub struct ExplainArgs {
    /// The policy file.
    #[arg(long)]
    pub policy: PathBuf,
    /// cgroup v2 path as /proc/<pid>/cgroup shows it (e.g. /agents/tier0/tool).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// A running process whose cgroup is used.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Destination IP:PORT ([v6]:port for IPv6), or NAME:PORT for a DNS
    /// name judged by the tier's `fqdns` rules.
    #[arg(long, value_name = "IP:PORT|NAME:PORT", value_parser = parse_destination)]
    pub to: Destination,
    /// Judge a UDP datagram instead of a TCP connect.
    #[arg(long)]
    pub udp: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// A running agent's --admin-addr, asked for the pod identity of the
    /// cgroup (without it, or if it does not answer, only the cgroup path is used).
    #[arg(long, value_name = "ADDR")]
    pub agent: Option<SocketAddr>,
}

/// Where `policy explain --to` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Addr(SocketAddr),
    Name(String, u16),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Addr(a) => write!(f, "{a}"),
            Destination::Name(n, p) => write!(f, "{n}:{p}"),
        }
    }
}

fn parse_destination(s: &str) -> Result<Destination, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Destination::Addr(a));
    }
    let bad = || format!("{s:?}: expected IP:PORT, [IPv6]:PORT or NAME:PORT");
    let (name, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if name.is_empty() || name.contains(':') || name.parse::<std::net::IpAddr>().is_ok() {
        return Err(bad());
    }
    crate::policy::fqdn::normalize(name).map_err(|e| format!("{name:?}: {e}"))?;
    Ok(Destination::Name(name.to_owned(), port))
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The bpffs path the agent pinned to.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

/// `--metadata-upstream`: `http://IP[:PORT][/]` or `IP:PORT`. The GKE
/// metadata server is refused: it identifies callers by source address and
/// would see the agent as every caller.
pub fn parse_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{IpAddr, SocketAddr};
    let addr = if let Some(rest) = s.strip_prefix("http://") {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(format!("{s:?}: give the service's address, without a path"));
        }
        if let Ok(a) = rest.parse::<SocketAddr>() {
            a
        } else {
            let ip = rest.trim_start_matches('[').trim_end_matches(']');
            let ip: IpAddr = ip.parse().map_err(|_| {
                format!("{s:?}: the host must be an IP address (the agent resolves no name for its upstream)")
            })?;
            SocketAddr::new(ip, 80)
        }
    } else if s.contains("://") {
        return Err(format!(
            "{s:?}: only http:// (the instance metadata services speak plain HTTP)"
        ));
    } else {
        s.parse::<SocketAddr>()
            .map_err(|_| format!("{s:?} is not http://IP[:PORT] or IP:PORT"))?
    };
    if addr.ip() == IpAddr::from([169, 254, 169, 252]) {
        return Err(format!(
            "{s}: the GKE metadata server identifies callers by source address, so behind the \
             proxy it would see the agent as every caller; on such nodes give tiers \
             metadata: allow or deny instead of filter"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod probe_flag_tests {
    use std::time::Duration;

    use super::{parse_probe_threshold, parse_probe_window};

    #[test]
    fn probe_flags() {
        assert_eq!(parse_probe_window("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_probe_window("3s"), Ok(Duration::from_secs(3)));
        for bad in ["500ms", "1500ms", "0s", "2d", "5", "five"] {
            assert!(parse_probe_window(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_probe_threshold("0"), Ok(0));
        assert_eq!(parse_probe_threshold("25"), Ok(25));
        assert_eq!(parse_probe_threshold("4096"), Ok(4096));
        for bad in ["1", "4097", "-1", "x"] {
            let e = parse_probe_threshold(bad).expect_err(bad);
            assert!(e.contains("0 (off) or a count from 2 to 4096"), "{e}");
        }
    }
}

#[cfg(test)]
mod upstream_tests {
    use super::parse_upstream;

    #[test]
    fn upstream_forms() {
        let ok = |s: &str| parse_upstream(s).expect(s).to_string();
        assert_eq!(ok("http://169.254.169.254"), "169.254.169.254:80");
        assert_eq!(ok("http://169.254.169.254:80/"), "169.254.169.254:80");
        assert_eq!(ok("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(ok("http://[fd00:ec2::254]"), "[fd00:ec2::254]:80");
        assert_eq!(ok("http://[fd00:ec2::254]:81"), "[fd00:ec2::254]:81");
        for bad in [
            "https://169.254.169.254",
            "http://metadata.google.internal",
            "http://169.254.169.254/latest",
            "169.254.169.254",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
        let e = parse_upstream("http://169.254.169.252:988").unwrap_err();
        assert!(e.contains("GKE metadata server"), "{e}");
    }
}
