//! The manifest directory as a source of [`Update`]s: polled for created, written, deleted
//! and renamed files; only a changed file is parsed again, and only the objects it adds,
//! changes or drops are sent on.
//!
//! An object defined in two files counts once: the file first in name order wins (as in a
//! one-off compile) and the other copy is reported.

use crate::syncer::Update;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::{Duration, SystemTime};
use svc_nft_compiler::{manifest, Object, Resource};

/// (kind, namespace, name)
type Key = (&'static str, String, String);

/// How a file looked when last read: any create, write or rename changes it.
type Stamp = (u64, Option<SystemTime>);

/// The keys each file defined when last read (not the objects: at 100k Services they would
/// stay resident for nothing).
#[derive(Default)]
struct Directory {
    files: BTreeMap<PathBuf, (Stamp, BTreeSet<Key>)>,
}

fn key(obj: &Object) -> Key {
    let (kind, meta) = match &obj.resource {
        Resource::Service(s) => ("Service", &s.metadata),
        Resource::EndpointSlice(s) => ("EndpointSlice", &s.metadata),
        Resource::Endpoints(e) => ("Endpoints", &e.metadata),
    };
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    (kind, namespace, meta.name.clone().unwrap_or_default())
}

/// The manifest files of `dir` and their stamps.
fn scan(dir: &Path) -> BTreeMap<PathBuf, Stamp> {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries
        .filter_map(|e| {
            let path = e.path();
            let ext = path.extension().and_then(|x| x.to_str());
            if !matches!(ext, Some("yaml" | "yml" | "json")) {
                return None;
            }
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            Some((path, (meta.len(), meta.modified().ok())))
        })
        .collect()
}

/// Parse one file; what cannot be read or parsed is logged and left out.
fn parse(path: &Path) -> BTreeMap<Key, Object> {
    let source = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!("{source}: cannot read: {e}");
            return BTreeMap::new();
        }
    };
    let (objects, errors) = manifest::parse(&source, &text);
    for e in errors {
        tracing::warn!("rejected: {e}");
    }
    objects.into_iter().map(|o| (key(&o), o)).collect()
}

impl Directory {
    /// The file whose copy of `key` counts: the first in name order; later copies are
    /// reported.
    fn winner(&self, key: &Key) -> Option<&PathBuf> {
        let mut copies = self
            .files
            .iter()
            .filter(|(_, (_, keys))| keys.contains(key))
            .map(|(path, _)| path);
        let first = copies.next();
        if let (Some(kept), Some(path)) = (first, copies.next()) {
            tracing::warn!(
                "rejected: {}: {} {}/{}: defined again (first in {}); this copy is ignored",
                path.display(),
                key.0,
                key.1,
                key.2,
                kept.display()
            );
        }
        first
    }

    /// Read what changed on disk; the updates that bring the sync thread up to date.
    fn refresh(&mut self, dir: &Path) -> Vec<Update> {
        let now = scan(dir);
        let mut touched: BTreeSet<Key> = BTreeSet::new();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            let (_, keys) = self.files.remove(&path).expect("listed");
            touched.extend(keys);
        }
        let mut parsed: BTreeMap<PathBuf, BTreeMap<Key, Object>> = BTreeMap::new();
        for (path, stamp) in now {
            if self.files.get(&path).is_some_and(|(s, _)| *s == stamp) {
                continue;
            }
            let objects = parse(&path);
            let keys: BTreeSet<Key> = objects.keys().cloned().collect();
            touched.extend(keys.iter().cloned());
            if let Some((_, old)) = self.files.insert(path.clone(), (stamp, keys)) {
                touched.extend(old);
            }
            parsed.insert(path, objects);
        }
        let mut updates = Vec::new();
        for key in touched {
            let Some(path) = self.winner(&key).cloned() else {
                let (kind, namespace, name) = key;
                updates.push(Update::Remove {
                    kind,
                    namespace,
                    name,
                });
                continue;
            };
            // A copy in an unchanged file took over (the winner's was dropped): read it again.
            let objects = parsed.entry(path.clone()).or_insert_with(|| parse(&path));
            if let Some(object) = objects.remove(&key) {
                updates.push(Update::Upsert {
                    object,
                    trigger: None,
                });
            }
        }
        updates
    }
}

/// Poll `dir` every `every` until the receiver is gone.
pub fn watch(dir: PathBuf, every: Duration, tx: Sender<Update>) {
    let mut directory = Directory::default();
    let first = directory.refresh(&dir);
    for update in first.into_iter().chain([Update::Listed("manifests")]) {
        if tx.send(update).is_err() {
            return;
        }
    }
    loop {
        std::thread::sleep(every);
        for update in directory.refresh(&dir) {
            if tx.send(update).is_err() {
                return;
            }
        }
    }
}
