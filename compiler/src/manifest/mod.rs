//! Reading Kubernetes manifests: YAML (multi-document) or JSON, single objects or `kind: List`,
//! into typed k8s-openapi objects. Kinds svc-nft does not use are skipped.

mod documents;
mod typed;

use crate::diagnostic::{Diagnostic, ObjectId, Origin};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
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
/// reported as errors and skipped, questionable ones as warnings; the others are returned.
pub fn parse(source: &str, text: &str) -> (Vec<Object>, Vec<Diagnostic>) {
    let mut objects = Vec::new();
    let mut diagnostics = Vec::new();
    parse_each(source, text, &mut |o| objects.push(o), &mut |d| {
        diagnostics.push(d)
    });
    (objects, diagnostics)
}

/// [`parse`], handing each object and diagnostic over as soon as it is read: a large file
/// never has all its objects in memory at once. `diagnostics` gets errors (the document or
/// object is left out) and warnings (see [`Diagnostic::is_error`]).
pub fn parse_each(
    source: &str,
    text: &str,
    objects: &mut dyn FnMut(Object),
    diagnostics: &mut dyn FnMut(Diagnostic),
) {
    let mut out = Sink {
        objects,
        diagnostics,
    };
    documents::each(text, &mut |document| {
        let origin = Origin::document(source, document.index);
        match document.value {
            Ok(Value::Null) => {}
            Ok(value) => read_value(origin, value, &mut out),
            Err(e) => (out.diagnostics)(Diagnostic::new(
                origin,
                None,
                None,
                format!("not YAML/JSON: {e}"),
            )),
        }
    });
}

/// Where parsed objects and diagnostics go.
struct Sink<'a> {
    objects: &'a mut dyn FnMut(Object),
    diagnostics: &'a mut dyn FnMut(Diagnostic),
}

fn read_value(origin: Origin, value: Value, out: &mut Sink) {
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default();
    match (field("apiVersion"), field("kind")) {
        ("v1", "List") => {
            let items = match value.get("items") {
                Some(Value::Sequence(items)) => items.clone(),
                Some(Value::Null) | None => vec![],
                Some(_) => {
                    let msg = "must be a list of objects".to_string();
                    let d = Diagnostic::new(origin, None, Some("items".into()), msg);
                    return (out.diagnostics)(d);
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                read_value(origin.item(i), item, out);
            }
        }
        ("v1", "Service") => decode(origin, "Service", value, out, |s| {
            Resource::Service(Box::new(s))
        }),
        ("v1", "Endpoints") => decode(origin, "Endpoints", value, out, |e| {
            Resource::Endpoints(Box::new(e))
        }),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            decode(origin, "EndpointSlice", value, out, |s| {
                Resource::EndpointSlice(Box::new(s))
            })
        }
        (api_version, kind) if api_version.is_empty() || kind.is_empty() => {
            let id = ObjectId::of(kind, &value);
            let msg = "not a Kubernetes object (apiVersion and kind are required)".to_string();
            (out.diagnostics)(Diagnostic::new(origin, Some(id), None, msg))
        }
        (api_version, kind) => {
            tracing::debug!("{origin}: skipping {api_version} {kind}: not used by svc-nft");
        }
    }
}

/// Decode one object into its k8s-openapi type: fields the type does not know are warned
/// about (a misspelt one would be dropped unnoticed), a type error rejects the object.
fn decode<T: DeserializeOwned>(
    origin: Origin,
    kind: &str,
    value: Value,
    out: &mut Sink,
    resource: fn(T) -> Resource,
) {
    let id = ObjectId::of(kind, &value);
    let mut unknown = Vec::new();
    let decoded = typed::decode::<T>(value, &mut |field| unknown.push(field));
    for field in unknown {
        let msg = "unknown field: ignored".to_string();
        (out.diagnostics)(
            Diagnostic::new(origin.clone(), Some(id.clone()), Some(field), msg).warning(),
        );
    }
    match decoded {
        Ok(object) => (out.objects)(Object {
            origin,
            resource: resource(object),
        }),
        Err((field, msg)) => (out.diagnostics)(Diagnostic::new(origin, Some(id), field, msg)),
    }
}
