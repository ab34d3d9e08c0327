//! Unit tests of the fake API server, driven by the agent's own client
//! (kube 5.x) on 127.0.0.1 port 0 only; no privileges needed. Helpers here;
//! `elevations`: the TierElevation side; `resources`: pods, and pods and
//! TierElevations side by side.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch};
use ::kube::runtime::watcher::{self, Event};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use super::FakeKube;

mod elevations;
mod resources;

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(10);

fn client(fake: &FakeKube) -> ::kube::Client {
    let cfg = ::kube::Config::new(fake.url().parse().expect("fake kube url"));
    ::kube::Client::try_from(cfg).expect("kube client")
}

fn elevation_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("tiergate.io", "v1alpha1", "TierElevation");
    ApiResource::from_gvk_with_plural(&gvk, "tierelevations")
}

/// What the agent uses: every namespace's TierElevations.
fn elevations(fake: &FakeKube) -> Api<DynamicObject> {
    Api::all_with(client(fake), &elevation_resource())
}

fn elevations_in(fake: &FakeKube, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client(fake), namespace, &elevation_resource())
}

fn elevation(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": namespace, "name": name}, "spec": spec})
}

fn fields(selector: &str) -> ListParams {
    ListParams::default().fields(selector)
}

fn merge(patch: Value) -> Patch<Value> {
    Patch::Merge(patch)
}

/// `Init`, `InitApply ns/name`, `InitDone`, `Apply ns/name`, `Delete ns/name`.
fn describe<K: ::kube::Resource>(ev: &Event<K>) -> String {
    let id = |o: &K| {
        let m = o.meta();
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or(""),
            m.name.as_deref().unwrap_or("")
        )
    };
    match ev {
        Event::Init => "Init".into(),
        Event::InitApply(o) => format!("InitApply {}", id(o)),
        Event::InitDone => "InitDone".into(),
        Event::Apply(o) => format!("Apply {}", id(o)),
        Event::Delete(o) => format!("Delete {}", id(o)),
    }
}

/// The next watcher event (errors, as while the server is down, skipped);
/// fails after WAIT.
async fn next<K, S>(stream: &mut S) -> Event<K>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => panic!("no watch event within {WAIT:?}"),
            Ok(None) => panic!("the watch stream ended"),
            Ok(Some(Err(e))) => eprintln!("watch error (skipped): {e}"),
            Ok(Some(Ok(ev))) => return ev,
        }
    }
}

/// The next `n` events, described.
async fn next_n<K, S>(stream: &mut S, n: usize) -> Vec<String>
where
    K: ::kube::Resource,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(describe(&next(stream).await));
    }
    out
}

/// The code and reason of the API error `r` must be.
fn api_error<T: std::fmt::Debug>(r: Result<T, ::kube::Error>) -> (u16, String) {
    match r {
        Err(::kube::Error::Api(s)) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// One request on its own connection (`Connection: close`): the status code
/// and the body (chunk framing left in).
fn raw(fake: &FakeKube, method: &str, target: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", fake.port())).expect("connect to fake kube");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// The JSON lines of a raw response body (a watch's events, or one object).
fn json_lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}
