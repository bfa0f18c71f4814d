//! The apply engine: keeps the last applied IR and moves the kernel to each new desired IR
//! with the smallest transaction, atomically.
//!
//! - First sync (or after a failure): the whole table is replaced in one transaction, so there
//!   is never a moment without rules, even when an earlier agent left a table behind; the
//!   session-affinity entries the old table learnt are carried into the new one.
//! - Later syncs: `diff(applied, desired)`, one transaction: over the netlink socket when it
//!   only changes elements, else through `nft -f -`. If the kernel refuses it, nothing changed
//!   (nftables commits all or nothing): the failure is counted and a full replace follows.
//!   After it, stale UDP conntrack entries are deleted.
//! - `reconcile`: a full replace that reports how the kernel's copy differed before it — what
//!   `svc-nft apply` changed, or drift such as a flushed chain, a deleted element or table.

use crate::conntrack;
use crate::kernel::{self, Changes, Inventory, NftError};
use crate::netlink::{self, plain, ElementOp};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use svc_nft_compiler::{affinity_recorders, udp_targets};
use svc_nft_ir::{diff, replace_script, Data, Op, SetFlag, Stmt, Table, Transaction, Value};

/// How a sync reached the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The whole table replaced, through `nft -f -`.
    Full,
    /// Element changes only, over the netlink socket.
    Netlink,
    /// A diff with chains, rules or interval sets, through `nft -f -`.
    Nft,
}

/// What one sync did.
#[derive(Debug, Clone, Copy)]
pub struct Synced {
    pub route: Route,
    pub changes: Changes,
    /// Bytes sent: the nft script or the netlink batch.
    pub bytes: usize,
    pub took: Duration,
}

#[derive(Default)]
pub struct Engine {
    applied: Option<Table>,
    /// The netlink socket of the fast path, opened on first use.
    socket: Option<netlink::Socket>,
    /// Transactions the kernel refused.
    pub failures: u64,
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Bring the kernel to `desired` (kept as the applied table: no copy on this path).
    pub fn sync(&mut self, desired: Table) -> Result<Synced, NftError> {
        let start = Instant::now();
        let Some(applied) = self.applied.take() else {
            return self.replace(desired, start);
        };
        let tx = diff(&applied, &desired);
        let changes = count(&tx, &applied);
        let (route, sent) = match element_ops(&tx, &desired) {
            Some(ops) => {
                let sent = self.send_elements(&desired.name, &ops);
                (Route::Netlink, sent.map_err(|e| e.to_string()))
            }
            None => {
                let script = tx.to_string();
                let sent = kernel::apply(&script).map(|()| script.len());
                (Route::Nft, sent.map_err(|e| e.to_string()))
            }
        };
        match sent {
            Ok(bytes) => {
                let created: BTreeSet<&str> = tx
                    .ops
                    .iter()
                    .filter_map(|op| match op {
                        Op::AddChain(name, _) => Some(name.as_str()),
                        _ => None,
                    })
                    .collect();
                self.install_recorders(&desired, |chain| created.contains(chain));
                clear_stale_udp(&applied, &desired);
                self.applied = Some(desired);
                Ok(Synced {
                    route,
                    changes,
                    bytes,
                    took: start.elapsed(),
                })
            }
            Err(e) => {
                // Nothing changed in the kernel (all or nothing); start over from a full
                // replace, with a fresh socket.
                self.failures += 1;
                self.socket = None;
                tracing::warn!(error = %e, "incremental sync refused by the kernel; replacing the table");
                self.replace(desired, start)
            }
        }
    }

    /// Replace the table whole with `desired`, and report how the kernel's copy differed
    /// (excluding the elements rules add, such as affinity entries).
    pub fn reconcile(&mut self, desired: Table) -> Result<Changes, NftError> {
        let name = desired.name.clone();
        let before = kernel::list_table(&name)?;
        self.replace(desired, Instant::now())?;
        let after = kernel::list_table(&name)?;
        let inventory = |listing: &Option<serde_json::Value>| {
            listing.as_ref().map(Inventory::of).unwrap_or_default()
        };
        Ok(inventory(&before).changes(&inventory(&after)))
    }

    /// `reconcile` to the applied table: repairs drift. `None` before the first good sync.
    pub fn repair(&mut self) -> Option<Result<Changes, NftError>> {
        let applied = self.applied.take()?;
        Some(self.reconcile(applied))
    }

    fn replace(&mut self, desired: Table, start: Instant) -> Result<Synced, NftError> {
        let mut script = replace_script(&desired);
        let carried = carried_affinity(&desired);
        // In the same transaction: clients keep their endpoints across the replace.
        let with_carried = script.clone() + &carried;
        if carried.is_empty() || kernel::apply(&with_carried).is_err() {
            if let Err(e) = kernel::apply(&script) {
                self.failures += 1;
                return Err(e);
            }
        } else {
            script = with_carried;
        }
        let empty = Table {
            family: desired.family,
            name: desired.name.clone(),
            ..Table::default()
        };
        let changes = count(&diff(&empty, &desired), &empty);
        self.install_recorders(&desired, |_| true);
        self.applied = Some(desired);
        Ok(Synced {
            route: Route::Full,
            changes,
            bytes: script.len(),
            took: start.elapsed(),
        })
    }
}

/// The session-affinity entries of the table now in the kernel, as commands that put them
/// back after a full replace — only those whose frontend still has their endpoint. Empty
/// when `desired` records no affinity (no `update` statement).
fn carried_affinity(desired: &Table) -> String {
    let stmts = desired
        .chains
        .values()
        .flat_map(|c| &c.rules)
        .flat_map(|r| &r.stmts);
    if !stmts.into_iter().any(|s| matches!(s, Stmt::Update { .. })) {
        return String::new();
    }
    // (frontend address . port, endpoint address . port) of every endpoint map element,
    // whose key is `frontend address . port . slot`.
    let text = |values: &[Value]| {
        let parts: Vec<String> = values.iter().map(ToString::to_string).collect();
        parts.join(" . ")
    };
    let live: BTreeSet<(String, String)> = desired
        .sets
        .values()
        .flat_map(|s| &s.elements)
        .filter_map(|(key, e)| match (key.as_slice(), &e.data) {
            ([addr, port, Value::Int(_)], Some(Data::Values(to))) => {
                Some((text(&[addr.clone(), port.clone()]), text(to)))
            }
            _ => None,
        })
        .collect();
    // An entry is `client . frontend address . proto . frontend port : endpoint`: keep it
    // only while that frontend still has that endpoint.
    let keep = |parts: &[String], data: &str| match parts {
        [_, addr, _, port] => live.contains(&(format!("{addr} . {port}"), data.to_string())),
        _ => false,
    };
    let timed = desired
        .sets
        .iter()
        .filter(|(_, s)| s.flags.contains(&SetFlag::Timeout));
    timed
        .filter_map(|(name, _)| kernel::list_map(&desired.name, name))
        .map(|listing| kernel::carried_elements(&listing, keep))
        .collect()
}

/// Delete the conntrack entries a change of UDP endpoints leaves stale (see
/// [`crate::conntrack`]). Failing to is logged, not fatal: the rules are already right.
fn clear_stale_udp(before: &Table, after: &Table) {
    let (old, new) = (udp_targets(before), udp_targets(after));
    let gone = old.endpoints.difference(&new.endpoints).copied().collect();
    let fresh = new.frontends.difference(&old.frontends).copied().collect();
    match conntrack::clear_udp(&gone, &fresh) {
        Ok(0) => {}
        Ok(n) => tracing::info!("deleted {n} stale UDP conntrack entries"),
        Err(e) => tracing::warn!("could not delete stale UDP conntrack entries: {e}"),
    }
}

impl Engine {
    /// Add the rules that record IPv6 session affinity — which nft cannot compile — to those
    /// of their chains that were just (re)created. Failing is logged: only stickiness is lost.
    fn install_recorders(&mut self, desired: &Table, created: impl Fn(&str) -> bool) {
        let recorders: Vec<_> = affinity_recorders(desired)
            .into_iter()
            .filter(|r| created(&r.chain))
            .collect();
        if recorders.is_empty() {
            return;
        }
        let socket = match &mut self.socket {
            Some(socket) => Ok(socket),
            empty => netlink::Socket::open().map(|s| empty.insert(s)),
        };
        let added = socket.and_then(|s| s.add_affinity_recorders(&desired.name, &recorders));
        if let Err(e) = added {
            self.socket = None;
            tracing::warn!("IPv6 session affinity is not recorded: {e}");
        }
    }

    /// Send element changes over the persistent netlink socket; returns the batch's size.
    fn send_elements(&mut self, table: &str, ops: &[ElementOp]) -> std::io::Result<usize> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            empty => empty.insert(netlink::Socket::open()?),
        };
        socket.apply(table, ops)
    }
}

/// The transaction as netlink element commands, when that is all it is (no chains, rules or
/// sets) and every element is plain (interval sets take nft's range encoding).
fn element_ops<'t>(tx: &'t Transaction, desired: &Table) -> Option<Vec<ElementOp<'t>>> {
    let plain_set = |name: &str| {
        desired
            .sets
            .get(name)
            .is_some_and(|s| !s.flags.contains(&SetFlag::Interval))
    };
    tx.ops
        .iter()
        .map(|op| match op {
            Op::AddElements(set, elems)
                if plain_set(set) && elems.iter().all(|(k, e)| plain(k) && plain_data(e)) =>
            {
                Some(ElementOp::Add(set, elems))
            }
            Op::DeleteElements(set, keys) if plain_set(set) && keys.iter().all(|k| plain(k)) => {
                Some(ElementOp::Delete(set, keys))
            }
            _ => None,
        })
        .collect()
}

fn plain_data(e: &svc_nft_ir::Element) -> bool {
    match &e.data {
        Some(svc_nft_ir::Data::Values(v)) => plain(v),
        _ => true,
    }
}

/// What a transaction applied to `before` adds and removes.
fn count(tx: &Transaction, before: &Table) -> Changes {
    let mut c = Changes::default();
    for op in &tx.ops {
        match op {
            Op::FlushChain(name) => c.rules_removed += before.chains[name].rules.len(),
            Op::AddElements(_, elems) => c.elements_added += elems.len(),
            Op::DeleteElements(_, keys) => c.elements_removed += keys.len(),
            Op::AddChain(..) => c.chains_added += 1,
            Op::DeleteChain(..) => c.chains_removed += 1,
            Op::AddRule(..) => c.rules_added += 1,
            Op::AddTable | Op::AddSet(..) | Op::DeleteSet(..) => {}
        }
    }
    c
}
