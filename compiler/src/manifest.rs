//! Reading Kubernetes manifests: YAML (multi-document) or JSON, single objects or `kind: List`,
//! into typed k8s-openapi objects. Kinds svc-nft does not use are skipped.

use crate::diagnostic::{Diagnostic, ObjectId, Origin};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

/// An object the compiler reads.
#[derive(Clone, Debug)]
pub enum Resource {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    /// Plain v1 Endpoints, mirrored to an EndpointSlice for Services without a selector.
    Endpoints(Box<Endpoints>),
}

/// An object and where it was read.
#[derive(Clone, Debug)]
pub struct Object {
    pub origin: Origin,
    pub resource: Resource,
}

/// Parse one file's text. `source` names it in diagnostics. Broken documents and objects are
/// reported and skipped; the others are returned.
pub fn parse(source: &str, text: &str) -> (Vec<Object>, Vec<Diagnostic>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    parse_each(source, text, &mut |o| objects.push(o), &mut |e| {
        errors.push(e)
    });
    (objects, errors)
}

/// [`parse`], handing each object and error over as soon as it is read: a large file never
/// has all its objects in memory at once.
pub fn parse_each(
    source: &str,
    text: &str,
    objects: &mut dyn FnMut(Object),
    errors: &mut dyn FnMut(Diagnostic),
) {
    let mut out = Sink { objects, errors };
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = Origin::document(source, index + 1);
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => read_value(origin, value, &mut out),
            Err(e) => {
                (out.errors)(Diagnostic::new(
                    origin,
                    None,
                    None,
                    format!("not YAML/JSON: {e}"),
                ));
                // A syntax error ends the stream: the parser cannot resynchronise after it.
                break;
            }
        }
    }
}

/// Where parsed objects and errors go.
struct Sink<'a> {
    objects: &'a mut dyn FnMut(Object),
    errors: &'a mut dyn FnMut(Diagnostic),
}

fn read_value(origin: Origin, value: Value, out: &mut Sink) {
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let id = ObjectId::of(kind, &value);
    let resource = match (api_version, kind) {
        ("v1", "List") => {
            let items = match value.get("items") {
                Some(Value::Sequence(items)) => items.clone(),
                Some(Value::Null) | None => vec![],
                Some(_) => {
                    let msg = "must be a list of objects".to_string();
                    (out.errors)(Diagnostic::new(origin, None, Some("items".into()), msg));
                    return;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                read_value(origin.item(i), item, out);
            }
            return;
        }
        ("v1", "Service") => typed(value).map(|s| Resource::Service(Box::new(s))),
        ("v1", "Endpoints") => typed(value).map(|e| Resource::Endpoints(Box::new(e))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            typed(value).map(|s| Resource::EndpointSlice(Box::new(s)))
        }
        ("", _) | (_, "") => Err((
            None,
            "not a Kubernetes object (apiVersion and kind are required)".into(),
        )),
        _ => {
            tracing::debug!("{origin}: skipping {api_version} {kind}: not used by svc-nft");
            return;
        }
    };
    match resource {
        Ok(resource) => (out.objects)(Object { origin, resource }),
        Err((field, msg)) => (out.errors)(Diagnostic::new(origin, Some(id), field, msg)),
    }
}

/// Deserialize into a k8s-openapi type, naming the offending field on error.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        (field, e.into_inner().to_string())
    })
}
