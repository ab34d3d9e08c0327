//! One-shot subcommands: `policy check`, `policy explain`, `uninstall`.

pub mod explain;
pub mod policy_check;
pub mod uninstall;
