//! Moving claims as Services change, and the warnings a clash gives: one per field that loses
//! frontends to one other Service, when the clash begins.

use super::claims::{rank, Claims, Rank};
use super::{Incremental, Inputs};
use crate::diagnostic::{Diagnostic, ObjectId, Origin};
use crate::model::{ServiceInfo, ServiceName};
use crate::services::{self, Claim, Field, Wanted};
use std::collections::{BTreeMap, HashSet};

/// The claims one flush gave a Service and took from it.
#[derive(Debug, Default)]
pub(super) struct Moved {
    gained: HashSet<Claim>,
    lost: HashSet<Claim>,
}

impl Moved {
    fn gain(&mut self, claim: Claim) {
        if !self.lost.remove(&claim) {
            self.gained.insert(claim);
        }
    }

    fn lose(&mut self, claim: Claim) {
        if !self.gained.remove(&claim) {
            self.lost.insert(claim);
        }
    }

    /// Whether the Service held `claim` at the last flush, given whether it holds it now.
    pub fn held_before(&self, claim: &Claim, now: bool) -> bool {
        (now && !self.gained.contains(claim)) || self.lost.contains(claim)
    }
}

/// A recompiled Service as of the last flush: its inputs then (`None`: it did not exist),
/// and how its claims moved since.
pub(super) struct Before {
    pub inputs: Option<Inputs>,
    pub moved: Moved,
}

/// A touched Service's rank and claims at the last flush and now.
struct Sides {
    name: ServiceName,
    old: Option<(Rank, HashSet<Claim>)>,
    new: Option<(Rank, HashSet<Claim>)>,
}

impl Sides {
    fn rank(&self) -> &Rank {
        let (rank, _) = self.new.as_ref().or(self.old.as_ref()).expect("one side");
        rank
    }
}

impl Incremental {
    /// The touched Services whose creation timestamp changed: deleted and created again.
    pub(super) fn recreated(&self) -> HashSet<ServiceName> {
        let touched = self.touched.iter();
        let old = touched.filter_map(|(name, old)| Some((name, old.as_ref()?.info.created)));
        let changed = old
            .filter(|(name, created)| self.known(name).is_some_and(|k| k.info.created != *created));
        changed.map(|(name, _)| name.clone()).collect()
    }

    /// Move the claims of the touched Services: every new claim first, in rank order, then
    /// every release, so that what is let go in this flush goes to the first claimant in rank
    /// order among all, as a rebuild would give it. Returns what moved, by Service: the
    /// touched ones and those a release promoted.
    pub(super) fn move_claims(
        &mut self,
        touched: &BTreeMap<ServiceName, Option<Inputs>>,
    ) -> BTreeMap<ServiceName, Moved> {
        let side = |name: &ServiceName, info: &ServiceInfo| {
            let claims = services::wanted(info, &self.node).into_iter();
            (rank(name, info), claims.map(|w| w.claim).collect())
        };
        let mut sides = Vec::new();
        for (name, old) in touched {
            let new = self.known(name).map(|k| k.info);
            let old = old.as_ref().map(|o| &o.info);
            // An endpoints change leaves the Service's claims as they were.
            if old.is_none() && new.is_none() || old == new.as_ref() {
                continue;
            }
            sides.push(Sides {
                name: name.clone(),
                old: old.map(|info| side(name, info)),
                new: new.map(|info| side(name, &info)),
            });
        }
        sides.sort_by(|a, b| a.rank().cmp(b.rank()));
        let mut moved = BTreeMap::new();
        for s in &sides {
            self.claim_new(s, &mut moved);
        }
        for s in &sides {
            self.release_old(s, &mut moved);
        }
        moved
    }

    fn claim_new(&mut self, s: &Sides, moved: &mut BTreeMap<ServiceName, Moved>) {
        let Some((rank, claims)) = &s.new else { return };
        for &claim in claims {
            match &s.old {
                Some((old_rank, old)) if old.contains(&claim) => {
                    if old_rank == rank {
                        continue;
                    }
                    if let Some(next) = self.claims.requeue(&claim, old_rank, rank) {
                        moved.entry(s.name.clone()).or_default().lose(claim);
                        moved.entry(next).or_default().gain(claim);
                    }
                }
                _ if self.claims.claim(claim, rank) => {
                    moved.entry(s.name.clone()).or_default().gain(claim)
                }
                _ => {}
            }
        }
    }

    fn release_old(&mut self, s: &Sides, moved: &mut BTreeMap<ServiceName, Moved>) {
        let Some((rank, claims)) = &s.old else { return };
        let kept = |c: &Claim| s.new.as_ref().is_some_and(|(_, new)| new.contains(c));
        for claim in claims.iter().filter(|c| !kept(c)) {
            if self.claims.holds(claim, &s.name) {
                moved.entry(s.name.clone()).or_default().lose(*claim);
            }
            if let Some(next) = self.claims.release(claim, rank) {
                tracing::info!(
                    "Service {}/{}: {claim} released by Service {}/{}: now programmed for it",
                    next.0,
                    next.1,
                    s.name.0,
                    s.name.1
                );
                moved.entry(next).or_default().gain(*claim);
            }
        }
    }

    /// The clashes a recompiled Service has now and did not have at the last flush, as
    /// warnings.
    pub(super) fn new_clashes(&self, name: &ServiceName, before: &Before) -> Vec<Diagnostic> {
        // Nobody waits for anything: the usual case, and no clash at all.
        if self.claims.none_waiting() {
            return vec![];
        }
        let Some(known) = self.known(name) else {
            return vec![];
        };
        let now = |c: &Claim| self.claims.holds(c, name);
        let then = |c: &Claim| before.moved.held_before(c, now(c));
        let had: HashSet<Claim> = match &before.inputs {
            Some(old) => services::wanted(&old.info, &self.node)
                .into_iter()
                .filter(|w| w.clashes(&then))
                .map(|w| w.claim)
                .collect(),
            None => HashSet::new(),
        };
        let wanted = services::wanted(&known.info, &self.node);
        let lost = wanted
            .iter()
            .filter(|w| w.clashes(&now) && !had.contains(&w.claim));
        self.warnings(name, &known.origin, lost)
    }

    /// Every Service's rank, in rank order. The claims a Service held before a rebuild and
    /// still makes are its own again — a rebuild moves no frontend — unless it was
    /// `recreated` (see [`Claims::requeue`]).
    pub(super) fn claim_order(
        &mut self,
        old: &Claims,
        recreated: &HashSet<ServiceName>,
    ) -> Vec<Rank> {
        let names: Vec<ServiceName> = self.names().cloned().collect();
        let mut order = Vec::with_capacity(names.len());
        for name in names {
            let info = self.known(&name).expect("known").info;
            if !old.is_empty() && !recreated.contains(&name) {
                for w in services::wanted(&info, &self.node) {
                    if old.holds(&w.claim, &name) {
                        self.claims.keep(w.claim, name.clone());
                    }
                }
            }
            order.push(rank(&name, &info));
        }
        order.sort();
        order
    }

    /// Make a Service's claims during a rebuild (after every Service ranked before it); the
    /// clashes it was not already waiting out before, as warnings.
    pub(super) fn claim_again(
        &mut self,
        rank: &Rank,
        info: &ServiceInfo,
        old: &Claims,
    ) -> Vec<Diagnostic> {
        let name = &rank.1;
        let wanted = services::wanted(info, &self.node);
        for w in &wanted {
            if !self.claims.holds(&w.claim, name) {
                self.claims.claim(w.claim, rank);
            }
        }
        let now = |c: &Claim| self.claims.holds(c, name);
        let then = |c: &Claim| !old.is_waiting(c, name);
        let mut lost = wanted
            .iter()
            .filter(|w| w.clashes(&now) && !w.clashes(&then))
            .peekable();
        if lost.peek().is_none() {
            return vec![];
        }
        let origin = self.known(name).expect("known").origin;
        self.warnings(name, &origin, lost)
    }

    /// One warning per field and holder, naming the frontends it holds.
    fn warnings<'a>(
        &self,
        name: &ServiceName,
        origin: &Origin,
        lost: impl Iterator<Item = &'a Wanted>,
    ) -> Vec<Diagnostic> {
        let mut groups: Vec<(Field, &ServiceName, Vec<String>)> = Vec::new();
        for w in lost {
            let holder = self.claims.holder(&w.claim).expect("a lost claim is held");
            match groups.iter_mut().find(|g| g.0 == w.field && g.1 == holder) {
                Some(group) => group.2.push(w.claim.to_string()),
                None => groups.push((w.field, holder, vec![w.claim.to_string()])),
            }
        }
        let id = ObjectId {
            kind: "Service".into(),
            namespace: name.0.to_string(),
            name: name.1.to_string(),
        };
        let warning = |(field, holder, frontends): (Field, &ServiceName, Vec<String>)| {
            let verb = if frontends.len() == 1 { "is" } else { "are" };
            let message = format!(
                "{} {verb} held by Service {}/{}; not programmed for this Service",
                frontends.join(", "),
                holder.0,
                holder.1
            );
            let field = Some(field.to_string());
            Diagnostic::new(origin.clone(), Some(id.clone()), field, message).warning()
        };
        groups.into_iter().map(warning).collect()
    }
}
