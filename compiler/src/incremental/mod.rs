//! Per-Service compilation: the node's state kept up to date as objects come and go,
//! recompiling only the Services whose objects changed.
//!
//! Only the inputs are kept (validated Services and endpoints), not the compiled table: a
//! change recompiles the Service as it was at the last flush and as it is now, subtracts the
//! old contribution and adds the new one. Shared parts are reference-counted: the pick and
//! affinity chains, and the hairpin pairs of endpoints two Services share. The transaction is
//! the diff of two small tables holding only what left and what arrived, so a sync costs the
//! size of the change, not of the cluster; the whole table is built only when asked for (a
//! full replace).
//!
//! A frontend clash (two Services claiming one cluster IP, or one address and port) costs only
//! the contested frontend: each claim has one holder and a queue of waiting Services (see
//! [`claims`] for who gets it). A Service that loses or gains a frontend is recompiled like
//! any other, so a clash or a release costs the two Services involved, not a rebuild.

mod claims;
mod clashes;
mod flush;
mod service_cidrs;

use crate::diagnostic::{Diagnostic, ObjectId, Origin};
use crate::layout;
use crate::manifest::{Object, Resource};
use crate::model::{self, Invalid, ServiceInfo, ServiceName, SliceInfo};
use crate::node::NodeFacts;
use crate::{object_id, StalePins, UdpTargets, SKIP_MIRROR_LABEL};
use claims::Claims;
use flush::PickKey;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use service_cidrs::ServiceCidrs;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;
use svc_nft_ir::{Table, Transaction};

/// A validated Service and where it came from (for diagnostics).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Known {
    pub info: ServiceInfo,
    pub origin: Origin,
}

/// The endpoints one object (an EndpointSlice, or v1 Endpoints) gives a Service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Source {
    /// From v1 Endpoints: only used while the Service has no selector.
    pub mirrored: bool,
    pub slices: Vec<SliceInfo>,
}

/// `(kind, namespace, name)` of an endpoints object.
/// An endpoints object's `(kind, namespace, name)` as a 128-bit hash: at 100k objects the
/// names themselves would cost megabytes, and the hash only has to tell them apart.
type SourceId = u128;

fn source_id(kind: &str, namespace: &str, name: &str) -> SourceId {
    use std::hash::{Hash, Hasher};
    let half = |seed: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (seed, kind, namespace, name).hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// What is known under one Service name (one map for both keeps a name's cost down: at 100k
/// Services every map entry counts).
#[derive(Debug, Default)]
struct Entry {
    known: Option<Packed<Known>>,
    /// The endpoints objects naming it, by id (sorted; usually one or two), packed as one.
    sources: Option<Packed<Vec<(SourceId, Source)>>>,
}

impl Entry {
    fn sources(&self) -> Vec<(SourceId, Source)> {
        self.sources.as_ref().map(Packed::get).unwrap_or_default()
    }

    fn set_sources(&mut self, list: Vec<(SourceId, Source)>) {
        self.sources = (!list.is_empty()).then(|| Packed::of(&list));
    }

    fn is_empty(&self) -> bool {
        self.known.is_none() && self.sources.is_none()
    }
}

/// A value kept serialized (postcard): a fraction of the memory of the structs with their
/// vectors and strings; unpacked only to compile that Service.
struct Packed<T> {
    bytes: Box<[u8]>,
    of: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> Packed<T> {
    fn of(value: &T) -> Packed<T> {
        let bytes = postcard::to_allocvec(value).expect("the model serializes");
        Packed {
            bytes: bytes.into_boxed_slice(),
            of: PhantomData,
        }
    }

    fn get(&self) -> T {
        postcard::from_bytes(&self.bytes).expect("packed by Packed::of")
    }
}

impl<T> PartialEq for Packed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<T> std::fmt::Debug for Packed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Packed({} bytes)", self.bytes.len())
    }
}

/// What a Service is compiled from.
#[derive(Clone, Debug)]
struct Inputs {
    info: ServiceInfo,
    slices: Vec<SliceInfo>,
}

/// The compiled state of a node, changed one object at a time.
pub struct Incremental {
    node: NodeFacts,
    /// By Service name: the Service, and the endpoints objects that name it.
    entries: BTreeMap<ServiceName, Entry>,
    /// Entries with a Service.
    services: usize,
    /// The Service each endpoints object feeds.
    owners: HashMap<SourceId, ServiceName>,
    /// Services whose objects changed since the last flush, with their inputs at that flush
    /// (`None`: the Service did not exist).
    touched: BTreeMap<ServiceName, Option<Inputs>>,
    /// Whether a flush has built the table yet.
    built: bool,
    /// Who holds each frontend, and who waits for it; kept through rebuilds.
    claims: Claims,
    notes: BTreeMap<ServiceName, Vec<String>>,
    /// The table without the Services' elements: every set declared, and the chains.
    shape: Table,
    /// How many Service ports use each shared pick chain.
    picks: BTreeMap<PickKey, usize>,
    /// Endpoints in the hairpin sets, and how many Service ports put each there.
    hairpins: flush::AddrCounts,
    /// Elements the Services put in the table.
    elements: usize,
    /// Services with a health-check NodePort: the port and the ready local endpoints.
    health: BTreeMap<ServiceName, (u16, usize)>,
    /// Services with Local-policy ports that have no local endpoint, and their sum.
    no_local: BTreeMap<ServiceName, NoLocalEndpoints>,
    no_local_total: NoLocalEndpoints,
    /// The node's facts changed: the next flush rebuilds everything.
    node_changed: bool,
    /// `--service-cidr` and the ServiceCIDR objects; `node.service_cidrs` holds them merged.
    service_cidrs: ServiceCidrs,
    /// Warnings about accepted objects, handed out by the next flush.
    warnings: Vec<Diagnostic>,
    /// Namespaces and names, each held once however many Services, endpoints and claims use
    /// it.
    strings: HashSet<Arc<str>>,
}

/// A Service's health-check NodePort and how many ready endpoints it has on this node
/// (distinct addresses, terminating ones not counted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub local_endpoints: usize,
}

/// Service ports whose Local traffic policy finds no endpoint on this node while the
/// Service has endpoints elsewhere: their traffic of that kind is dropped here. kube-proxy's
/// `sync_proxy_rules_no_local_endpoints_total{traffic_policy}`, counted per Service port and
/// cluster IP family as its per-family proxiers do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoLocalEndpoints {
    /// Per family (IPv4, IPv6) of the Service port: `internalTrafficPolicy: Local`, cluster IP
    /// traffic dropped.
    pub internal: [usize; 2],
    /// Per family: `externalTrafficPolicy: Local`, on ports with external frontends, traffic
    /// from outside the cluster dropped.
    pub external: [usize; 2],
}

impl NoLocalEndpoints {
    fn of(ports: &[layout::ServicePort]) -> NoLocalEndpoints {
        let starved = ports
            .iter()
            .filter(|p| p.endpoints.any && p.endpoints.local.is_empty());
        let mut counts = NoLocalEndpoints::default();
        for p in starved {
            let f = usize::from(p.cluster_ip.addr.is_ipv6());
            counts.internal[f] += usize::from(p.internal_local);
            let outside = !p.external.is_empty() || !p.load_balancers.is_empty();
            counts.external[f] += usize::from(p.external_local && outside);
        }
        counts
    }

    fn add(&mut self, other: NoLocalEndpoints) {
        for f in 0..2 {
            self.internal[f] += other.internal[f];
            self.external[f] += other.external[f];
        }
    }

    fn subtract(&mut self, other: NoLocalEndpoints) {
        for f in 0..2 {
            self.internal[f] -= other.internal[f];
            self.external[f] -= other.external[f];
        }
    }
}

/// What one [`Incremental::flush`] changed.
#[derive(Debug)]
pub struct Delta {
    /// Moves a kernel holding the previous table to the new one; `None`: replace the table
    /// whole (after the first flush, a change of node facts, or most Services changing).
    pub transaction: Option<Transaction>,
    /// Services recompiled.
    pub recompiled: usize,
    /// UDP endpoints no longer used, and UDP frontends that now DNAT: what stale conntrack
    /// entries to delete.
    pub udp: UdpTargets,
    /// Session-affinity entries no longer used: what the runtime may delete.
    pub pins: StalePins,
    /// Warnings about the clashes that began with this flush: a frontend a Service claims
    /// is held by another, and not programmed for it.
    pub diagnostics: Vec<Diagnostic>,
}

impl Incremental {
    /// A node with no Services yet.
    pub fn new(node: &NodeFacts) -> Incremental {
        Incremental {
            node: node.clone(),
            entries: BTreeMap::new(),
            services: 0,
            owners: HashMap::new(),
            touched: BTreeMap::new(),
            built: false,
            claims: Claims::default(),
            notes: BTreeMap::new(),
            shape: layout::skeleton(node),
            picks: BTreeMap::new(),
            hairpins: flush::AddrCounts::default(),
            elements: 0,
            health: BTreeMap::new(),
            no_local: BTreeMap::new(),
            no_local_total: NoLocalEndpoints::default(),
            node_changed: false,
            service_cidrs: ServiceCidrs::new(&node.service_cidrs),
            warnings: Vec::new(),
            strings: HashSet::new(),
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(held) = self.strings.get(s) {
            return held.clone();
        }
        let held: Arc<str> = s.into();
        self.strings.insert(held.clone());
        held
    }

    /// `namespace/name`, interned.
    fn name_of(&mut self, namespace: &str, name: &str) -> ServiceName {
        (self.intern(namespace), self.intern(name))
    }

    /// The table without the Services' elements (its sets declared, its chains), as of the
    /// last flush: what a sync needs besides the transaction.
    pub fn shape(&self) -> &Table {
        &self.shape
    }

    /// Elements the Services put in the table, as of the last flush.
    pub fn elements(&self) -> usize {
        self.elements
    }

    /// Services known (valid ones).
    pub fn services(&self) -> usize {
        self.services
    }

    /// The health-check NodePorts of the Services that have one, as of the last flush.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        self.health
            .iter()
            .map(|(name, &(port, local_endpoints))| HealthCheck {
                namespace: name.0.to_string(),
                name: name.1.to_string(),
                port,
                local_endpoints,
            })
            .collect()
    }

    /// Local-policy Service ports without a local endpoint, as of the last flush.
    pub fn no_local_endpoints(&self) -> NoLocalEndpoints {
        self.no_local_total
    }

    /// Change the node's facts; the next flush rebuilds everything if they differ.
    pub fn set_node(&mut self, node: &NodeFacts) {
        let mut node = node.clone();
        node.service_cidrs = self.set_service_cidr_flag(&node.service_cidrs);
        if node != self.node {
            self.node = node;
            self.node_changed = true;
        }
    }

    /// Add or replace an object; `Ok(true)` when that changed what a Service compiles from
    /// (rewriting an object as it was changes nothing). An invalid object is reported and
    /// changes nothing either: the version accepted last stays in force until a valid one
    /// arrives or the object is removed.
    pub fn upsert(&mut self, obj: &Object) -> Result<bool, Box<Diagnostic>> {
        let id = object_id(obj);
        let reject = |e: Invalid| {
            let d = Diagnostic::new(
                obj.origin.clone(),
                Some(id.clone()),
                Some(e.field),
                e.message,
            );
            Box::new(d)
        };
        match &obj.resource {
            Resource::Service(svc) => {
                let info = model::service(svc).map_err(reject)?;
                Ok(self.set_service(info, obj.origin.clone(), id))
            }
            Resource::EndpointSlice(slice) => {
                let key = source_id("EndpointSlice", &id.namespace, &id.name);
                let found = model::endpoint_slice(slice).map_err(reject)?;
                let source = Source {
                    mirrored: false,
                    slices: Vec::from_iter(found),
                };
                Ok(self.set_source(key, Some(source)))
            }
            Resource::ServiceCidr(cidr) => {
                let nets = model::service_cidr(cidr).map_err(reject)?;
                Ok(self.set_service_cidr(&id.name, Some(nets)))
            }
            Resource::Endpoints(eps) => {
                let key = source_id("Endpoints", &id.namespace, &id.name);
                let skip = eps
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SKIP_MIRROR_LABEL))
                    .is_some_and(|v| v == "true");
                if skip {
                    return Ok(self.set_source(key, None));
                }
                let slices = model::endpoints(eps).map_err(reject)?;
                let source = Source {
                    mirrored: true,
                    slices,
                };
                Ok(self.set_source(key, Some(source)))
            }
        }
    }

    /// Forget an object; whether that changed the table. `kind`: Service, EndpointSlice,
    /// Endpoints or ServiceCIDR.
    pub fn remove(&mut self, kind: &str, namespace: &str, name: &str) -> bool {
        match kind {
            "Service" => {
                let name = self.name_of(namespace, name);
                self.remove_service(&name)
            }
            "EndpointSlice" | "Endpoints" => {
                self.set_source(source_id(kind, namespace, name), None)
            }
            "ServiceCIDR" => self.set_service_cidr(name, None),
            _ => false,
        }
    }

    /// Whether the Service changed.
    pub(crate) fn set_service(
        &mut self,
        mut info: ServiceInfo,
        origin: Origin,
        id: ObjectId,
    ) -> bool {
        let name = self.name_of(&id.namespace, &id.name);
        let ignored = !self.node.allow_external_ips && !info.external_ips.is_empty();
        if ignored {
            info.external_ips.clear();
        }
        if self.known(&name).is_some_and(|k| k.info == info) {
            return false;
        }
        if ignored {
            let message = "ignored: the AllowServiceExternalIPs feature gate is off (KEP-5707)";
            let field = Some("spec.externalIPs".to_string());
            let d = Diagnostic::new(origin.clone(), Some(id), field, message.into());
            self.warnings.push(d.warning());
        }
        self.touch(&name);
        let entry = self.entries.entry(name).or_default();
        let packed = Packed::of(&Known { info, origin });
        if entry.known.replace(packed).is_none() {
            self.services += 1;
        }
        true
    }

    fn remove_service(&mut self, name: &ServiceName) -> bool {
        if self.entries.get(name).is_none_or(|e| e.known.is_none()) {
            return false;
        }
        self.touch(name);
        let entry = self.entries.get_mut(name).expect("known");
        entry.known = None;
        self.services -= 1;
        if entry.is_empty() {
            self.entries.remove(name);
        }
        true
    }

    fn known(&self, name: &ServiceName) -> Option<Known> {
        self.entries.get(name)?.known.as_ref().map(Packed::get)
    }

    /// The Services, in name order.
    fn names(&self) -> impl Iterator<Item = &ServiceName> {
        let known = self.entries.iter().filter(|(_, e)| e.known.is_some());
        known.map(|(name, _)| name)
    }

    /// Remember what `name` was compiled from at the last flush, before its inputs change.
    fn touch(&mut self, name: &ServiceName) {
        if !self.touched.contains_key(name) {
            let inputs = self.inputs(name);
            self.touched.insert(name.clone(), inputs);
        }
    }

    /// What `name` compiles from now.
    fn inputs(&self, name: &ServiceName) -> Option<Inputs> {
        let entry = self.entries.get(name)?;
        let known = entry.known.as_ref()?.get();
        let slices = entry
            .sources()
            .into_iter()
            .filter(|(_, s)| !(s.mirrored && known.info.has_selector))
            .flat_map(|(_, s)| s.slices)
            .collect();
        Some(Inputs {
            info: known.info,
            slices,
        })
    }

    /// Add endpoints already validated (and filtered for mirroring) by [`crate::compile`].
    pub(crate) fn add_endpoints(&mut self, obj: &Object, slices: Vec<SliceInfo>) {
        let id = object_id(obj);
        let kind = match obj.resource {
            Resource::Endpoints(_) => "Endpoints",
            _ => "EndpointSlice",
        };
        let source = Source {
            mirrored: false,
            slices,
        };
        self.set_source(source_id(kind, &id.namespace, &id.name), Some(source));
    }

    /// Set (or with `None` drop) the endpoints one object gives its Service. An object
    /// carries one Service's endpoints; if it moved to another Service, both are recompiled.
    /// Returns whether anything changed.
    fn set_source(&mut self, key: SourceId, source: Option<Source>) -> bool {
        let service = source
            .as_ref()
            .and_then(|s| s.slices.first())
            .map(|s| self.name_of(&s.service.0, &s.service.1));
        let removed = self.owners.contains_key(&key);
        if let Some(old) = self.owners.remove(&key) {
            let mut list = self
                .entries
                .get(&old)
                .map(Entry::sources)
                .unwrap_or_default();
            let unchanged = service.as_ref() == Some(&old)
                && list
                    .iter()
                    .any(|(k, s)| *k == key && Some(s) == source.as_ref());
            if unchanged {
                self.owners.insert(key, old);
                return false;
            }
            self.touch(&old);
            list.retain(|(k, _)| *k != key);
            if let Some(entry) = self.entries.get_mut(&old) {
                entry.set_sources(list);
                if entry.is_empty() {
                    self.entries.remove(&old);
                }
            }
        }
        let (Some(service), Some(source)) = (service, source) else {
            return removed;
        };
        self.touch(&service);
        self.owners.insert(key, service.clone());
        let entry = self.entries.entry(service).or_default();
        let mut list = entry.sources();
        let at = list.partition_point(|(k, _)| *k < key);
        list.insert(at, (key, source));
        entry.set_sources(list);
        true
    }
}
