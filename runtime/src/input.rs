//! Manifest input: files, directories and standard input, turned into compiler objects.

use std::io::Read;
use std::path::{Path, PathBuf};
use svc_nft_compiler::{manifest, Diagnostic, Object, Origin};

/// Objects read from every path, and what could not be read. A path is a file, a directory
/// (its `*.yaml`, `*.yml` and `*.json` files, sorted by name) or `-` for standard input.
pub fn read(paths: &[PathBuf]) -> (Vec<Object>, Vec<Diagnostic>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        for file in expand(path, &mut errors) {
            let source = file.display().to_string();
            match read_text(&file) {
                Ok(text) => {
                    let (mut o, mut e) = manifest::parse(&source, &text);
                    objects.append(&mut o);
                    errors.append(&mut e);
                }
                Err(e) => errors.push(io_error(&source, e)),
            }
        }
    }
    (objects, errors)
}

fn io_error(source: &str, e: std::io::Error) -> Diagnostic {
    Diagnostic::new(
        Origin::document(source, 0),
        None,
        None,
        format!("cannot read: {e}"),
    )
}

fn read_text(path: &Path) -> std::io::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
    }
}

fn expand(path: &Path, errors: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(io_error(&path.display().to_string(), e));
            return vec![];
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str());
            p.is_file() && matches!(ext, Some("yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    files
}
