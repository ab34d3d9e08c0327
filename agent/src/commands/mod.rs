//! One-shot subcommands: `policy check`, `policy explain`, `inventory`,
//! `uninstall`, `advise`.

pub mod advise;
pub mod agent_client;
pub mod elevate;
pub mod explain;
pub mod inventory;
pub mod policy_check;
pub mod uninstall;
