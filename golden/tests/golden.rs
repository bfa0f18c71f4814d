//! Compiles every case in `golden/cases` and compares with its expected files (see the crate
//! docs). Set `UPDATE_GOLDEN=1` to rewrite them instead.

use std::fs;
use std::path::{Path, PathBuf};
use svc_nft::cli::{compile_paths, NodeArgs};
use svc_nft::input;
use svc_nft_compiler::compile;
use svc_nft_ir::{diff, replace_script};

struct Check {
    update: bool,
    failures: Vec<String>,
}

impl Check {
    /// Compare `actual` with the file at `path`; a missing file means "expected empty".
    fn file(&mut self, path: &Path, actual: &str) {
        let expected = fs::read_to_string(path).unwrap_or_default();
        if expected == actual {
            return;
        }
        if self.update {
            if actual.is_empty() {
                fs::remove_file(path).expect("remove stale golden file");
            } else {
                fs::write(path, actual).expect("write golden file");
            }
            return;
        }
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("expected", "actual")
            .to_string();
        self.failures
            .push(format!("{} differs:\n{diff}", path.display()));
    }
}

fn node_args(case: &Path) -> NodeArgs {
    let flags = fs::read_to_string(case.join("flags")).unwrap_or_default();
    NodeArgs::parse_flags(flags.split_whitespace())
        .unwrap_or_else(|e| panic!("{}/flags: {e}", case.display()))
}

fn run_case(case: &Path, check: &mut Check) {
    let facts = node_args(case).facts();
    let input = case.join("input");
    let mut stderr = Vec::new();
    let (compiled, _) = compile_paths(std::slice::from_ref(&input), &facts, &mut stderr);
    check.file(&case.join("expected.nft"), &replace_script(&compiled.table));
    // Diagnostics name files relative to the case, so the expectation does not depend on
    // where the repository is checked out.
    let prefix = format!("{}/", case.display());
    let stderr = String::from_utf8(stderr).unwrap().replace(&prefix, "");
    check.file(&case.join("expected.stderr"), &stderr);

    // The same objects in another order must give the same bytes.
    let mut objects = input::read(std::slice::from_ref(&input)).objects;
    objects.reverse();
    let reversed = replace_script(&compile(&objects, &facts).table);
    if reversed != replace_script(&compiled.table) {
        check
            .failures
            .push(format!("{}: output depends on input order", case.display()));
    }

    let changed = case.join("changed");
    if changed.is_dir() {
        let (after, _) = compile_paths(&[changed], &facts, &mut Vec::new());
        let tx = diff(&compiled.table, &after.table).to_string();
        check.file(&case.join("expected.transaction"), &tx);
    }
}

#[test]
fn golden_cases() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cases");
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .expect("golden/cases")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases in {}", root.display());
    let mut check = Check {
        update: std::env::var_os("UPDATE_GOLDEN").is_some(),
        failures: vec![],
    };
    for case in &cases {
        run_case(case, &mut check);
    }
    assert!(
        check.failures.is_empty(),
        "{} golden mismatch(es); if the change is intended, run \
         `UPDATE_GOLDEN=1 cargo test -p svc-nft-golden` and review the diff:\n\n{}",
        check.failures.len(),
        check.failures.join("\n")
    );
}
