//! DNS names in tier policies (`egress[].fqdns`): reading upstream answers
//! for the addresses a name rule may learn, and the rebinding guard.

pub mod addr_class;
pub mod answer;
pub mod query;

pub use addr_class::{AddrClass, classify};
pub use answer::{MAX_CHAIN, Offered, Rejection, name_key, read};
