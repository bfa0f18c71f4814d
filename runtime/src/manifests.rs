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

/// `Kind/namespace/name` in one allocation: the directory holds one per object (names
/// cannot contain `/`).
type Key = Box<str>;

const KINDS: [&str; 3] = ["Service", "EndpointSlice", "Endpoints"];

/// A key's kind, namespace and name.
fn parts(key: &str) -> (&'static str, String, String) {
    let mut parts = key.splitn(3, '/');
    let kind = parts.next().unwrap_or_default();
    let kind = KINDS
        .into_iter()
        .find(|k| *k == kind)
        .expect("keys are made by key()");
    let namespace = parts.next().unwrap_or_default().to_string();
    (
        kind,
        namespace,
        parts.next().unwrap_or_default().to_string(),
    )
}

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
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or_default();
    format!("{kind}/{namespace}/{name}").into()
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

/// Parse one file, handing each object to `each`; what cannot be read or parsed is logged
/// and left out.
fn parse(path: &Path, each: &mut dyn FnMut(Object)) {
    let source = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!("{source}: cannot read: {e}");
            return;
        }
    };
    manifest::parse_each(&source, &text, each, &mut |e| {
        tracing::warn!("rejected: {e}")
    });
}

/// The receiver is gone: stop.
struct Closed;

impl Directory {
    /// The file whose copy of `key` counts: the first in name order.
    fn winner(&self, key: &Key) -> Option<&PathBuf> {
        let mut holders = self
            .files
            .iter()
            .filter(|(_, (_, keys))| keys.contains(key));
        holders.next().map(|(path, _)| path)
    }

    /// Read what changed on disk, sending the updates that bring the sync thread up to date
    /// as each object is read (a large file is never in memory whole).
    fn refresh(&mut self, dir: &Path, tx: &Sender<Update>) -> Result<(), Closed> {
        let send = |update| tx.send(update).map_err(|_| Closed);
        let now = scan(dir);
        // Keys a file stopped defining: another file's copy may count now, or none.
        let mut orphaned: BTreeSet<Key> = BTreeSet::new();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            let (_, keys) = self.files.remove(&path).expect("listed");
            orphaned.extend(keys);
        }
        for (path, stamp) in now {
            if self.files.get(&path).is_some_and(|(s, _)| *s == stamp) {
                continue;
            }
            let (mut keys, mut result) = (BTreeSet::new(), Ok(()));
            let earlier = |key: &Key| {
                let before = self.files.range::<PathBuf, _>(..path.clone());
                before
                    .filter(|(_, (_, ks))| ks.contains(key))
                    .map(|(p, _)| p.clone())
                    .next()
            };
            parse(&path, &mut |object| {
                let key = key(&object);
                match earlier(&key) {
                    Some(first) => tracing::warn!(
                        "rejected: {}: {key}: defined again (first in {}); this copy is ignored",
                        path.display(),
                        first.display()
                    ),
                    None if result.is_ok() => {
                        result = send(Update::Upsert {
                            object,
                            trigger: None,
                        })
                    }
                    None => {}
                }
                keys.insert(key);
            });
            result?;
            if let Some((_, old)) = self.files.insert(path, (stamp, keys.clone())) {
                orphaned.extend(old.into_iter().filter(|k| !keys.contains(k)));
            }
        }
        // Orphans defined elsewhere are read again from the file that now counts.
        let mut reread: BTreeMap<PathBuf, BTreeSet<Key>> = BTreeMap::new();
        for key in orphaned {
            match self.winner(&key).cloned() {
                Some(path) => {
                    reread.entry(path).or_default().insert(key);
                }
                None => {
                    let (kind, namespace, name) = parts(&key);
                    send(Update::Remove {
                        kind,
                        namespace,
                        name,
                    })?;
                }
            }
        }
        for (path, wanted) in reread {
            let mut result = Ok(());
            parse(&path, &mut |object| {
                if result.is_ok() && wanted.contains(&key(&object)) {
                    result = send(Update::Upsert {
                        object,
                        trigger: None,
                    });
                }
            });
            result?;
        }
        Ok(())
    }
}

/// Poll `dir` every `every` until the receiver is gone.
pub fn watch(dir: PathBuf, every: Duration, tx: Sender<Update>) {
    let mut directory = Directory::default();
    let first = directory.refresh(&dir, &tx);
    if first.is_err() || tx.send(Update::Listed("manifests")).is_err() {
        return;
    }
    loop {
        std::thread::sleep(every);
        if directory.refresh(&dir, &tx).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn service(ip: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: t}}\nspec: {{clusterIP: {ip}}}\n")
    }

    /// What a refresh sends: ("upsert", cluster IP) or ("remove", name).
    fn refresh(directory: &mut Directory, dir: &Path) -> Vec<(&'static str, String)> {
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(directory.refresh(dir, &tx).is_ok());
        drop(tx);
        rx.iter()
            .map(|u| match u {
                Update::Upsert { object, .. } => match object.resource {
                    Resource::Service(s) => {
                        let s: Service = *s;
                        ("upsert", s.spec.unwrap().cluster_ip.unwrap())
                    }
                    _ => ("upsert", String::new()),
                },
                Update::Remove { name, .. } => ("remove", name),
                _ => ("other", String::new()),
            })
            .collect()
    }

    #[test]
    fn the_first_file_in_name_order_defines_an_object() {
        let dir = std::env::temp_dir().join(format!("svc-nft-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut directory = Directory::default();
        std::fs::write(dir.join("b.yaml"), service("10.96.0.2")).unwrap();
        assert_eq!(
            refresh(&mut directory, &dir),
            [("upsert", "10.96.0.2".into())]
        );
        // An earlier file takes over; the later copy is ignored from then on.
        std::fs::write(dir.join("a.yaml"), service("10.96.0.1")).unwrap();
        assert_eq!(
            refresh(&mut directory, &dir),
            [("upsert", "10.96.0.1".into())]
        );
        assert_eq!(refresh(&mut directory, &dir), []);
        // It goes: the other copy counts again; both gone: the Service goes.
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert_eq!(
            refresh(&mut directory, &dir),
            [("upsert", "10.96.0.2".into())]
        );
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        assert_eq!(refresh(&mut directory, &dir), [("remove", "web".into())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
