//! Compiles the protocol with protox (pure Rust: no protoc on the machine).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tiergate/events/v1/events.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The agent brings its own (mTLS) transport.
        .build_transport(false)
        // The collector takes each record's JSON as a slice of the received
        // message (no copy per record); see collector/src/service.rs.
        .bytes(".tiergate.events.v1.Event.ocsf_json")
        .compile_fds(fds)?;
    Ok(())
}
