//! The agent's view for `tiergate proxy`: the policy of each kernel
//! generation and which one is active, the enforced workloads (cgroup,
//! path, tier) and the grants in force. The agent rewrites it (temporary
//! file + rename, mode 0600) at every change; the proxy reads it at start
//! and whenever it changes, and keeps serving the last one it read while no
//! agent runs, as the kernel keeps enforcing the last state it was given.
//!
//! Policies travel as policy files (`policy::render`), and the proxy checks
//! that what it parsed has the version the agent enforces: a view it cannot
//! read exactly is refused whole, and the last good one stays.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agent_common::GENERATIONS;
use serde::{Deserialize, Serialize};

use super::wire::GrantWire;
use crate::events::ocsf_access::ElevationTag;
use crate::policy::{self, Policy};
use crate::state::{NodeState, PodState, WorkloadInfo};

/// The view's file name in `--proxy-dir`.
pub const VIEW_FILE: &str = "view.json";
/// The layout of the file.
pub const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct View {
    pub format: u32,
    pub active: u32,
    /// One per kernel generation (`null`: nothing loaded in it).
    pub generations: Vec<Option<ViewPolicy>>,
    pub workloads: Vec<ViewWorkload>,
    pub grants: Vec<ViewGrant>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ViewPolicy {
    pub version: String,
    /// The policy as a policy file.
    pub text: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ViewWorkload {
    pub cgroup: u64,
    pub path: String,
    pub tier: String,
    /// The pod's uid, when the cgroup is a pod's (`spec.dns.scope: pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ViewGrant {
    pub cgroup: u64,
    pub grant: GrantWire,
}

/// The agent's side: renders views and writes them.
pub struct Publisher {
    path: PathBuf,
    /// Rendered policies by version (a view is written at every change;
    /// policies change rarely).
    rendered: HashMap<String, Option<Arc<str>>>,
}

impl Publisher {
    /// Creates `dir` (0700) if needed.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        make_private_dir(dir)?;
        Ok(Self {
            path: dir.join(VIEW_FILE),
            rendered: HashMap::new(),
        })
    }

    /// The policy as a file the proxy reads back to the same version;
    /// `None` (logged once) if rendering loses something.
    fn render(&mut self, p: &Policy) -> Option<Arc<str>> {
        if let Some(r) = self.rendered.get(&p.version) {
            return r.clone();
        }
        let text = policy::render::to_yaml(p, &Default::default());
        let r = match policy::parse_str(&text, "view") {
            Ok(back) if back.version == p.version => Some(Arc::from(text)),
            Ok(back) => {
                tracing::error!(
                    version = %p.version,
                    rendered = %back.version,
                    "the proxy cannot be given this policy exactly (rendering changed it); its DNS and metadata requests are answered SERVFAIL/503 under it"
                );
                None
            }
            Err(e) => {
                tracing::error!(version = %p.version, error = %e, "the rendered policy does not parse; the proxy is not given it");
                None
            }
        };
        if self.rendered.len() > 16 {
            self.rendered.clear();
        }
        self.rendered.insert(p.version.clone(), r.clone());
        r
    }

    /// The view of `state` now.
    pub fn view(&mut self, state: &NodeState) -> View {
        let generations = (0..GENERATIONS as u32)
            .map(|g| {
                let p = state.policy(g)?;
                let text = self.render(&p)?;
                Some(ViewPolicy {
                    version: p.version.clone(),
                    text: text.to_string(),
                })
            })
            .collect();
        let mut workloads: Vec<ViewWorkload> = state
            .workloads()
            .into_iter()
            .filter(|(_, w)| w.enforced())
            .map(|(id, w)| ViewWorkload {
                cgroup: id,
                path: w.path.to_string(),
                tier: w.tier.clone(),
                pod_uid: w.pod.as_ref().map(|p| p.pod_uid.clone()),
            })
            .collect();
        workloads.sort_by_key(|w| w.cgroup);
        let grants = state
            .elevations()
            .into_iter()
            .map(|(cgroup, t)| ViewGrant {
                cgroup,
                grant: GrantWire::from(&*t),
            })
            .collect();
        View {
            format: FORMAT,
            active: state.active_generation(),
            generations,
            workloads,
            grants,
        }
    }

    /// Writes `view` in place of the last one (readers see one or the other).
    pub fn write(&self, view: &View) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        serde_json::to_writer(&mut f, view).map_err(std::io::Error::other)?;
        f.flush()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)
    }
}

/// Creates `dir` with mode 0700 (and its parents), or checks it is a
/// directory.
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

use std::os::unix::fs::DirBuilderExt as _;

/// Why a view was not taken (the last good one stays).
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a view: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path} has format {found}, this proxy reads format {FORMAT}: upgrade the agent and the proxy together"
    )]
    Format { path: PathBuf, found: u32 },
    #[error("{path}: generation {generation}: {detail}")]
    Policy {
        path: PathBuf,
        generation: usize,
        detail: String,
    },
}

/// The proxy's side: reads views into its node state.
#[derive(Default)]
pub struct Reader {
    /// Parsed policies by version.
    parsed: HashMap<String, Arc<Policy>>,
    /// (inode, modification time, length) of the file last taken: the
    /// agent renames a new file into place, so an unchanged stamp is the
    /// view already in force and is not read again.
    taken: Option<(u64, i64, i64, u64)>,
}

impl Reader {
    /// Reads the view at `path` and makes `state` what it says; on any
    /// error `state` is left as it was.
    pub fn apply(&mut self, path: &Path, state: &NodeState) -> Result<(), ViewError> {
        use std::os::unix::fs::MetadataExt as _;
        let read = |source| ViewError::Read {
            path: path.into(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        let stamp = (meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.len());
        if self.taken == Some(stamp) {
            return Ok(());
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let view: View = serde_json::from_slice(&bytes).map_err(|source| ViewError::Parse {
            path: path.into(),
            source,
        })?;
        if view.format != FORMAT {
            return Err(ViewError::Format {
                path: path.into(),
                found: view.format,
            });
        }
        let mut policies: [Option<Arc<Policy>>; GENERATIONS] = Default::default();
        for (g, vp) in view.generations.iter().enumerate().take(GENERATIONS) {
            let Some(vp) = vp else { continue };
            policies[g] = Some(self.policy(vp).map_err(|detail| ViewError::Policy {
                path: path.into(),
                generation: g,
                detail,
            })?);
        }
        let live: std::collections::HashSet<u64> =
            view.workloads.iter().map(|w| w.cgroup).collect();
        for (id, _) in state.workloads() {
            if !live.contains(&id) {
                state.remove_workload(id);
            }
        }
        for w in view.workloads {
            let same = state.workload(w.cgroup).is_some_and(|old| {
                *old.path == *w.path
                    && old.tier == w.tier
                    && old.pod.as_ref().map(|p| &p.pod_uid) == w.pod_uid.as_ref()
            });
            if !same {
                state.set_workload(
                    w.cgroup,
                    WorkloadInfo {
                        path: Arc::from(w.path),
                        // Only what the proxy uses: the pod, for its scope.
                        pod: w.pod_uid.map(|pod_uid| crate::policy::PodIdentity {
                            pod_uid,
                            ..Default::default()
                        }),
                        pod_state: PodState::None,
                        spiffe_id: None,
                        tier: w.tier,
                        binding: None,
                    },
                );
            }
        }
        state.set_elevations(
            view.grants
                .into_iter()
                .map(|g| (g.cgroup, Arc::new(ElevationTag::from(g.grant))))
                .collect(),
        );
        state.set_generations(policies, view.active);
        self.parsed.retain(|v, _| {
            (0..GENERATIONS as u32).any(|g| state.policy(g).is_some_and(|p| p.version == *v))
        });
        self.taken = Some(stamp);
        Ok(())
    }

    fn policy(&mut self, vp: &ViewPolicy) -> Result<Arc<Policy>, String> {
        if let Some(p) = self.parsed.get(&vp.version) {
            return Ok(p.clone());
        }
        let p = policy::parse_str(&vp.text, "view").map_err(|e| e.to_string())?;
        if p.version != vp.version {
            return Err(format!(
                "the policy reads as {} but the agent enforces {}",
                p.version, vp.version
            ));
        }
        let p = Arc::new(p);
        self.parsed.insert(vp.version.clone(), p.clone());
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: p
spec:
  trustDomain: example.org
  mode: enforce
  defaultTier: t0
  dns:
    resolvers: [\"10.53.0.53\"]
  tiers:
    - name: t0
      egress:
        - fqdns: [\"api.example.test\"]
          ports: [\"443\"]
  bindings: []
";

    fn workload(tier: &str) -> WorkloadInfo {
        WorkloadInfo {
            path: Arc::from("/a"),
            pod: None,
            pod_state: PodState::None,
            spiffe_id: None,
            tier: tier.into(),
            binding: None,
        }
    }

    /// A fresh scratch directory for one test.
    fn scratch(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tiergate-view-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_view_carries_policies_workloads_and_grants_across() {
        let dir = scratch("across");
        let agent = NodeState::default();
        let p = Arc::new(policy::parse_str(POLICY, "p").unwrap());
        agent.activate(1, p.clone());
        agent.set_workload(7, workload("t0"));
        agent.set_workload(8, workload("host"));
        let mut publisher = Publisher::new(&dir.join("proxy")).unwrap();
        let view = publisher.view(&agent);
        publisher.write(&view).unwrap();

        let proxy = NodeState::default();
        proxy.set_workload(99, workload("t0"));
        let mut reader = Reader::default();
        reader
            .apply(&dir.join("proxy").join(VIEW_FILE), &proxy)
            .unwrap();
        assert_eq!(proxy.active_generation(), 1);
        assert_eq!(proxy.active_policy().unwrap().version, p.version);
        assert!(proxy.workload(7).is_some());
        assert!(
            proxy.workload(8).is_none(),
            "host workloads are not published"
        );
        assert!(proxy.workload(99).is_none(), "gone workloads are removed");
    }

    #[test]
    fn a_bad_view_changes_nothing() {
        let dir = scratch("bad");
        let path = dir.join(VIEW_FILE);
        let proxy = NodeState::default();
        proxy.set_workload(5, workload("t0"));
        let mut reader = Reader::default();
        std::fs::write(&path, "{\"format\":1,").unwrap();
        assert!(matches!(
            reader.apply(&path, &proxy),
            Err(ViewError::Parse { .. })
        ));
        std::fs::write(
            &path,
            serde_json::json!({
                "format": 1, "active": 0, "workloads": [], "grants": [],
                "generations": [{"version": "sha256:00", "text": POLICY}, null],
            })
            .to_string(),
        )
        .unwrap();
        let e = reader.apply(&path, &proxy).unwrap_err().to_string();
        assert!(e.contains("the agent enforces sha256:00"), "{e}");
        std::fs::write(
            &path,
            "{\"format\":9,\"active\":0,\"generations\":[],\"workloads\":[],\"grants\":[]}",
        )
        .unwrap();
        assert!(matches!(
            reader.apply(&path, &proxy),
            Err(ViewError::Format { .. })
        ));
        assert!(proxy.workload(5).is_some(), "the last good state stays");
        // A good view is taken; the same file again is not read again (a
        // workload set meanwhile stays), a new file renamed over it is.
        std::fs::write(
            &path,
            "{\"format\":1,\"active\":0,\"generations\":[],\"workloads\":[],\"grants\":[]}",
        )
        .unwrap();
        reader.apply(&path, &proxy).unwrap();
        assert!(proxy.workload(5).is_none());
        proxy.set_workload(6, workload("t0"));
        reader.apply(&path, &proxy).unwrap();
        assert!(
            proxy.workload(6).is_some(),
            "an unchanged view is not re-applied"
        );
        let tmp = dir.join("new.json");
        std::fs::write(
            &tmp,
            "{\"format\":1,\"active\":1,\"generations\":[],\"workloads\":[],\"grants\":[]}",
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        reader.apply(&path, &proxy).unwrap();
        assert!(proxy.workload(6).is_none());
        assert_eq!(proxy.active_generation(), 1);
    }
}
