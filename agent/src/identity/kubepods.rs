//! Kubernetes pod and container identity from a cgroup v2 path.
//!
//! kubelet names every pod's cgroup after the pod's QoS class and UID, and the
//! container runtime names every container's cgroup after the container id,
//! so the path `/proc/<pid>/cgroup` shows (`0::<path>`) is enough to tell
//! which pod and container a process belongs to, without asking the API
//! server or the CRI. Two layouts exist, one per cgroup driver:
//!
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
//!   A systemd slice's name repeats its parents' names joined by dashes, so
//!   a dash cannot appear inside one level and the UID's dashes become
//!   underscores.
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<id>`.
//!
//! Guaranteed pods have no QoS level (`/kubepods.slice/kubepods-pod<uid>.slice`,
//! `/kubepods/pod<uid>`). The kubepods root can sit under any prefix (kind,
//! k3s, a kubelet in a container) and can itself be renamed by kubelet's
//! `--cgroup-root` (`/kubelet.slice/kubelet-kubepods.slice/...`), so it is
//! looked for anywhere in the path; the first (outermost) one wins, because
//! everything below a container, kubepods or not, belongs to that container.
//!
//! containerd with `SystemdCgroup = true` but a runc that does not go through
//! systemd (seen on k3s) leaves the runtime's `slice:prefix:id` cgroup name
//! literally in the path, pod and container in one segment:
//! `/system.slice/containerd.service/kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`.
//! That shape is parsed too.
//!
//! Pure string parsing: no I/O, no state.

/// Quality-of-service class of a pod, from the QoS level of its cgroup path
/// (no level means Guaranteed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    /// No QoS level in the path: the pod sits directly under kubepods.
    Guaranteed,
    /// Under `kubepods-burstable.slice` or `kubepods/burstable`.
    Burstable,
    /// Under `kubepods-besteffort.slice` or `kubepods/besteffort`.
    BestEffort,
}

/// The container runtime that named a container cgroup, from its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `cri-containerd-<id>.scope` (or `:cri-containerd:<id>`).
    Containerd,
    /// `crio-<id>[.scope]`, and CRI-O's monitor `crio-conmon-<id>[.scope]`.
    CriO,
    /// `docker-<id>.scope` (dockershim / cri-dockerd with the systemd driver).
    Docker,
    /// Anything else, including the bare `<id>` directories the cgroupfs
    /// driver uses for containerd and Docker: the name does not say.
    Unknown,
}

/// The pod (and, below it, the container) a cgroup path belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod UID in its dashed lowercase form (8-4-4-4-12), whatever the
    /// driver wrote. Exception: a static pod's UID is the 32-hex config hash
    /// kubelet computed for it (no dashes); it is kept as that hash, which is
    /// what the mirror pod's `kubernetes.io/config.mirror` annotation holds
    /// (the mirror pod's own `metadata.uid` is a different, API-server UID).
    pub pod_uid: String,
    /// The QoS class the path places the pod in.
    pub qos: QosClass,
    /// The container id, lowercase hex without the runtime prefix; `None` for
    /// the pod-level cgroup, or for a container cgroup whose name holds no id.
    pub container_id: Option<String>,
    /// The runtime that named the container cgroup; `None` for the pod-level
    /// cgroup (no container segment).
    pub runtime: Option<Runtime>,
    /// The path up to and including the pod segment, normalised: one leading
    /// `/`, no empty segments, no trailing `/`. For the `slice:prefix:id`
    /// shape it ends at the `.slice` part of the segment, a key shared by
    /// the pod's containers that is not itself a directory.
    pub pod_path: String,
}

/// What a cgroup path is, as far as Kubernetes is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseOutcome {
    /// Not a pod or container cgroup: outside kubepods, or the kubepods root
    /// or a QoS level (ancestors of pods, not pods).
    NotPod,
    /// A pod-level cgroup or a cgroup inside one.
    Pod(PodCgroup),
    /// Under kubepods but not in a shape kubelet or a runtime creates; the
    /// reason names the segment and what is wrong with it.
    Malformed(String),
}

/// Parses a cgroup v2 path into pod and container identity.
///
/// Accepts the path with or without the `0::` prefix of `/proc/<pid>/cgroup`,
/// and ignores empty segments and a trailing newline.
pub fn parse(path: &str) -> ParseOutcome {
    match parse_segments(&segments(path)) {
        Ok(Some(pod)) => ParseOutcome::Pod(pod),
        Ok(None) => ParseOutcome::NotPod,
        Err(reason) => ParseOutcome::Malformed(reason),
    }
}

/// "kubepods" appears as a segment prefix: the path is a pod cgroup or an
/// ancestor of pod cgroups.
///
/// True exactly when some segment starts with `kubepods` or is a systemd
/// slice one of whose dash-separated levels is `kubepods` (kubelet's
/// `--cgroup-root` gives `kubelet-kubepods.slice`). Every path [`parse`] does
/// not call [`ParseOutcome::NotPod`] passes, and so do the kubepods root and
/// the QoS levels; `mykubepods` does not.
pub fn is_under_kubepods(path: &str) -> bool {
    segments(path).iter().any(|s| is_kubepods_segment(s))
}

/// The non-empty segments of a path.
fn segments(path: &str) -> Vec<&str> {
    // Callers may hand over the whole /proc/<pid>/cgroup line; a real path
    // starts with '/', so a leading "0::" can only be that line's prefix.
    let path = path.strip_prefix("0::").unwrap_or(path);
    let path = path.trim_end_matches(['\n', '\r']);
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Whether a segment marks the kubepods subtree (see [`is_under_kubepods`]).
fn is_kubepods_segment(segment: &str) -> bool {
    // Matching any `kubepods*` segment, not only the shapes parse accepts,
    // keeps this as wide as the fail-closed check it backs: an odd name under
    // kubelet's tree is reported Malformed, never silently treated as host.
    segment.starts_with("kubepods") || systemd_root(split_colon(segment).0).is_some()
}

/// Where a path stands while walking down from the kubepods root.
enum Level {
    /// At the kubepods root.
    Root,
    /// At a QoS level.
    Qos(QosClass),
    /// At the pod cgroup: its QoS class and normalised UID.
    Pod(QosClass, String),
}

/// How the cgroups below the kubepods root are named.
enum Layout {
    /// Plain directories: `kubepods/burstable/pod<uid>`.
    Cgroupfs,
    /// systemd slices; the stem (name without `.slice`) of the deepest slice
    /// so far, which every child slice's name must extend with `-<level>`.
    Systemd(String),
}

fn parse_segments(segs: &[&str]) -> Result<Option<PodCgroup>, String> {
    let Some(root) = segs.iter().position(|s| is_kubepods_segment(s)) else {
        return Ok(None);
    };
    let mut layout = Layout::Cgroupfs;
    let mut level = Level::Root;
    for (i, &seg) in segs.iter().enumerate().skip(root) {
        if let Level::Pod(qos, uid) = level {
            // The segment right below the pod is the container; anything
            // deeper (systemd in a container, a nested runtime) is the
            // container's own business and does not change who it is.
            let (runtime, container_id) =
                parse_container(seg).map_err(|e| format!("segment {seg:?}: {e}"))?;
            return Ok(Some(PodCgroup {
                pod_uid: uid,
                qos,
                container_id,
                runtime: Some(runtime),
                pod_path: join(&segs[..i]),
            }));
        }
        let (slice, colon) = split_colon(seg);
        level = if i == root {
            if seg == "kubepods" {
                Level::Root
            } else if let Some((stem, rest)) = systemd_root(slice) {
                layout = Layout::Systemd(stem.to_string());
                match rest {
                    None => Ok(Level::Root),
                    Some(rest) => descend(Level::Root, rest, true),
                }
                .map_err(|e| format!("segment {seg:?}: {e}"))?
            } else {
                return Err(format!(
                    "segment {seg:?} starts with \"kubepods\" but is neither the cgroupfs \
                     \"kubepods\" directory nor a kubepods systemd slice"
                ));
            }
        } else {
            match &mut layout {
                Layout::Cgroupfs => {
                    descend(level, seg, false).map_err(|e| format!("segment {seg:?}: {e}"))?
                }
                Layout::Systemd(parent) => {
                    let rest = slice
                        .strip_suffix(".slice")
                        .and_then(|stem| stem.strip_prefix(parent.as_str()))
                        .and_then(|rest| rest.strip_prefix('-'))
                        .ok_or_else(|| {
                            format!(
                                "segment {seg:?} under {parent}.slice is not one of its \
                                 {parent}-<level>.slice children"
                            )
                        })?;
                    let next =
                        descend(level, rest, true).map_err(|e| format!("segment {seg:?}: {e}"))?;
                    *parent = format!("{parent}-{rest}");
                    next
                }
            }
        };
        if let Some((prefix, id)) = colon {
            // `<pod slice>:<runtime prefix>:<id>`: the pod and its container
            // in one segment, so the pod must be complete at this point.
            let Level::Pod(qos, uid) = level else {
                return Err(format!(
                    "segment {seg:?} attaches a container to {slice:?}, which is not a pod slice"
                ));
            };
            let (runtime, container_id) = parse_container(&format!("{prefix}-{id}"))
                .map_err(|e| format!("segment {seg:?}: {e}"))?;
            let mut pod_path = join(&segs[..i]);
            if pod_path != "/" {
                pod_path.push('/');
            }
            pod_path.push_str(slice);
            return Ok(Some(PodCgroup {
                pod_uid: uid,
                qos,
                container_id,
                runtime: Some(runtime),
                pod_path,
            }));
        }
    }
    Ok(match level {
        Level::Pod(qos, uid) => Some(PodCgroup {
            pod_uid: uid,
            qos,
            container_id: None,
            runtime: None,
            pod_path: join(segs),
        }),
        // The kubepods root or a QoS level: an ancestor of pods.
        Level::Root | Level::Qos(_) => None,
    })
}

/// `/a/b/c` from `["a", "b", "c"]`.
fn join(segs: &[&str]) -> String {
    format!("/{}", segs.join("/"))
}

/// Splits runc's systemd `slice:prefix:id` cgroup name into the slice and
/// `(prefix, id)`; any other segment is returned whole.
fn split_colon(seg: &str) -> (&str, Option<(&str, &str)>) {
    let mut parts = seg.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(slice), Some(prefix), Some(id)) if slice.ends_with(".slice") => {
            (slice, Some((prefix, id)))
        }
        _ => (seg, None),
    }
}

/// For a systemd slice with a `kubepods` level, the stem up to and including
/// that level and what follows it in the same name (`kubelet-kubepods` and
/// `burstable` for `kubelet-kubepods-burstable.slice`).
fn systemd_root(slice: &str) -> Option<(&str, Option<&str>)> {
    let stem = slice.strip_suffix(".slice")?;
    let mut start = 0;
    for level in stem.split('-') {
        let end = start + level.len();
        if level == "kubepods" {
            // `get` rather than indexing: past the end means no rest.
            return Some((stem.get(..end)?, stem.get(end + 1..)));
        }
        start = end + 1;
    }
    None
}

/// Goes down from `level` by the name `rest` (one cgroupfs directory, or the
/// part of a systemd slice name below the parent's, possibly several levels).
fn descend(level: Level, rest: &str, systemd: bool) -> Result<Level, String> {
    match level {
        Level::Root => {
            if let Some(uid) = rest.strip_prefix("pod") {
                return Ok(Level::Pod(QosClass::Guaranteed, normalise_uid(uid)?));
            }
            // A systemd name can skip levels (a cgroup namespace rooted at
            // kubepods.slice shows `kubepods-burstable-pod<uid>.slice` first).
            let (name, below) = match rest.split_once('-') {
                Some((name, below)) if systemd => (name, Some(below)),
                _ => (rest, None),
            };
            let qos = match name {
                "burstable" => QosClass::Burstable,
                "besteffort" => QosClass::BestEffort,
                _ => {
                    return Err(format!(
                        "expected a QoS level (burstable, besteffort) or pod<uid> below \
                         kubepods, found {rest:?}"
                    ));
                }
            };
            match below {
                None => Ok(Level::Qos(qos)),
                Some(below) => descend(Level::Qos(qos), below, systemd),
            }
        }
        Level::Qos(qos) => match rest.strip_prefix("pod") {
            Some(uid) => Ok(Level::Pod(qos, normalise_uid(uid)?)),
            None => Err(format!(
                "expected pod<uid> below the {qos:?} QoS level, found {rest:?}"
            )),
        },
        // The caller treats the segment below a pod as a container.
        Level::Pod(..) => Err(format!("unexpected {rest:?} below a pod")),
    }
}

/// A pod UID as written in a path (underscores for systemd) to the dashed
/// lowercase form.
fn normalise_uid(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("missing pod UID after \"pod\"".to_string());
    }
    let uid: String = raw
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let len = uid.chars().count();
    // kubelet gives a static pod (from a manifest file or URL) the 32-hex MD5
    // of its config as UID: on kubeadm control-plane nodes that is etcd and
    // the API server, so rejecting it would hide real pods.
    if len == 32 && uid.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(uid);
    }
    if len != 36 {
        return Err(format!(
            "pod UID {raw:?} has {len} characters, expected 36 (8-4-4-4-12) \
             or a 32-hex static pod hash"
        ));
    }
    for (i, c) in uid.chars().enumerate() {
        let dash = matches!(i, 8 | 13 | 18 | 23);
        if dash && c != '-' {
            return Err(format!(
                "pod UID {raw:?} has {c:?} at position {i}, expected a separator"
            ));
        }
        if !dash && !c.is_ascii_hexdigit() {
            return Err(format!(
                "pod UID {raw:?} has {c:?} at position {i}, expected a hex digit"
            ));
        }
    }
    Ok(uid)
}

/// Runtime and container id from the name of the cgroup right below a pod.
fn parse_container(seg: &str) -> Result<(Runtime, Option<String>), String> {
    let name = seg.strip_suffix(".scope").unwrap_or(seg);
    // crio-conmon- before crio-: the longer prefix must win.
    const KNOWN: [(&str, Runtime); 4] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-conmon-", Runtime::CriO),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
    ];
    for (prefix, runtime) in KNOWN {
        if let Some(id) = name.strip_prefix(prefix) {
            // These runtimes always write the full 64-hex id in lowercase;
            // anything else means the name is not what it claims to be.
            let ok = id.len() == 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(format!(
                    "{runtime:?} container id {id:?} is not 64 lowercase hex digits"
                ));
            }
            return Ok((runtime, Some(id.to_string())));
        }
    }
    // An unknown runtime: the id, if any, is the last dash-separated part
    // (`foo-<id>.scope`) or the whole name (cgroupfs `<id>`). Short ids are
    // allowed (docker's 12-hex form); a hex name of another length is a
    // truncated or padded id, not a non-id name, so it is Malformed.
    let candidate = name.rsplit('-').next().unwrap_or(name);
    if candidate.is_empty() || !candidate.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok((Runtime::Unknown, None));
    }
    if !(12..=64).contains(&candidate.len()) {
        return Err(format!(
            "container id {candidate:?} has {} hex digits, expected 12 to 64",
            candidate.len()
        ));
    }
    Ok((Runtime::Unknown, Some(candidate.to_ascii_lowercase())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2ca4a155-3599-498d-bb9d-4446693fa3ea";
    const UID_SD: &str = "2ca4a155_3599_498d_bb9d_4446693fa3ea";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const STATIC: &str = "8daa50c3a64c9ff60bb9eab7b44b56fd";

    /// What a case expects; Malformed is matched by a substring of the
    /// reason so the test pins down which rule fired.
    enum Want {
        NotPod,
        Pod(PodCgroup),
        Malformed(&'static str),
    }

    fn pod(
        uid: &str,
        qos: QosClass,
        container: Option<(Runtime, Option<&str>)>,
        pod_path: &str,
    ) -> Want {
        Want::Pod(PodCgroup {
            pod_uid: uid.to_string(),
            qos,
            container_id: container.and_then(|(_, id)| id.map(str::to_string)),
            runtime: container.map(|(r, _)| r),
            pod_path: pod_path.to_string(),
        })
    }

    fn c(runtime: Runtime) -> Option<(Runtime, Option<&'static str>)> {
        Some((runtime, Some(CID)))
    }

    fn cases() -> Vec<(String, Want)> {
        use QosClass::*;
        use Runtime::*;
        let sd_burst = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SD}.slice"
        );
        let sd_best = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SD}.slice"
        );
        let sd_guar = format!("/kubepods.slice/kubepods-pod{UID_SD}.slice");
        let fs_burst = format!("/kubepods/burstable/pod{UID}");
        let fs_best = format!("/kubepods/besteffort/pod{UID}");
        let fs_guar = format!("/kubepods/pod{UID}");
        let kind = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod{UID_SD}.slice"
        );
        let k3s = "/system.slice/containerd.service";
        let docker = format!("/docker/{CID}");
        vec![
            // systemd driver, each runtime, each QoS class.
            (
                format!("{sd_burst}/cri-containerd-{CID}.scope"),
                pod(UID, Burstable, c(Containerd), &sd_burst),
            ),
            (
                format!("{sd_burst}/crio-{CID}.scope"),
                pod(UID, Burstable, c(CriO), &sd_burst),
            ),
            (
                format!("{sd_burst}/docker-{CID}.scope"),
                pod(UID, Burstable, c(Docker), &sd_burst),
            ),
            (
                format!("{sd_burst}/crio-conmon-{CID}.scope"),
                pod(UID, Burstable, c(CriO), &sd_burst),
            ),
            (
                format!("{sd_best}/cri-containerd-{CID}.scope"),
                pod(UID, BestEffort, c(Containerd), &sd_best),
            ),
            (
                format!("{sd_best}/crio-{CID}.scope"),
                pod(UID, BestEffort, c(CriO), &sd_best),
            ),
            (
                format!("{sd_guar}/cri-containerd-{CID}.scope"),
                pod(UID, Guaranteed, c(Containerd), &sd_guar),
            ),
            (
                format!("{sd_guar}/docker-{CID}.scope"),
                pod(UID, Guaranteed, c(Docker), &sd_guar),
            ),
            // systemd pod level.
            (sd_burst.clone(), pod(UID, Burstable, None, &sd_burst)),
            (sd_best.clone(), pod(UID, BestEffort, None, &sd_best)),
            (sd_guar.clone(), pod(UID, Guaranteed, None, &sd_guar)),
            // cgroupfs driver: bare ids say nothing of the runtime; CRI-O
            // keeps its prefix without `.scope`.
            (
                format!("{fs_burst}/{CID}"),
                pod(UID, Burstable, c(Unknown), &fs_burst),
            ),
            (
                format!("{fs_best}/{CID}"),
                pod(UID, BestEffort, c(Unknown), &fs_best),
            ),
            (
                format!("{fs_guar}/{CID}"),
                pod(UID, Guaranteed, c(Unknown), &fs_guar),
            ),
            (
                format!("{fs_burst}/crio-{CID}"),
                pod(UID, Burstable, c(CriO), &fs_burst),
            ),
            (
                format!("{fs_best}/crio-conmon-{CID}"),
                pod(UID, BestEffort, c(CriO), &fs_best),
            ),
            (fs_burst.clone(), pod(UID, Burstable, None, &fs_burst)),
            (fs_best.clone(), pod(UID, BestEffort, None, &fs_best)),
            (fs_guar.clone(), pod(UID, Guaranteed, None, &fs_guar)),
            // Unknown runtimes.
            (
                format!("{sd_burst}/foo-{CID}.scope"),
                pod(UID, Burstable, c(Unknown), &sd_burst),
            ),
            (
                format!("{sd_guar}/{CID}"),
                pod(UID, Guaranteed, c(Unknown), &sd_guar),
            ),
            (
                format!("{fs_burst}/0123456789AB"),
                pod(
                    UID,
                    Burstable,
                    Some((Unknown, Some("0123456789ab"))),
                    &fs_burst,
                ),
            ),
            (
                format!("{sd_best}/sandbox.scope"),
                pod(UID, BestEffort, Some((Unknown, None)), &sd_best),
            ),
            // Deeper segments stay with the container.
            (
                format!("{sd_burst}/cri-containerd-{CID}.scope/init.scope"),
                pod(UID, Burstable, c(Containerd), &sd_burst),
            ),
            (
                format!("{fs_guar}/{CID}/system.slice/kubepods.slice/x"),
                pod(UID, Guaranteed, c(Unknown), &fs_guar),
            ),
            // Nested roots.
            (
                format!("{kind}/cri-containerd-{CID}.scope"),
                pod(UID, BestEffort, c(Containerd), &kind),
            ),
            (
                format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_SD}.slice"),
                pod(
                    UID,
                    Guaranteed,
                    None,
                    &format!(
                        "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_SD}.slice"
                    ),
                ),
            ),
            (
                format!("{docker}{fs_burst}/{CID}"),
                pod(UID, Burstable, c(Unknown), &format!("{docker}{fs_burst}")),
            ),
            (
                format!("{docker}{sd_best}/crio-{CID}.scope"),
                pod(UID, BestEffort, c(CriO), &format!("{docker}{sd_best}")),
            ),
            (
                format!("{k3s}/kubepods-besteffort-pod{UID_SD}.slice:cri-containerd:{CID}"),
                pod(
                    UID,
                    BestEffort,
                    c(Containerd),
                    &format!("{k3s}/kubepods-besteffort-pod{UID_SD}.slice"),
                ),
            ),
            (
                format!("/kubepods-pod{UID_SD}.slice:crio:{CID}"),
                pod(
                    UID,
                    Guaranteed,
                    c(CriO),
                    &format!("/kubepods-pod{UID_SD}.slice"),
                ),
            ),
            (
                format!("{sd_best}:docker:{CID}"),
                pod(UID, BestEffort, c(Docker), &sd_best),
            ),
            // Tolerance: "0::", doubled and trailing slashes, a newline,
            // an upper-case UID.
            (
                format!("0::{sd_burst}/cri-containerd-{CID}.scope\n"),
                pod(UID, Burstable, c(Containerd), &sd_burst),
            ),
            (
                format!("//kubepods//burstable/pod{UID}//{CID}/"),
                pod(UID, Burstable, c(Unknown), &fs_burst),
            ),
            // pod_path keeps the directory's real name; only the UID is
            // normalised.
            (
                format!("/kubepods/pod{}/", UID.to_ascii_uppercase()),
                pod(
                    UID,
                    Guaranteed,
                    None,
                    &format!("/kubepods/pod{}", UID.to_ascii_uppercase()),
                ),
            ),
            // Static pod: kubelet's 32-hex config hash.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC}.slice/cri-containerd-{CID}.scope"
                ),
                pod(
                    STATIC,
                    Burstable,
                    c(Containerd),
                    &format!(
                        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC}.slice"
                    ),
                ),
            ),
            // Ancestors of pods.
            ("/kubepods.slice".into(), Want::NotPod),
            (
                "/kubepods.slice/kubepods-burstable.slice".into(),
                Want::NotPod,
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice/".into(),
                Want::NotPod,
            ),
            ("/kubepods".into(), Want::NotPod),
            ("/kubepods/burstable".into(), Want::NotPod),
            ("/kubepods/besteffort".into(), Want::NotPod),
            ("/kubelet.slice/kubelet-kubepods.slice".into(), Want::NotPod),
            (format!("{docker}/kubepods"), Want::NotPod),
            // Not Kubernetes.
            ("/system.slice/nginx.service".into(), Want::NotPod),
            (
                "/user.slice/user-1000.slice/session-2.scope".into(),
                Want::NotPod,
            ),
            ("/".into(), Want::NotPod),
            ("".into(), Want::NotPod),
            ("/foo/mykubepods".into(), Want::NotPod),
            ("/foo/mykubepods/pod1/x".into(), Want::NotPod),
            ("/system.slice/my-kubepodsx.slice".into(), Want::NotPod),
            (
                format!("/system.slice/cri-containerd-{CID}.scope"),
                Want::NotPod,
            ),
            // Malformed UIDs.
            (
                "/kubepods/burstable/pod2ca4a155-3599-498d-bb9d-4446693fa3e".into(),
                Want::Malformed("has 35 characters, expected 36"),
            ),
            (
                "/kubepods.slice/kubepods-pod2ca4a155_3599_498d_bb9d_4446693fa3eaa.slice".into(),
                Want::Malformed("has 37 characters, expected 36"),
            ),
            (
                "/kubepods/pod2ca4a155-3599-498d-bb9d-4446693fa3eg".into(),
                Want::Malformed("'g' at position 35, expected a hex digit"),
            ),
            (
                "/kubepods/pod2ca4a1553-599-498d-bb9d-4446693fa3ea".into(),
                Want::Malformed("'3' at position 8, expected a separator"),
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod.slice".into(),
                Want::Malformed("missing pod UID"),
            ),
            (
                "/kubepods/besteffort/pod".into(),
                Want::Malformed("missing pod UID"),
            ),
            (
                format!("/kubepods/pod{}/x", "é".repeat(36)),
                Want::Malformed("expected a hex digit"),
            ),
            // Malformed container ids.
            (
                format!("{sd_burst}/cri-containerd-{}.scope", &CID[..63]),
                Want::Malformed("Containerd container id"),
            ),
            (
                format!("{sd_burst}/crio-{}.scope", CID.to_ascii_uppercase()),
                Want::Malformed("CriO container id"),
            ),
            (
                format!("{sd_burst}/docker-{}z.scope", &CID[..63]),
                Want::Malformed("Docker container id"),
            ),
            (
                format!("{sd_burst}/cri-containerd-.scope"),
                Want::Malformed("not 64 lowercase hex"),
            ),
            (
                format!("{fs_burst}/{CID}0"),
                Want::Malformed("has 65 hex digits, expected 12 to 64"),
            ),
            (
                format!("{fs_burst}/abc"),
                Want::Malformed("has 3 hex digits"),
            ),
            (
                format!("{k3s}/kubepods-besteffort-pod{UID_SD}.slice:cri-containerd:xyz"),
                Want::Malformed("Containerd container id \"xyz\""),
            ),
            // Malformed structure under kubepods.
            (
                "/kubepods/guaranteed/x".into(),
                Want::Malformed("expected a QoS level"),
            ),
            (
                "/kubepods/burstable/besteffort".into(),
                Want::Malformed("expected pod<uid> below the Burstable QoS level"),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_SD}.slice"
                ),
                Want::Malformed("is not one of its kubepods-burstable-<level>.slice children"),
            ),
            (
                format!("/kubepods.slice/cri-containerd-{CID}.scope"),
                Want::Malformed("is not one of its kubepods-<level>.slice children"),
            ),
            (
                format!("{k3s}/kubepods-besteffort.slice:cri-containerd:{CID}"),
                Want::Malformed("which is not a pod slice"),
            ),
            (
                "/kubepods-foo".into(),
                Want::Malformed("neither the cgroupfs"),
            ),
            (
                "/kubepodsx/pod1".into(),
                Want::Malformed("neither the cgroupfs"),
            ),
        ]
    }

    #[test]
    fn parse_table() {
        let cases = cases();
        assert!(cases.len() >= 40, "only {} cases", cases.len());
        let mut failures = Vec::new();
        for (path, want) in &cases {
            let got = parse(path);
            let ok = match (want, &got) {
                (Want::NotPod, ParseOutcome::NotPod) => true,
                (Want::Pod(w), ParseOutcome::Pod(g)) => w == g,
                (Want::Malformed(needle), ParseOutcome::Malformed(reason)) => {
                    reason.contains(needle)
                }
                _ => false,
            };
            if !ok {
                let want = match want {
                    Want::NotPod => "NotPod".to_string(),
                    Want::Pod(p) => format!("{p:?}"),
                    Want::Malformed(n) => format!("Malformed(..{n}..)"),
                };
                failures.push(format!("{path:?}\n   got  {got:?}\n   want {want}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Anything parse recognises (a pod, or a malformed kubepods path) is
    /// under kubepods, so the fail-closed check never lets it through.
    #[test]
    fn parsed_paths_are_under_kubepods() {
        for (path, want) in cases() {
            if !matches!(want, Want::NotPod) {
                assert!(is_under_kubepods(&path), "{path:?}");
            }
        }
    }

    #[test]
    fn under_kubepods() {
        let yes = [
            "/kubepods",
            "/kubepods.slice",
            "/kubepods/burstable",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubepods-besteffort.slice/x",
            "/kubelet.slice/kubelet-kubepods.slice",
            "/docker/abc/kubepods/pod1",
            "0::/kubepods/besteffort/",
            "/kubepodsx",
        ];
        let no = [
            "",
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-2.scope",
            "/foo/mykubepods",
            "/foo/mykubepods.slice",
            "/kube/pods",
            "/system.slice/kubelet.service",
        ];
        for p in yes {
            assert!(is_under_kubepods(p), "{p:?} should be under kubepods");
        }
        for p in no {
            assert!(!is_under_kubepods(p), "{p:?} should not be under kubepods");
        }
    }
}
