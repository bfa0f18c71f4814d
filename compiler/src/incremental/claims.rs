//! Who holds each contested frontend, and who waits for it.
//!
//! The rule: a claim (a cluster IP, or an `address . protocol . port` frontend) belongs to
//! the Service that holds it now, for as long as it wants it — a newcomer never takes it
//! away, whatever its name or age. Only when the holder lets go does it pass, to the first
//! waiting Service in [`Rank`] order (created first, then namespace/name). A claim nobody
//! held before this flush goes the same way: to the first claimant in rank order. Starting
//! from nothing, as [`crate::compile`] does, every claim therefore goes to its first claimant
//! in rank order; a running agent gives the same result as long as Services arrive in that
//! order (as the API server creates them), and keeps a holder in place when they do not.

use crate::model::{ServiceInfo, ServiceName};
use crate::services::Claim;
use std::collections::{BTreeSet, HashMap};

/// The order in which Services get a contested claim: `metadata.creationTimestamp` (seconds;
/// a Service without one after those with one), then namespace/name.
pub(crate) type Rank = (i64, ServiceName);

pub(crate) fn rank(name: &ServiceName, info: &ServiceInfo) -> Rank {
    (info.created.unwrap_or(i64::MAX), name.clone())
}

/// The holder of every claim; the waiting Services only for contested ones, which are rare.
#[derive(Default)]
pub(crate) struct Claims {
    held: HashMap<Claim, ServiceName>,
    waiting: HashMap<Claim, BTreeSet<Rank>>,
}

impl Claims {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether no claim is contested.
    pub fn none_waiting(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn holds(&self, claim: &Claim, name: &ServiceName) -> bool {
        self.held.get(claim) == Some(name)
    }

    pub fn holder(&self, claim: &Claim) -> Option<&ServiceName> {
        self.held.get(claim)
    }

    pub fn is_waiting(&self, claim: &Claim, name: &ServiceName) -> bool {
        let waiting = self.waiting.get(claim);
        waiting.is_some_and(|w| w.iter().any(|(_, n)| n == name))
    }

    /// Take `claim` if it is free (`true`), or wait for it behind its holder.
    pub fn claim(&mut self, claim: Claim, rank: &Rank) -> bool {
        match self.held.get(&claim) {
            None => {
                self.held.insert(claim, rank.1.clone());
                true
            }
            Some(holder) if *holder == rank.1 => false,
            Some(_) => {
                self.waiting.entry(claim).or_default().insert(rank.clone());
                false
            }
        }
    }

    /// Hold `claim` whoever else wants it: a holder kept through a rebuild.
    pub fn keep(&mut self, claim: Claim, name: ServiceName) {
        self.held.insert(claim, name);
    }

    /// Let go of `claim`, held or waited for; when it was held, who holds it next.
    pub fn release(&mut self, claim: &Claim, rank: &Rank) -> Option<ServiceName> {
        let Some(waiting) = self.waiting.get_mut(claim) else {
            if self.holds(claim, &rank.1) {
                self.held.remove(claim);
            }
            return None;
        };
        let next = if self.held.get(claim) == Some(&rank.1) {
            let (_, next) = waiting.pop_first().expect("a waiting set is never empty");
            self.held.insert(*claim, next.clone());
            Some(next)
        } else {
            waiting.remove(rank);
            None
        };
        if waiting.is_empty() {
            self.waiting.remove(claim);
        }
        next
    }

    /// A Service whose creation timestamp changed was deleted and created again: it is a
    /// newcomer, behind whoever waits for `claim` ranked before it. Returns who holds the
    /// claim instead of it, if anyone.
    pub fn requeue(&mut self, claim: &Claim, old: &Rank, new: &Rank) -> Option<ServiceName> {
        let waiting = self.waiting.get_mut(claim)?;
        if self.held.get(claim) != Some(&new.1) {
            if waiting.remove(old) {
                waiting.insert(new.clone());
            }
            return None;
        }
        if waiting.first().is_none_or(|first| first > new) {
            return None;
        }
        let (_, next) = waiting.pop_first().expect("not empty");
        waiting.insert(new.clone());
        self.held.insert(*claim, next.clone());
        Some(next)
    }
}
