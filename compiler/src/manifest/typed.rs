//! One object into its k8s-openapi type, naming the field of a type error and every field the
//! type does not know (as `kubectl apply --validate=strict` does). k8s-openapi skips unknown
//! fields through `IgnoredAny`, which `serde_ignored` reports with their path.

use serde::de::DeserializeOwned;
use serde_ignored::Path;
use serde_yaml::Value;
use std::fmt::Write;

/// The typed object, or the field (`None`: the object as a whole) and message of its first
/// error. `unknown` gets each unknown field's path, e.g. `spec.ports[0].protocl`.
pub(super) fn decode<T: DeserializeOwned>(
    value: Value,
    unknown: &mut dyn FnMut(String),
) -> Result<T, (Option<String>, String)> {
    let mut ignored = |path: Path| unknown(field_path(&path));
    let deserializer = serde_ignored::Deserializer::new(value, &mut ignored);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        (field, e.into_inner().to_string())
    })
}

/// A path as serde_path_to_error writes it (and so the errors do): `a.b[0].c`.
fn field_path(path: &Path) -> String {
    let mut out = String::new();
    write_path(path, &mut out);
    out
}

fn write_path(path: &Path, out: &mut String) {
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            write_path(parent, out);
            let _ = write!(out, "[{index}]");
        }
        Path::Map { parent, key } => {
            write_path(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        // Option and newtype wrappers are no step in the document.
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => write_path(parent, out),
    }
}
