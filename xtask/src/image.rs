//! `cargo xtask image [--tag T]... [--bin PATH]`: the container image,
//! `FROM scratch` with the release binary and exactly the shared libraries
//! `ldd` lists for it (deploy/image/Containerfile), built with podman.
//!
//! No registry is needed (nothing is pulled). Without `--tag` the image is
//! tagged `tiergate:<version>` and `tiergate:latest`. `--bin` takes an
//! already built binary (the container test passes its `TIERGATE_BIN`);
//! otherwise the release binary is built if needed. After the build the
//! image's files are listed from the image itself and compared with what
//! was staged: anything else in it fails the build.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{output, root, say, status};

const CONTAINERFILE: &str = "deploy/image/Containerfile";
/// Where the binary lives in the image (the entrypoint).
const BIN_IN_IMAGE: &str = "usr/bin/tiergate";

pub fn run(args: &[String]) -> Result<()> {
    let mut tags = Vec::new();
    let mut bin = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tag" => tags.push(it.next().context("--tag needs a value")?.clone()),
            "--bin" => bin = Some(PathBuf::from(it.next().context("--bin needs a path")?)),
            other => bail!(
                "unknown argument {other:?}; usage: cargo xtask image [--tag T]... [--bin PATH]"
            ),
        }
    }
    if output(Command::new("podman").arg("--version")).is_none() {
        bail!("podman is missing: `cargo xtask setup` installs it");
    }
    let bin = match bin {
        Some(b) => b
            .canonicalize()
            .with_context(|| format!("--bin {}", b.display()))?,
        None => crate::build_release()?,
    };
    let version = binary_version(&bin)?;
    if tags.is_empty() {
        tags = vec![format!("tiergate:{version}"), "tiergate:latest".into()];
    }
    let ctx = crate::target_dir().join("image-context");
    let staged = stage(&bin, &ctx)?;
    say(&format!(
        "building the image {} with podman",
        tags.join(", ")
    ));
    let mut build = Command::new("podman");
    build
        .args(["build", "--quiet", "-f"])
        .arg(root().join(CONTAINERFILE))
        .arg("--build-arg")
        .arg(format!("VERSION={version}"));
    for t in &tags {
        build.args(["-t", t]);
    }
    status(build.arg(&ctx))?;
    let files = image_files(&tags[0])?;
    if files.keys().collect::<Vec<_>>() != staged.iter().collect::<Vec<_>>() {
        bail!(
            "image {} holds {:?}, expected exactly {:?}",
            tags[0],
            files.keys().collect::<Vec<_>>(),
            staged
        );
    }
    let size =
        output(Command::new("podman").args(["image", "inspect", "-f", "{{.Size}}", &tags[0]]))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
    say(&format!(
        "image {} ({:.1} MB, {} files):",
        tags.join(", "),
        size as f64 / 1e6,
        files.len()
    ));
    for (path, (mode, bytes)) in &files {
        println!("  {mode:o} {bytes:>10} /{path}");
    }
    say(
        "run it as the agent or the collector: `podman run ... <tag> agent ...` / `... collector ...`",
    );
    Ok(())
}

/// `tiergate --version` → "0.1.0".
fn binary_version(bin: &Path) -> Result<String> {
    let out = output(Command::new(bin).arg("--version"))
        .with_context(|| format!("{} --version failed", bin.display()))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("unexpected --version output {out:?}"))
}

/// The shared libraries `ldd` lists for `bin`: the paths it resolves them
/// to, and the loader (the vdso has no file).
pub fn shared_libraries(ldd: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in ldd.lines().map(str::trim) {
        if line.is_empty() || line.contains("statically linked") {
            continue;
        }
        if line.contains("not found") {
            bail!("ldd: {line}");
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)" or "linux-vdso.so.1 (0x...)".
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Stages `ctx/rootfs`: the binary and its libraries at their paths.
/// Returns the staged files (paths relative to the image root).
fn stage(bin: &Path, ctx: &Path) -> Result<Vec<String>> {
    let _ = std::fs::remove_dir_all(ctx);
    let rootfs = ctx.join("rootfs");
    let ldd = output(Command::new("ldd").arg(bin))
        .with_context(|| format!("ldd {} failed", bin.display()))?;
    let mut files = vec![(bin.to_path_buf(), PathBuf::from(BIN_IN_IMAGE))];
    for lib in shared_libraries(&ldd)? {
        let rel = lib.strip_prefix("/").expect("absolute").to_path_buf();
        files.push((lib, rel));
    }
    let mut staged = Vec::new();
    for (from, rel) in files {
        let to = rootfs.join(&rel);
        std::fs::create_dir_all(to.parent().expect("parent"))?;
        // Symlinks are followed: the image holds the file at the path the
        // loader (or the ELF interpreter field) looks for.
        std::fs::copy(&from, &to)
            .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
        let mode = if rel == Path::new(BIN_IN_IMAGE) || rel.starts_with("lib64") {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        staged.push(rel.to_string_lossy().into_owned());
    }
    staged.sort();
    Ok(staged)
}

/// Every regular file of the built image (mounted read-only): path →
/// (mode, size). Anything that is neither a file nor a directory fails.
fn image_files(image: &str) -> Result<BTreeMap<String, (u32, u64)>> {
    let mnt = output(Command::new("podman").args(["image", "mount", image]))
        .with_context(|| format!("podman image mount {image} failed"))?;
    let mnt = PathBuf::from(mnt.trim());
    let mut files = BTreeMap::new();
    let walked = walk(&mnt, &mnt, &mut files);
    let _ = Command::new("podman")
        .args(["image", "unmount", image])
        .output();
    walked?;
    Ok(files)
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, u64)>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = std::fs::symlink_metadata(e.path())?;
        let rel = e
            .path()
            .strip_prefix(base)
            .expect("under base")
            .to_string_lossy()
            .into_owned();
        if meta.is_dir() {
            walk(base, &e.path(), out)?;
        } else if meta.is_file() {
            out.insert(rel, (meta.permissions().mode() & 0o7777, meta.len()));
        } else {
            bail!("the image holds /{rel}, neither a file nor a directory");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_files() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f9a)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9b)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f9c)\n";
        assert_eq!(
            shared_libraries(ldd).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(
            shared_libraries("\tstatically linked\n")
                .unwrap()
                .is_empty()
        );
        assert!(shared_libraries("\tlibfoo.so.1 => not found\n").is_err());
    }
}
