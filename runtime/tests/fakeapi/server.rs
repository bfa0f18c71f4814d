//! Accepting connections and routing requests to the store. LIST ignores paging (one page,
//! no continue token): the clients under test never need more.

use std::io::{self, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use super::http::{not_found, parse_query, percent_decode, read_request, respond, status};
use super::selector::Filter;
use super::store::{res_by_path, Res, Shared, State};
use super::watch::serve_watch;

pub(super) fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
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
            // Counted before the client can see the close.
            st.turned_away += u64::from(!st.stopped);
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

/// `GET /version`: a fixed v1.37.0.
pub(super) fn version_info() -> Value {
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
pub(super) struct Target {
    pub(super) res: &'static Res,
    pub(super) ns: Option<String>,
    pub(super) name: Option<String>,
}

/// `/api/v1/...` or `/apis/{group}/{version}/...` then `{plural}[/{name}]` or
/// `namespaces/{ns}/{plural}[/{name}]`.
pub(super) fn parse_path(path: &str) -> Option<Target> {
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

pub(super) fn serve_conn(shared: &Shared, stream: &TcpStream) -> io::Result<()> {
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

pub(super) fn list(st: &State, f: &Filter) -> Value {
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

/// POST (201, 409 when taken): the event Recorder's create, `generateName` included.
pub(super) fn create(shared: &Shared, t: &Target, body: Option<Value>) -> (u16, Value) {
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
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
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

/// PATCH: only the JSON merge patch the Recorder sends; 404 when absent.
pub(super) fn patch(shared: &Shared, t: &Target, name: &str, body: Option<Value>) -> (u16, Value) {
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
