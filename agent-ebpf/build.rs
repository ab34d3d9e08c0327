//! Fails early with an actionable message when bpf-linker is missing (the
//! BPF target links with it); `cargo xtask setup` installs it.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf")
        && let Err(e) = which::which("bpf-linker")
    {
        panic!("bpf-linker not found on PATH ({e}); run `cargo xtask setup`");
    }
}
