//! Routing: which method and path serve what, and the discovery documents.

use std::net::TcpStream;

use serde_json::{Value, json};

use super::elevations::patch_status;
use super::http::{Request, respond, respond_json, respond_status, status};
use super::objects::TIMESTAMP;
use super::store::Resource;
use super::watch::collection;
use super::{Inner, lock};

/// The TierElevation API group and its only version.
const GROUP: &str = "tiergate.io";
const VERSION: &str = "v1alpha1";

pub(super) fn handle(
    inner: &Inner,
    stream: &mut TcpStream,
    req: &Request,
    generation: u64,
) -> bool {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method.as_str(), segs.as_slice()) {
        (
            "PATCH",
            [
                "apis",
                GROUP,
                VERSION,
                "namespaces",
                ns,
                "tierelevations",
                name,
                "status",
            ],
        ) => patch_status(inner, stream, req, ns, name),
        ("GET", segs) => get(inner, stream, req, segs, generation),
        (method, _) => respond_status(
            stream,
            405,
            "MethodNotAllowed",
            &format!(
                "the fake API server only serves GET, and PATCH of tierelevations/status, \
                 not {method} {}",
                req.path
            ),
        ),
    }
}

fn get(
    inner: &Inner,
    stream: &mut TcpStream,
    req: &Request,
    segs: &[&str],
    generation: u64,
) -> bool {
    let pods = Resource::Pods;
    let elevations = Resource::Elevations;
    match segs {
        ["version"] => respond_json(
            stream,
            200,
            &json!({
                "major": "1",
                "minor": "34",
                "gitVersion": "v1.34.0-fake",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": TIMESTAMP,
                "goVersion": "go1.24.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }),
        ),
        ["api"] => respond_json(
            stream,
            200,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{}", inner.port)}
                ],
            }),
        ),
        ["apis"] => respond_json(
            stream,
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]}),
        ),
        ["apis", GROUP] => {
            let mut group = api_group();
            group["kind"] = "APIGroup".into();
            group["apiVersion"] = "v1".into();
            respond_json(stream, 200, &group)
        }
        ["apis", GROUP, VERSION] => respond_json(
            stream,
            200,
            &json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": elevations.api_version(),
                "resources": [
                    {
                        "name": "tierelevations",
                        "singularName": "tierelevation",
                        "namespaced": true,
                        "kind": "TierElevation",
                        "verbs": ["get", "list", "watch"],
                    },
                    {
                        "name": "tierelevations/status",
                        "singularName": "",
                        "namespaced": true,
                        "kind": "TierElevation",
                        "verbs": ["get", "patch"],
                    },
                ],
            }),
        ),
        ["api", "v1"] => respond_json(
            stream,
            200,
            &json!({
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [{
                    "name": "pods",
                    "singularName": "pod",
                    "namespaced": true,
                    "kind": "Pod",
                    "verbs": ["get", "list", "watch"],
                    "shortNames": ["po"],
                }],
            }),
        ),
        ["healthz"] | ["livez"] | ["readyz"] => respond(stream, 200, "text/plain", b"ok"),
        ["api", "v1", "pods"] => collection(inner, stream, req, pods, None, generation),
        ["api", "v1", "namespaces", ns, "pods"] => {
            collection(inner, stream, req, pods, Some(ns), generation)
        }
        ["api", "v1", "namespaces", ns, "pods", name] => get_object(inner, stream, pods, ns, name),
        ["apis", GROUP, VERSION, "tierelevations"] => {
            collection(inner, stream, req, elevations, None, generation)
        }
        ["apis", GROUP, VERSION, "namespaces", ns, "tierelevations"] => {
            collection(inner, stream, req, elevations, Some(ns), generation)
        }
        [
            "apis",
            GROUP,
            VERSION,
            "namespaces",
            ns,
            "tierelevations",
            name,
        ]
        | [
            "apis",
            GROUP,
            VERSION,
            "namespaces",
            ns,
            "tierelevations",
            name,
            "status",
        ] => get_object(inner, stream, elevations, ns, name),
        _ => respond_status(
            stream,
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn api_group() -> Value {
    let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [version], "preferredVersion": version})
}

fn get_object(
    inner: &Inner,
    stream: &mut TcpStream,
    resource: Resource,
    namespace: &str,
    name: &str,
) -> bool {
    let obj = lock(&inner.store).get(resource, namespace, name).cloned();
    match obj {
        Some(o) => respond_json(stream, 200, &o),
        None => respond_json(stream, 404, &not_found(resource, name)),
    }
}

/// The 404 `Status` a real server gives for a missing object.
pub(super) fn not_found(resource: Resource, name: &str) -> Value {
    let mut st = status(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", resource.qualified()),
    );
    st["details"] = details(resource, name);
    st
}

/// A `Status`'s `details` naming one object.
pub(super) fn details(resource: Resource, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": resource.plural()});
    if !resource.group().is_empty() {
        d["group"] = resource.group().into();
    }
    d
}
