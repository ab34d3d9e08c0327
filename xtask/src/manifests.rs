//! `cargo xtask manifests` (also run by `cargo xtask test`): renders every
//! kustomize directory under `deploy/kubernetes/` and checks what it renders.
//!
//! - `base/` and every `overlays/*` render with the pinned kustomize and,
//!   where there is one, the machine's kubectl, identically; every component
//!   is used by an overlay.
//! - Every rendered object validates against the Kubernetes JSON schemas of
//!   [`K8S_VERSION`] with `kubernetes-validate --strict` (unknown fields are
//!   errors). Objects of CRDs (cert-manager, Prometheus Operator, SPIRE) have
//!   no schema there: each is listed as skipped, with that reason, and the
//!   fields tiergate depends on are checked below instead.
//! - The policy in the `tiergate-policy` ConfigMap passes `tiergate policy
//!   check` (the built binary) and starts in audit mode.
//! - Each tiergate container's file flags (`--policy`, `--tls-*`, `--spool`)
//!   point into a mounted volume (the spool a writable hostPath), and the
//!   agent's probes use its `--admin-addr` port.
//! - The SVIDs match the flags: the agent's certificate (cert-manager
//!   `Certificate` of its TLS Secret, or the SPIRE `ClusterSPIFFEID`
//!   template) carries exactly one SPIFFE ID, allowed by the collector's
//!   `--allow-spiffe`; the collector's is the agent's `--collector-spiffe-id`.
//!
//! The renderers and the validator are pinned tools (`tools.rs`), installed
//! once by the set-up.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::tools::{self, Renderer, venv};
use crate::{output, root, say};

/// The Kubernetes release whose schemas the objects must satisfy.
const K8S_VERSION: &str = "1.37.0";
/// API groups of CRD-based objects: no schema in kubernetes-validate.
const CRD_GROUPS: &[&str] = &[
    "cert-manager.io",
    "monitoring.coreos.com",
    "spire.spiffe.io",
];

/// The objects of a YAML stream, through the virtualenv's PyYAML.
fn yaml_to_json(file: &Path) -> Result<Vec<Value>> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  json.dump(docs, sys.stdout)\n";
    let out = output(
        Command::new(venv().join("bin/python"))
            .args(["-c", script])
            .arg(file),
    )
    .with_context(|| format!("cannot parse {} as YAML", file.display()))?;
    Ok(serde_json::from_str(&out)?)
}

/// `cargo xtask manifests`: every check above, against the built `tiergate`.
pub fn check(tiergate: &Path) -> Result<()> {
    tools::install()?;
    let renderers = Renderer::all()?;
    say(&format!(
        "manifests: rendering with {}",
        renderers
            .iter()
            .map(Renderer::name)
            .collect::<Vec<_>>()
            .join(" and ")
    ));
    let k8s = root().join("deploy/kubernetes");
    let out_dir = target_dir().join("manifests");
    std::fs::create_dir_all(&out_dir)?;

    let mut dirs = vec![k8s.join("base")];
    dirs.extend(subdirs(&k8s.join("overlays"))?);
    let overlay_texts: Vec<String> = dirs
        .iter()
        .map(|d| std::fs::read_to_string(d.join("kustomization.yaml")).unwrap_or_default())
        .collect();
    for component in subdirs(&k8s.join("components"))? {
        let name = component
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if !overlay_texts
            .iter()
            .any(|t| t.contains(&format!("components/{name}")))
        {
            bail!("component {name} is used by no overlay, so nothing renders or checks it");
        }
    }

    let mut problems = Vec::new();
    for dir in &dirs {
        let name = dir
            .strip_prefix(&k8s)
            .unwrap_or(dir)
            .to_string_lossy()
            .replace('/', "-");
        let rendered = tools::render(&renderers, dir)?;
        let file = out_dir.join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered)?;
        let objects = yaml_to_json(&file)?;
        let (validated, skipped) = validate(&file, &objects, &mut problems)?;
        let before = problems.len();
        let mut p = |m: String| problems.push(format!("{name}: {m}"));
        check_policy(&objects, tiergate, &out_dir, &name, &mut p)?;
        check_mounts(&objects, &mut p);
        check_proxies(&objects, &mut p);
        check_svids(&objects, &mut p);
        check_monitors(&objects, &mut p);
        say(&format!(
            "manifests {name}: {} objects, {validated} valid against Kubernetes {K8S_VERSION} \
             (strict), {} CRD objects skipped by the schema check{}",
            objects.len(),
            skipped.len(),
            if problems.len() == before {
                ", tiergate's own checks passed"
            } else {
                ""
            }
        ));
        for (s, checked) in skipped {
            say(&format!(
                "  skipped {s}: kubernetes-validate has no schema for CRD objects; {checked}"
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the Kubernetes manifests have problems:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    v.sort();
    Ok(v)
}

fn kind_name(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn is_crd_object(o: &Value) -> bool {
    let api = o["apiVersion"].as_str().unwrap_or("");
    CRD_GROUPS.iter().any(|g| api.starts_with(&format!("{g}/")))
}

/// kubernetes-validate --strict on the rendered file; returns the number
/// of objects it validated and the CRD objects it could not.
fn validate(
    file: &Path,
    objects: &[Value],
    problems: &mut Vec<String>,
) -> Result<(usize, Vec<(String, &'static str)>)> {
    let out = Command::new(venv().join("bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", K8S_VERSION])
        .arg(file)
        .output()
        .context("cannot run kubernetes-validate")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut passed = 0;
    let mut unknown = 0;
    for line in text.lines() {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            passed += 1;
        } else if line.starts_with("WARN ") && line.contains("Couldn't find schema for kind") {
            unknown += 1;
            // "... for kind K with api version G/V for kubernetes version X"
            let api = line
                .split(" with api version ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("");
            if !CRD_GROUPS.iter().any(|g| api.starts_with(&format!("{g}/"))) {
                problems.push(format!("{}: {line}", file.display()));
            }
        } else if !line.trim().is_empty() {
            problems.push(format!("{}: {line}", file.display()));
        }
    }
    if !out.status.success() && problems.is_empty() {
        problems.push(format!(
            "kubernetes-validate failed on {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let skipped: Vec<(String, &str)> = objects
        .iter()
        .filter(|o| is_crd_object(o))
        .map(|o| {
            let checked = match o["kind"].as_str().unwrap_or("") {
                "Certificate" if o["spec"]["uris"].is_array() => {
                    "its SPIFFE URI SAN is checked here against the flags"
                }
                "ClusterSPIFFEID" => "its SPIFFE ID template is checked here against the flags",
                "PodMonitor" | "ServiceMonitor" => "its scrape port is checked here",
                "PrometheusRule" => {
                    "the metric names of its expressions are checked by tests/tests/observability.rs"
                }
                _ => "not checked here (the API server validates it against its CRD when applied)",
            };
            (kind_name(o), checked)
        })
        .collect();
    if passed + unknown != objects.len() || unknown != skipped.len() {
        problems.push(format!(
            "{}: {} objects, but kubernetes-validate passed {passed} and found no schema for {unknown}",
            file.display(),
            objects.len()
        ));
    }
    Ok((passed, skipped))
}

/// The policy ConfigMap passes `tiergate policy check` and starts in audit mode.
fn check_policy(
    objects: &[Value],
    tiergate: &Path,
    out_dir: &Path,
    name: &str,
    problem: &mut impl FnMut(String),
) -> Result<()> {
    let Some(cm) = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "tiergate-policy")
    else {
        problem("no ConfigMap tiergate-policy".into());
        return Ok(());
    };
    let Some(text) = cm["data"]["policy.yaml"].as_str() else {
        problem("ConfigMap tiergate-policy has no key policy.yaml".into());
        return Ok(());
    };
    let file = out_dir.join(format!("{name}-policy.yaml"));
    std::fs::write(&file, text)?;
    let out = Command::new(tiergate)
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .with_context(|| format!("cannot run {}", tiergate.display()))?;
    if !out.status.success() {
        problem(format!(
            "the policy in ConfigMap tiergate-policy fails `tiergate policy check`:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let policy = yaml_to_json(&file)?;
    if policy.first().map(|p| &p["spec"]["mode"]) != Some(&Value::from("audit")) {
        problem("the policy in ConfigMap tiergate-policy does not start in audit mode".into());
    }
    Ok(())
}

/// The containers running `tiergate` in a workload object.
fn tiergate_containers(o: &Value) -> Vec<&Value> {
    o["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            matches!(
                c["args"][0].as_str(),
                Some("agent") | Some("collector") | Some("proxy")
            )
        })
        .collect()
}

/// `--flag=value` or `--flag value` in a container's args.
fn flag<'a>(c: &'a Value, name: &str) -> Vec<&'a str> {
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut found = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            found.push(v);
        } else if *a == name
            && let Some(v) = args.get(i + 1)
        {
            found.push(*v);
        }
    }
    found
}

/// Every file flag points into a mounted volume; the spool into a writable
/// hostPath; the agent's probes at its admin port.
fn check_mounts(objects: &[Value], problem: &mut impl FnMut(String)) {
    for o in objects {
        let pod = &o["spec"]["template"]["spec"];
        for c in tiergate_containers(o) {
            let who = format!(
                "{} container {}",
                kind_name(o),
                c["name"].as_str().unwrap_or("?")
            );
            let mounts: Vec<&Value> = c["volumeMounts"].as_array().into_iter().flatten().collect();
            for f in [
                "--policy",
                "--tls-ca",
                "--tls-cert",
                "--tls-key",
                "--spool",
                "--proxy-dir",
            ] {
                for path in flag(c, f) {
                    let Some(m) = mounts.iter().find(|m| {
                        m["mountPath"]
                            .as_str()
                            .is_some_and(|mp| Path::new(path).starts_with(mp))
                    }) else {
                        problem(format!("{who}: {f}={path} is in no mounted volume"));
                        continue;
                    };
                    let why = match f {
                        "--spool" => "events outlive the pod",
                        "--proxy-dir" => "the agent and tiergate proxy share it",
                        _ => continue,
                    };
                    let vol = pod["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|v| v["name"] == m["name"]);
                    if m["readOnly"] == true || vol.is_none_or(|v| v["hostPath"].is_null()) {
                        problem(format!(
                            "{who}: {f}={path} must be a writable hostPath ({why})"
                        ));
                    }
                }
            }
            let default_port = match c["args"][0].as_str() {
                Some("agent") => Some(9464),
                Some("proxy") => Some(9465),
                _ => None,
            };
            if let Some(default_port) = default_port {
                let port = flag(c, "--admin-addr")
                    .first()
                    .and_then(|a| a.rsplit(':').next()?.parse::<u64>().ok())
                    .unwrap_or(default_port);
                for probe in ["readinessProbe", "livenessProbe"] {
                    if c[probe]["httpGet"]["port"].as_u64() != Some(port) {
                        problem(format!(
                            "{who}: {probe} is not on the --admin-addr port {port}"
                        ));
                    }
                }
            }
            if c["args"][0] == "agent"
                && flag(c, "--spool").is_empty()
                && !flag(c, "--collector").is_empty()
            {
                problem(format!(
                    "{who}: --collector without --spool (the default spool is on the read-only root)"
                ));
            }
        }
    }
}

/// The node path a container's `path` is, through its hostPath mounts.
fn node_path(o: &Value, c: &Value, path: &str) -> Option<String> {
    let m = c["volumeMounts"].as_array()?.iter().find(|m| {
        m["mountPath"]
            .as_str()
            .is_some_and(|mp| Path::new(path).starts_with(mp))
    })?;
    let vol = o["spec"]["template"]["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == m["name"])?;
    let host = vol["hostPath"]["path"].as_str()?;
    let rest = Path::new(path)
        .strip_prefix(m["mountPath"].as_str()?)
        .ok()?;
    // Components: `/a/b/` and `/a/b` are one node path.
    let joined: std::path::PathBuf = Path::new(host).join(rest).components().collect();
    Some(joined.display().to_string())
}

/// An agent with `--proxies=separate` has a `tiergate proxy` beside it on
/// the same node paths (the view and socket directory, the pinned maps),
/// and a proxy has such an agent.
fn check_proxies(objects: &[Value], problem: &mut impl FnMut(String)) {
    let shared = |o: &Value, c: &Value| {
        let dir = flag(c, "--proxy-dir")
            .first()
            .copied()
            .unwrap_or("/run/tiergate/proxy");
        let bpffs = flag(c, "--bpffs").first().copied().unwrap_or("/sys/fs/bpf");
        (node_path(o, c, dir), node_path(o, c, bpffs))
    };
    type Shared = (Option<String>, Option<String>);
    let of = |cmd: &str| -> Vec<(String, Shared)> {
        objects
            .iter()
            .flat_map(|o| {
                tiergate_containers(o)
                    .into_iter()
                    .filter(move |c| c["args"][0] == cmd)
                    .map(move |c| (kind_name(o), c, shared(o, c)))
            })
            .filter(|(_, c, _)| cmd != "agent" || flag(c, "--proxies").contains(&"separate"))
            .map(|(w, _, s)| (w, s))
            .collect()
    };
    let (agents, proxies) = (of("agent"), of("proxy"));
    for (who, s) in &agents {
        if !proxies
            .iter()
            .any(|(_, p)| p == s && s.0.is_some() && s.1.is_some())
        {
            problem(format!(
                "{who}: --proxies=separate, but no tiergate proxy shares its --proxy-dir and --bpffs node paths {s:?}"
            ));
        }
    }
    for (who, s) in &proxies {
        if !agents.iter().any(|(_, a)| a == s) {
            problem(format!(
                "{who}: tiergate proxy with no agent (--proxies=separate) on its --proxy-dir and --bpffs node paths {s:?}"
            ));
        }
    }
}

/// The PodMonitor and ServiceMonitor scrape ports the workloads name.
fn check_monitors(objects: &[Value], problem: &mut impl FnMut(String)) {
    for m in objects.iter().filter(|o| {
        o["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("monitoring.coreos.com/"))
    }) {
        let selector = &m["spec"]["selector"];
        let (targets, endpoints): (Vec<&Value>, &Value) = match m["kind"].as_str() {
            Some("PodMonitor") => (
                objects
                    .iter()
                    .filter(|o| selects(selector, &o["spec"]["template"]["metadata"]["labels"]))
                    .flat_map(|o| {
                        o["spec"]["template"]["spec"]["containers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                    })
                    .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                    .collect(),
                &m["spec"]["podMetricsEndpoints"],
            ),
            Some("ServiceMonitor") => (
                objects
                    .iter()
                    .filter(|o| {
                        o["kind"] == "Service" && selects(selector, &o["metadata"]["labels"])
                    })
                    .flat_map(|o| o["spec"]["ports"].as_array().into_iter().flatten())
                    .collect(),
                &m["spec"]["endpoints"],
            ),
            _ => continue,
        };
        for e in endpoints.as_array().into_iter().flatten() {
            if !targets.iter().any(|p| p["name"] == e["port"]) {
                problem(format!(
                    "{}: no port named {} on what it selects",
                    kind_name(m),
                    e["port"]
                ));
            }
        }
    }
}

/// Segment glob of `--allow-spiffe` (`*` one segment, `**` any depth).
fn spiffe_matches(pattern: &str, id: &str) -> bool {
    fn go(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = id.split('/').collect();
    go(&p, &s)
}

/// The SPIFFE ID each workload's SVID will carry, if the objects say.
fn svid_of(
    objects: &[Value],
    workload: &Value,
    problem: &mut impl FnMut(String),
) -> Option<String> {
    let pod = &workload["spec"]["template"]["spec"];
    let tls_volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "tls")?;
    if let Some(secret) = tls_volume["secret"]["secretName"].as_str() {
        let cert = objects
            .iter()
            .find(|o| o["kind"] == "Certificate" && o["spec"]["secretName"] == secret)?;
        let uris: Vec<&str> = cert["spec"]["uris"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if uris.len() != 1 || !uris[0].starts_with("spiffe://") {
            problem(format!(
                "{}: an SVID needs exactly one spiffe:// URI SAN, it has {uris:?}",
                kind_name(cert)
            ));
            return None;
        }
        return Some(uris[0].to_string());
    }
    // SPIRE: the ClusterSPIFFEID whose selectors take this pod.
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    let ns = workload["metadata"]["namespace"].as_str().unwrap_or("");
    let sa = pod["serviceAccountName"].as_str().unwrap_or("default");
    let entry = objects.iter().find(|o| {
        o["kind"] == "ClusterSPIFFEID"
            && selects(&o["spec"]["podSelector"], labels)
            && o["spec"]["namespaceSelector"]["matchLabels"]
                .as_object()
                .is_none_or(|m| {
                    m.iter()
                        .all(|(k, v)| k == "kubernetes.io/metadata.name" && v == ns)
                })
    })?;
    let template = entry["spec"]["spiffeIDTemplate"].as_str()?;
    Some(
        template
            .replace("{{ .PodMeta.Namespace }}", ns)
            .replace("{{ .PodSpec.ServiceAccountName }}", sa)
            // The trust domain is SPIRE's configuration; the flags name it.
            .replace("{{ .TrustDomain }}", "cluster.local"),
    )
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v))
}

/// The agent's SVID is allowed by the collector, the collector's is the one
/// the agent expects.
fn check_svids(objects: &[Value], problem: &mut impl FnMut(String)) {
    let find = |cmd: &str| {
        objects.iter().find_map(|o| {
            tiergate_containers(o)
                .into_iter()
                .find(|c| c["args"][0] == cmd)
                .map(|c| (o, c))
        })
    };
    let (Some((agent_obj, agent)), Some((coll_obj, collector))) =
        (find("agent"), find("collector"))
    else {
        problem("no agent DaemonSet or no collector Deployment".into());
        return;
    };
    let agent_id = svid_of(objects, agent_obj, problem);
    let collector_id = svid_of(objects, coll_obj, problem);
    if agent_id.is_none() && collector_id.is_none() {
        // The base: Secrets the operator makes; nothing to compare.
        return;
    }
    let (Some(agent_id), Some(collector_id)) = (agent_id, collector_id) else {
        problem("only one of the agent and the collector gets an SVID".into());
        return;
    };
    let allowed = flag(collector, "--allow-spiffe");
    if !allowed.iter().any(|p| spiffe_matches(p, &agent_id)) {
        problem(format!(
            "the agent's SVID {agent_id} is not allowed by the collector's --allow-spiffe {allowed:?}"
        ));
    }
    let expected = flag(agent, "--collector-spiffe-id");
    if !expected.iter().any(|p| spiffe_matches(p, &collector_id)) {
        problem(format!(
            "the collector's SVID {collector_id} is not the agent's --collector-spiffe-id {expected:?}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spiffe_globs() {
        let id = "spiffe://td/ns/tiergate-system/sa/tiergate";
        assert!(spiffe_matches(id, id));
        assert!(spiffe_matches("spiffe://td/ns/tiergate-system/sa/*", id));
        assert!(spiffe_matches("spiffe://td/**", id));
        assert!(!spiffe_matches("spiffe://td/ns/*/sa", id));
        assert!(!spiffe_matches("spiffe://other/**", id));
    }

    fn daemonset(args: &[&str], mounts: Value, volumes: Value) -> Value {
        json!({"kind": "DaemonSet", "metadata": {"name": "tiergate", "namespace": "ns"},
               "spec": {"template": {"metadata": {"labels": {"app": "tg"}},
                 "spec": {"serviceAccountName": "tiergate", "volumes": volumes,
                   "containers": [{"name": "agent", "args": args, "volumeMounts": mounts,
                     "readinessProbe": {"httpGet": {"port": 9464}},
                     "livenessProbe": {"httpGet": {"port": 9464}}}]}}}})
    }

    #[test]
    fn flags_must_point_into_mounts() {
        let ok = daemonset(
            &[
                "agent",
                "--policy=/etc/p/policy.yaml",
                "--collector",
                "https://c:1",
                "--spool=/var/spool",
            ],
            json!([{"name": "p", "mountPath": "/etc/p"}, {"name": "s", "mountPath": "/var/spool"}]),
            json!([{"name": "p", "configMap": {}}, {"name": "s", "hostPath": {"path": "/x"}}]),
        );
        let mut problems = Vec::new();
        check_mounts(&[ok], &mut |m| problems.push(m));
        assert!(problems.is_empty(), "{problems:?}");

        let bad = daemonset(
            &[
                "agent",
                "--policy",
                "/etc/q/policy.yaml",
                "--collector=https://c:1",
                "--admin-addr=0.0.0.0:1",
            ],
            json!([{"name": "p", "mountPath": "/etc/p"}]),
            json!([{"name": "p", "configMap": {}}]),
        );
        let mut problems = Vec::new();
        check_mounts(&[bad], &mut |m| problems.push(m));
        let all = problems.join("\n");
        assert!(
            all.contains("--policy=/etc/q/policy.yaml is in no mounted volume"),
            "{all}"
        );
        assert!(
            all.contains("readinessProbe is not on the --admin-addr port 1"),
            "{all}"
        );
        assert!(all.contains("--collector without --spool"), "{all}");

        let ro_spool = daemonset(
            &["agent", "--spool=/var/spool"],
            json!([{"name": "s", "mountPath": "/var/spool"}]),
            json!([{"name": "s", "emptyDir": {}}]),
        );
        let mut problems = Vec::new();
        check_mounts(&[ro_spool], &mut |m| problems.push(m));
        assert!(
            problems.join("").contains("writable hostPath"),
            "{problems:?}"
        );
    }

    #[test]
    fn separate_proxies_come_in_pairs() {
        let host = |dir: &str| {
            (
                json!([{"name": "d", "mountPath": "/run/p"}, {"name": "b", "mountPath": "/sys/fs/bpf"}]),
                json!([{"name": "d", "hostPath": {"path": dir}}, {"name": "b", "hostPath": {"path": "/sys/fs/bpf"}}]),
            )
        };
        let (m, v) = host("/run/tiergate/proxy");
        let agent = daemonset(
            &["agent", "--proxies=separate", "--proxy-dir=/run/p"],
            m.clone(),
            v.clone(),
        );
        let proxy = daemonset(&["proxy", "--proxy-dir=/run/p"], m, v);
        let mut problems = Vec::new();
        check_proxies(&[agent.clone(), proxy], &mut |m| problems.push(m));
        assert!(problems.is_empty(), "{problems:?}");

        let (m, v) = host("/elsewhere");
        let stray = daemonset(&["proxy", "--proxy-dir=/run/p"], m, v);
        let mut problems = Vec::new();
        check_proxies(&[agent, stray], &mut |m| problems.push(m));
        let all = problems.join("\n");
        assert!(all.contains("no tiergate proxy shares"), "{all}");
        assert!(all.contains("tiergate proxy with no agent"), "{all}");
    }
}
