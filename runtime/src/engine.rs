//! The apply engine: keeps the last applied IR and moves the kernel to each new desired IR
//! with the smallest transaction, atomically.
//!
//! - First sync (or after a failure): the whole table is replaced in one transaction, so there
//!   is never a moment without rules, even when an earlier agent left a table behind.
//! - Later syncs: `diff(applied, desired)`, one transaction. If the kernel refuses it, nothing
//!   changed (nftables commits all or nothing): the failure is counted and a full replace
//!   follows at once.
//! - `reconcile`: a full replace that reports how the kernel's copy differed before it — what
//!   `svc-nft apply` changed, or drift such as a flushed chain, a deleted element or table.

use crate::kernel::{self, Changes, Inventory, NftError};
use std::time::{Duration, Instant};
use svc_nft_ir::{diff, replace_script, Op, Table, Transaction};

/// What one sync did.
#[derive(Debug, Clone, Copy)]
pub struct Synced {
    /// The whole table was replaced (rather than a diff applied).
    pub full: bool,
    pub changes: Changes,
    /// Size of the script sent to nft.
    pub bytes: usize,
    pub took: Duration,
}

#[derive(Default)]
pub struct Engine {
    applied: Option<Table>,
    /// Transactions the kernel refused.
    pub failures: u64,
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Bring the kernel to `desired`.
    pub fn sync(&mut self, desired: &Table) -> Result<Synced, NftError> {
        let start = Instant::now();
        if let Some(applied) = &self.applied {
            let tx = diff(applied, desired);
            let script = tx.to_string();
            match kernel::apply(&script) {
                Ok(()) => {
                    let changes = count(&tx, applied);
                    self.applied = Some(desired.clone());
                    return Ok(Synced {
                        full: false,
                        changes,
                        bytes: script.len(),
                        took: start.elapsed(),
                    });
                }
                Err(e) => {
                    self.failures += 1;
                    tracing::warn!(error = %e, "incremental sync refused by the kernel; replacing the table");
                }
            }
        }
        self.replace(desired, start)
    }

    /// Replace the table whole, and report how the kernel's copy differed from `desired`
    /// (excluding the elements rules add, such as affinity entries).
    pub fn reconcile(&mut self, desired: &Table) -> Result<Changes, NftError> {
        let before = kernel::list_table(&desired.name)?;
        self.replace(desired, Instant::now())?;
        let after = kernel::list_table(&desired.name)?;
        let inventory = |listing: &Option<serde_json::Value>| {
            listing.as_ref().map(Inventory::of).unwrap_or_default()
        };
        Ok(inventory(&before).changes(&inventory(&after)))
    }

    fn replace(&mut self, desired: &Table, start: Instant) -> Result<Synced, NftError> {
        let script = replace_script(desired);
        if let Err(e) = kernel::apply(&script) {
            self.failures += 1;
            return Err(e);
        }
        self.applied = Some(desired.clone());
        let empty = Table {
            family: desired.family,
            name: desired.name.clone(),
            ..Table::default()
        };
        Ok(Synced {
            full: true,
            changes: count(&diff(&empty, desired), &empty),
            bytes: script.len(),
            took: start.elapsed(),
        })
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
