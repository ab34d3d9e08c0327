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
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod http;
mod objects;
mod select;
mod watch;

pub use objects::{add_ephemeral_container, add_init_container, on_node, pod};

use http::accept_loop;

/// How often blocked threads look at the stop flag and their peer.
const POLL: Duration = Duration::from_millis(50);
/// Changes kept for resuming watches; older ones are compacted away.
const HISTORY_MAX: usize = 10_000;

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
