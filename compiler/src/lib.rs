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
mod services;
mod validate;

pub use chains::{affinity_recorders, AffinityRecorder, MASQUERADE_MARK};
pub use diagnostic::{Diagnostic, ObjectId, Origin, Severity};
pub use incremental::{Delta, HealthCheck, Incremental};
pub use layout::{udp_targets, UdpTargets};
pub use manifest::{parse, Object, Resource};
pub use node::{NodeFacts, DEFAULT_TABLE};

use model::{Invalid, ServiceInfo, ServiceName};
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
    let mut reject = |obj: &Object, e: Invalid| {
        diagnostics.push(Diagnostic::new(
            obj.origin.clone(),
            Some(object_id(obj)),
            Some(e.field),
            e.message,
        ))
    };

    let mut services: BTreeMap<ServiceName, (ServiceInfo, &Object)> = BTreeMap::new();
    for obj in objects {
        let Resource::Service(svc) = &obj.resource else {
            continue;
        };
        let id = object_id(obj);
        let key: ServiceName = (id.namespace.into(), id.name.into());
        match model::service(svc) {
            Ok(_) if services.contains_key(&key) => {
                let first = &services[&key].1.origin;
                let msg = format!("defined again (first at {first}); this copy is ignored");
                reject(
                    obj,
                    Invalid {
                        field: "metadata.name".into(),
                        message: msg,
                    },
                );
            }
            Ok(info) => {
                services.insert(key, (info, obj));
            }
            Err(e) => reject(obj, e),
        }
    }

    let mut state = Incremental::new(node);
    for obj in objects {
        let found = match &obj.resource {
            Resource::Service(_) => continue,
            Resource::EndpointSlice(slice) => model::endpoint_slice(slice).map(Vec::from_iter),
            Resource::Endpoints(eps) => {
                if !mirrored(eps, &services, &object_id(obj)) {
                    continue;
                }
                model::endpoints(eps)
            }
        };
        let found = found.and_then(|found| {
            match found.iter().find(|s| !services.contains_key(&s.service)) {
                Some(orphan) => Err(missing_service(obj, &orphan.service)),
                None => Ok(found),
            }
        });
        match found {
            Ok(slices) => state.add_endpoints(obj, slices),
            Err(e) => reject(obj, e),
        }
    }
    for (info, obj) in services.into_values() {
        let _ = state.set_service(info, obj.origin.clone(), object_id(obj));
    }
    let (table, clashes) = state.compile_table();
    diagnostics.extend(clashes);
    Compiled { table, diagnostics }
}

/// Whether v1 Endpoints are mirrored into a slice: only for Services without a selector (the
/// EndpointSlice controller owns the others) and without the skip-mirror label.
fn mirrored(
    eps: &k8s_openapi::api::core::v1::Endpoints,
    services: &BTreeMap<ServiceName, (ServiceInfo, &Object)>,
    id: &ObjectId,
) -> bool {
    let labels = eps.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(SKIP_MIRROR_LABEL))
        .map(String::as_str)
        == Some("true")
    {
        return false;
    }
    let key: ServiceName = (id.namespace.as_str().into(), id.name.as_str().into());
    let selected = services
        .get(&key)
        .is_some_and(|(info, _)| info.has_selector);
    if selected {
        tracing::debug!("{id}: ignored, its Service has a selector");
    }
    !selected
}

fn missing_service(obj: &Object, service: &ServiceName) -> Invalid {
    let field = match obj.resource {
        Resource::EndpointSlice(_) => "metadata.labels[kubernetes.io/service-name]",
        _ => "metadata.name",
    };
    Invalid {
        field: field.into(),
        message: format!(
            "its Service {}/{} is not in the input",
            service.0, service.1
        ),
    }
}

/// `Kind namespace/name` of an object (namespace `default` when it names none, as kubectl).
pub fn object_id(obj: &Object) -> ObjectId {
    let (kind, meta) = match &obj.resource {
        Resource::Service(s) => ("Service", &s.metadata),
        Resource::EndpointSlice(s) => ("EndpointSlice", &s.metadata),
        Resource::Endpoints(e) => ("Endpoints", &e.metadata),
    };
    ObjectId {
        kind: kind.into(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone().unwrap_or_else(|| "<unnamed>".into()),
    }
}
