//! Manifest input: files, directories and standard input, turned into compiler objects.

use std::io::Read;
use std::path::{Path, PathBuf};
use svc_nft_compiler::{manifest, Diagnostic, Object, Origin};

/// What the paths given on the command line hold.
pub struct Input {
    pub objects: Vec<Object>,
    /// Rejected documents and objects, unreadable paths (errors) and warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// Paths (or files of a directory) that could not be read at all.
    pub unreadable: usize,
}

/// Objects read from every path, and what could not be read. A path is a file, a directory
/// (its `*.yaml`, `*.yml` and `*.json` files, sorted by name; one without any gets a warning)
/// or `-` for standard input.
pub fn read(paths: &[PathBuf]) -> Input {
    let mut input = Input {
        objects: Vec::new(),
        diagnostics: Vec::new(),
        unreadable: 0,
    };
    for path in paths {
        for file in expand(path, &mut input) {
            let source = file.display().to_string();
            match read_text(&file) {
                Ok(text) => {
                    let (mut o, mut d) = manifest::parse(&source, &text);
                    input.objects.append(&mut o);
                    input.diagnostics.append(&mut d);
                }
                Err(e) => input.unreadable_at(&file, e),
            }
        }
    }
    input
}

impl Input {
    fn unreadable_at(&mut self, path: &Path, e: std::io::Error) {
        self.unreadable += 1;
        self.diagnostics.push(InputError::from(e).at(path));
    }
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
    /// Reported like a rejected object, naming the path: an error when it cannot be read, a
    /// warning when it is a directory without manifests (it defines no objects, as an empty
    /// file does).
    fn at(self, path: &Path) -> Diagnostic {
        let origin = Origin::document(&path.display().to_string(), 0);
        let d = Diagnostic::new(origin, None, None, self.to_string());
        match self {
            InputError::Unreadable(_) => d,
            InputError::NoManifests => d.warning(),
        }
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

/// The files a path stands for; a directory that cannot be listed is unreadable, one that
/// holds no manifest file is warned about.
fn expand(path: &Path, input: &mut Input) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    match manifest_files(path) {
        Ok(files) => files,
        Err(InputError::Unreadable(e)) => {
            input.unreadable_at(path, e);
            vec![]
        }
        Err(e) => {
            input.diagnostics.push(e.at(path));
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
