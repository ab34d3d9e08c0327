/work/main/target/bpfel-unknown-none/release/deps/tiergate_ebpf-2042c53f2d0f572a.d: agent-ebpf/src/main.rs agent-ebpf/src/hooks.rs

/work/main/target/bpfel-unknown-none/release/deps/tiergate_ebpf-2042c53f2d0f572a: agent-ebpf/src/main.rs agent-ebpf/src/hooks.rs

agent-ebpf/src/main.rs:
agent-ebpf/src/hooks.rs:
