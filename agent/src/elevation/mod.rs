//! Time-boxed tier elevation (issue 14).

pub mod sockets;
