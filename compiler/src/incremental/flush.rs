//! Flushing: recompile the touched Services and turn the difference into a transaction; build
//! the whole table when asked.

use super::clashes::Before;
use super::{Delta, Incremental, Inputs, NoLocalEndpoints};
use crate::chains::{self, Pick};
use crate::diagnostic::Diagnostic;
use crate::endpoints;
use crate::family::{Ipf, FAMILIES};
use crate::layout::{self, Contribution};
use crate::model::ServiceName;
use crate::pins::{self, Pinnable};
use crate::services::{self, Claim, Expanded};
use crate::{StalePins, UdpFrontends, UdpTargets};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::OnceLock;
use svc_nft_ir::{diff, Chain, Element, Key, L4Proto, Set, Table, Value};

pub(super) type PickKey = (Ipf, L4Proto, Pick);

/// The elements and chains a flush removed and added.
pub(super) struct Change {
    pub(super) gone: Table,
    pub(super) arrived: Table,
    /// The UDP frontends of the recompiled Services, before and after, with their serving
    /// endpoints: what the conntrack cleanup needs.
    udp_before: UdpFrontends,
    udp_after: UdpFrontends,
    /// Their Service ports with affinity, before and after, with the endpoints they may pin
    /// to: which affinity entries went stale.
    pins_before: Pinnable,
    pins_after: Pinnable,
}

impl Change {
    /// Note a Service port's own chain entering or leaving, unless it cancels out the same
    /// chain left or entered within this flush.
    fn note_chain(&mut self, name: &str, chain: &Chain, sign: Sign) {
        let (into, from) = match sign {
            Sign::Add => (&mut self.arrived, &mut self.gone),
            Sign::Remove => (&mut self.gone, &mut self.arrived),
        };
        if from.chains.get(name) == Some(chain) {
            from.chains.remove(name);
        } else {
            into.chains.insert(name.to_string(), chain.clone());
        }
    }
}

/// Whether a contribution enters or leaves the table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sign {
    Add,
    Remove,
}

impl Incremental {
    /// Recompile the Services whose objects changed since the last flush, and those that
    /// gained or lost a frontend through them.
    pub fn flush(&mut self) -> Delta {
        // Forget the names of deleted objects, now and then (amortised over the flushes).
        let live = 2 * (self.services + self.owners.len()) + 1024;
        if self.strings.len() > 2 * live {
            self.strings.retain(|s| std::sync::Arc::strong_count(s) > 1);
        }
        // Most Services at once (a relist): rebuilding costs less than tracking each element.
        let many = self.touched.len() > 64 && self.touched.len() * 2 > self.services;
        if !self.built || self.node_changed || many {
            return self.rebuilt();
        }
        let touched = std::mem::take(&mut self.touched);
        let mut moved = self.move_claims(&touched);
        // Services whose inputs did not change but whose frontends did.
        let promoted: Vec<(ServiceName, Option<Inputs>)> = moved
            .keys()
            .filter(|name| !touched.contains_key(*name))
            .map(|name| (name.clone(), self.inputs(name)))
            .collect();
        let mut change = Change {
            gone: self.declarations(),
            arrived: self.declarations(),
            udp_before: UdpFrontends::new(),
            udp_after: UdpFrontends::new(),
            pins_before: Pinnable::new(),
            pins_after: Pinnable::new(),
        };
        let picks_before = self.picks.clone();
        let (mut notes_changed, mut diagnostics) = (false, std::mem::take(&mut self.warnings));
        let recompiled = touched.len() + promoted.len();
        for (name, old) in touched.into_iter().chain(promoted) {
            let moved = moved.remove(&name).unwrap_or_default();
            let before = Before { inputs: old, moved };
            notes_changed |= self.recompile(&name, &before, &mut change);
            diagnostics.extend(self.new_clashes(&name, &before));
        }
        self.chain_changes(&picks_before, &mut change);
        self.service_cidr_changes(&mut change);
        if notes_changed {
            self.shape.notes = self.notes.values().flatten().cloned().collect();
        }
        Delta {
            udp: self.stale_udp(&change),
            pins: StalePins::between(&change.pins_before, &change.pins_after),
            transaction: Some(diff(&change.gone, &change.arrived)),
            recompiled,
            diagnostics,
        }
    }

    /// Take out what a Service added at the last flush and put in what it adds now; whether
    /// its notes changed.
    fn recompile(&mut self, name: &ServiceName, before: &Before, change: &mut Change) -> bool {
        if let Some(old) = &before.inputs {
            let held = |c: &Claim| before.moved.held_before(c, self.claims.holds(c, name));
            let ports = services::expand(name, &old.info, &old.slices, &self.node, &held).ports;
            change.udp_before.extend(layout::udp_serving(&ports));
            change.pins_before.extend(pins::pinnable(&ports));
            self.count(&Contribution::of(&ports), Sign::Remove, Some(change));
        }
        self.health.remove(name);
        if let Some(gone) = self.no_local.remove(name) {
            self.no_local_total.subtract(gone);
        }
        let mut notes_changed = self.notes.remove(name).is_some();
        if let Some(new) = self.inputs(name) {
            let expanded = self.expand(name, &new);
            notes_changed |= !expanded.notes.is_empty();
            change
                .udp_after
                .extend(layout::udp_serving(&expanded.ports));
            change.pins_after.extend(pins::pinnable(&expanded.ports));
            self.accept(name, &new, expanded, Some(change));
        }
        notes_changed
    }

    /// The whole table as of the last flush (what a full replace loads).
    pub fn table(&self) -> Table {
        let contributions = self.names().map(|name| {
            let inputs = self.inputs(name).expect("known");
            Contribution::of(&self.expand(name, &inputs).ports)
        });
        self.filled(contributions.flat_map(|c| c.elements))
    }

    /// Rebuild from the inputs and return the whole table with the clashes: what a one-off
    /// compile wants, expanding each Service once instead of twice.
    pub(crate) fn compile_table(&mut self) -> (Table, Vec<Diagnostic>) {
        let mut elements = Vec::new();
        let diagnostics = self.rebuild_collecting(Some(&mut elements));
        (self.filled(elements.into_iter()), diagnostics)
    }

    /// The shape with these elements in its sets.
    fn filled(&self, elements: impl Iterator<Item = (String, Key, Element)>) -> Table {
        let mut table = self.shape.clone();
        for (set, key, element) in elements {
            let set = table.sets.get_mut(&set).expect("every set is declared");
            set.elements.insert(key, element);
        }
        table
    }

    /// Compile everything again from the inputs. Frontends stay with their holders; those
    /// nobody holds go out in rank order (see [`super::claims`]). Returns the clashes that
    /// began with it, as warnings.
    pub(crate) fn rebuild(&mut self) -> Vec<Diagnostic> {
        self.rebuild_collecting(None)
    }

    /// [`Incremental::rebuild`], also handing every element added to `elements`.
    fn rebuild_collecting(
        &mut self,
        mut elements: Option<&mut Vec<(String, Key, Element)>>,
    ) -> Vec<Diagnostic> {
        let recreated = self.recreated();
        self.touched.clear();
        self.built = true;
        self.node_changed = false;
        self.service_cidrs.changed = false;
        self.shape = layout::skeleton(&self.node);
        self.notes.clear();
        self.picks.clear();
        self.hairpins = AddrCounts::default();
        self.elements = 0;
        self.health.clear();
        self.no_local.clear();
        self.no_local_total = NoLocalEndpoints::default();
        let old = std::mem::take(&mut self.claims);
        let mut diagnostics = std::mem::take(&mut self.warnings);
        // In rank order, each Service's claims are settled once it has made them.
        for rank in self.claim_order(&old, &recreated) {
            let name = &rank.1;
            let inputs = self.inputs(name).expect("known");
            diagnostics.extend(self.claim_again(&rank, &inputs.info, &old));
            let expanded = self.expand(name, &inputs);
            let added = self.accept(name, &inputs, expanded, None);
            if let Some(all) = elements.as_deref_mut() {
                all.extend(added.elements);
            }
        }
        for &(f, proto, pick) in self.picks.keys() {
            let (name, chain) = chains::pick(&self.node, f, proto, pick);
            self.shape.chains.insert(name, chain);
        }
        self.shape.notes = self.notes.values().flatten().cloned().collect();
        diagnostics
    }

    /// [`Incremental::rebuild`], as a delta that replaces the table whole.
    fn rebuilt(&mut self) -> Delta {
        let recompiled = self.touched.len();
        Delta {
            diagnostics: self.rebuild(),
            transaction: None,
            recompiled,
            udp: UdpTargets::default(),
            pins: StalePins::default(),
        }
    }

    /// Expand a Service with the frontends it holds.
    fn expand(&self, name: &ServiceName, inputs: &Inputs) -> Expanded {
        let held = |c: &Claim| self.claims.holds(c, name);
        services::expand(name, &inputs.info, &inputs.slices, &self.node, &held)
    }

    /// Put a Service in: its elements, notes and health check. Returns what it adds.
    fn accept(
        &mut self,
        name: &ServiceName,
        inputs: &Inputs,
        expanded: Expanded,
        change: Option<&mut Change>,
    ) -> Contribution {
        if let Some(port) = inputs.info.health_check_node_port {
            let local = endpoints::local_ready(&inputs.slices, &self.node);
            self.health.insert(name.clone(), (port, local));
        }
        let no_local = NoLocalEndpoints::of(&expanded.ports);
        if no_local != NoLocalEndpoints::default() {
            self.no_local_total.add(no_local);
            self.no_local.insert(name.clone(), no_local);
        }
        if !expanded.notes.is_empty() {
            self.notes.insert(name.clone(), expanded.notes);
        }
        let added = Contribution::of(&expanded.ports);
        self.count(&added, Sign::Add, change);
        added
    }

    /// Count what a Service adds or removes; note in `change` what enters or leaves the
    /// kernel's table (a shared hairpin pair only with its first or last Service).
    fn count(&mut self, c: &Contribution, sign: Sign, mut change: Option<&mut Change>) {
        for (set, key, element) in &c.elements {
            if is_hairpin(set) {
                let Some(ip) = ip_of(&key[0]) else { continue };
                if !self.hairpins.count(ip, sign == Sign::Add) {
                    continue;
                }
            }
            match sign {
                Sign::Add => self.elements += 1,
                Sign::Remove => self.elements -= 1,
            }
            if let Some(change) = change.as_deref_mut() {
                let (into, from) = match sign {
                    Sign::Add => (&mut change.arrived, &mut change.gone),
                    Sign::Remove => (&mut change.gone, &mut change.arrived),
                };
                note_element(into, from, set, key, element);
            }
        }
        for pick in &c.picks {
            bump(&mut self.picks, pick, sign);
        }
        for (name, chain) in &c.chains {
            match sign {
                Sign::Add => self.shape.chains.insert(name.clone(), chain.clone()),
                Sign::Remove => self.shape.chains.remove(name),
            };
            if let Some(change) = change.as_deref_mut() {
                change.note_chain(name, chain, sign);
            }
        }
    }

    /// Create the shared pick chains that came into use and delete those that fell out of use.
    fn chain_changes(&mut self, picks_before: &BTreeMap<PickKey, usize>, change: &mut Change) {
        let node = &self.node;
        let pick = |k: &PickKey| chains::pick(node, k.0, k.1, k.2);
        moved_chains(picks_before, &self.picks, pick, &mut self.shape, change);
    }

    /// The UDP side of a change, for the conntrack cleanup.
    fn stale_udp(&self, change: &Change) -> UdpTargets {
        UdpTargets::between(&change.udp_before, &change.udp_after)
    }

    /// The table's sets, declared but empty, and no chains: what a [`Change`] starts from.
    fn declarations(&self) -> Table {
        let sets = self.shape.sets.iter().map(|(name, set)| {
            let decl = Set {
                key: set.key.clone(),
                data: set.data.clone(),
                flags: set.flags.clone(),
                timeout: set.timeout,
                comment: set.comment.clone(),
                elements: BTreeMap::new(),
            };
            (name.clone(), decl)
        });
        Table {
            family: self.shape.family,
            name: self.shape.name.clone(),
            sets: sets.collect(),
            ..Table::default()
        }
    }
}

fn is_hairpin(set: &str) -> bool {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    let names = NAMES.get_or_init(|| FAMILIES.iter().map(|f| f.name("hairpin")).collect());
    names.iter().any(|n| n == set)
}

fn ip_of(v: &Value) -> Option<std::net::IpAddr> {
    match v {
        Value::Ipv4(a) => Some((*a).into()),
        Value::Ipv6(a) => Some((*a).into()),
        _ => None,
    }
}

/// How many Service ports use each endpoint address; v4 addresses as `u32` keys, which at
/// 300k endpoints is a third of the memory of `IpAddr` keys.
#[derive(Default)]
pub(super) struct AddrCounts {
    v4: HashMap<u32, u32>,
    v6: HashMap<u128, u32>,
}

impl AddrCounts {
    /// Count `ip` in (`add`) or out; whether it was its first or last use.
    fn count(&mut self, ip: IpAddr, add: bool) -> bool {
        match ip {
            IpAddr::V4(a) => bump_count(&mut self.v4, u32::from(a), add),
            IpAddr::V6(a) => bump_count(&mut self.v6, u128::from(a), add),
        }
    }
}

fn bump_count<K: std::hash::Hash + Eq + Copy>(
    counts: &mut HashMap<K, u32>,
    key: K,
    add: bool,
) -> bool {
    let n = counts.entry(key).or_default();
    let edge = if add { *n == 0 } else { *n == 1 };
    if add {
        *n += 1;
    } else {
        *n = n.saturating_sub(1);
    }
    if *n == 0 {
        counts.remove(&key);
    }
    edge
}

fn bump<K: Ord + Clone>(counts: &mut BTreeMap<K, usize>, key: &K, sign: Sign) {
    match sign {
        Sign::Add => *counts.entry(key.clone()).or_default() += 1,
        Sign::Remove => {
            if let Some(n) = counts.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(key);
                }
            }
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

/// Add to the table (and to `change.arrived`) the chains now counted but not before, and
/// remove (into `change.gone`) those counted before but not now.
fn moved_chains<K: Ord>(
    before: &BTreeMap<K, usize>,
    after: &BTreeMap<K, usize>,
    chain: impl Fn(&K) -> (String, Chain),
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
