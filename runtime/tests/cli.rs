//! The `svc-nft` binary as a user runs it: inputs, outputs and exit statuses.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn svc_nft(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_svc-nft"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run svc-nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A scratch directory with the given files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str, files: &[(&str, &str)]) -> Dir {
        let dir = std::env::temp_dir().join(format!("svc-nft-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        Dir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const REDIS: &str = "apiVersion: v1
kind: Service
metadata: {name: redis}
spec: {clusterIP: 10.97.97.97, ports: [{port: 6379}]}
";

const REDIS_ENDPOINTS: &str = "apiVersion: v1
kind: Endpoints
metadata: {name: redis}
subsets: [{addresses: [{ip: 10.244.1.5}], ports: [{port: 6379}]}]
";

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .display()
        .to_string()
}

#[test]
fn compile_reads_stdin_and_replaces_the_table() {
    let out = svc_nft(&["compile", "-f", "-", "--table", "kp"], REDIS);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(script.starts_with("table inet kp {}\ndelete table inet kp\n"));
    assert!(
        script.contains("# default/redis (10.97.97.97:6379): no usable endpoint: REJECT"),
        "{script}"
    );
}

#[test]
fn compile_reads_a_directory_of_yaml_and_json_in_name_order() {
    let dir = Dir::new(
        "dir",
        &[
            ("b-endpoints.yml", REDIS_ENDPOINTS),
            ("a-service.yaml", REDIS),
            ("notes.txt", "not a manifest"),
        ],
    );
    let out = svc_nft(&["compile", "-f", dir.path()], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("10.97.97.97 . 6379 . 0 : 10.244.1.5 . 6379"));
}

#[test]
fn bundled_examples_compile_cleanly_and_deterministically() {
    let first = svc_nft(&["compile", "-f", &examples()], "");
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(first.stderr.is_empty(), "{}", text(&first.stderr));
    let again = svc_nft(&["compile", "-f", &examples()], "");
    assert_eq!(first.stdout, again.stdout);
}

#[test]
fn bad_objects_are_reported_and_skipped_with_status_1() {
    let input = format!(
        "{REDIS}---\napiVersion: v1\nkind: Service\nmetadata: {{name: broken, namespace: ns1}}\n\
         spec: {{clusterIP: 10.96.0.1, ports: [{{port: 0}}]}}\n"
    );
    let out = svc_nft(&["compile", "-f", "-"], &input);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: -: document 2: Service ns1/broken: spec.ports[0].port: \
         0 is not a valid port number (1-65535)\n"
    );
    // The good Service still compiles.
    assert!(text(&out.stdout).contains("10.97.97.97"));
}

#[test]
fn missing_files_are_errors_not_panics() {
    let out = svc_nft(&["compile", "-f", "/nonexistent/svc.yaml"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: /nonexistent/svc.yaml: cannot read:"));
}

#[test]
fn diff_exits_like_diff1() {
    let old = Dir::new("old", &[("svc.yaml", REDIS)]);
    let new = Dir::new("new", &[("svc.yaml", REDIS), ("eps.yaml", REDIS_ENDPOINTS)]);

    let same = svc_nft(&["diff", old.path(), old.path()], "");
    assert_eq!(same.status.code(), Some(0));
    assert!(same.stdout.is_empty());

    let changed = svc_nft(&["diff", old.path(), new.path()], "");
    assert_eq!(changed.status.code(), Some(1));
    let diff = text(&changed.stdout);
    assert!(diff.starts_with(&format!("--- {}\n+++ {}\n", old.path(), new.path())));
    // Not a terminal: no colour codes.
    assert!(!diff.contains('\x1b'));
    assert!(
        diff.contains("\n+\t\t\t10.97.97.97 . 6379 . 0 : 10.244.1.5 . 6379\n"),
        "{diff}"
    );

    let broken = Dir::new("broken", &[("svc.yaml", "kind: [")]);
    let trouble = svc_nft(&["diff", old.path(), broken.path()], "");
    assert_eq!(trouble.status.code(), Some(2));
}

#[test]
fn diff_transaction_is_the_minimal_batch() {
    let old = Dir::new("tx-old", &[("svc.yaml", REDIS)]);
    let new = Dir::new(
        "tx-new",
        &[("svc.yaml", REDIS), ("eps.yaml", REDIS_ENDPOINTS)],
    );
    let out = svc_nft(&["diff", "--transaction", old.path(), new.path()], "");
    assert_eq!(out.status.code(), Some(1));
    let tx = text(&out.stdout);
    assert!(
        tx.contains("add element inet svc-nft endpoints-v4-tcp {"),
        "{tx}"
    );
    assert!(!tx.contains("add table"), "only what changed: {tx}");
}
