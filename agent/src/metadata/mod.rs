//! The metadata proxy: `metadata: filter` tiers' HTTP connections to the
//! instance metadata service are redirected here by the connect hook (to
//! the caller's cgroup slot on 127.0.0.0/8, so the caller is known by what
//! the kernel recorded, never by a source address), and each request is
//! canonicalized (`canon`), judged by the tier's rules and the provider's
//! (`rules`), checked for a session token of its own (`tokens`), then
//! forwarded (`upstream`: kept-alive connections to the service) or
//! refused (`proxy`) and reported (`record`). `server` holds the listeners
//! and their bounds.

pub mod canon;
pub mod proxy;
pub mod record;
pub mod rules;
pub mod server;
pub mod tokens;
pub mod upstream;
