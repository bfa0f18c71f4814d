//! The object store: the resources the fake knows, every object, the history a watch
//! replays from, and the fan-out of each change to the open watches.

use std::collections::{BTreeMap, HashMap};
use std::net::{Shutdown, TcpStream};
use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Value};

use super::watch::{Msg, Watch};

/// One API resource the fake serves.
#[derive(Debug)]
pub(super) struct Res {
    pub(super) group: &'static str,
    pub(super) version: &'static str,
    pub(super) plural: &'static str,
    pub(super) kind: &'static str,
    pub(super) namespaced: bool,
}

impl Res {
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

pub(super) const RESOURCES: &[Res] = &[
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
        group: "networking.k8s.io",
        version: "v1",
        plural: "servicecidrs",
        kind: "ServiceCIDR",
        namespaced: false,
    },
    Res {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
    },
];

pub(super) fn res_by_path(group: &str, version: &str, plural: &str) -> Option<&'static Res> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub(super) fn res_by_type(api_version: &str, kind: &str) -> Option<&'static Res> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// By kind ("Service", any case) or plural ("services").
pub(super) fn res_by_name(name: &str) -> Option<&'static Res> {
    RESOURCES
        .iter()
        .find(|r| r.kind.eq_ignore_ascii_case(name) || r.plural == name)
}

/// Store key: (plural, namespace or "" when cluster-scoped, name).
pub(super) type Key = (&'static str, String, String);

/// One change in the store's history.
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) res: &'static Res,
    pub(super) kind: &'static str, // ADDED | MODIFIED | DELETED
    pub(super) obj: Value,
    /// The object before a MODIFIED.
    pub(super) prev: Option<Value>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) rv: u64,
    /// Watches from an RV below this get 410 Gone.
    pub(super) compacted: u64,
    pub(super) objects: BTreeMap<Key, Value>,
    pub(super) history: Vec<Change>,
    pub(super) watches: Vec<Watch>,
    /// Every open connection, to shut down on stop.
    pub(super) conns: HashMap<u64, TcpStream>,
    pub(super) next_id: u64,
    pub(super) down: bool,
    /// Connections closed unanswered because the server was down.
    pub(super) turned_away: u64,
    pub(super) stopped: bool,
    pub(super) requests: Vec<(String, String)>,
    pub(super) posted: Vec<(String, Value)>,
}

impl State {
    pub(super) fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(super) fn record(&mut self, change: Change) {
        for w in &self.watches {
            if let Some(line) = w.filter.convert(&change) {
                let _ = w.tx.send(Msg::Line(line));
            }
        }
        self.history.push(change);
    }

    /// Stores `obj` under a new RV, keeping uid and creationTimestamp across updates as
    /// the API server does, and notifies watches.
    pub(super) fn upsert(&mut self, res: &'static Res, mut obj: Value) -> Value {
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

    pub(super) fn remove(&mut self, res: &'static Res, ns: &str, name: &str) -> Option<Value> {
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

    pub(super) fn drop_watches(&mut self) {
        for w in self.watches.drain(..) {
            let _ = w.stream.shutdown(Shutdown::Both);
            let _ = w.tx.send(Msg::Close);
        }
    }
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn now() -> String {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .expect("timestamp in range")
        .to_string()
}
