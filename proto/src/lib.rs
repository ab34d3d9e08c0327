//! Generated code of `proto/tiergate/events/v1/events.proto`, and the
//! agent's encoding of it without a message tree (`wire`).

pub mod events {
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("tiergate.events.v1");
    }
}

pub mod wire;
