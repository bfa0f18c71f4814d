//! Watch streams: chunked, one JSON line per event. Only `timeoutSeconds` ends one cleanly
//! (with the terminating chunk); `drop_watches`, `set_down` and `stop` cut it mid-body, the
//! way a lost API server does.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{respond, status, write_chunk};
use super::selector::Filter;
use super::store::{Res, Shared};

pub(super) enum Msg {
    /// One event line to write as a chunk.
    Line(Vec<u8>),
    /// End the stream abruptly.
    Close,
}

pub(super) struct Watch {
    pub(super) id: u64,
    pub(super) filter: Filter,
    pub(super) bookmarks: bool,
    pub(super) tx: Sender<Msg>,
    pub(super) stream: TcpStream,
}

pub(super) fn event_line(kind: &str, obj: &Value) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&json!({"type": kind, "object": obj})).expect("serialise event");
    line.push(b'\n');
    line
}

pub(super) fn bookmark(res: &Res, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta})
}

/// From `resourceVersion=N`: the history after N, then live changes (410 Expired when N
/// is compacted away). From none or `0`: the current objects as ADDED, then, with
/// `sendInitialEvents=true`, the `initial-events-end` bookmark kube-rs waits for.
pub(super) fn serve_watch(
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

pub(super) fn watch_stream(
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
