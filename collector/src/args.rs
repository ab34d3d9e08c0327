//! The flags of `tiergate collector` (CONTRACT section 1), flattened into
//! the `tiergate` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// gRPC listen address.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:4317")]
    pub listen: SocketAddr,
    /// Trust bundle (PEM) that client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: PathBuf,
    /// The collector's certificate (PEM); re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// The collector's private key (PEM); re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
    /// SPIFFE ID pattern agents must present (URI SAN); repeatable; `*` one
    /// path segment, `**` any depth.
    #[arg(long, value_name = "PATTERN", required = true)]
    pub allow_spiffe: Vec<String>,
    /// Where records go; repeatable: `stdout`,
    /// `file:PATH[?max-bytes=N&keep=K]`, `syslog+tls://HOST:PORT?ca=FILE[&cert=FILE&key=FILE]`.
    #[arg(long, value_name = "SPEC")]
    pub sink: Vec<String>,
    /// Observation store (what `tiergate advise` reads): `sqlite:PATH`
    /// (embedded), or `postgres://USER@HOST[:PORT]/DATABASE` for several
    /// collector replicas sharing one view.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Observation rows the store keeps; beyond, the least recently seen
    /// are evicted.
    #[arg(long, value_name = "N", default_value_t = crate::store::DEFAULT_MAX_ROWS)]
    pub store_max_rows: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    pub admin_addr: SocketAddr,
}
