//! The repository's manifests, in a fixed order so that a failure repeats.

use std::path::PathBuf;

/// The entries of `dir` (relative to the workspace root), sorted.
fn sorted(dir: &str) -> Vec<PathBuf> {
    let dir = format!("{}/../{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
}

/// Every golden case's directory (`golden/cases/*`).
pub fn golden_cases() -> Vec<PathBuf> {
    sorted("golden/cases")
}

/// Every manifest of `examples/` as one multi-document text: dual-stack, headless,
/// external, multi-port, a Service without endpoints.
pub fn examples() -> String {
    let texts: Vec<String> = sorted("examples")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    texts.join("\n---\n")
}
