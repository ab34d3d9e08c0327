//! Time-boxed tier elevation (just-in-time and break-glass): grants, their
//! persistence, the admin socket that takes them, and closing what a grant
//! opened when it ends (`sockets.rs`). The kernel side is
//! `enforcement/grants.rs`; the control task applies grants to cgroups
//! (`control/elevation.rs`); `TierElevation` objects
//! are read in `resource.rs`, watched in `kube.rs` and turned into grants
//! in `control/elevation_objects.rs`.

pub mod admin;
pub mod grant;
pub mod kube;
pub mod protocol;
pub mod resource;
pub mod sockets;
pub mod store;
