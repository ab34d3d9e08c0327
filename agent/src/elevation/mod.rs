//! Time-boxed tier elevation (just-in-time and break-glass): grants, their
//! persistence, the admin socket that takes them, and closing what a grant
//! opened when it ends (`sockets.rs`). The kernel side is
//! `enforcement/grants.rs`; the control task applies grants to cgroups
//! (`control/elevation.rs`).

pub mod admin;
pub mod grant;
pub mod protocol;
pub mod sockets;
pub mod store;
