//! Tests of the fake API server (`tests/fakeapi`) itself, over raw TCP and with
//! a real kube-rs client, inside throw-away network namespaces.

mod fakeapi;
mod netns;

use std::fmt::Display;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use fakeapi::FakeApi;
use netns::agent::PATIENCE;
use netns::Netns;
use serde_json::{json, Value};

/// A fake serving inside a fresh namespace; None when kernel tests cannot run here.
fn start(tag: &str) -> Option<(Netns, FakeApi)> {
    if !netns::require() {
        return None;
    }
    let ns = Netns::new(tag);
    let listener = ns
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .expect("bind in namespace");
    let api = FakeApi::serve(listener);
    Some((ns, api))
}

fn service(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
    })
}

/// Query-string encoding of a selector.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'/' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A connection made inside `ns` (usable from this thread afterwards).
fn connect(ns: &Netns, addr: SocketAddr) -> TcpStream {
    let s = ns
        .run(move || TcpStream::connect(addr))
        .expect("connect in namespace");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

fn send(s: &mut TcpStream, method: &str, path: &str, body: Option<&Value>) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
}

/// One request on a fresh connection: (status code, JSON body).
fn call(ns: &Netns, api: &FakeApi, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = connect(ns, api.addr());
    send(&mut s, method, path, body);
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("header end");
    assert!(head.contains("Content-Length:"), "{head}");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_str(body).expect("JSON body"))
}

fn get(ns: &Netns, api: &FakeApi, path: &str) -> (u16, Value) {
    call(ns, api, "GET", path, None)
}

/// Names of a list's items.
fn names(list: &Value) -> Vec<&str> {
    let items = list["items"].as_array().expect("items");
    items
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect()
}

struct WatchConn(BufReader<TcpStream>);

fn watch(ns: &Netns, api: &FakeApi, path: &str) -> WatchConn {
    let mut s = connect(ns, api.addr());
    send(&mut s, "GET", path, None);
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    WatchConn(r)
}

/// A watch on `/api/v1/{plural}` from `rv`, `more` appended to the query.
fn watch_from(ns: &Netns, api: &FakeApi, plural: &str, rv: impl Display, more: &str) -> WatchConn {
    let path = format!("/api/v1/{plural}?watch=true&resourceVersion={rv}{more}");
    watch(ns, api, &path)
}

impl WatchConn {
    /// The next event; Ok(None) at the terminating chunk, Err at an abrupt end. Panics when
    /// nothing comes: silence is neither.
    fn next(&mut self) -> Result<Option<Value>, String> {
        let failed = |e: std::io::Error| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                panic!("the watch said nothing for {PATIENCE:?}")
            }
            _ => e.to_string(),
        };
        let mut size = String::new();
        if self.0.read_line(&mut size).map_err(failed)? == 0 {
            return Err("eof".into());
        }
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        let mut data = vec![0; size + 2];
        self.0.read_exact(&mut data).map_err(failed)?;
        if size == 0 {
            return Ok(None);
        }
        let line = std::str::from_utf8(&data[..size]).unwrap();
        assert!(line.ends_with('\n'), "one JSON line per event: {line:?}");
        Ok(Some(serde_json::from_str(line).unwrap()))
    }

    /// (type, name, resourceVersion) of the next event.
    fn event(&mut self) -> (String, String, u64) {
        let ev = self.next().expect("stream open").expect("an event");
        let meta = &ev["object"]["metadata"];
        (
            ev["type"].as_str().unwrap().to_string(),
            meta["name"].as_str().unwrap_or_default().to_string(),
            meta["resourceVersion"].as_str().unwrap().parse().unwrap(),
        )
    }
}

#[test]
fn list_get_and_version() {
    let Some((ns, api)) = start("fake-list") else {
        return;
    };
    let typed: k8s_openapi::api::core::v1::Service =
        serde_json::from_value(service("a", "s1", json!({}))).unwrap();
    api.apply(&typed);
    api.apply(service("b", "s2", json!({})));
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}));

    let (code, list) = get(&ns, &api, "/api/v1/services?limit=500");
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(names(&list), ["s1", "s2"]);
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rv, api.resource_version());
    let item_rv = list["items"][1]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap();
    assert_eq!(item_rv.parse::<u64>().unwrap(), rv - 1);

    assert_eq!(
        names(&get(&ns, &api, "/api/v1/namespaces/b/services").1),
        ["s2"]
    );
    assert_eq!(
        get(&ns, &api, "/api/v1/nodes/n1").1["metadata"]["name"],
        "n1"
    );
    let (code, st) = get(&ns, &api, "/api/v1/nodes/n2");
    assert_eq!(
        (code, st["kind"].as_str(), st["code"].as_u64()),
        (404, Some("Status"), Some(404))
    );
    assert_eq!(get(&ns, &api, "/api/v1/pods").0, 404);
    assert_eq!(get(&ns, &api, "/version").1["major"], "1");
    assert_eq!(
        names(&get(&ns, &api, "/apis/discovery.k8s.io/v1/endpointslices").1),
        [""; 0]
    );
    assert!(api
        .requests()
        .contains(&("GET".into(), "/api/v1/services?limit=500".into())));
}

#[test]
fn watch_from_list_rv_sees_changes_in_order() {
    let Some((ns, api)) = start("fake-watch") else {
        return;
    };
    api.apply(service("a", "s1", json!({})));
    let rv = get(&ns, &api, "/api/v1/services").1["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.apply(service("a", "s2", json!({}))); // before the watch: replayed from history
    let more = "&allowWatchBookmarks=true&timeoutSeconds=290";
    let mut w = watch_from(&ns, &api, "services", &rv, more);
    api.apply(service("a", "s1", json!({"x": "y"})));
    assert!(api.delete("Service", Some("a"), "s2"));
    let rv: u64 = rv.parse().unwrap();
    assert_eq!(w.event(), ("ADDED".into(), "s2".into(), rv + 1));
    assert_eq!(w.event(), ("MODIFIED".into(), "s1".into(), rv + 2));
    assert_eq!(w.event(), ("DELETED".into(), "s2".into(), rv + 3));
    api.bookmark();
    let bm = w.next().unwrap().unwrap();
    assert_eq!(bm["type"], "BOOKMARK");
    assert_eq!(
        bm["object"],
        json!({"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": (rv + 3).to_string()}})
    );

    // timeoutSeconds ends the stream cleanly.
    let mut short = watch_from(&ns, &api, "nodes", rv + 3, "&timeoutSeconds=1");
    assert_eq!(short.next(), Ok(None));
}

#[test]
fn watch_from_compacted_rv_gets_410() {
    let Some((ns, api)) = start("fake-gone") else {
        return;
    };
    api.apply(service("a", "s1", json!({})));
    let old = api.resource_version();
    api.apply(service("a", "s2", json!({})));
    api.compact();
    let now = api.resource_version();

    let mut w = watch_from(&ns, &api, "services", old, "");
    let ev = w.next().unwrap().unwrap();
    assert_eq!(ev["type"], "ERROR");
    let st = &ev["object"];
    assert_eq!(
        (
            st["kind"].as_str(),
            st["code"].as_u64(),
            st["reason"].as_str()
        ),
        (Some("Status"), Some(410), Some("Expired"))
    );
    assert_eq!(w.next(), Ok(None));

    // From the compaction point on, watching works.
    let mut w = watch_from(&ns, &api, "services", now, "");
    api.apply(service("a", "s3", json!({})));
    assert_eq!(w.event(), ("ADDED".into(), "s3".into(), now + 1));
}

#[test]
fn drop_watches_closes_streams() {
    let Some((ns, api)) = start("fake-drop") else {
        return;
    };
    let mut w = watch_from(&ns, &api, "services", 1, "");
    assert_eq!(api.open_watches(), 1);
    api.drop_watches();
    assert!(w.next().is_err(), "abrupt end, no terminating chunk");
    assert_eq!(api.open_watches(), 0);
}

#[test]
fn selectors_filter_lists_and_watches() {
    let Some((ns, api)) = start("fake-sel") else {
        return;
    };
    api.apply(service("a", "web", json!({"app": "web"})));
    api.apply(service("a", "db", json!({"app": "db"})));
    api.apply(service("b", "bare", json!({})));
    let list = |q: &str| names(&get(&ns, &api, &format!("/api/v1/services?{q}")).1).join(",");
    let labels = |sel: &str| list(&format!("labelSelector={}", enc(sel)));
    assert_eq!(labels("app=web"), "web");
    assert_eq!(labels("app"), "db,web");
    assert_eq!(labels("!app"), "bare");
    assert_eq!(labels("app!=web"), "db,bare");
    assert_eq!(labels("app in (web,db),app notin (db)"), "web");
    assert_eq!(
        list(&format!("fieldSelector={}", enc("metadata.name=db"))),
        "db"
    );
    assert_eq!(
        list(&format!("fieldSelector={}", enc("metadata.namespace=b"))),
        "bare"
    );
    assert_eq!(get(&ns, &api, "/api/v1/services?labelSelector=a+b").0, 400);

    let rv = api.resource_version();
    let selector = format!("&labelSelector={}", enc("app=web"));
    let mut w = watch_from(&ns, &api, "services", rv, &selector);
    api.apply(service("a", "web", json!({"app": "old"}))); // stops matching
    api.apply(service("a", "db", json!({"app": "web"}))); // starts matching
    api.apply(service("b", "bare", json!({"other": "x"}))); // never matches
    api.delete("Service", Some("a"), "db");
    assert_eq!(w.event(), ("DELETED".into(), "web".into(), rv + 1));
    assert_eq!(w.event(), ("ADDED".into(), "db".into(), rv + 2));
    assert_eq!(w.event(), ("DELETED".into(), "db".into(), rv + 4));
}

#[test]
fn down_refuses_connections() {
    let Some((ns, api)) = start("fake-down") else {
        return;
    };
    let mut w = watch_from(&ns, &api, "services", 1, "");
    api.set_down(true);
    assert!(w.next().is_err());
    let mut s = connect(&ns, api.addr());
    send(&mut s, "GET", "/version", None);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "no response while down");
    assert_eq!(api.turned_away(), 1);
    api.set_down(false);
    assert_eq!(get(&ns, &api, "/version").0, 200);
}

#[test]
fn events_post_and_patch() {
    let Some((ns, api)) = start("fake-events") else {
        return;
    };
    let path = "/apis/events.k8s.io/v1/namespaces/a/events";
    let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"generateName": "s1."}, "reason": "Rejected"});
    let (code, created) = call(&ns, &api, "POST", path, Some(&ev));
    assert_eq!(code, 201);
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("s1."));
    assert_eq!(created["metadata"]["namespace"], "a");
    assert!(created["metadata"]["resourceVersion"].is_string());
    let patch = json!({"series": {"count": 2}});
    let (code, patched) = call(&ns, &api, "PATCH", &format!("{path}/{name}"), Some(&patch));
    assert_eq!(
        (code, &patched["series"]["count"], &patched["reason"]),
        (200, &json!(2), &json!("Rejected"))
    );
    assert_eq!(
        call(&ns, &api, "PATCH", &format!("{path}/nope"), Some(&patch)).0,
        404
    );
    let posted = api.posted();
    assert_eq!(posted.len(), 3);
    assert_eq!(posted[0], (path.to_string(), ev));
}

/// Polls `check` until it holds; panics naming `what` after `PATIENCE`.
async fn until(what: &str, check: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(
            start.elapsed() < PATIENCE,
            "waited {PATIENCE:?} in vain for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the store holds exactly `want` (names, sorted, comma-separated).
async fn wait(
    store: &kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Service>,
    want: &str,
) {
    let names = || {
        let mut n: Vec<String> = store
            .state()
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        n.sort();
        n.join(",")
    };
    let what = format!("the store to hold {want:?}");
    until(&what, || names() == want).await;
}

/// A real kube-rs watcher + reflector and event recorder against the fake.
#[test]
fn drives_kube_watcher_and_recorder() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::{ObjectReference, Service};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    use kube::runtime::{reflector, watcher};

    let Some((ns, api)) = start("fake-kube") else {
        return;
    };
    api.apply(service("a", "s1", json!({})));
    let fake = api.clone();
    // All of the client's sockets are made on this namespace thread.
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let config = kube::Config::new(fake.url().parse().unwrap());
            let client = kube::Client::try_from(config).unwrap();
            let (store, writer) = reflector::store::<Service>();
            let stream = reflector(
                writer,
                watcher(kube::Api::all(client.clone()), watcher::Config::default()),
            );
            let task = tokio::spawn(stream.for_each(|_| async {}));
            wait(&store, "s1").await;
            fake.apply(service("a", "s2", json!({})));
            wait(&store, "s1,s2").await;
            // Re-watch from the last RV after an abrupt close.
            fake.drop_watches();
            fake.delete("Service", Some("a"), "s1");
            wait(&store, "s2").await;
            // Down, then back with history compacted: 410, the watcher re-lists.
            let turned_away = fake.turned_away();
            fake.set_down(true);
            fake.apply(service("a", "s3", json!({})));
            fake.compact();
            until("the watcher to be turned away while down", || {
                fake.turned_away() > turned_away
            })
            .await;
            fake.set_down(false);
            wait(&store, "s2,s3").await;
            task.abort();

            let recorder = Recorder::new(
                client,
                Reporter {
                    controller: "svc-nft".into(),
                    instance: None,
                },
            );
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some("a".into()),
                name: Some("s2".into()),
                ..Default::default()
            };
            let ev = Event {
                type_: EventType::Warning,
                reason: "Rejected".into(),
                note: Some("test".into()),
                action: "Compile".into(),
                secondary: None,
            };
            recorder.publish(&ev, &reference).await.unwrap();
            recorder.publish(&ev, &reference).await.unwrap();
        });
    });
    let verbs: Vec<String> = api.posted().iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(verbs.len(), 2, "{verbs:?}");
    assert!(verbs[0].ends_with("/namespaces/a/events"), "{verbs:?}");
    let reqs = api.requests();
    assert!(
        reqs.iter()
            .any(|(m, p)| m == "PATCH" && p.contains("/events/")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|(_, p)| p.contains("watch=true&timeoutSeconds=290")),
        "{reqs:?}"
    );
    let lists = reqs
        .iter()
        .filter(|(_, p)| p.starts_with("/api/v1/services?") && !p.contains("watch="))
        .count();
    assert!(lists >= 2, "re-listed after 410: {reqs:?}");
}
