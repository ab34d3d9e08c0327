//! Who made a connection: cgroup → workload identity.
//!
//! On a plain host the identity is the cgroup path (and the systemd unit it
//! names). Kubernetes pod identity builds on the same cgroup inventory.

pub mod cgroupfs;
pub mod kubepods;
pub mod kubernetes;
pub mod pods;
pub mod watch;
