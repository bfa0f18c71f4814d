//! Per-Service compilation: the table kept up to date as objects come and go, recompiling only
//! the Services whose objects changed.
//!
//! Each accepted Service's ports are kept; a change subtracts what its old ports added to the
//! table and adds what its new ports add. Shared parts are reference-counted: the pick and
//! affinity chains, and elements two Services both add (hairpin pairs of a shared endpoint).
//! The transaction is the diff of two small tables holding only what left and what arrived,
//! so a sync costs the size of the change, not of the cluster.
//!
//! A frontend clash (two Services claiming one address and port) is resolved by name order,
//! as [`crate::compile`] does; since that can move a Service in or out of the table, a clash —
//! or a release while a Service waits out a clash — rebuilds the whole table instead.

use crate::chains::{self, Pick};
use crate::diagnostic::{Diagnostic, ObjectId, Origin};
use crate::family::{Ipf, FAMILIES};
use crate::layout::{self, endpoints_map, Contribution, ServicePort};
use crate::manifest::{Object, Resource};
use crate::model::{self, Invalid, ServiceInfo, ServiceName, SliceInfo};
use crate::node::NodeFacts;
use crate::services::{self, Claims};
use crate::{object_id, UdpTargets, SKIP_MIRROR_LABEL};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use svc_nft_ir::{diff, Data, Element, Key, L4Proto, Set, Table, Transaction, Value};

/// A validated Service and where it came from (for diagnostics).
#[derive(Clone, Debug)]
pub(crate) struct Known {
    pub info: ServiceInfo,
    pub origin: Origin,
    pub id: ObjectId,
}

/// The endpoints one object (an EndpointSlice, or v1 Endpoints) gives a Service.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Source {
    /// From v1 Endpoints: only used while the Service has no selector.
    pub mirrored: bool,
    pub slices: Vec<SliceInfo>,
}

/// `(kind, namespace, name)` of an endpoints object.
type SourceId = (&'static str, String, String);

/// What an accepted Service put in the table.
#[derive(Debug)]
struct Built {
    ips: Vec<IpAddr>,
    ports: Vec<ServicePort>,
}

type PickKey = (Ipf, L4Proto, Pick);
type RecorderKey = (Ipf, L4Proto, u32);

/// The compiled state of a node, changed one object at a time.
pub struct Incremental {
    node: NodeFacts,
    services: BTreeMap<ServiceName, Known>,
    sources: BTreeMap<ServiceName, BTreeMap<SourceId, Source>>,
    /// The Service each endpoints object feeds.
    owners: HashMap<SourceId, ServiceName>,
    /// Services whose objects changed since the last [`Incremental::flush`].
    dirty: BTreeSet<ServiceName>,
    built: HashMap<ServiceName, Built>,
    /// Services left out because an earlier one holds their frontend.
    clashed: BTreeSet<ServiceName>,
    claims: Claims,
    notes: BTreeMap<ServiceName, Vec<String>>,
    table: Table,
    picks: BTreeMap<PickKey, usize>,
    recorders: BTreeMap<RecorderKey, usize>,
    /// Elements added by more than one Service: the references beyond the first.
    shared: HashMap<(String, Key), usize>,
    /// UDP endpoints and how many endpoint-map elements lead to each.
    udp_endpoints: HashMap<(IpAddr, u16), usize>,
    /// The names of the UDP endpoint maps.
    udp_maps: Vec<String>,
    /// Services with a health-check NodePort, and the port.
    health_ports: BTreeMap<ServiceName, u16>,
    /// The node's facts changed: the next flush rebuilds the table.
    node_changed: bool,
}

/// A Service's health-check NodePort and how many endpoints it has on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub local_endpoints: usize,
}

/// What one [`Incremental::flush`] changed.
#[derive(Debug)]
pub struct Delta {
    /// Moves a kernel holding the previous table to the new one.
    pub transaction: Transaction,
    /// Services recompiled.
    pub recompiled: usize,
    /// Whether a clash made it rebuild the whole table.
    pub rebuilt: bool,
    /// UDP endpoints no longer used, and UDP frontends that now DNAT: what stale conntrack
    /// entries to delete.
    pub udp: UdpTargets,
    /// Services left out by this flush (frontend clashes).
    pub diagnostics: Vec<Diagnostic>,
}

/// The table's elements and chains that a flush removed and added.
struct Change {
    gone: Table,
    arrived: Table,
}

impl Incremental {
    /// A node with no Services yet.
    pub fn new(node: &NodeFacts) -> Incremental {
        Incremental {
            node: node.clone(),
            services: BTreeMap::new(),
            sources: BTreeMap::new(),
            owners: HashMap::new(),
            dirty: BTreeSet::new(),
            built: HashMap::new(),
            clashed: BTreeSet::new(),
            claims: Claims::default(),
            notes: BTreeMap::new(),
            table: layout::skeleton(node),
            picks: BTreeMap::new(),
            recorders: BTreeMap::new(),
            shared: HashMap::new(),
            udp_endpoints: HashMap::new(),
            udp_maps: FAMILIES
                .iter()
                .flat_map(|&f| [false, true].map(|local| endpoints_map(f, L4Proto::Udp, local)))
                .collect(),
            health_ports: BTreeMap::new(),
            node_changed: false,
        }
    }

    /// The table as of the last flush.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Services known (valid ones).
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// The health-check NodePorts of the Services that have one, as of the last flush.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        let local = |name: &ServiceName| {
            let ports = self
                .built
                .get(name)
                .map(|b| b.ports.as_slice())
                .unwrap_or(&[]);
            let counts = ports.iter().map(|p| p.endpoints.local.len());
            counts.max().unwrap_or(0)
        };
        self.health_ports
            .iter()
            .map(|(name, &port)| HealthCheck {
                namespace: name.0.clone(),
                name: name.1.clone(),
                port,
                local_endpoints: local(name),
            })
            .collect()
    }

    /// Change the node's facts; the next flush rebuilds everything if they differ.
    pub fn set_node(&mut self, node: &NodeFacts) {
        if *node != self.node {
            self.node = node.clone();
            self.node_changed = true;
        }
    }

    /// Add or replace an object. An invalid one is removed (as if deleted) and reported.
    pub fn upsert(&mut self, obj: &Object) -> Result<(), Box<Diagnostic>> {
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
            Resource::Service(svc) => match model::service(svc) {
                Ok(info) => {
                    self.set_service(info, obj.origin.clone(), id);
                    Ok(())
                }
                Err(e) => {
                    self.remove_service(&(id.namespace.clone(), id.name.clone()));
                    Err(reject(e))
                }
            },
            Resource::EndpointSlice(slice) => {
                let key = ("EndpointSlice", id.namespace.clone(), id.name.clone());
                match model::endpoint_slice(slice) {
                    Ok(found) => {
                        let source = Source {
                            mirrored: false,
                            slices: Vec::from_iter(found),
                        };
                        self.set_source(key, Some(source));
                        Ok(())
                    }
                    Err(e) => {
                        self.set_source(key, None);
                        Err(reject(e))
                    }
                }
            }
            Resource::Endpoints(eps) => {
                let key = ("Endpoints", id.namespace.clone(), id.name.clone());
                let skip = eps
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SKIP_MIRROR_LABEL))
                    .is_some_and(|v| v == "true");
                if skip {
                    self.set_source(key, None);
                    return Ok(());
                }
                match model::endpoints(eps) {
                    Ok(slices) => {
                        let source = Source {
                            mirrored: true,
                            slices,
                        };
                        self.set_source(key, Some(source));
                        Ok(())
                    }
                    Err(e) => {
                        self.set_source(key, None);
                        Err(reject(e))
                    }
                }
            }
        }
    }

    /// Forget an object. `kind`: Service, EndpointSlice or Endpoints.
    pub fn remove(&mut self, kind: &str, namespace: &str, name: &str) {
        let (namespace, name) = (namespace.to_string(), name.to_string());
        match kind {
            "Service" => self.remove_service(&(namespace, name)),
            "EndpointSlice" => self.set_source(("EndpointSlice", namespace, name), None),
            "Endpoints" => self.set_source(("Endpoints", namespace, name), None),
            _ => {}
        }
    }

    pub(crate) fn set_service(&mut self, info: ServiceInfo, origin: Origin, id: ObjectId) {
        let name = (id.namespace.clone(), id.name.clone());
        if self.services.get(&name).is_some_and(|k| k.info == info) {
            return;
        }
        match info.health_check_node_port {
            Some(port) => self.health_ports.insert(name.clone(), port),
            None => self.health_ports.remove(&name),
        };
        self.services
            .insert(name.clone(), Known { info, origin, id });
        self.dirty.insert(name);
    }

    fn remove_service(&mut self, name: &ServiceName) {
        if self.services.remove(name).is_some() {
            self.health_ports.remove(name);
            self.dirty.insert(name.clone());
        }
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
        self.set_source((kind, id.namespace, id.name), Some(source));
    }

    /// The table, for a one-off compile.
    pub(crate) fn into_table(self) -> Table {
        self.table
    }

    /// Set (or with `None` drop) the endpoints one object gives its Service. An object
    /// carries one Service's endpoints; if it moved to another Service, both are recompiled.
    fn set_source(&mut self, key: SourceId, source: Option<Source>) {
        if let Some(old) = self.owners.remove(&key) {
            let unchanged = source.as_ref().is_some_and(|s| {
                s.slices.first().map(|x| &x.service) == Some(&old)
                    && self.sources.get(&old).and_then(|m| m.get(&key)) == Some(s)
            });
            if unchanged {
                self.owners.insert(key, old);
                return;
            }
            if let Some(map) = self.sources.get_mut(&old) {
                map.remove(&key);
                if map.is_empty() {
                    self.sources.remove(&old);
                }
            }
            self.dirty.insert(old);
        }
        let Some(source) = source else { return };
        let Some(service) = source.slices.first().map(|s| s.service.clone()) else {
            return;
        };
        self.owners.insert(key.clone(), service.clone());
        self.sources
            .entry(service.clone())
            .or_default()
            .insert(key, source);
        self.dirty.insert(service);
    }

    /// Recompile the Services whose objects changed; the table moves to match.
    pub fn flush(&mut self) -> Delta {
        // Many changes at once (the first flush above all): rebuilding is cheaper than
        // tracking every element.
        if self.node_changed || self.dirty.len() * 2 > self.built.len().max(1) * 3 {
            let n = self.dirty.len();
            return self.rebuilt(n);
        }
        let dirty = std::mem::take(&mut self.dirty);
        let mut change = Change {
            gone: self.empty_table(),
            arrived: self.empty_table(),
        };
        let (picks_before, recorders_before) = (self.picks.clone(), self.recorders.clone());
        let mut clash = false;
        let mut released = false;
        let mut notes_changed = false;
        for name in &dirty {
            if let Some(old) = self.built.remove(name) {
                self.claims.release(&old.ips, &old.ports);
                self.subtract(&Contribution::of(&old.ports), &mut change);
                released = true;
            }
            self.clashed.remove(name);
            notes_changed |= self.notes.remove(name).is_some();
            if self.expand(name, Some(&mut change)).is_err() {
                clash = true;
                break;
            }
            notes_changed |= self.notes.contains_key(name);
        }
        if clash || (released && !self.clashed.is_empty()) {
            // Back to the table the kernel holds, to diff the rebuilt one against it.
            for (name, set) in change.arrived.sets {
                let elements = &mut self.table.sets.get_mut(&name).expect("known set").elements;
                for key in set.elements.keys() {
                    elements.remove(key);
                }
            }
            for (name, set) in change.gone.sets {
                let elements = &mut self.table.sets.get_mut(&name).expect("known set").elements;
                elements.extend(set.elements);
            }
            return self.rebuilt(dirty.len());
        }
        self.chain_changes(&picks_before, &recorders_before, &mut change);
        if notes_changed {
            self.table.notes = self.notes.values().flatten().cloned().collect();
        }
        let udp = self.udp_change(&change);
        Delta {
            transaction: diff(&change.gone, &change.arrived),
            recompiled: dirty.len(),
            rebuilt: false,
            udp,
            diagnostics: vec![],
        }
    }

    /// Expand one Service (if it still exists) and add it to the table; on a clash, nothing
    /// is added and the error says which Service holds the frontend.
    fn expand(
        &mut self,
        name: &ServiceName,
        change: Option<&mut Change>,
    ) -> Result<(), Box<Diagnostic>> {
        let Some(known) = self.services.get(name) else {
            return Ok(());
        };
        let slices: Vec<SliceInfo> = self
            .sources
            .get(name)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|s| !(s.mirrored && known.info.has_selector))
            .flat_map(|s| s.slices.iter().cloned())
            .collect();
        match services::expand(name, &known.info, &slices, &self.node, &mut self.claims) {
            Ok(expanded) => {
                if !expanded.notes.is_empty() {
                    self.notes.insert(name.clone(), expanded.notes);
                }
                let ips = known.info.cluster_ips().to_vec();
                self.add(&Contribution::of(&expanded.ports), change);
                self.built.insert(
                    name.clone(),
                    Built {
                        ips,
                        ports: expanded.ports,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let clash = Diagnostic::new(
                    known.origin.clone(),
                    Some(known.id.clone()),
                    Some(e.field),
                    e.message,
                );
                self.clashed.insert(name.clone());
                Err(Box::new(clash))
            }
        }
    }

    /// Rebuild the whole table (see [`Incremental::rebuild`]) and diff it against the old.
    fn rebuilt(&mut self, recompiled: usize) -> Delta {
        let old = std::mem::replace(&mut self.table, layout::skeleton(&self.node));
        let before = crate::udp_targets(&old);
        let diagnostics = self.rebuild();
        let after = crate::udp_targets(&self.table);
        Delta {
            transaction: diff(&old, &self.table),
            recompiled,
            rebuilt: true,
            udp: UdpTargets {
                frontends: after
                    .frontends
                    .difference(&before.frontends)
                    .copied()
                    .collect(),
                endpoints: before
                    .endpoints
                    .difference(&after.endpoints)
                    .copied()
                    .collect(),
            },
            diagnostics,
        }
    }

    /// Compile every Service again from scratch, in name order (earlier names win clashes);
    /// returns the clashes.
    pub(crate) fn rebuild(&mut self) -> Vec<Diagnostic> {
        self.table = layout::skeleton(&self.node);
        self.built.clear();
        self.clashed.clear();
        self.claims = Claims::default();
        self.notes.clear();
        self.picks.clear();
        self.recorders.clear();
        self.shared.clear();
        self.udp_endpoints.clear();
        self.dirty.clear();
        self.node_changed = false;
        let names: Vec<ServiceName> = self.services.keys().cloned().collect();
        let mut diagnostics = Vec::new();
        for name in &names {
            if let Err(clash) = self.expand(name, None) {
                diagnostics.push(*clash);
            }
        }
        for key in self.picks.keys() {
            let (name, chain) = chains::pick(&self.node, key.0, key.1, key.2);
            self.table.chains.insert(name, chain);
        }
        for key in self.recorders.keys() {
            let (name, chain) = chains::recorder(key.0, key.1, key.2);
            self.table.chains.insert(name, chain);
        }
        self.table.notes = self.notes.values().flatten().cloned().collect();
        diagnostics
    }

    /// The table's sets, declared but empty, and no chains: what a [`Change`] starts from.
    fn empty_table(&self) -> Table {
        let mut t = Table {
            family: self.table.family,
            name: self.table.name.clone(),
            ..Table::default()
        };
        for (name, set) in &self.table.sets {
            let decl = Set {
                key: set.key.clone(),
                data: set.data.clone(),
                flags: set.flags.clone(),
                timeout: set.timeout,
                comment: set.comment.clone(),
                elements: BTreeMap::new(),
            };
            t.sets.insert(name.clone(), decl);
        }
        t
    }

    /// Put what a Service adds into the table, noting what is new in `change`.
    fn add(&mut self, c: &Contribution, mut change: Option<&mut Change>) {
        for (set, key, element) in &c.elements {
            let elements = &mut self
                .table
                .sets
                .get_mut(set)
                .expect("every set is created up front")
                .elements;
            if let Some(existing) = elements.get(key) {
                // Another Service added the same element (a shared endpoint's hairpin pair).
                debug_assert_eq!(existing, element, "{set}: one key, two elements");
                *self.shared.entry((set.clone(), key.clone())).or_default() += 1;
                continue;
            }
            elements.insert(key.clone(), element.clone());
            if self.udp_maps.contains(set) {
                count_udp(&mut self.udp_endpoints, element, 1);
            }
            if let Some(change) = change.as_deref_mut() {
                note_element(&mut change.arrived, &mut change.gone, set, key, element);
            }
        }
        for pick in &c.picks {
            *self.picks.entry(*pick).or_default() += 1;
        }
        for r in &c.remembers {
            *self.recorders.entry(*r).or_default() += 1;
        }
    }

    /// Take what a Service added out of the table, noting what left in `change`.
    fn subtract(&mut self, c: &Contribution, change: &mut Change) {
        for (set, key, element) in &c.elements {
            let shared_key = (set.clone(), key.clone());
            if let Some(n) = self.shared.get_mut(&shared_key) {
                *n -= 1;
                if *n == 0 {
                    self.shared.remove(&shared_key);
                }
                continue;
            }
            let elements = &mut self.table.sets.get_mut(set).expect("known set").elements;
            if elements.remove(key).is_some() {
                if self.udp_maps.contains(set) {
                    count_udp(&mut self.udp_endpoints, element, -1);
                }
                note_element(&mut change.gone, &mut change.arrived, set, key, element);
            }
        }
        for pick in &c.picks {
            release(&mut self.picks, pick);
        }
        for r in &c.remembers {
            release(&mut self.recorders, r);
        }
    }

    /// Create the chains that came into use and delete those that fell out of use.
    fn chain_changes(
        &mut self,
        picks_before: &BTreeMap<PickKey, usize>,
        recorders_before: &BTreeMap<RecorderKey, usize>,
        change: &mut Change,
    ) {
        let node = &self.node;
        let pick = |k: &PickKey| chains::pick(node, k.0, k.1, k.2);
        let recorder = |k: &RecorderKey| chains::recorder(k.0, k.1, k.2);
        moved_chains(picks_before, &self.picks, pick, &mut self.table, change);
        moved_chains(
            recorders_before,
            &self.recorders,
            recorder,
            &mut self.table,
            change,
        );
    }

    /// The UDP side of a change, for the conntrack cleanup.
    fn udp_change(&self, change: &Change) -> UdpTargets {
        let (gone, arrived) = (
            crate::udp_targets(&change.gone),
            crate::udp_targets(&change.arrived),
        );
        UdpTargets {
            frontends: arrived
                .frontends
                .difference(&gone.frontends)
                .copied()
                .collect(),
            endpoints: gone
                .endpoints
                .into_iter()
                .filter(|e| !self.udp_endpoints.contains_key(e))
                .collect(),
        }
    }
}

/// Record an element in `into`, unless it cancels out an identical one in `from` (removed
/// and added again within one flush).
fn note_element(into: &mut Table, from: &mut Table, set: &str, key: &Key, element: &Element) {
    let from_set = &mut from.sets.get_mut(set).expect("known set").elements;
    if from_set.get(key) == Some(element) {
        from_set.remove(key);
        return;
    }
    let into_set = &mut into.sets.get_mut(set).expect("known set").elements;
    into_set.insert(key.clone(), element.clone());
}

fn release<K: Ord>(counts: &mut BTreeMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Add to the table (and to `change.arrived`) the chains now counted but not before, and
/// remove (into `change.gone`) those counted before but not now.
fn moved_chains<K: Ord>(
    before: &BTreeMap<K, usize>,
    after: &BTreeMap<K, usize>,
    chain: impl Fn(&K) -> (String, svc_nft_ir::Chain),
    table: &mut Table,
    change: &mut Change,
) {
    for key in after.keys().filter(|k| !before.contains_key(*k)) {
        let (name, c) = chain(key);
        table.chains.insert(name.clone(), c.clone());
        change.arrived.chains.insert(name, c);
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        let (name, c) = chain(key);
        table.chains.remove(&name);
        change.gone.chains.insert(name, c);
    }
}

/// Count the UDP endpoint an element of a UDP endpoints map leads to.
fn count_udp(counts: &mut HashMap<(IpAddr, u16), usize>, element: &Element, by: isize) {
    let Some(Data::Values(v)) = &element.data else {
        return;
    };
    let addr = match &v[0] {
        Value::Ipv4(a) => IpAddr::V4(*a),
        Value::Ipv6(a) => IpAddr::V6(*a),
        _ => return,
    };
    let Value::Port(port) = v[1] else { return };
    let n = counts.entry((addr, port)).or_default();
    *n = n.saturating_add_signed(by);
    if *n == 0 {
        counts.remove(&(addr, port));
    }
}
