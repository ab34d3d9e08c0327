//! Builds the eBPF object (`agent-ebpf`) with the nightly toolchain and
//! bpf-linker, so the agent binary embeds the exact programs it was built
//! with. `AYA_BUILD_SKIP=1` skips it for clippy-only runs.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
