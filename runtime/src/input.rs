//! Manifest input: files, directories and standard input, turned into compiler objects.

use std::io::Read;
use std::path::{Path, PathBuf};
use svc_nft_compiler::{manifest, Diagnostic, Object, Origin};

/// Objects read from every path, and what could not be read. A path is a file, a directory
/// (its `*.yaml`, `*.yml` and `*.json` files, sorted by name; one without any is an error) or
/// `-` for standard input.
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
                Err(e) => errors.push(InputError::from(e).at(&file)),
            }
        }
    }
    (objects, errors)
}

/// Why a path given on the command line gave no manifests.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("no manifest files (*.yaml, *.yml, *.json) in this directory")]
    NoManifests,
}

impl InputError {
    /// Reported like a rejected object: an error naming the path.
    fn at(self, path: &Path) -> Diagnostic {
        let origin = Origin::document(&path.display().to_string(), 0);
        Diagnostic::new(origin, None, None, self.to_string())
    }
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

/// The files a path stands for; a directory that cannot be listed or holds no manifest file
/// is an error.
fn expand(path: &Path, errors: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    match manifest_files(path) {
        Ok(files) => files,
        Err(e) => {
            errors.push(e.at(path));
            vec![]
        }
    }
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str());
            p.is_file() && matches!(ext, Some("yaml" | "yml" | "json"))
        })
        .collect();
    if files.is_empty() {
        return Err(InputError::NoManifests);
    }
    files.sort();
    Ok(files)
}
