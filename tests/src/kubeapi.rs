//! A fake Kubernetes API server for the agent's pod watch.
//!
//! [`FakeKube`] speaks just enough of the real API over plain HTTP/1.1 on
//! `127.0.0.1` for `kube::runtime::watcher` (kube 5.x) to list and watch pods:
//!
//! * `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods`: a `PodList`
//!   (`limit`/`continue` paging, `fieldSelector`, `labelSelector`), or with
//!   `watch=true` a chunked stream of newline-separated watch events
//!   (`ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR`) that resumes from
//!   `resourceVersion` by replaying its change history, sends synthetic
//!   `ADDED` events for `resourceVersion` `""`/`"0"` (plus the
//!   `k8s.io/initial-events-end` bookmark when `sendInitialEvents=true`) and
//!   ends after `timeoutSeconds` (with a bookmark when
//!   `allowWatchBookmarks=true`);
//! * `GET /api/v1/namespaces/{ns}/pods/{name}`, `/version`, `/api`,
//!   `/api/v1`, `/apis`, `/healthz`, `/livez`, `/readyz`.
//!
//! As on a real API server, field selectors turn a pod that starts or stops
//! matching into `ADDED`/`DELETED`, list items carry no `kind`/`apiVersion`,
//! an expired `resourceVersion` on a watch answers HTTP 200 with an `ERROR`
//! event holding a `Status` of code 410 (reason `Expired`), and errors are
//! `Status` objects. Everything else (auth, writes, other resources, paging
//! snapshots) is left out. Pods the tests upsert without `spec.nodeName` are
//! put on the server's node.
//!
//! Every thread stops when the [`FakeKube`] is dropped: the accept loop polls
//! a stop flag, connections read with a short timeout and watches wait on a
//! condition variable with one.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// How often blocked threads look at the stop flag and their peer.
const POLL: Duration = Duration::from_millis(50);
/// Changes kept for resuming watches; older ones are compacted away.
const HISTORY_MAX: usize = 10_000;
/// Watch length when the request names no `timeoutSeconds`.
const DEFAULT_WATCH_SECS: u64 = 1800;
/// Timestamp used for every time field of the pods [`pod`] builds.
const TIMESTAMP: &str = "2025-01-01T00:00:00Z";
/// Field labels the pod field selector supports (as the real server does).
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

/// A fake API server on `127.0.0.1`; see the module docs.
pub struct FakeKube {
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

struct Inner {
    node: String,
    port: u16,
    stop: AtomicBool,
    /// Bumped by `go_down`: connections of an older generation stop.
    generation: AtomicU64,
    listener: Mutex<Option<TcpListener>>,
    conns: Mutex<BTreeMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    workers: Mutex<Vec<JoinHandle<()>>>,
    requests: Mutex<Vec<String>>,
    store: Mutex<Store>,
    changed: Condvar,
}

#[derive(Default)]
struct Store {
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    history: VecDeque<Change>,
    /// Watches from a resourceVersion below this one get 410 Gone.
    floor: u64,
    /// Bumped by `expire_watches`: open watches end with 410 Gone.
    expire_epoch: u64,
    /// Set by `expire_watches` when no watch was open: the next watch gets 410.
    expire_next: bool,
    /// Bumped by `send_bookmarks`.
    bookmark_epoch: u64,
    open_watches: usize,
    next_uid: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

struct Change {
    rv: u64,
    kind: ChangeKind,
    old: Option<Value>,
    new: Value,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeKube {
    /// Starts on `127.0.0.1:0` serving pods for `node`; returns once listening.
    pub fn start(node: &str) -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake kube: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("fake kube: nonblocking listener");
        let port = listener.local_addr().expect("fake kube: local addr").port();
        let inner = Arc::new(Inner {
            node: node.to_string(),
            port,
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            listener: Mutex::new(Some(listener)),
            conns: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(0),
            workers: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            store: Mutex::new(Store {
                rv: 1,
                floor: 1,
                ..Store::default()
            }),
            changed: Condvar::new(),
        });
        let for_thread = Arc::clone(&inner);
        let accept = thread::Builder::new()
            .name("fake-kube-accept".into())
            .spawn(move || accept_loop(&for_thread))
            .expect("fake kube: spawn accept thread");
        FakeKube {
            inner,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.port)
    }

    /// The node whose pods the agent is expected to watch.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Writes `dir/kubeconfig` pointing at this server (plain HTTP, no
    /// credentials) and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake-kube\n  cluster:\n    server: {url}\n\
             contexts:\n\
             - name: fake-kube\n  context:\n    cluster: fake-kube\n    user: fake-kube\n    namespace: default\n\
             current-context: fake-kube\n\
             users:\n\
             - name: fake-kube\n  user: {{}}\n\
             preferences: {{}}\n",
            url = self.url()
        );
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("fake kube: write {}: {e}", path.display()));
        path
    }

    /// Adds or replaces a pod (keyed by `metadata.namespace`/`metadata.name`,
    /// namespace `default` when absent), bumping the resourceVersion and
    /// sending ADDED or MODIFIED to the open watches it matches (ADDED or
    /// DELETED when the change makes it start or stop matching). Fills in
    /// `kind`, `apiVersion`, `metadata.uid` and `spec.nodeName` (this
    /// server's node) when absent. Returns the pod as stored.
    pub fn upsert_pod(&self, mut pod: Value) -> Value {
        let obj = pod
            .as_object_mut()
            .expect("fake kube: a pod is a JSON object");
        obj.insert("apiVersion".into(), "v1".into());
        obj.insert("kind".into(), "Pod".into());
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("fake kube: metadata is an object");
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .expect("fake kube: a pod needs metadata.name")
            .to_string();
        let namespace = match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) => ns.to_string(),
            None => {
                meta.insert("namespace".into(), "default".into());
                "default".into()
            }
        };
        let spec = obj
            .entry("spec")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("fake kube: spec is an object");
        if spec.get("nodeName").is_none_or(Value::is_null) {
            spec.insert("nodeName".into(), self.inner.node.clone().into());
        }
        let stored = {
            let mut st = lock(&self.inner.store);
            st.rv += 1;
            let rv = st.rv;
            let key = (namespace, name);
            let old = st.pods.get(&key).cloned();
            let meta = pod["metadata"].as_object_mut().expect("metadata");
            meta.insert("resourceVersion".into(), rv.to_string().into());
            if meta.get("uid").is_none_or(Value::is_null) {
                let uid = match old.as_ref().and_then(|o| o["metadata"]["uid"].as_str()) {
                    Some(uid) => uid.to_string(),
                    None => {
                        st.next_uid += 1;
                        format!("00000000-0000-4000-8000-{:012x}", st.next_uid)
                    }
                };
                meta.insert("uid".into(), uid.into());
            }
            let kind = if old.is_some() {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            };
            st.pods.insert(key, pod.clone());
            push_change(&mut st, rv, kind, old, pod.clone());
            pod
        };
        self.inner.changed.notify_all();
        stored
    }

    /// Deletes a pod, sending DELETED (its last state at a new
    /// resourceVersion) to the watches it matched. Returns whether it existed.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        {
            let mut st = lock(&self.inner.store);
            let key = (namespace.to_string(), name.to_string());
            let Some(old) = st.pods.remove(&key) else {
                return false;
            };
            st.rv += 1;
            let rv = st.rv;
            let mut last = old.clone();
            last["metadata"]["resourceVersion"] = rv.to_string().into();
            push_change(&mut st, rv, ChangeKind::Deleted, Some(old), last);
        }
        self.inner.changed.notify_all();
        true
    }

    /// The stored pod, if any.
    pub fn get_pod(&self, namespace: &str, name: &str) -> Option<Value> {
        let st = lock(&self.inner.store);
        st.pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv
    }

    /// Forces a relist: every open watch gets an `ERROR` event with a 410
    /// `Status` (reason `Expired`) and ends; when none is open, the next watch
    /// request gets it instead. Watches resuming from a resourceVersion older
    /// than the current one get it too (the history is compacted).
    pub fn expire_watches(&self) {
        {
            let mut st = lock(&self.inner.store);
            st.floor = st.rv;
            st.history.clear();
            if st.open_watches > 0 {
                st.expire_epoch += 1;
            } else {
                st.expire_next = true;
            }
        }
        self.inner.changed.notify_all();
    }

    /// Sends a `BOOKMARK` at the current resourceVersion to every open watch
    /// that allowed bookmarks.
    pub fn send_bookmarks(&self) {
        lock(&self.inner.store).bookmark_epoch += 1;
        self.inner.changed.notify_all();
    }

    /// Watches open right now.
    pub fn open_watches(&self) -> usize {
        lock(&self.inner.store).open_watches
    }

    /// Waits until at least `n` watches are open; false on timeout.
    pub fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.inner.store);
        loop {
            if st.open_watches >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, (deadline - now).min(POLL))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops answering: closes the listener (connections are refused) and
    /// drops every open connection without a clean end. The pods and their
    /// history are kept, as on an API server restart.
    pub fn go_down(&self) {
        self.inner.go_down();
    }

    /// Listens again on the same port (no-op when up); returns once listening.
    pub fn come_back(&self) {
        let mut listener = lock(&self.inner.listener);
        if listener.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let l = loop {
            match TcpListener::bind(("127.0.0.1", self.inner.port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => thread::sleep(POLL),
                Err(e) => panic!("fake kube: rebind 127.0.0.1:{}: {e}", self.inner.port),
            }
        };
        l.set_nonblocking(true)
            .expect("fake kube: nonblocking listener");
        *listener = Some(l);
    }

    /// Requests seen so far, as `METHOD path?query` (query as sent).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.inner.requests).clone()
    }

    /// Waits until a request satisfying `pred` was seen; false on timeout.
    pub fn wait_for_request(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if lock(&self.inner.requests).iter().any(|r| pred(r)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.go_down();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let workers = std::mem::take(&mut *lock(&self.inner.workers));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Inner {
    fn alive(&self, generation: u64) -> bool {
        !self.stop.load(Ordering::SeqCst) && self.generation.load(Ordering::SeqCst) == generation
    }

    fn go_down(&self) {
        let mut listener = lock(&self.listener);
        listener.take();
        self.generation.fetch_add(1, Ordering::SeqCst);
        let conns = std::mem::take(&mut *lock(&self.conns));
        for c in conns.values() {
            let _ = c.shutdown(Shutdown::Both);
        }
        drop(listener);
        self.changed.notify_all();
    }
}

fn push_change(st: &mut Store, rv: u64, kind: ChangeKind, old: Option<Value>, new: Value) {
    st.history.push_back(Change { rv, kind, old, new });
    while st.history.len() > HISTORY_MAX {
        if let Some(c) = st.history.pop_front() {
            st.floor = st.floor.max(c.rv);
        }
    }
}

fn accept_loop(inner: &Arc<Inner>) {
    while !inner.stop.load(Ordering::SeqCst) {
        let accepted = {
            let listener = lock(&inner.listener);
            let generation = inner.generation.load(Ordering::SeqCst);
            listener
                .as_ref()
                .and_then(|l| l.accept().ok())
                .map(|(s, _)| (s, generation))
        };
        let Some((stream, generation)) = accepted else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = inner.next_conn.fetch_add(1, Ordering::SeqCst);
        let registered = stream.set_nonblocking(false).is_ok()
            && stream.set_read_timeout(Some(POLL)).is_ok()
            && stream
                .set_write_timeout(Some(Duration::from_secs(10)))
                .is_ok()
            && {
                let _ = stream.set_nodelay(true);
                let mut conns = lock(&inner.conns);
                match stream.try_clone() {
                    Ok(c) if inner.alive(generation) => {
                        conns.insert(id, c);
                        true
                    }
                    _ => false,
                }
            };
        if !registered {
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let for_thread = Arc::clone(inner);
        let spawned = thread::Builder::new()
            .name(format!("fake-kube-conn-{id}"))
            .spawn(move || {
                serve_conn(&for_thread, stream, generation);
                lock(&for_thread.conns).remove(&id);
            });
        let mut workers = lock(&inner.workers);
        workers.retain(|w| !w.is_finished());
        match spawned {
            Ok(w) => workers.push(w),
            Err(_) => {
                if let Some(c) = lock(&inner.conns).remove(&id) {
                    let _ = c.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

struct Request {
    method: String,
    target: String,
    path: String,
    query: Vec<(String, String)>,
    close: bool,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn serve_conn(inner: &Inner, mut stream: TcpStream, generation: u64) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(inner, &mut stream, &mut buf, generation) {
        lock(&inner.requests).push(format!("{} {}", req.method, req.target));
        let keep = handle(inner, &mut stream, &req, generation);
        if !keep || req.close || !inner.alive(generation) {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Reads one request head (and skips its body); None when the peer closed,
/// the server stops or the request is malformed.
fn read_request(
    inner: &Inner,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    generation: u64,
) -> Option<Request> {
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        match stream.read(&mut tmp) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !inner.alive(generation) {
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let version = first.next().unwrap_or("HTTP/1.0");
    let mut close = version == "HTTP/1.0";
    let mut body_len = 0usize;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => body_len = v.parse().ok()?,
            "connection" if v.contains("close") => close = true,
            "connection" if v.contains("keep-alive") => close = false,
            // Chunked request bodies are not supported (the watcher sends none).
            "transfer-encoding" => return None,
            _ => {}
        }
    }
    while buf.len() < body_len {
        match stream.read(&mut tmp) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !inner.alive(generation) {
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.drain(..body_len);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_query(q)),
        None => (target.clone(), Vec::new()),
    };
    Some(Request {
        method,
        target,
        path,
        query,
        close,
    })
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(kv), String::new()),
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Internal Server Error",
    }
}

fn respond(stream: &mut TcpStream, code: u16, content_type: &str, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-cache, private\r\nContent-Length: {}\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    stream.write_all(head.as_bytes()).is_ok()
        && stream.write_all(body).is_ok()
        && stream.flush().is_ok()
}

fn respond_json(stream: &mut TcpStream, code: u16, body: &Value) -> bool {
    let bytes = serde_json::to_vec(body).expect("serialize");
    respond(stream, code, "application/json", &bytes)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn respond_status(stream: &mut TcpStream, code: u16, reason: &str, message: &str) -> bool {
    respond_json(stream, code, &status(code, reason, message))
}

fn handle(inner: &Inner, stream: &mut TcpStream, req: &Request, generation: u64) -> bool {
    if req.method != "GET" {
        return respond_status(
            stream,
            405,
            "MethodNotAllowed",
            &format!("the fake API server only serves GET, not {}", req.method),
        );
    }
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
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
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
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
        ["api", "v1", "pods"] => pods(inner, stream, req, None, generation),
        ["api", "v1", "namespaces", ns, "pods"] => pods(inner, stream, req, Some(ns), generation),
        ["api", "v1", "namespaces", ns, "pods", name] => {
            let pod = lock(&inner.store)
                .pods
                .get(&(ns.to_string(), name.to_string()))
                .cloned();
            match pod {
                Some(p) => respond_json(stream, 200, &p),
                None => {
                    let mut st = status(404, "NotFound", &format!("pods \"{name}\" not found"));
                    st["details"] = json!({"name": name, "kind": "pods"});
                    respond_json(stream, 404, &st)
                }
            }
        }
        _ => respond_status(
            stream,
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// What a list or watch asks for.
struct Filter {
    namespace: Option<String>,
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelReq>,
}

enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Filter {
    fn parse(namespace: Option<&str>, req: &Request) -> Result<Filter, String> {
        let mut fields = Vec::new();
        for term in req
            .param("fieldSelector")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let k = k.trim();
            if !POD_FIELDS.contains(&k) {
                return Err(format!("field label not supported: {k}"));
            }
            fields.push((k.to_string(), eq, v.trim().to_string()));
        }
        let mut labels = Vec::new();
        for term in split_top_level(req.param("labelSelector").unwrap_or("")) {
            labels.push(parse_label_term(&term)?);
        }
        Ok(Filter {
            namespace: namespace.map(str::to_string),
            fields,
            labels,
        })
    }

    fn matches(&self, pod: &Value) -> bool {
        let meta = &pod["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        let fields_ok = self
            .fields
            .iter()
            .all(|(k, eq, v)| (field_value(pod, k) == *v) == *eq);
        let label = |k: &str| meta["labels"][k].as_str();
        fields_ok
            && self.labels.iter().all(|r| match r {
                LabelReq::Eq(k, v) => label(k) == Some(v),
                LabelReq::Ne(k, v) => label(k) != Some(v),
                LabelReq::Exists(k) => label(k).is_some(),
                LabelReq::NotExists(k) => label(k).is_none(),
                LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
                LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            })
    }
}

fn field_value(pod: &Value, field: &str) -> String {
    let v = field.split('.').fold(pod, |v, part| &v[part]);
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null if field == "spec.hostNetwork" => "false".into(),
        _ => String::new(),
    }
}

/// Splits a label selector at the commas outside parentheses.
fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label_term(t: &str) -> Result<LabelReq, String> {
    let bad = || format!("unable to parse requirement: {t}");
    if let Some(open) = t.find('(') {
        let inside = t[open + 1..].strip_suffix(')').ok_or_else(bad)?;
        let values: Vec<String> = inside
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let mut words = t[..open].split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        return match op {
            "in" => Ok(LabelReq::In(key.into(), values)),
            "notin" => Ok(LabelReq::NotIn(key.into(), values)),
            _ => Err(bad()),
        };
    }
    if let Some(k) = t.strip_prefix('!') {
        return Ok(LabelReq::NotExists(k.trim().into()));
    }
    if let Some((k, v)) = t.split_once("!=") {
        return Ok(LabelReq::Ne(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Ok(LabelReq::Eq(k.trim().into(), v.trim().into()));
    }
    if t.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(LabelReq::Exists(t.into()))
}

fn pods(
    inner: &Inner,
    stream: &mut TcpStream,
    req: &Request,
    namespace: Option<&str>,
    generation: u64,
) -> bool {
    let filter = match Filter::parse(namespace, req) {
        Ok(f) => f,
        Err(msg) => return respond_status(stream, 400, "BadRequest", &msg),
    };
    if matches!(req.param("watch"), Some("true" | "1")) {
        watch(inner, stream, req, &filter, generation)
    } else {
        list(inner, stream, req, &filter)
    }
}

fn list(inner: &Inner, stream: &mut TcpStream, req: &Request, filter: &Filter) -> bool {
    let limit = match req.param("limit").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return respond_status(stream, 400, "BadRequest", "invalid limit"),
    };
    let after = match req.param("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(tok) => match decode_continue(tok) {
            Some(k) => Some(k),
            None => {
                return respond_status(stream, 400, "BadRequest", "invalid continue token");
            }
        },
    };
    let (items, rv, more) = {
        let st = lock(&inner.store);
        let matching: Vec<_> = st
            .pods
            .iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .filter(|(_, p)| filter.matches(p))
            .collect();
        let page = if limit > 0 {
            limit.min(matching.len())
        } else {
            matching.len()
        };
        let items: Vec<Value> = matching[..page]
            .iter()
            .map(|(_, p)| {
                let mut item = (*p).clone();
                if let Some(o) = item.as_object_mut() {
                    // A real server leaves these out of list items.
                    o.remove("kind");
                    o.remove("apiVersion");
                }
                item
            })
            .collect();
        let remaining = matching.len() - page;
        let more = match page.checked_sub(1) {
            Some(last) if remaining > 0 => Some((encode_continue(matching[last].0), remaining)),
            _ => None,
        };
        (items, st.rv, more)
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some((tok, remaining)) = more {
        metadata["continue"] = tok.into();
        metadata["remainingItemCount"] = remaining.into();
    }
    respond_json(
        stream,
        200,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items}),
    )
}

fn encode_continue(key: &(String, String)) -> String {
    format!("{}/{}", key.0, key.1)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(tok: &str) -> Option<(String, String)> {
    if !tok.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..tok.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(tok.get(i..i + 2)?, 16).ok())
        .collect();
    let s = String::from_utf8(bytes?).ok()?;
    let (ns, name) = s.split_once('/')?;
    Some((ns.to_string(), name.to_string()))
}

fn with_type(pod: &Value) -> Value {
    let mut p = pod.clone();
    if let Some(o) = p.as_object_mut() {
        o.insert("apiVersion".into(), "v1".into());
        o.insert("kind".into(), "Pod".into());
    }
    p
}

fn bookmark(rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": meta}})
}

fn gone(requested: &str, current: u64) -> Value {
    json!({
        "type": "ERROR",
        "object": status(
            410,
            "Expired",
            &format!("too old resource version: {requested} ({current})"),
        ),
    })
}

/// The watch event a change makes for `filter`, if any.
fn event_for(change: &Change, filter: &Filter) -> Option<Value> {
    let was = change.old.as_ref().is_some_and(|o| filter.matches(o));
    let is = filter.matches(&change.new);
    let kind = match change.kind {
        ChangeKind::Deleted if was => "DELETED",
        ChangeKind::Deleted => return None,
        _ => match (was, is) {
            (false, true) => "ADDED",
            (true, true) => "MODIFIED",
            (true, false) => "DELETED",
            (false, false) => return None,
        },
    };
    Some(json!({"type": kind, "object": with_type(&change.new)}))
}

fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> bool {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).is_ok() && stream.flush().is_ok()
}

fn write_event(stream: &mut TcpStream, event: &Value) -> bool {
    let mut line = serde_json::to_vec(event).expect("serialize");
    line.push(b'\n');
    write_chunk(stream, &line)
}

fn end_chunks(stream: &mut TcpStream) -> bool {
    stream.write_all(b"0\r\n\r\n").is_ok() && stream.flush().is_ok()
}

/// True when the client closed its end (or the socket broke).
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let r = stream.peek(&mut [0u8; 1]);
    let _ = stream.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
    }
}

/// Decrements the open-watch count however the watch ends.
struct OpenWatch<'a>(&'a Inner);

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        lock(&self.0.store).open_watches -= 1;
        self.0.changed.notify_all();
    }
}

enum Start {
    Gone(String, u64),
    From {
        cursor: u64,
        initial: Vec<Value>,
        expire_epoch: u64,
        bookmark_epoch: u64,
    },
}

fn watch(
    inner: &Inner,
    stream: &mut TcpStream,
    req: &Request,
    filter: &Filter,
    generation: u64,
) -> bool {
    let requested = req.param("resourceVersion").unwrap_or("").to_string();
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let send_initial = req.param("sendInitialEvents");
    let timeout = match req.param("timeoutSeconds").map(str::parse::<u64>) {
        None => Duration::from_secs(DEFAULT_WATCH_SECS),
        Some(Ok(s)) => Duration::from_secs(s),
        Some(Err(_)) => return respond_status(stream, 400, "BadRequest", "invalid timeoutSeconds"),
    };
    let start = {
        let mut st = lock(&inner.store);
        let from = if requested.is_empty() || requested == "0" {
            None
        } else {
            match requested.parse::<u64>() {
                Ok(rv) => Some(rv),
                Err(_) => {
                    drop(st);
                    return respond_status(
                        stream,
                        400,
                        "BadRequest",
                        &format!("invalid resource version: {requested}"),
                    );
                }
            }
        };
        if st.expire_next || from.is_some_and(|rv| rv < st.floor) {
            st.expire_next = false;
            Start::Gone(requested.clone(), st.rv)
        } else {
            let initial = if from.is_none() && send_initial != Some("false") {
                st.pods
                    .values()
                    .filter(|p| filter.matches(p))
                    .map(|p| json!({"type": "ADDED", "object": with_type(p)}))
                    .collect()
            } else {
                Vec::new()
            };
            st.open_watches += 1;
            Start::From {
                cursor: from.unwrap_or(st.rv),
                initial,
                expire_epoch: st.expire_epoch,
                bookmark_epoch: st.bookmark_epoch,
            }
        }
    };
    let (mut cursor, initial, my_expire, mut my_bookmark) = match start {
        Start::Gone(requested, current) => {
            return start_chunked(stream).is_ok()
                && write_event(stream, &gone(&requested, current))
                && end_chunks(stream);
        }
        Start::From {
            cursor,
            initial,
            expire_epoch,
            bookmark_epoch,
        } => (cursor, initial, expire_epoch, bookmark_epoch),
    };
    let _open = OpenWatch(inner);
    inner.changed.notify_all();
    if start_chunked(stream).is_err() {
        return false;
    }
    for ev in &initial {
        if !write_event(stream, ev) {
            return false;
        }
    }
    if send_initial == Some("true") && bookmarks && !write_event(stream, &bookmark(cursor, true)) {
        return false;
    }
    let deadline = Instant::now() + timeout;
    enum Next {
        Events(Vec<Value>),
        Bookmark(u64, u64),
        Expired(u64),
        Timeout(u64),
        Abort,
        Idle,
    }
    loop {
        let next = {
            let st = lock(&inner.store);
            let collect = |st: &Store, cursor: &mut u64| {
                let from = st.history.partition_point(|c| c.rv <= *cursor);
                let mut evs = Vec::new();
                for c in st.history.range(from..) {
                    *cursor = c.rv;
                    evs.extend(event_for(c, filter));
                }
                evs
            };
            let check = |st: &Store, cursor: &mut u64, my_bookmark: u64| {
                if !inner.alive(generation) {
                    return Next::Abort;
                }
                // Expired by the tests, or the history past the cursor was
                // compacted away.
                if st.expire_epoch != my_expire || *cursor < st.floor {
                    return Next::Expired(st.rv);
                }
                let evs = collect(st, cursor);
                if !evs.is_empty() {
                    return Next::Events(evs);
                }
                if st.bookmark_epoch != my_bookmark {
                    return Next::Bookmark(st.rv, st.bookmark_epoch);
                }
                if Instant::now() >= deadline {
                    return Next::Timeout(st.rv);
                }
                Next::Idle
            };
            match check(&st, &mut cursor, my_bookmark) {
                Next::Idle => {
                    let st = inner
                        .changed
                        .wait_timeout(st, POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    check(&st, &mut cursor, my_bookmark)
                }
                n => n,
            }
        };
        match next {
            Next::Abort => return false,
            Next::Expired(rv) => {
                return write_event(stream, &gone(&cursor.to_string(), rv)) && end_chunks(stream);
            }
            Next::Events(evs) => {
                for ev in &evs {
                    if !write_event(stream, ev) {
                        return false;
                    }
                }
            }
            Next::Bookmark(rv, epoch) => {
                my_bookmark = epoch;
                if bookmarks && !write_event(stream, &bookmark(rv.max(cursor), false)) {
                    return false;
                }
                cursor = cursor.max(rv);
            }
            Next::Timeout(rv) => {
                if bookmarks && !write_event(stream, &bookmark(rv.max(cursor), false)) {
                    return false;
                }
                return end_chunks(stream);
            }
            Next::Idle => {
                if peer_closed(stream) {
                    return false;
                }
            }
        }
    }
}

fn start_chunked(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    stream.flush()
}

/// A pod object shaped like one the API server returns for a running pod:
/// `metadata` {name, namespace, uid, labels, creationTimestamp}, `spec`
/// {serviceAccountName, containers, initContainers: [], ephemeralContainers:
/// [], hostNetwork: false, ...}, `status` {phase: Running, containerStatuses
/// with `containerID: containerd://<id>` and `ready: true`, empty
/// initContainerStatuses and ephemeralContainerStatuses, qosClass}.
///
/// `spec.nodeName` is left out: [`FakeKube::upsert_pod`] puts the pod on the
/// server's node unless [`on_node`] placed it elsewhere; `resourceVersion` is
/// set by `upsert_pod`. Unlike a real server, which omits empty lists and
/// false booleans, this keeps them so tests can edit them in place.
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    service_account: &str,
    labels: &[(&str, &str)],
    containers: &[(&str, &str)],
) -> Value {
    let labels: Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
        .collect();
    let specs: Vec<Value> = containers.iter().map(|(n, _)| container_spec(n)).collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(n, id)| container_status(n, id, true, json!({"running": {"startedAt": TIMESTAMP}})))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "labels": labels,
            "creationTimestamp": TIMESTAMP,
        },
        "spec": {
            "serviceAccountName": service_account,
            "serviceAccount": service_account,
            "automountServiceAccountToken": true,
            "containers": specs,
            "initContainers": [],
            "ephemeralContainers": [],
            "hostNetwork": false,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "enableServiceLinks": true,
            "priority": 0,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": TIMESTAMP},
                {"type": "Ready", "status": "True", "lastTransitionTime": TIMESTAMP},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": TIMESTAMP},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": TIMESTAMP},
            ],
            "containerStatuses": statuses,
            "initContainerStatuses": [],
            "ephemeralContainerStatuses": [],
            "qosClass": "BestEffort",
            "startTime": TIMESTAMP,
        },
    })
}

/// Places `pod` on `node` (`spec.nodeName`).
pub fn on_node(mut pod: Value, node: &str) -> Value {
    pod["spec"]["nodeName"] = node.into();
    pod
}

/// Adds an init container with its status: completed (exit 0), or running
/// and ready for a sidecar (`restartPolicy: Always`).
pub fn add_init_container(mut pod: Value, name: &str, id: &str, sidecar: bool) -> Value {
    let mut spec = container_spec(name);
    let state = if sidecar {
        spec["restartPolicy"] = "Always".into();
        json!({"running": {"startedAt": TIMESTAMP}})
    } else {
        json!({"terminated": {
            "exitCode": 0,
            "reason": "Completed",
            "startedAt": TIMESTAMP,
            "finishedAt": TIMESTAMP,
            "containerID": format!("containerd://{id}"),
        }})
    };
    push(&mut pod["spec"]["initContainers"], spec);
    push(
        &mut pod["status"]["initContainerStatuses"],
        container_status(name, id, sidecar, state),
    );
    pod
}

/// Adds a running ephemeral (debug) container with its status (never ready,
/// as on a real node).
pub fn add_ephemeral_container(mut pod: Value, name: &str, id: &str) -> Value {
    let mut spec = container_spec(name);
    if let Some(o) = spec.as_object_mut() {
        o.remove("resources");
    }
    push(&mut pod["spec"]["ephemeralContainers"], spec);
    push(
        &mut pod["status"]["ephemeralContainerStatuses"],
        container_status(
            name,
            id,
            false,
            json!({"running": {"startedAt": TIMESTAMP}}),
        ),
    );
    pod
}

fn push(list: &mut Value, item: Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(a) = list.as_array_mut() {
        a.push(item);
    }
}

fn container_spec(name: &str) -> Value {
    json!({
        "name": name,
        "image": format!("registry.invalid/{name}:1.0"),
        "imagePullPolicy": "IfNotPresent",
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    })
}

fn container_status(name: &str, id: &str, ready: bool, state: Value) -> Value {
    let running = state.get("running").is_some();
    json!({
        "name": name,
        "containerID": format!("containerd://{id}"),
        "image": format!("registry.invalid/{name}:1.0"),
        "imageID": format!("registry.invalid/{name}@sha256:{}", "0".repeat(64)),
        "ready": ready,
        "started": running,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    })
}
