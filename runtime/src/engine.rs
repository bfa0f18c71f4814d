//! The apply engine: moves the kernel to each new desired IR with the smallest
//! transaction, atomically.
//!
//! - First sync (or after a failure): the whole table is replaced in one transaction, so there
//!   is never a moment without rules, even when an earlier agent left a table behind; the
//!   session-affinity entries the old table learnt are carried into the new one. A table not
//!   in the kernel yet is loaded cold (module `cold`).
//! - Later syncs: a transaction from the previous table — the per-Service compiler's
//!   [`Delta`] ([`Engine::sync_delta`]), or `diff(applied, desired)` ([`Engine::sync`], which
//!   keeps a copy of the applied table) — over the netlink socket as one batch when every
//!   command of it can be (elements of plain sets, regular chains created, flushed and
//!   deleted, rules the encoder knows), else through `nft -f -`. If the kernel refuses it,
//!   nothing changed (nftables commits all or nothing): the failure is counted and a full
//!   replace follows. After it, stale UDP conntrack entries are deleted.
//! - `reconcile`: a full replace that reports how the kernel's copy differed before it — what
//!   `svc-nft apply` changed, or drift such as a flushed chain, a deleted element or table.

use crate::conntrack;
use crate::kernel::{self, Changes, Inventory, NftError};
use crate::netlink::{self, encode_rule, plain};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use svc_nft_compiler::{udp_frontends, Delta, StalePins, UdpTargets};
use svc_nft_ir::{diff, replace_script, Data, Op, SetFlag, Stmt, Table, Transaction, Value};

/// How a sync reached the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The whole table replaced.
    Full,
    /// One batch over the netlink socket: element changes, regular chains and their rules.
    Netlink,
    /// Through `nft -f -`: a diff the netlink encoder does not take (sets created or deleted,
    /// base chains, interval sets, statements it does not know).
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
    /// The cleanup of stale UDP conntrack entries after it, per family (IPv4, IPv6), when
    /// one ran.
    pub conntrack: Option<[conntrack::Reconciled; 2]>,
}

#[derive(Default)]
pub struct Engine {
    /// The last table [`Engine::sync`] applied (not kept by [`Engine::sync_delta`]).
    applied: Option<Table>,
    /// Whether the kernel holds the last table synced, so a transaction from it applies.
    in_sync: bool,
    /// The netlink socket of the fast path, opened on first use.
    socket: Option<netlink::Socket>,
    /// Transactions the kernel refused.
    pub failures: u64,
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Bring the kernel to `desired`, diffing it against the table this engine applied last
    /// (kept: no copy on this path).
    pub fn sync(&mut self, desired: Table) -> Result<Synced, NftError> {
        let start = Instant::now();
        let synced = match self.applied.take() {
            Some(applied) if self.in_sync => {
                let tx = diff(&applied, &desired);
                let stale = UdpTargets::between(&udp_frontends(&applied), &udp_frontends(&desired));
                self.commit(&desired, &tx, &stale, start, || desired.clone())
            }
            _ => self.replace(&desired, start),
        };
        if synced.is_ok() {
            self.applied = Some(desired);
        }
        synced
    }

    /// Bring the kernel to the per-Service compiler's next table: apply `delta` (the
    /// transaction from the table synced before) when it has one and the kernel is known to
    /// hold that table; else replace the table whole with `full()`. `shape` is the table
    /// without the Services' elements (declarations and chains: all an incremental sync reads).
    pub fn sync_delta(
        &mut self,
        shape: &Table,
        delta: &Delta,
        full: impl FnOnce() -> Table,
    ) -> Result<Synced, NftError> {
        let start = Instant::now();
        self.applied = None;
        match &delta.transaction {
            Some(tx) if self.in_sync => {
                let synced = self.commit(shape, tx, &delta.udp, start, full);
                if synced.as_ref().is_ok_and(|s| s.route != Route::Full) {
                    self.clear_stale_pins(&shape.name, &delta.pins);
                }
                synced
            }
            _ => {
                let table = full();
                let synced = self.replace(&table, start);
                drop_later(table);
                synced
            }
        }
    }

    /// Apply `tx`, which moves the kernel from the table synced before to the next one, whose
    /// declarations and chains `desired` has; if the kernel refuses, replace it with `full()`.
    fn commit(
        &mut self,
        desired: &Table,
        tx: &Transaction,
        stale: &UdpTargets,
        start: Instant,
        full: impl FnOnce() -> Table,
    ) -> Result<Synced, NftError> {
        let changes = count(tx);
        let ops = if tx.is_empty() {
            Some(vec![])
        } else {
            netlink_ops(tx, desired)
        };
        let (route, sent) = match ops {
            Some(ops) if ops.is_empty() => (Route::Netlink, Ok(0)),
            Some(ops) => {
                let sent = self.send_batch(&desired.name, &ops);
                (Route::Netlink, sent.map_err(|e| e.to_string()))
            }
            None => {
                let script = tx.to_string();
                let sent = kernel::apply(&script).map(|()| script.len());
                (Route::Nft, sent.map_err(|e| e.to_string()))
            }
        };
        match sent {
            Ok(bytes) => Ok(Synced {
                route,
                changes,
                bytes,
                took: start.elapsed(),
                conntrack: clear_stale_udp(stale),
            }),
            Err(e) => {
                // Nothing changed in the kernel (all or nothing); start over from a full
                // replace, with a fresh socket.
                self.failures += 1;
                self.socket = None;
                self.in_sync = false;
                tracing::warn!(error = %e, "incremental sync refused by the kernel; replacing the table");
                self.replace(&full(), start)
            }
        }
    }

    /// Replace the table whole with `desired`, and report how the kernel's copy differed
    /// (excluding the elements rules add, such as affinity entries).
    pub fn reconcile(&mut self, desired: &Table) -> Result<Changes, NftError> {
        let name = desired.name.clone();
        let before = kernel::list_table(&name)?;
        self.replace(desired, Instant::now())?;
        let after = kernel::list_table(&name)?;
        let inventory = |listing: &Option<serde_json::Value>| {
            listing.as_ref().map(Inventory::of).unwrap_or_default()
        };
        Ok(inventory(&before).changes(&inventory(&after)))
    }

    /// Replace the table whole with `desired`, now (see [`Engine::sync`] for how).
    pub fn replace_now(&mut self, desired: &Table) -> Result<Synced, NftError> {
        self.applied = None;
        self.replace(desired, Instant::now())
    }

    fn replace(&mut self, desired: &Table, start: Instant) -> Result<Synced, NftError> {
        self.in_sync = false;
        // A table not in the kernel yet is loaded cold (see `crate::cold`): nft only for its
        // skeleton, the elements over netlink. One in the kernel is replaced through nft.
        let cold = match self.netlink() {
            Ok(socket) => crate::cold::load(socket, desired),
            Err(e) => {
                tracing::warn!("no netlink socket for a cold load: {e}");
                Ok(None)
            }
        };
        // Against an empty table unless one is there: then against what it holds.
        let mut changes = Changes {
            elements_added: desired.sets.values().map(|s| s.elements.len()).sum(),
            chains_added: desired.chains.len(),
            rules_added: desired.chains.values().map(|c| c.rules.len()).sum(),
            ..Changes::default()
        };
        let bytes = match cold {
            Ok(Some(loaded)) => loaded.bytes,
            cold => {
                if matches!(cold, Ok(None)) {
                    changes = self.changes_from_kernel(desired).unwrap_or(changes);
                }
                if let Err(e) = cold {
                    // Nothing of it is left in the kernel: nft loads the table instead.
                    self.failures += 1;
                    self.socket = None;
                    tracing::warn!(error = %e, "cold load refused; loading the table through nft");
                }
                let script = replace_script(desired);
                let carried = carried_affinity(self.socket.as_mut(), desired);
                // In the same transaction: clients keep their endpoints across the replace.
                let with_carried = script.clone() + &carried;
                if !carried.is_empty() && kernel::apply(&with_carried).is_ok() {
                    with_carried.len()
                } else if let Err(e) = kernel::apply(&script) {
                    self.failures += 1;
                    return Err(e);
                } else {
                    script.len()
                }
            }
        };
        self.in_sync = true;
        Ok(Synced {
            route: Route::Full,
            changes,
            bytes,
            took: start.elapsed(),
            conntrack: None,
        })
    }
}

/// The session-affinity entries of the table now in the kernel (a netlink dump), as commands
/// that put them back after a full replace — only those whose cluster IP still has their
/// endpoint. Empty when `desired` records no affinity (no `update` statement), or without a
/// socket.
fn carried_affinity(socket: Option<&mut netlink::Socket>, desired: &Table) -> String {
    let stmts = desired.chains.values().flat_map(|c| &c.rules);
    let records = stmts
        .flat_map(|r| &r.stmts)
        .any(|s| matches!(s, Stmt::Update { .. }));
    let Some(socket) = socket.filter(|_| records) else {
        return String::new();
    };
    // (frontend address, port, endpoint address) of every endpoint map element, whose key is
    // `frontend address . port . slot`.
    let live: BTreeSet<(&Value, &Value, &Value)> = desired
        .sets
        .values()
        .flat_map(|s| &s.elements)
        .filter_map(|(key, e)| match (key.as_slice(), &e.data) {
            ([addr, port, Value::Int(_)], Some(Data::Values(to))) => Some((addr, port, &to[0])),
            _ => None,
        })
        .collect();
    let mut script = String::new();
    for (set, v6) in [("affinity-v4", false), ("affinity-v6", true)] {
        let pins = socket.pins(&desired.name, v6).unwrap_or_default();
        let kept = pins.iter().filter(|p| match &p.key[..] {
            [_, addr, _, port, to] => live.contains(&(addr, port, to)),
            _ => false,
        });
        let elements: Vec<String> = kept
            .map(|p| {
                let key: Vec<String> = p.key.iter().map(ToString::to_string).collect();
                let (timeout, expires) = (p.timeout_ms, p.expires_ms);
                format!(
                    "{} timeout {timeout}ms expires {expires}ms",
                    key.join(" . ")
                )
            })
            .collect();
        if !elements.is_empty() {
            let table = &desired.name;
            let elements = elements.join(", ");
            script += &format!("add element inet {table} {set} {{ {elements} }}\n");
        }
    }
    script
}

/// Free a whole table off the sync path (at 100k Services that takes a few hundred ms), and
/// hand its memory back to the system.
fn drop_later(table: Table) {
    std::thread::spawn(move || {
        drop(table);
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe { libc::malloc_trim(0) };
    });
}

/// Delete the conntrack entries a change of UDP endpoints leaves stale (see
/// [`crate::conntrack`]); what each family's pass did, `None` when none ran. Failing to is
/// logged, not fatal: the rules are already right.
fn clear_stale_udp(stale: &UdpTargets) -> Option<[conntrack::Reconciled; 2]> {
    if stale.is_empty() {
        return None;
    }
    match conntrack::clear_udp(&stale.frontends) {
        Ok(passes) => {
            let n: usize = passes.iter().map(|p| p.deleted).sum();
            if n > 0 {
                tracing::info!("deleted {n} stale UDP conntrack entries");
            }
            Some(passes)
        }
        Err(e) => {
            tracing::warn!("could not delete stale UDP conntrack entries: {e}");
            None
        }
    }
}

impl Engine {
    /// Delete the session-affinity entries a sync left stale, right after it: they no longer
    /// count (the sticky chains list only endpoints in use), so failing to is only logged. A
    /// full replace needs none of this: it carries over only entries still valid.
    fn clear_stale_pins(&mut self, table: &str, stale: &StalePins) {
        if stale.is_empty() {
            return;
        }
        match self
            .netlink()
            .and_then(|s| s.clear_stale_pins(table, stale))
        {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} stale session-affinity entries"),
            Err(e) => tracing::warn!("could not delete stale session-affinity entries: {e}"),
        }
    }

    /// What replacing the table in the kernel with `desired` will change, from netlink dumps
    /// of it; `None` (logged) when they fail.
    fn changes_from_kernel(&mut self, desired: &Table) -> Option<Changes> {
        let socket = self.socket.as_mut()?;
        let inventory = socket.inventory(desired);
        let before = inventory
            .inspect_err(|e| tracing::debug!("cannot list the table before replacing it: {e}"))
            .ok()?;
        Some(before.changes(&netlink::Inventory::of(desired)))
    }

    /// Send commands over the persistent netlink socket as one batch; returns its size.
    fn send_batch(&mut self, table: &str, ops: &[netlink::Op]) -> std::io::Result<usize> {
        self.netlink()?.apply(table, ops)
    }

    /// The persistent netlink socket, opened on first use.
    fn netlink(&mut self) -> std::io::Result<&mut netlink::Socket> {
        match &mut self.socket {
            Some(socket) => Ok(socket),
            empty => netlink::Socket::open().map(|s| empty.insert(s)),
        }
    }
}

/// The transaction as one netlink batch, when every command of it can be: elements of plain
/// sets (interval sets take nft's range encoding), regular chains created, flushed or deleted
/// (a base chain is never created incrementally), rules the encoder knows. `desired` declares
/// the sets the rules read.
fn netlink_ops<'t>(tx: &'t Transaction, desired: &Table) -> Option<Vec<netlink::Op<'t>>> {
    use netlink::Op as Nl;
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
                Some(Nl::AddElements(set, elems))
            }
            Op::DeleteElements(set, keys) if plain_set(set) && keys.iter().all(|k| plain(k)) => {
                Some(Nl::DeleteElements(set, keys))
            }
            Op::AddChain(name, chain) if chain.base.is_none() => Some(Nl::AddChain(name)),
            Op::FlushChain(name) => Some(Nl::FlushChain(name)),
            Op::DeleteChain(name) => Some(Nl::DeleteChain(name)),
            Op::AddRule(chain, rule) => encode_rule(rule, desired).map(|r| Nl::AddRule(chain, r)),
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

/// What a transaction adds and removes. The rules of a chain deleted whole count with it.
fn count(tx: &Transaction) -> Changes {
    let mut c = Changes::default();
    for op in &tx.ops {
        match op {
            Op::AddElements(_, elems) => c.elements_added += elems.len(),
            Op::DeleteElements(_, keys) => c.elements_removed += keys.len(),
            Op::AddChain(..) => c.chains_added += 1,
            Op::DeleteChain(..) => c.chains_removed += 1,
            Op::AddRule(..) => c.rules_added += 1,
            Op::FlushChain(..) | Op::AddTable | Op::AddSet(..) | Op::DeleteSet(..) => {}
        }
    }
    c
}
