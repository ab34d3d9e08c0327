//! Kernel enforcement: load and pin the programs (`loader`), keep the policy
//! and cgroup maps in step with user space (`sync`), and remove everything
//! (`uninstall`).

pub mod batch;
pub mod bpffs;
pub mod grants;
pub mod loader;
pub mod sync;
pub mod uninstall;
