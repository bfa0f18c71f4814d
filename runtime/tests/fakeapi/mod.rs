//! A fake Kubernetes API server for tests: std threads, plain HTTP/1.1, JSON. Enough to drive
//! kube-rs's `watcher` and event `Recorder` without a cluster.
//!
//! The test owns the store: `apply` / `delete` change it and notify open watches; `compact`,
//! `drop_watches`, `set_down` and `bookmark` inject the failures a real API server produces.
//! `serve` takes a listener the test bound inside a `netns::Netns`, so the host's network
//! namespace is never used.
//!
//! `store`: objects, history, fan-out to watches; `server`: accept loop and routes; `http`:
//! the wire; `watch`: event streams; `selector`: label and field selectors.
#![allow(dead_code)]

mod http;
mod selector;
mod server;
mod store;
mod watch;

use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use k8s_openapi::serde::Serialize;
use serde_json::Value;

use server::accept_loop;
use store::{res_by_name, res_by_type, Shared, State};
use watch::{bookmark, event_line, Msg};

/// Never held by the server threads, so dropping the last `FakeApi` stops the server.
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
        // Wakes the accept thread: accept() on a shut-down listener fails with EINVAL.
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

/// A running fake API server; clones share it.
#[derive(Clone)]
pub struct FakeApi(Arc<Handle>);

impl FakeApi {
    /// Bound by the caller, so that it can be inside a test namespace.
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

    /// Stores any object of a served kind as the API server would (new RV, uid and
    /// creationTimestamp filled, namespace defaulted) and notifies watches.
    pub fn apply(&self, obj: impl Serialize) -> Value {
        let obj = serde_json::to_value(obj).expect("fakeapi: serialise object");
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let res = res_by_type(api_version, kind)
            .unwrap_or_else(|| panic!("fakeapi: unsupported type {api_version:?} {kind:?}"));
        self.lock().upsert(res, obj)
    }

    /// `kind` as "Service" or "services". Watches see the last state with the new RV, as
    /// from the API server; false, and nothing changes, when it is absent.
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

    /// Forgets history, so a later watch from an older RV gets 410 Expired (as after etcd
    /// compaction); open watches are unaffected.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.compacted = st.rv;
        st.history.clear();
    }

    /// Closes every open watch connection abruptly (no terminating chunk).
    pub fn drop_watches(&self) {
        self.lock().drop_watches();
    }

    /// While down, connections are closed as soon as accepted and open watches are dropped.
    pub fn set_down(&self, down: bool) {
        let mut st = self.lock();
        st.down = down;
        if down {
            st.drop_watches();
        }
    }

    /// Connections closed unanswered while down: a client that has noticed the outage (it
    /// tried again and was turned away) made one.
    pub fn turned_away(&self) -> u64 {
        self.lock().turned_away
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

    /// For waiting until a client has (re-)established its watches.
    pub fn open_watches(&self) -> usize {
        self.lock().watches.len()
    }

    /// Requests seen so far: (method, path?query), percent-decoded.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.lock().requests.clone()
    }

    /// Bodies POSTed or PATCHed, by decoded query-less path (a non-JSON body as a string).
    pub fn posted(&self) -> Vec<(String, Value)> {
        self.lock().posted.clone()
    }
}
