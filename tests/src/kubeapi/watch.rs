//! Lists and watches.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::{
    Request, end_chunks, peer_closed, respond_json, respond_status, start_chunked, status,
    write_event,
};
use super::select::Filter;
use super::store::{Change, ChangeKind, Resource, Store};
use super::{Inner, POLL, lock};

/// Watch length when the request names no `timeoutSeconds`.
const DEFAULT_WATCH_SECS: u64 = 1800;

/// A list, or a watch with `watch=true`, of `resource` in `namespace` (all
/// namespaces when None).
pub(super) fn collection(
    inner: &Inner,
    stream: &mut TcpStream,
    req: &Request,
    resource: Resource,
    namespace: Option<&str>,
    generation: u64,
) -> bool {
    let filter = match Filter::parse(resource, namespace, req) {
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
            .objects(filter.resource)
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
                let mut item = with_type(filter.resource, p);
                if !filter.resource.typed_list_items()
                    && let Some(o) = item.as_object_mut()
                {
                    // A real server leaves these out of built-in types' list
                    // items.
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
    let resource = filter.resource;
    respond_json(
        stream,
        200,
        &json!({
            "kind": resource.list_kind(),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
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

fn with_type(resource: Resource, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), resource.api_version().into());
        m.insert("kind".into(), resource.kind().into());
    }
    o
}

fn bookmark(resource: Resource, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {
        "kind": resource.kind(),
        "apiVersion": resource.api_version(),
        "metadata": meta,
    }})
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
    if change.resource != filter.resource {
        return None;
    }
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
    Some(json!({"type": kind, "object": with_type(change.resource, &change.new)}))
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
                st.objects(filter.resource)
                    .map(|(_, o)| o)
                    .filter(|o| filter.matches(o))
                    .map(|o| json!({"type": "ADDED", "object": with_type(filter.resource, o)}))
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
    if send_initial == Some("true")
        && bookmarks
        && !write_event(stream, &bookmark(filter.resource, cursor, true))
    {
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
                if bookmarks
                    && !write_event(stream, &bookmark(filter.resource, rv.max(cursor), false))
                {
                    return false;
                }
                cursor = cursor.max(rv);
            }
            Next::Timeout(rv) => {
                if bookmarks
                    && !write_event(stream, &bookmark(filter.resource, rv.max(cursor), false))
                {
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
