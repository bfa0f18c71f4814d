//! A fake Kubernetes API server for tests: std threads, plain HTTP/1.1, JSON.
//!
//! Good enough to drive kube-rs's `watcher` (list, then watch from the list's
//! resourceVersion) and its event `Recorder`. The test owns the object store:
//! `apply` / `delete` change it and notify open watches; `compact`,
//! `drop_watches`, `set_down` and `bookmark` inject the failures a real API
//! server produces. Nothing here creates a socket: `FakeApi::serve` takes a
//! listener the test bound, normally inside a `netns::Netns`
//! (`ns.run(|| TcpListener::bind("127.0.0.1:0"))`), so the host's network
//! namespace is never used.
//!
//! Wire behaviour:
//! - every non-watch response carries `Content-Length` and `Connection: close`
//!   and the connection is closed after it (no keep-alive);
//! - LIST (`GET .../services`) answers `{Kind}List` with every matching object
//!   and `metadata.resourceVersion` = the current global RV; `limit`,
//!   `continue` and `resourceVersion`/`resourceVersionMatch` are ignored (one
//!   page, no continue token);
//! - WATCH (`?watch=true`) answers `200`, `Transfer-Encoding: chunked`,
//!   `Connection: close`, one chunk per event, each a JSON line ending in `\n`.
//!   From `resourceVersion=N`: every stored change with RV > N, then live
//!   changes. N older than the last `compact()` gets one `ERROR` event (a
//!   `Status`, code 410, reason `Expired`) and a clean end. `resourceVersion`
//!   empty or `0`: synthetic `ADDED` for each current object (then, with
//!   `sendInitialEvents=true`, a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end`). `timeoutSeconds` (0 or absent: none) ends
//!   the stream cleanly with the terminating chunk; `drop_watches`, `set_down`
//!   and `stop` end it abruptly (socket shut down mid-body, no terminating
//!   chunk);
//! - selectors filter LIST, WATCH (live and replayed history); on a
//!   watch, a change that makes an object stop matching is sent as `DELETED`
//!   (the old object, with the new RV) and one that makes it start matching as
//!   `ADDED`, as the API server's watch cache does;
//! - `POST` creates (201; 409 if it exists; `generateName` honoured), `PATCH`
//!   applies a JSON merge patch to an existing object (200; 404 if absent);
//!   both store the object (so it is listed and watched like any other and
//!   bumps the RV) and record the request body in `posted()`;
//! - `GET /version` answers a v1.37.0 version object; anything else is a 404
//!   (405 for an unsupported verb on a known resource) with a `Status` body.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use k8s_openapi::serde::Serialize;
use serde_json::{json, Value};

/// One API resource the fake serves.
#[derive(Debug)]
struct Res {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
}

impl Res {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const RESOURCES: &[Res] = &[
    Res {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    Res {
        group: "",
        version: "v1",
        plural: "endpoints",
        kind: "Endpoints",
        namespaced: true,
    },
    Res {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
    },
    Res {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Res {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
    },
];

fn res_by_path(group: &str, version: &str, plural: &str) -> Option<&'static Res> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

fn res_by_type(api_version: &str, kind: &str) -> Option<&'static Res> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// By kind ("Service", any case) or plural ("services").
fn res_by_name(name: &str) -> Option<&'static Res> {
    RESOURCES
        .iter()
        .find(|r| r.kind.eq_ignore_ascii_case(name) || r.plural == name)
}

/// Store key: (plural, namespace or "" when cluster-scoped, name).
type Key = (&'static str, String, String);

/// One change in the store's history.
struct Change {
    rv: u64,
    res: &'static Res,
    kind: &'static str, // ADDED | MODIFIED | DELETED
    obj: Value,
    /// The object before a MODIFIED.
    prev: Option<Value>,
}

enum Msg {
    /// One event line to write as a chunk.
    Line(Vec<u8>),
    /// End the stream abruptly.
    Close,
}

struct Watch {
    id: u64,
    filter: Filter,
    bookmarks: bool,
    tx: Sender<Msg>,
    stream: TcpStream,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from an RV below this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    watches: Vec<Watch>,
    /// Every open connection, to shut down on stop.
    conns: HashMap<u64, TcpStream>,
    next_id: u64,
    down: bool,
    stopped: bool,
    requests: Vec<(String, String)>,
    posted: Vec<(String, Value)>,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn record(&mut self, change: Change) {
        for w in &self.watches {
            if let Some(line) = w.filter.convert(&change) {
                let _ = w.tx.send(Msg::Line(line));
            }
        }
        self.history.push(change);
    }

    /// Stores `obj` (apiVersion/kind/metadata.name set, namespace defaulted)
    /// under a new RV and notifies watches; returns the stored object.
    fn upsert(&mut self, res: &'static Res, mut obj: Value) -> Value {
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("fakeapi: {} without metadata.name", res.kind))
            .to_string();
        let ns = if res.namespaced {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            obj["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            String::new()
        };
        self.rv += 1;
        let rv = self.rv;
        let key = (res.plural, ns, name);
        let prev = self.objects.get(&key).cloned();
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        for field in ["uid", "creationTimestamp"] {
            if meta[field].is_null() {
                meta[field] = match prev.as_ref().map(|p| &p["metadata"][field]) {
                    Some(v) if !v.is_null() => v.clone(),
                    _ if field == "uid" => json!(format!("00000000-0000-4000-8000-{rv:012x}")),
                    _ => json!(now()),
                };
            }
        }
        self.objects.insert(key, obj.clone());
        let kind = if prev.is_some() { "MODIFIED" } else { "ADDED" };
        self.record(Change {
            rv,
            res,
            kind,
            obj: obj.clone(),
            prev,
        });
        obj
    }

    fn remove(&mut self, res: &'static Res, ns: &str, name: &str) -> Option<Value> {
        let ns = if res.namespaced { ns } else { "" };
        let mut obj = self
            .objects
            .remove(&(res.plural, ns.to_string(), name.to_string()))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(Change {
            rv: self.rv,
            res,
            kind: "DELETED",
            obj: obj.clone(),
            prev: None,
        });
        Some(obj)
    }

    fn drop_watches(&mut self) {
        for w in self.watches.drain(..) {
            let _ = w.stream.shutdown(Shutdown::Both);
            let _ = w.tx.send(Msg::Close);
        }
    }
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Owned by the `FakeApi` handles only (never by the server threads), so
/// dropping the last handle stops the server.
struct Handle {
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    fn stop(&self) {
        {
            let mut st = self.shared.lock();
            if st.stopped {
                return;
            }
            st.stopped = true;
            st.drop_watches();
            for (_, c) in st.conns.drain() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        // Wakes the accept thread: on Linux, accept() on a listening socket
        // that is shut down fails with EINVAL.
        // SAFETY: the fd is valid while `self.listener` is alive.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let accept = self.accept.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = accept {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Handle to a running fake API server; clones share it. The server stops
/// when the last handle is dropped (or on `stop()`).
#[derive(Clone)]
pub struct FakeApi(Arc<Handle>);

impl FakeApi {
    /// Serves on `listener` (already bound, e.g. inside a namespace) on
    /// background threads.
    pub fn serve(listener: TcpListener) -> FakeApi {
        let addr = listener.local_addr().expect("fakeapi: listener address");
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                ..State::default()
            }),
        });
        let accept = {
            let shared = shared.clone();
            let listener = listener.clone();
            thread::Builder::new()
                .name("fakeapi-accept".into())
                .spawn(move || accept_loop(&shared, &listener))
                .expect("fakeapi: spawn accept thread")
        };
        FakeApi(Arc::new(Handle {
            shared,
            listener,
            addr,
            accept: Mutex::new(Some(accept)),
        }))
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.0.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Stops serving: closes the listener and every connection. Idempotent.
    pub fn stop(&self) {
        self.0.stop();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.shared.lock()
    }

    /// Upserts an object (anything serialising to JSON with apiVersion, kind,
    /// metadata.name and, for namespaced kinds, metadata.namespace, default
    /// "default"). Bumps the global RV, sets metadata.resourceVersion (and
    /// uid / creationTimestamp when missing) and sends ADDED or MODIFIED to
    /// open watches. Returns the stored object. Panics on an unknown kind.
    pub fn apply(&self, obj: impl Serialize) -> Value {
        let obj = serde_json::to_value(obj).expect("fakeapi: serialise object");
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let res = res_by_type(api_version, kind)
            .unwrap_or_else(|| panic!("fakeapi: unsupported type {api_version:?} {kind:?}"));
        self.lock().upsert(res, obj)
    }

    /// Deletes an object (`kind` is "Service", "EndpointSlice", "Node", ... or
    /// the plural) and sends DELETED (the last state, with the new RV) to
    /// open watches. Returns false, and changes nothing, when it is absent.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let res = res_by_name(kind).unwrap_or_else(|| panic!("fakeapi: unsupported kind {kind:?}"));
        let ns = namespace.unwrap_or("default");
        self.lock().remove(res, ns, name).is_some()
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let res = res_by_name(kind).unwrap_or_else(|| panic!("fakeapi: unsupported kind {kind:?}"));
        let ns = if res.namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        self.lock()
            .objects
            .get(&(res.plural, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Forgets history: a later watch from an RV older than now gets a 410
    /// `ERROR` event. Open watches are unaffected.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.compacted = st.rv;
        st.history.clear();
    }

    /// Closes every open watch connection abruptly (no terminating chunk).
    pub fn drop_watches(&self) {
        self.lock().drop_watches();
    }

    /// While down, new connections are closed as soon as accepted; going down
    /// also drops open watches.
    pub fn set_down(&self, down: bool) {
        let mut st = self.lock();
        st.down = down;
        if down {
            st.drop_watches();
        }
    }

    /// Sends a BOOKMARK with the current RV to every open watch that asked
    /// for `allowWatchBookmarks=true`.
    pub fn bookmark(&self) {
        let st = self.lock();
        for w in st.watches.iter().filter(|w| w.bookmarks) {
            let line = event_line("BOOKMARK", &bookmark(w.filter.res, st.rv, false));
            let _ = w.tx.send(Msg::Line(line));
        }
    }

    /// Number of open watch streams (for waiting until a client has
    /// (re-)established its watches).
    pub fn open_watches(&self) -> usize {
        self.lock().watches.len()
    }

    /// Requests seen so far: (method, path?query), percent-decoded.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.lock().requests.clone()
    }

    /// Bodies POSTed or PATCHed, with their (decoded, query-less) path. A body
    /// that is not JSON is recorded as a JSON string.
    pub fn posted(&self) -> Vec<(String, Value)> {
        self.lock().posted.clone()
    }
}

fn now() -> String {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .expect("timestamp in range")
        .to_string()
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if shared.lock().stopped || e.raw_os_error() == Some(libc::EINVAL) {
                    return;
                }
                // e.g. EMFILE or ECONNABORTED: retry.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let mut st = shared.lock();
        if st.stopped || st.down {
            let _ = stream.shutdown(Shutdown::Both);
            if st.stopped {
                return;
            }
            continue;
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let id = st.id();
        st.conns.insert(id, clone);
        drop(st);
        let conn_shared = shared.clone();
        let spawned = thread::Builder::new()
            .name("fakeapi-conn".into())
            .spawn(move || {
                let _ = stream.set_nodelay(true);
                let _ = serve_conn(&conn_shared, &stream);
                let _ = stream.shutdown(Shutdown::Both);
                conn_shared.lock().conns.remove(&id);
            });
        if spawned.is_err() {
            // The stream was moved into the failed closure and dropped.
            shared.lock().conns.remove(&id);
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = req.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        req.body = vec![0; len];
        r.read_exact(&mut req.body)?;
    } else if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    }
    Ok(Some(req))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Internal Server Error",
    }
}

fn respond(mut s: &TcpStream, code: u16, body: &Value) -> io::Result<()> {
    let body = serde_json::to_vec(body).expect("serialise response");
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    s.write_all(&out)?;
    s.flush()
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

fn not_found(what: &str) -> (u16, Value) {
    (404, status(404, "NotFound", &format!("{what} not found")))
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// What a list or watch asks for: resource, namespace, selectors.
struct Filter {
    res: &'static Res,
    ns: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

enum LabelReq {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

struct FieldReq {
    path: String,
    value: String,
    equal: bool,
}

/// `key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (a,b)`,
/// `key notin (a,b)`, comma-separated (AND).
fn parse_labels(sel: &str) -> Result<Vec<LabelReq>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in sel.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&sel[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&sel[start..]);
    let mut reqs = Vec::new();
    for t in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let bad = || format!("unable to parse requirement: {t:?}");
        let key = |k: &str| {
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                Err(bad())
            } else {
                Ok(k.to_string())
            }
        };
        let req = if let Some(k) = t.strip_prefix('!') {
            LabelReq::NotExists(key(k)?)
        } else if let Some((k, v)) = t.split_once("!=") {
            LabelReq::NotIn(key(k)?, vec![v.trim().to_string()])
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            LabelReq::In(key(k)?, vec![v.trim().to_string()])
        } else if let (Some(open), true) = (t.find('('), t.ends_with(')')) {
            let mut head = t[..open].split_whitespace();
            let (Some(k), Some(op), None) = (head.next(), head.next(), head.next()) else {
                return Err(bad());
            };
            let values = t[open + 1..t.len() - 1]
                .split(',')
                .map(|v| v.trim().to_string())
                .collect();
            match op {
                "in" => LabelReq::In(key(k)?, values),
                "notin" => LabelReq::NotIn(key(k)?, values),
                _ => return Err(bad()),
            }
        } else {
            LabelReq::Exists(key(t)?)
        };
        reqs.push(req);
    }
    Ok(reqs)
}

/// `path=v`, `path==v`, `path!=v`, comma-separated; `path` is any dotted JSON
/// path (`metadata.name`, `metadata.namespace`, `spec.type`, ...).
fn parse_fields(sel: &str) -> Result<Vec<FieldReq>, String> {
    let mut reqs = Vec::new();
    for t in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (path, value, equal) = if let Some((p, v)) = t.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            (p, v, true)
        } else {
            return Err(format!("invalid field selector: {t:?}"));
        };
        reqs.push(FieldReq {
            path: path.trim().to_string(),
            value: value.trim().to_string(),
            equal,
        });
    }
    Ok(reqs)
}

impl Filter {
    fn new(
        res: &'static Res,
        ns: Option<String>,
        q: &HashMap<String, String>,
    ) -> Result<Filter, String> {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
        Ok(Filter {
            res,
            ns,
            labels: parse_labels(get("labelSelector"))?,
            fields: parse_fields(get("fieldSelector"))?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.ns {
            if meta["namespace"].as_str() != Some(ns) {
                return false;
            }
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        });
        labels_ok
            && self.fields.iter().all(|f| {
                let v = f.path.split('.').fold(obj, |v, seg| &v[seg]);
                let v = match v {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (v == f.value) == f.equal
            })
    }

    /// The event line this watch sees for `c`, if any (selector transitions
    /// turn MODIFIED into ADDED or DELETED).
    fn convert(&self, c: &Change) -> Option<Vec<u8>> {
        if !std::ptr::eq(c.res, self.res) {
            return None;
        }
        let now = self.matches(&c.obj);
        let before = c.prev.as_ref().is_some_and(|p| self.matches(p));
        match (c.kind, before, now) {
            ("MODIFIED", true, true) => Some(event_line("MODIFIED", &c.obj)),
            ("MODIFIED", false, true) | ("ADDED", _, true) => Some(event_line("ADDED", &c.obj)),
            ("MODIFIED", true, false) => {
                let mut old = c.prev.clone().expect("matched");
                old["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                Some(event_line("DELETED", &old))
            }
            ("DELETED", _, true) => Some(event_line("DELETED", &c.obj)),
            _ => None,
        }
    }
}

fn event_line(kind: &str, obj: &Value) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&json!({"type": kind, "object": obj})).expect("serialise event");
    line.push(b'\n');
    line
}

fn bookmark(res: &Res, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta})
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "37",
        "emulationMajor": "1",
        "emulationMinor": "37",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": "v1.37.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// A parsed resource path.
struct Target {
    res: &'static Res,
    ns: Option<String>,
    name: Option<String>,
}

/// `/api/v1/...` or `/apis/{group}/{version}/...` then `{plural}[/{name}]` or
/// `namespaces/{ns}/{plural}[/{name}]`.
fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let res = res_by_path(group, version, plural)?;
    // Namespaced objects are only addressable in their namespace; cluster
    // objects never are.
    if (ns.is_some() && !res.namespaced) || (name.is_some() && res.namespaced && ns.is_none()) {
        return None;
    }
    Some(Target {
        res,
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
    })
}

fn serve_conn(shared: &Shared, stream: &TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(req) = read_request(&mut reader)? else {
        return Ok(());
    };
    let (raw_path, raw_query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let path = percent_decode(raw_path, false);
    let q = parse_query(raw_query);
    let body: Option<Value> = (!req.body.is_empty()).then(|| {
        serde_json::from_slice(&req.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&req.body).into_owned()))
    });
    {
        let mut st = shared.lock();
        let shown = if raw_query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{}", percent_decode(raw_query, true))
        };
        st.requests.push((req.method.clone(), shown));
        if matches!(req.method.as_str(), "POST" | "PATCH") {
            st.posted
                .push((path.clone(), body.clone().unwrap_or(Value::Null)));
        }
    }
    if req.method == "GET" && path.trim_end_matches('/') == "/version" {
        return respond(stream, 200, &version_info());
    }
    let Some(t) = parse_path(&path) else {
        let (code, st) = not_found(&format!(
            "the server could not find the requested resource {path:?}, it"
        ));
        return respond(stream, code, &st);
    };
    let (code, reply) = match (req.method.as_str(), &t.name) {
        ("GET", None) if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) => {
            let filter = match Filter::new(t.res, t.ns.clone(), &q) {
                Ok(f) => f,
                Err(e) => return respond(stream, 400, &status(400, "BadRequest", &e)),
            };
            return serve_watch(shared, stream, filter, &q);
        }
        ("GET", None) => match Filter::new(t.res, t.ns.clone(), &q) {
            Ok(f) => (200, list(&shared.lock(), &f)),
            Err(e) => (400, status(400, "BadRequest", &e)),
        },
        ("GET", Some(name)) => {
            let key = (t.res.plural, t.ns.clone().unwrap_or_default(), name.clone());
            match shared.lock().objects.get(&key) {
                Some(obj) => (200, obj.clone()),
                None => not_found(&format!("{} {name:?}", t.res.plural)),
            }
        }
        ("POST", None) if t.ns.is_some() || !t.res.namespaced => create(shared, &t, body),
        ("PATCH", Some(name)) => patch(shared, &t, name, body),
        (m, _) => (
            405,
            status(
                405,
                "MethodNotAllowed",
                &format!("{m} is not supported on {path}"),
            ),
        ),
    };
    respond(stream, code, &reply)
}

fn list(st: &State, f: &Filter) -> Value {
    let items: Vec<&Value> = st
        .objects
        .iter()
        .filter(|((plural, _, _), obj)| *plural == f.res.plural && f.matches(obj))
        .map(|(_, obj)| obj)
        .collect();
    json!({
        "kind": format!("{}List", f.res.kind),
        "apiVersion": f.res.api_version(),
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    })
}

fn create(shared: &Shared, t: &Target, body: Option<Value>) -> (u16, Value) {
    let Some(mut obj) = body.filter(Value::is_object) else {
        return (400, status(400, "BadRequest", "body is not a JSON object"));
    };
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let mut st = shared.lock();
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        let Some(prefix) = obj["metadata"]["generateName"].as_str() else {
            return (422, status(422, "Invalid", "metadata.name: Required value"));
        };
        let name = format!("{prefix}{:05x}", st.rv + 1);
        obj["metadata"]["name"] = json!(name);
    }
    if let Some(ns) = &t.ns {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = (t.res.plural, t.ns.clone().unwrap_or_default(), name.clone());
    if st.objects.contains_key(&key) {
        let msg = format!("{} {name:?} already exists", t.res.plural);
        return (409, status(409, "AlreadyExists", &msg));
    }
    (201, st.upsert(t.res, obj))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn patch(shared: &Shared, t: &Target, name: &str, body: Option<Value>) -> (u16, Value) {
    let Some(body) = body.filter(Value::is_object) else {
        return (
            415,
            status(
                415,
                "UnsupportedMediaType",
                "only JSON merge patches are supported",
            ),
        );
    };
    let mut st = shared.lock();
    let key = (
        t.res.plural,
        t.ns.clone().unwrap_or_default(),
        name.to_string(),
    );
    let Some(mut obj) = st.objects.get(&key).cloned() else {
        return not_found(&format!("{} {name:?}", t.res.plural));
    };
    merge_patch(&mut obj, &body);
    obj["metadata"]["name"] = json!(name);
    if let Some(ns) = &t.ns {
        obj["metadata"]["namespace"] = json!(ns);
    }
    (200, st.upsert(t.res, obj))
}

fn write_chunk(mut s: &TcpStream, data: &[u8]) -> io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    s.write_all(&out)
}

fn serve_watch(
    shared: &Shared,
    stream: &TcpStream,
    filter: Filter,
    q: &HashMap<String, String>,
) -> io::Result<()> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let timeout = get("timeoutSeconds")
        .parse::<u64>()
        .ok()
        .filter(|&t| t > 0)
        .map(Duration::from_secs);
    let bookmarks = get("allowWatchBookmarks") == "true";
    let from = match get("resourceVersion") {
        "" | "0" => None,
        rv => match rv.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let msg = format!("invalid resource version {rv:?}");
                return respond(stream, 400, &status(400, "BadRequest", &msg));
            }
        },
    };
    let (tx, rx) = mpsc::channel();
    let mut lines = Vec::new();
    let mut gone = false;
    let id;
    {
        let mut st = shared.lock();
        if st.stopped || st.down {
            return Ok(());
        }
        match from {
            None => {
                let current = st.objects.iter();
                let current =
                    current.filter(|((p, _, _), o)| *p == filter.res.plural && filter.matches(o));
                lines.extend(current.map(|(_, o)| event_line("ADDED", o)));
                if get("sendInitialEvents") == "true" {
                    lines.push(event_line("BOOKMARK", &bookmark(filter.res, st.rv, true)));
                }
            }
            Some(n) if n < st.compacted => {
                let msg = format!("too old resource version: {n} ({})", st.compacted);
                let mut err = status(410, "Expired", &msg);
                err["metadata"] = json!({});
                lines.push(event_line("ERROR", &err));
                gone = true;
            }
            Some(n) => {
                let replay = st.history.iter().filter(|c| c.rv > n);
                lines.extend(replay.filter_map(|c| filter.convert(c)));
            }
        }
        id = st.id();
        if !gone {
            st.watches.push(Watch {
                id,
                filter,
                bookmarks,
                tx: tx.clone(),
                stream: stream.try_clone()?,
            });
        }
    }
    let result = watch_stream(stream, lines, gone, tx, rx, timeout);
    shared.lock().watches.retain(|w| w.id != id);
    result
}

fn watch_stream(
    mut stream: &TcpStream,
    lines: Vec<Vec<u8>>,
    gone: bool,
    tx: Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
          Cache-Control: no-cache, private\r\nConnection: close\r\n\r\n",
    )?;
    for line in &lines {
        write_chunk(stream, line)?;
    }
    if gone {
        return stream.write_all(b"0\r\n\r\n");
    }
    // Ends the stream when the client goes away (it never sends anything
    // more on a watch connection).
    let mut peer = stream.try_clone()?;
    thread::Builder::new()
        .name("fakeapi-watch-peer".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            while matches!(peer.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(Msg::Close);
        })?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let msg = match deadline {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Msg::Line(line)) => write_chunk(stream, &line)?,
            Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => {
                let _ = stream.shutdown(Shutdown::Both);
                return Ok(());
            }
            Err(RecvTimeoutError::Timeout) => return stream.write_all(b"0\r\n\r\n"),
        }
    }
}
