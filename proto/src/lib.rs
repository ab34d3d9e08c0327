//! Generated code of `proto/tiergate/events/v1/events.proto`.
#![allow(clippy::all)]

pub mod events {
    pub mod v1 {
        tonic::include_proto!("tiergate.events.v1");
    }
}
