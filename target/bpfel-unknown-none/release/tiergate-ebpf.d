/work/main/target/bpfel-unknown-none/release/tiergate-ebpf: /work/main/agent-common/src/lib.rs /work/main/agent-ebpf/build.rs /work/main/agent-ebpf/src/hooks.rs /work/main/agent-ebpf/src/main.rs
