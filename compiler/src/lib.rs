//! The svc-nft compiler: Kubernetes Services and their endpoints, plus facts about the node, in;
//! the IR of the node's nftables table out.
//!
//! [`compile`] is a pure function: no I/O, no clock, no randomness, and every collection it
//! builds is ordered, so the same objects in any order give a byte-identical ruleset. Invalid
//! objects are reported as [`Diagnostic`]s and left out; everything else still compiles.

mod chains;
mod diagnostic;
mod endpoints;
mod family;
mod incremental;
mod layout;
pub mod manifest;
mod model;
mod node;
mod pins;
mod services;
mod validate;

pub use chains::MASQUERADE_MARK;
pub use diagnostic::{Diagnostic, ObjectId, Origin, Severity};
pub use incremental::{Delta, HealthCheck, Incremental, NoLocalEndpoints};
pub use layout::{udp_frontends, UdpFrontend, UdpFrontends, UdpTargets};
pub use manifest::{parse, Object, Resource};
pub use node::{NodeFacts, NodePortAddresses, DEFAULT_TABLE};
pub use pins::{PinnedPort, StalePins};

use model::{Invalid, ServiceInfo, ServiceName, SliceInfo};
use std::collections::BTreeMap;
use svc_nft_ir::Table;

/// The compiled table and what was rejected on the way.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub table: Table,
    pub diagnostics: Vec<Diagnostic>,
}

/// Label that tells the mirroring controller to leave an Endpoints object alone.
pub(crate) const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

/// Compile objects for a node.
pub fn compile(objects: &[Object], node: &NodeFacts) -> Compiled {
    let mut diagnostics = Vec::new();
    let services = Services::of(objects, &mut diagnostics);
    let mut state = Incremental::new(node);
    let mut unowned = 0;
    for obj in objects {
        if let Resource::ServiceCidr(_) = obj.resource {
            diagnostics.extend(state.upsert(obj).err().map(|d| *d));
            continue;
        }
        match services.endpoints(obj) {
            Found::Slices(slices) => state.add_endpoints(obj, slices),
            Found::Ignored => {}
            Found::Unowned => unowned += 1,
            Found::Reported(d) => diagnostics.push(d),
        }
    }
    for (info, obj) in services.valid.into_values() {
        let _ = state.set_service(info, obj.origin.clone(), object_id(obj));
    }
    let (table, clashes) = state.compile_table();
    diagnostics.extend(clashes);
    if unowned > 0 {
        diagnostics.push(unowned_note(unowned));
    }
    Compiled { table, diagnostics }
}

/// The Services of a compile.
struct Services<'a> {
    valid: BTreeMap<ServiceName, (ServiceInfo, &'a Object)>,
    /// The names no valid copy answers to: where the rejected copy is, and whether it has a
    /// selector (its v1 Endpoints are not mirrored then, and not its endpoints).
    rejected: BTreeMap<ServiceName, (&'a Origin, bool)>,
}

/// What a compile does with one endpoints object.
enum Found {
    Slices(Vec<SliceInfo>),
    Ignored,
    /// Its Service is not in the input.
    Unowned,
    Reported(Diagnostic),
}

impl<'a> Services<'a> {
    /// Validate the Services; the rejected ones and second copies go to `diagnostics`.
    fn of(objects: &'a [Object], diagnostics: &mut Vec<Diagnostic>) -> Services<'a> {
        let mut out = Services {
            valid: BTreeMap::new(),
            rejected: BTreeMap::new(),
        };
        for obj in objects {
            let Resource::Service(svc) = &obj.resource else {
                continue;
            };
            let id = object_id(obj);
            let key: ServiceName = (id.namespace.into(), id.name.into());
            match model::service(svc) {
                Ok(_) if out.valid.contains_key(&key) => {
                    let first = &out.valid[&key].1.origin;
                    let message = format!("defined again (first at {first}); this copy is ignored");
                    let field = "metadata.name".into();
                    diagnostics.push(rejection(obj, Invalid { field, message }));
                }
                Ok(info) => {
                    out.valid.insert(key, (info, obj));
                }
                Err(e) => {
                    diagnostics.push(rejection(obj, e));
                    let spec = svc.spec.as_ref();
                    let selector = spec.and_then(|s| s.selector.as_ref());
                    let selected = selector.is_some_and(|s| !s.is_empty());
                    out.rejected.entry(key).or_insert((&obj.origin, selected));
                }
            }
        }
        let valid = &out.valid;
        out.rejected.retain(|name, _| !valid.contains_key(name));
        out
    }

    /// The endpoints an object gives its Service. Those of a Service that is not in the input
    /// are ignored, as kube-proxy ignores them (leader-election Endpoints, a dump of one
    /// namespace); a compile counts them.
    fn endpoints(&self, obj: &Object) -> Found {
        let id = object_id(obj);
        let (service, mirror) = match &obj.resource {
            Resource::Service(_) | Resource::ServiceCidr(_) => return Found::Ignored,
            Resource::EndpointSlice(slice) => match model::slice_service(slice) {
                Some(service) => (service, false),
                None => return Found::Ignored,
            },
            Resource::Endpoints(eps) => {
                let labels = eps.metadata.labels.as_ref();
                let skip = labels.and_then(|l| l.get(SKIP_MIRROR_LABEL));
                if skip.map(String::as_str) == Some("true") {
                    return Found::Ignored;
                }
                (id.name.as_str(), true)
            }
        };
        let key: ServiceName = (id.namespace.as_str().into(), service.into());
        let selected = if let Some((info, _)) = self.valid.get(&key) {
            info.has_selector
        } else if let Some(&(origin, selected)) = self.rejected.get(&key) {
            if mirror && selected {
                return Found::Ignored;
            }
            return Found::Reported(rejected_service(obj, &key, origin));
        } else {
            tracing::debug!(
                "{id}: ignored: its Service {}/{service} is not in the input",
                id.namespace
            );
            return Found::Unowned;
        };
        let found = match &obj.resource {
            Resource::EndpointSlice(slice) => model::endpoint_slice(slice).map(Vec::from_iter),
            // The EndpointSlice controller owns the endpoints of a Service with a selector.
            Resource::Endpoints(_) if selected => {
                tracing::debug!("{id}: ignored, its Service has a selector");
                return Found::Ignored;
            }
            Resource::Endpoints(eps) => model::endpoints(eps),
            Resource::Service(_) | Resource::ServiceCidr(_) => unreachable!("handled above"),
        };
        match found {
            Ok(slices) => Found::Slices(slices),
            Err(e) => Found::Reported(rejection(obj, e)),
        }
    }
}

fn rejection(obj: &Object, e: Invalid) -> Diagnostic {
    Diagnostic::new(
        obj.origin.clone(),
        Some(object_id(obj)),
        Some(e.field),
        e.message,
    )
}

/// The endpoints of a rejected Service are not used: said once per object, pointing at the
/// Service's own error (diagnostics are listed in input order).
fn rejected_service(obj: &Object, service: &ServiceName, at: &Origin) -> Diagnostic {
    let field = match obj.resource {
        Resource::EndpointSlice(_) => "metadata.labels[kubernetes.io/service-name]",
        _ => "metadata.name",
    };
    let place = if *at < obj.origin { "above" } else { "below" };
    let (namespace, name) = service;
    let message = format!("its Service {namespace}/{name} was rejected (see {place})");
    let invalid = Invalid {
        field: field.into(),
        message,
    };
    rejection(obj, invalid).warning()
}

/// One note for all the endpoints objects whose Service is not in the input.
fn unowned_note(count: usize) -> Diagnostic {
    let what = if count == 1 {
        "endpoint object names"
    } else {
        "endpoint objects name"
    };
    let message = format!("{count} {what} no Service in the input; ignored");
    Diagnostic::new(Origin::document("note", 0), None, None, message).warning()
}

/// `Kind namespace/name` of an object (namespace `default` when it names none, as kubectl).
pub fn object_id(obj: &Object) -> ObjectId {
    let (kind, meta) = match &obj.resource {
        Resource::Service(s) => ("Service", &s.metadata),
        Resource::EndpointSlice(s) => ("EndpointSlice", &s.metadata),
        Resource::Endpoints(e) => ("Endpoints", &e.metadata),
        Resource::ServiceCidr(c) => ("ServiceCIDR", &c.metadata),
    };
    ObjectId {
        kind: kind.into(),
        namespace: ObjectId::namespace_of(kind, meta.namespace.clone()),
        name: meta.name.clone().unwrap_or_else(|| "<unnamed>".into()),
    }
}
