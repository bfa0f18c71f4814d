//! The manifest directory as a source of [`Update`]s: polled for created, written, deleted
//! and renamed files; only a changed file is parsed again, and only the objects it adds,
//! changes or drops are sent on.
//!
//! An object defined in two files counts once: the file first in name order wins (as in a
//! one-off compile) and the other copy is reported.
//!
//! Bad input never removes rules: an object that fails to parse keeps its last good version
//! (the file still counts as defining it), a document so broken that it names no object keeps
//! every object its file defined before, and a directory that cannot be read keeps them all.
//! Only deleting an object from its file, or the file, removes it.
//!
//! A file is read once it has settled: the same size and modification time on two scans in a
//! row. An editor or a tool that truncates a file and writes it again in place would
//! otherwise be caught in between, and an empty file defines no objects. A file gone is
//! likewise gone on two scans before its objects go. The first scan reads everything.

use crate::syncer::Update;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::{Duration, SystemTime};
use svc_nft_compiler::{manifest, object_id, Object, ObjectId};

/// `Kind/namespace/name` in one allocation: the directory holds one per object (names
/// cannot contain `/`).
type Key = Box<str>;

const KINDS: [&str; 4] = ["Service", "EndpointSlice", "Endpoints", "ServiceCIDR"];

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

/// A file as last read: its stamp, a digest of its content (a file rewritten as it was is
/// not parsed again, so it logs nothing), and the keys it defined (not the objects: at 100k
/// Services they would stay resident for nothing).
struct File {
    stamp: Stamp,
    digest: u64,
    keys: BTreeSet<Key>,
}

#[derive(Default)]
struct Directory {
    files: BTreeMap<PathBuf, File>,
    /// What the last scan saw (None before the first): a file is read once it looks the
    /// same as then.
    last_scan: Option<BTreeMap<PathBuf, Stamp>>,
    /// The directory could not be read at the last refresh (logged once).
    unreadable: bool,
}

fn key(id: &ObjectId) -> Key {
    format!("{}/{}/{}", id.kind, id.namespace, id.name).into()
}

/// The manifest files of `dir` and their stamps.
fn scan(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
    let entries = std::fs::read_dir(dir)?.flatten();
    Ok(entries
        .filter_map(|e| {
            let path = e.path();
            let ext = path.extension().and_then(|x| x.to_str());
            if !matches!(ext, Some("yaml" | "yml" | "json")) {
                return None;
            }
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            Some((path, (meta.len(), meta.modified().ok())))
        })
        .collect())
}

/// What reading one file found besides its good objects.
#[derive(Default)]
struct Rejected {
    /// Objects named by a document that failed to parse: their last good version stays.
    objects: BTreeSet<Key>,
    /// A document failed in a way that names no object (bad syntax, a half-written file),
    /// or the file could not be read: every object the file defined before stays.
    anonymous: bool,
}

fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// A file's text; what cannot be read is logged.
fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .inspect_err(|e| {
            tracing::warn!(
                "rejected: {}: cannot read: {e}; the objects it defined stay in force",
                path.display()
            )
        })
        .ok()
}

/// Parse one file's text, handing each good object to `each`; what cannot be parsed is
/// logged and reported.
fn parse(path: &Path, text: &str, each: &mut dyn FnMut(Object)) -> Rejected {
    let source = path.display().to_string();
    let mut rejected = Rejected::default();
    manifest::parse_each(&source, text, each, &mut |d| {
        if !d.is_error() {
            tracing::warn!("{d}");
            return;
        }
        tracing::warn!("rejected: {d}; the objects it defined before stay in force");
        match &d.object {
            Some(id) => rejected.objects.insert(key(id)),
            None => std::mem::replace(&mut rejected.anonymous, true),
        };
    });
    rejected
}

/// The receiver is gone: stop.
struct Closed;

impl Directory {
    /// The file whose copy of `key` counts: the first in name order.
    fn winner(&self, key: &Key) -> Option<&PathBuf> {
        let mut holders = self
            .files
            .iter()
            .filter(|(_, file)| file.keys.contains(key));
        holders.next().map(|(path, _)| path)
    }

    /// Read what changed on disk, sending the updates that bring the sync thread up to date
    /// as each object is read (a large file is never in memory whole).
    fn refresh(&mut self, dir: &Path, tx: &Sender<Update>) -> Result<(), Closed> {
        let now = match scan(dir) {
            Ok(now) => now,
            Err(e) => {
                if !self.unreadable {
                    tracing::warn!(
                        "{}: cannot read: {e}; every rule stays as it is",
                        dir.display()
                    );
                    self.unreadable = true;
                }
                return Ok(());
            }
        };
        if std::mem::take(&mut self.unreadable) {
            tracing::info!("{}: readable again", dir.display());
        }
        let last = self.last_scan.replace(now.clone());
        let settled = |path: &Path, stamp: Option<&Stamp>| {
            last.as_ref().is_none_or(|last| last.get(path) == stamp)
        };
        // Keys a file stopped defining: another file's copy may count now, or none.
        let mut orphaned: BTreeSet<Key> = BTreeSet::new();
        self.files.retain(|path, file| {
            let kept = now.contains_key(path) || !settled(path, None);
            if !kept {
                orphaned.append(&mut file.keys);
            }
            kept
        });
        for (path, stamp) in now {
            let changed = self.files.get(&path).is_none_or(|file| file.stamp != stamp);
            if changed && settled(&path, Some(&stamp)) {
                self.read_file(path, stamp, tx, &mut orphaned)?;
            }
        }
        self.settle(orphaned, tx)
    }

    /// Read a new or changed file: send its objects (those no earlier file defines), and add
    /// the keys it stopped defining to `orphaned`. Objects it fails to parse keep counting as
    /// defined by it, so their last good versions stay.
    fn read_file(
        &mut self,
        path: PathBuf,
        stamp: Stamp,
        tx: &Sender<Update>,
        orphaned: &mut BTreeSet<Key>,
    ) -> Result<(), Closed> {
        // Unreadable, or rewritten as it was: nothing to send (read again when it changes).
        let text = read(&path);
        let digest = text.as_deref().map(digest);
        if let Some(old) = self.files.get_mut(&path) {
            if digest.is_none_or(|d| d == old.digest) {
                old.stamp = stamp;
                return Ok(());
            }
        }
        let (text, digest) = (text.unwrap_or_default(), digest.unwrap_or_default());
        let (mut keys, mut result) = (BTreeSet::new(), Ok(()));
        let rejected = parse(&path, &text, &mut |object| {
            let key = key(&object_id(&object));
            let mut earlier = self.files.range::<PathBuf, _>(..path.clone());
            match earlier.find(|(_, file)| file.keys.contains(&key)) {
                Some((first, _)) => tracing::warn!(
                    "rejected: {}: {key}: defined again (first in {}); this copy is ignored",
                    path.display(),
                    first.display()
                ),
                None if result.is_ok() => result = send_upsert(tx, object),
                None => {}
            }
            keys.insert(key);
        });
        result?;
        let old = self.files.remove(&path).map(|file| file.keys);
        let old = old.unwrap_or_default();
        keys.extend(rejected.objects);
        if rejected.anonymous {
            keys.extend(old.iter().cloned());
        }
        orphaned.extend(old.difference(&keys).cloned());
        let file = File {
            stamp,
            digest,
            keys,
        };
        self.files.insert(path, file);
        Ok(())
    }

    /// Keys no longer defined where they counted: read again from the file that counts now,
    /// or removed when none defines them.
    fn settle(&self, orphaned: BTreeSet<Key>, tx: &Sender<Update>) -> Result<(), Closed> {
        let mut reread: BTreeMap<&PathBuf, BTreeSet<Key>> = BTreeMap::new();
        for key in orphaned {
            match self.winner(&key) {
                Some(path) => {
                    reread.entry(path).or_default().insert(key);
                }
                None => {
                    let (kind, namespace, name) = parts(&key);
                    let remove = Update::Remove {
                        kind,
                        namespace,
                        name,
                    };
                    tx.send(remove).map_err(|_| Closed)?;
                }
            }
        }
        for (path, wanted) in reread {
            let mut result = Ok(());
            let text = read(path).unwrap_or_default();
            parse(path, &text, &mut |object| {
                if result.is_ok() && wanted.contains(&key(&object_id(&object))) {
                    result = send_upsert(tx, object);
                }
            });
            result?;
        }
        Ok(())
    }
}

fn send_upsert(tx: &Sender<Update>, object: Object) -> Result<(), Closed> {
    let update = Update::Upsert {
        object,
        trigger: None,
    };
    tx.send(update).map_err(|_| Closed)
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
    use svc_nft_compiler::Resource;

    /// A directory of its own for one test.
    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("svc-nft-manifests-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn service(ip: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: t}}\nspec: {{clusterIP: {ip}}}\n")
    }

    /// What the scans until the directory has settled send (a change is read once two scans
    /// agree): ("upsert", cluster IP) or ("remove", name).
    fn refresh(directory: &mut Directory, dir: &Path) -> Vec<(&'static str, String)> {
        let mut sent = scan_once(directory, dir);
        sent.extend(scan_once(directory, dir));
        sent
    }

    /// What one scan sends.
    fn scan_once(directory: &mut Directory, dir: &Path) -> Vec<(&'static str, String)> {
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
        let dir = scratch("order");
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

    #[test]
    fn bad_input_never_removes_an_object() {
        let dir = scratch("bad");
        let mut directory = Directory::default();
        let file = dir.join("web.yaml");
        std::fs::write(&file, service("10.96.0.1")).unwrap();
        assert_eq!(
            refresh(&mut directory, &dir),
            [("upsert", "10.96.0.1".into())]
        );
        // Half written: no object can be read, the one it defined stays.
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namesp",
        )
        .unwrap();
        assert_eq!(refresh(&mut directory, &dir), []);
        // The object is named but does not parse: it stays too.
        let typo = service("10.96.0.1").replace("spec: {", "spec: {ports: oops, ");
        std::fs::write(&file, typo).unwrap();
        assert_eq!(refresh(&mut directory, &dir), []);
        // The directory goes away (a remount, a bad deploy): everything stays.
        let moved = dir.with_extension("moved");
        std::fs::rename(&dir, &moved).unwrap();
        assert_eq!(refresh(&mut directory, &dir), []);
        std::fs::rename(&moved, &dir).unwrap();
        // Fixed, then deleted from the file: only that removes it.
        std::fs::write(&file, service("10.96.0.2")).unwrap();
        assert_eq!(
            refresh(&mut directory, &dir),
            [("upsert", "10.96.0.2".into())]
        );
        std::fs::write(&file, "").unwrap();
        assert_eq!(refresh(&mut directory, &dir), [("remove", "web".into())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_service_cidr_file_removed_removes_its_object() {
        let dir = scratch("cidr");
        let mut directory = Directory::default();
        let file = dir.join("cidr.yaml");
        let cidr = "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\n\
                    metadata: {name: extra}\nspec: {cidrs: [10.97.0.0/16]}\n";
        std::fs::write(&file, cidr).unwrap();
        assert_eq!(refresh(&mut directory, &dir), [("upsert", String::new())]);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(refresh(&mut directory, &dir), [("remove", "extra".into())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_is_read_once_it_has_settled() {
        let dir = scratch("settle");
        let mut directory = Directory::default();
        let file = dir.join("web.yaml");
        std::fs::write(&file, service("10.96.0.1")).unwrap();
        assert_eq!(
            scan_once(&mut directory, &dir),
            [("upsert", "10.96.0.1".into())]
        );
        // Truncated in place, then written again: the empty file in between is never read.
        std::fs::write(&file, "").unwrap();
        assert_eq!(scan_once(&mut directory, &dir), []);
        std::fs::write(&file, service("10.96.0.2")).unwrap();
        assert_eq!(scan_once(&mut directory, &dir), []);
        assert_eq!(
            scan_once(&mut directory, &dir),
            [("upsert", "10.96.0.2".into())]
        );
        // Gone for one scan only (deleted, written again): its objects stay.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(scan_once(&mut directory, &dir), []);
        std::fs::write(&file, service("10.96.0.2")).unwrap();
        assert_eq!(refresh(&mut directory, &dir), []);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_rewritten_as_it_was_is_not_read_again() {
        let dir = scratch("same");
        let mut directory = Directory::default();
        let file = dir.join("web.yaml");
        std::fs::write(&file, service("10.96.0.1")).unwrap();
        assert_eq!(
            refresh(&mut directory, &dir),
            [("upsert", "10.96.0.1".into())]
        );
        std::fs::write(&file, service("10.96.0.1")).unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(refresh(&mut directory, &dir), []);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
