//! Loads the embedded eBPF object, attaches its programs and pins links and
//! maps, or re-adopts what an earlier agent pinned.
//!
//! Re-adoption: maps are reused from their pins (policy, cgroup table,
//! counters and unread events survive a restart). For each program whose link
//! is already pinned, the new program is attached beside the old one, the new
//! link is pinned, and only then is the old link removed; so enforcement never
//! lapses during an upgrade and exactly one of our links per hook remains.

use std::fs::File;
use std::path::{Path, PathBuf};

use agent_common::{map_names, prog_names};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm};
use aya::{Btf, Ebpf, EbpfLoader};

use super::bpffs::{self, PinLayout};

/// The eBPF object built by agent/build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tiergate-ebpf"));

/// Errors loading or attaching the programs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("cannot pin link {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("cannot read kernel BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(#[from] aya::BtfError),
}

/// Options for [`load`].
pub struct LoadOptions<'a> {
    pub bpffs: &'a Path,
    pub cgroup_root: &'a Path,
    /// Size of the event ring buffer in bytes (power of two, page multiple).
    pub ring_bytes: u32,
}

/// The loaded object. Dropping it does not detach anything: links are pinned.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub layout: PinLayout,
    /// Whether the socket_create LSM hook is attached (all socket families
    /// are judged) or only the cgroup sock_create hook (IPv4/IPv6 sockets).
    pub lsm_attached: bool,
    /// Programs attached now, by name.
    pub attached: Vec<&'static str>,
}

/// bpf_link attachments to a cgroup are always multi-attach (other
/// programs at the same cgroup, e.g. a CNI's, keep running); the kernel
/// rejects explicit flags on link_create, so the mode here is the default.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

const SOCK_ADDR_HOOKS: [&str; 10] = [
    prog_names::CONNECT4,
    prog_names::CONNECT6,
    prog_names::SENDMSG4,
    prog_names::SENDMSG6,
    prog_names::RECVMSG4,
    prog_names::RECVMSG6,
    prog_names::GETPEERNAME4,
    prog_names::GETPEERNAME6,
    prog_names::BIND4,
    prog_names::BIND6,
];

/// Loads, attaches (or re-adopts) and pins everything.
pub fn load(opts: &LoadOptions<'_>) -> Result<Loaded, LoadError> {
    let layout = bpffs::prepare(opts.bpffs)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&layout.maps)
        .map_max_entries(map_names::EVENTS, opts.ring_bytes)
        .load(OBJECT)?;
    let cgroup = File::open(opts.cgroup_root).map_err(|source| LoadError::Cgroup {
        path: opts.cgroup_root.into(),
        source,
    })?;
    let mut attached = Vec::new();

    for name in SOCK_ADDR_HOOKS {
        attach_cgroup::<CgroupSockAddr>(&mut ebpf, name, &cgroup, &layout)?;
        attached.push(name);
    }
    attach_cgroup::<CgroupSock>(&mut ebpf, prog_names::SOCK_CREATE, &cgroup, &layout)?;
    attached.push(prog_names::SOCK_CREATE);

    // The LSM hook is a second line (non-IP families such as AF_PACKET); a
    // kernel that will not take it still gets full connect/sendmsg and
    // inet socket enforcement, so its absence is a warning, not a failure.
    let lsm_attached = if !bpf_lsm_active() {
        tracing::warn!(
            "the BPF LSM is not active (no \"bpf\" in /sys/kernel/security/lsm): raw, ping, \
             SCTP and other non-TCP/UDP inet sockets are still refused to enforced tiers, but \
             non-IP families such as AF_PACKET are not; boot with lsm=...,bpf to close that door"
        );
        false
    } else {
        match attach_lsm(&mut ebpf, &layout) {
            Ok(()) => {
                attached.push(prog_names::LSM_SOCKET_CREATE);
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %crate::error_chain(&e),
                    "cannot attach the socket_create LSM hook: non-IP socket families such as \
                     AF_PACKET are not refused to enforced tiers (inet sockets still are)"
                );
                false
            }
        }
    };

    Ok(Loaded {
        ebpf,
        layout,
        lsm_attached,
        attached,
    })
}

/// The cgroup program kinds we attach: load, attach to a cgroup, take the link.
trait CgroupProgram {
    fn load_attach(&mut self, cgroup: &File) -> Result<FdLink, aya::programs::ProgramError>;
}

macro_rules! cgroup_program {
    ($t:ty) => {
        impl CgroupProgram for $t {
            fn load_attach(
                &mut self,
                cgroup: &File,
            ) -> Result<FdLink, aya::programs::ProgramError> {
                self.load()?;
                let id = self.attach(cgroup, LINK_MODE)?;
                let link = self.take_link(id)?;
                // Links on kernels >= 5.7 are always bpf_links (FdLink).
                link.try_into()
                    .map_err(|e: aya::programs::links::LinkError| {
                        aya::programs::ProgramError::IOError(std::io::Error::other(e.to_string()))
                    })
            }
        }
    };
}
cgroup_program!(CgroupSockAddr);
cgroup_program!(CgroupSock);

/// Loads a cgroup program, attaches it at `cgroup` and pins its link.
fn attach_cgroup<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    layout: &PinLayout,
) -> Result<(), LoadError>
where
    T: CgroupProgram,
    for<'a> &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog: &mut T = program(ebpf, name)?;
    let link = prog
        .load_attach(cgroup)
        .map_err(|source| LoadError::Program { name, source })?;
    replace_pinned(&layout.links, name, link)
}

fn attach_lsm(ebpf: &mut Ebpf, layout: &PinLayout) -> Result<(), LoadError> {
    let name = prog_names::LSM_SOCKET_CREATE;
    let btf = Btf::from_sys_fs()?;
    let prog: &mut Lsm = program(ebpf, name)?;
    prog.load("socket_create", &btf)
        .map_err(|source| LoadError::Program { name, source })?;
    let id = prog
        .attach()
        .map_err(|source| LoadError::Program { name, source })?;
    let link: FdLink = prog
        .take_link(id)
        .map_err(|source| LoadError::Program { name, source })?
        .into();
    replace_pinned(&layout.links, name, link)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?;
    p.try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// Pins `link` as `dir/name`, detaching whatever link an earlier agent had
/// pinned there, after the new one is in place.
fn replace_pinned(dir: &Path, name: &str, link: FdLink) -> Result<(), LoadError> {
    let final_path = dir.join(name);
    // bpffs refuses names with a dot.
    let staging = dir.join(format!("{name}_new"));
    let _ = std::fs::remove_file(&staging);
    let pinned = link.pin(&staging).map_err(|e| LoadError::Pin {
        path: staging.clone(),
        detail: crate::error_chain(&e),
    })?;
    if final_path.exists() {
        match PinnedLink::from_pin(&final_path) {
            Ok(old) => {
                // Unpin and drop: the old link detaches now, the new one is live.
                drop(old.unpin());
            }
            Err(e) => {
                tracing::warn!(path = %final_path.display(), error = %e, "stale pin is not a link; removing it");
                let _ = std::fs::remove_file(&final_path);
            }
        }
    }
    std::fs::rename(&staging, &final_path).map_err(|e| LoadError::Pin {
        path: final_path.clone(),
        detail: e.to_string(),
    })?;
    // The pin keeps the link; our fd may go.
    drop(pinned);
    Ok(())
}

/// Whether the BPF LSM is in the kernel's active LSM list. Mounts securityfs
/// when it is not mounted yet (nothing else on a plain host may have).
pub fn bpf_lsm_active() -> bool {
    let list = Path::new("/sys/kernel/security/lsm");
    if !list.exists() {
        // SAFETY: static NUL-terminated strings.
        unsafe {
            libc::mount(
                c"securityfs".as_ptr(),
                c"/sys/kernel/security".as_ptr(),
                c"securityfs".as_ptr(),
                0,
                std::ptr::null(),
            );
        }
    }
    std::fs::read_to_string(list)
        .map(|s| s.trim().split(',').any(|m| m == "bpf"))
        .unwrap_or(false)
}
