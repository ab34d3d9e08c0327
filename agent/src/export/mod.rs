//! Delivery to the collector: every rendered record goes into a bounded disk
//! spool (`spool`, through `SpoolSink`), and the sender streams the spool to
//! the collector over gRPC with mTLS, deleting records only once the
//! collector has acknowledged them (`sender`).

pub mod sender;
pub mod spool;
pub mod spool_sink;
