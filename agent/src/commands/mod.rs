//! One-shot subcommands: `policy check`, `policy explain`, `inventory`, `uninstall`.

pub mod agent_client;
pub mod explain;
pub mod inventory;
pub mod policy_check;
pub mod uninstall;
