/work/main/target/bpfel-unknown-none/release/deps/agent_common-268747a60b169f91.d: agent-common/src/lib.rs

/work/main/target/bpfel-unknown-none/release/deps/libagent_common-268747a60b169f91.rlib: agent-common/src/lib.rs

/work/main/target/bpfel-unknown-none/release/deps/libagent_common-268747a60b169f91.rmeta: agent-common/src/lib.rs

agent-common/src/lib.rs:
