//! A fake Kubernetes API server for the agent's pod and TierElevation watches.
//!
//! [`FakeKube`] speaks just enough of the real API over plain HTTP/1.1 on
//! `127.0.0.1` for kube 5.x clients (`kube::runtime::watcher`, `Api::get`,
//! `Api::patch_status`) to list and watch pods and the `TierElevation`
//! custom resource (`tierelevations.tiergate.io/v1alpha1`, namespaced):
//!
//! * `GET /api/v1/pods`, `GET /api/v1/namespaces/{ns}/pods`,
//!   `GET /apis/tiergate.io/v1alpha1/tierelevations` and
//!   `GET /apis/tiergate.io/v1alpha1/namespaces/{ns}/tierelevations`: a
//!   `PodList`/`TierElevationList` (`limit`/`continue` paging,
//!   `fieldSelector`, `labelSelector`), or with `watch=true` a chunked stream
//!   of newline-separated watch events
//!   (`ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR`) that resumes from
//!   `resourceVersion` by replaying its change history, sends synthetic
//!   `ADDED` events for `resourceVersion` `""`/`"0"` (plus the
//!   `k8s.io/initial-events-end` bookmark when `sendInitialEvents=true`) and
//!   ends after `timeoutSeconds` (with a bookmark when
//!   `allowWatchBookmarks=true`);
//! * `GET` of one pod or TierElevation (and of a TierElevation's `/status`);
//! * `PATCH /apis/tiergate.io/v1alpha1/namespaces/{ns}/tierelevations/{name}/status`
//!   with `Content-Type: application/merge-patch+json` (RFC 7386), which
//!   changes only `status`, as the status subresource does;
//! * `/version`, `/api`, `/api/v1`, `/apis`, `/apis/tiergate.io`,
//!   `/apis/tiergate.io/v1alpha1`, `/healthz`, `/livez`, `/readyz`.
//!
//! As on a real API server, resourceVersions are global (one counter for
//! every resource; a watch skips the other resources' changes), field
//! selectors turn an object that starts or stops matching into
//! `ADDED`/`DELETED`, pod list items carry no `kind`/`apiVersion` (custom
//! resource list items do), an expired `resourceVersion` on a watch answers
//! HTTP 200 with an `ERROR` event holding a `Status` of code 410 (reason
//! `Expired`), a no-op patch writes nothing (same resourceVersion, no event)
//! and errors are `Status` objects. Everything else (auth, other writes and
//! resources, paging snapshots) is left out. Pods the tests upsert without
//! `spec.nodeName` are put on the server's node.
//!
//! Every thread stops when the [`FakeKube`] is dropped: the accept loop polls
//! a stop flag, connections read with a short timeout and watches wait on a
//! condition variable with one.

use std::collections::BTreeMap;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

mod elevations;
mod http;
mod objects;
mod routes;
mod select;
mod store;
#[cfg(test)]
mod tests;
mod watch;

pub use elevations::rfc3339_seconds;
pub use objects::{add_ephemeral_container, add_init_container, on_node, pod};

use http::accept_loop;
use store::{Resource, Store};

/// How often blocked threads look at the stop flag and their peer.
const POLL: Duration = Duration::from_millis(50);

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeKube {
    /// Starts on `127.0.0.1:0` serving pods for `node` (and TierElevations);
    /// returns once listening.
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
            store: Mutex::new(Store::new()),
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
    pub fn upsert_pod(&self, pod: Value) -> Value {
        let node = self.inner.node.clone();
        self.inner.upsert(Resource::Pods, pod, |obj, _| {
            let spec = obj
                .entry("spec")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fake kube: spec is an object");
            if spec.get("nodeName").is_none_or(Value::is_null) {
                spec.insert("nodeName".into(), node.into());
            }
        })
    }

    /// Deletes a pod, sending DELETED (its last state at a new
    /// resourceVersion) to the watches it matched. Returns whether it existed.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.inner.delete(Resource::Pods, namespace, name)
    }

    /// The stored pod, if any.
    pub fn get_pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.inner.get(Resource::Pods, namespace, name)
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv
    }

    /// Forces a relist: every open watch (of any resource) gets an `ERROR`
    /// event with a 410 `Status` (reason `Expired`) and ends; when none is
    /// open, the next watch request gets it instead. Watches resuming from a
    /// resourceVersion older than the current one get it too (the history is
    /// compacted).
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
    /// drops every open connection without a clean end. The objects and their
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

    /// Adds or replaces an object of `resource`: sets `apiVersion` and
    /// `kind`, `metadata.namespace` `default` when absent, lets `prepare`
    /// finish it with the stored object (if any) in hand, then stores it.
    fn upsert(
        &self,
        resource: Resource,
        mut obj: Value,
        prepare: impl FnOnce(&mut Map<String, Value>, Option<&Value>),
    ) -> Value {
        let what = resource.kind();
        let o = obj
            .as_object_mut()
            .unwrap_or_else(|| panic!("fake kube: a {what} is a JSON object"));
        o.insert("apiVersion".into(), resource.api_version().into());
        o.insert("kind".into(), what.into());
        let meta = o
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("fake kube: metadata is an object");
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("fake kube: a {what} needs metadata.name"))
            .to_string();
        let namespace = meta.entry("namespace").or_insert_with(|| "default".into());
        if !namespace.is_string() {
            *namespace = "default".into();
        }
        let namespace = namespace.as_str().unwrap_or_default().to_string();
        let stored = {
            let mut st = lock(&self.store);
            prepare(o, st.get(resource, &namespace, &name));
            st.put(resource, obj)
        };
        self.changed.notify_all();
        stored
    }

    fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let existed = lock(&self.store).remove(resource, namespace, name);
        if existed {
            self.changed.notify_all();
        }
        existed
    }

    fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.store).get(resource, namespace, name).cloned()
    }
}
