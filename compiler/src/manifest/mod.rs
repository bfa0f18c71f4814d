//! Reading Kubernetes manifests into typed k8s-openapi objects: multi-document YAML, JSON (one
//! object, a stream of them as `jq -c` prints, or an array), single objects or `kind: List`.
//! Kinds svc-nft does not use are skipped; so, with a warning, are documents that are not
//! Kubernetes objects at all (a Chart.yaml or values.yaml in a manifest directory).

mod documents;
mod typed;

use crate::diagnostic::{Diagnostic, ObjectId, Origin};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// An object the compiler reads.
#[derive(Clone, Debug)]
pub enum Resource {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    /// Plain v1 Endpoints, mirrored to an EndpointSlice for Services without a selector.
    Endpoints(Box<Endpoints>),
    /// A range the cluster allocates cluster IPs from (KEP-1880): its addresses that no
    /// Service owns are dropped, as those of `--service-cidr` are.
    ServiceCidr(Box<ServiceCIDR>),
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
        templated: false,
    };
    documents::each(text, &mut |document| {
        let origin = Origin::document(source, document.index);
        out.templated = document.text.contains("{{");
        match document.value {
            Ok(Value::Null) => {}
            Ok(value) => read_value(origin, value, &mut out),
            Err(e) => out.error(Diagnostic::new(
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
    /// The current document has `{{`: its errors most likely come from template syntax.
    templated: bool,
}

impl Sink<'_> {
    fn error(&mut self, mut d: Diagnostic) {
        if self.templated {
            d.message +=
                "; looks like a Helm template: render it first (helm template RELEASE CHART)";
        }
        (self.diagnostics)(d)
    }

    fn warning(&mut self, d: Diagnostic) {
        (self.diagnostics)(d.warning())
    }

    fn not_an_object(&mut self, origin: Origin) {
        let msg = "not a Kubernetes object: skipped".to_string();
        self.warning(Diagnostic::new(origin, None, None, msg));
    }
}

/// A document: one object, or a sequence of them (a JSON array).
fn read_value(origin: Origin, value: Value, out: &mut Sink) {
    match value {
        Value::Mapping(_) => read_object(origin, value, out),
        Value::Sequence(items) if items.is_empty() || items.iter().any(Value::is_mapping) => {
            read_items(&origin, items, out)
        }
        _ => out.not_an_object(origin),
    }
}

fn read_items(origin: &Origin, items: Vec<Value>, out: &mut Sink) {
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::Mapping(_) => read_object(origin.item(i), item, out),
            _ => out.not_an_object(origin.item(i)),
        }
    }
}

/// The kinds svc-nft reads, with their apiVersion.
const KINDS: [(&str, &str); 4] = [
    ("Service", "v1"),
    ("Endpoints", "v1"),
    ("EndpointSlice", "discovery.k8s.io/v1"),
    ("ServiceCIDR", "networking.k8s.io/v1"),
];

fn read_object(origin: Origin, value: Value, out: &mut Sink) {
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default();
    match (field("apiVersion"), field("kind")) {
        ("v1", "List") => read_list(origin, value, out),
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
        ("networking.k8s.io/v1", "ServiceCIDR") => decode(origin, "ServiceCIDR", value, out, |c| {
            Resource::ServiceCidr(Box::new(c))
        }),
        ("discovery.k8s.io/v1beta1", "EndpointSlice") => {
            let msg = "discovery.k8s.io/v1beta1 is not served since Kubernetes 1.25: not used \
                       (write discovery.k8s.io/v1)";
            out.warning(api_version(origin, "EndpointSlice", &value, msg.into()))
        }
        // One of ours with its apiVersion left out is rejected, not skipped quietly.
        ("", kind) => match KINDS.into_iter().find(|(k, _)| *k == kind) {
            Some((kind, expected)) => {
                let msg = format!("is required ({expected})");
                out.error(api_version(origin, kind, &value, msg))
            }
            None => out.not_an_object(origin),
        },
        (_, "") => out.not_an_object(origin),
        (api_version, kind) => {
            tracing::debug!("{origin}: skipping {api_version} {kind}: not used by svc-nft");
        }
    }
}

/// A diagnostic about an object's apiVersion.
fn api_version(origin: Origin, kind: &str, value: &Value, message: String) -> Diagnostic {
    let id = ObjectId::of(kind, value);
    Diagnostic::new(origin, Some(id), Some("apiVersion".into()), message)
}

fn read_list(origin: Origin, mut value: Value, out: &mut Sink) {
    match value.get_mut("items").map(std::mem::take) {
        Some(Value::Sequence(items)) => read_items(&origin, items, out),
        Some(Value::Null) | None => {}
        Some(_) => {
            let msg = "must be a list of objects".to_string();
            out.error(Diagnostic::new(origin, None, Some("items".into()), msg));
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
        out.warning(Diagnostic::new(
            origin.clone(),
            Some(id.clone()),
            Some(field),
            msg,
        ));
    }
    match decoded {
        Ok(object) => (out.objects)(Object {
            origin,
            resource: resource(object),
        }),
        Err((field, msg)) => out.error(Diagnostic::new(origin, Some(id), field, msg)),
    }
}
