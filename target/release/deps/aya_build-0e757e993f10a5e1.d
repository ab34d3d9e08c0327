/work/main/target/release/deps/aya_build-0e757e993f10a5e1.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aya-build-0.2.0/src/lib.rs

/work/main/target/release/deps/libaya_build-0e757e993f10a5e1.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aya-build-0.2.0/src/lib.rs

/work/main/target/release/deps/libaya_build-0e757e993f10a5e1.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aya-build-0.2.0/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aya-build-0.2.0/src/lib.rs:
