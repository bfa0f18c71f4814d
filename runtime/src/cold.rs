//! Cold start: loading a table that is not in the kernel yet in two transactions, the first of
//! which changes no traffic ("gated load").
//!
//! nft spends seconds parsing and evaluating the hundreds of thousands of set elements of a
//! large cluster (5–9 s at 100k Services × 3 endpoints); over netlink the kernel takes the same
//! elements in a fraction of that. So:
//!
//! 1. nft loads a *skeleton*: the table with its chains and rules, its interval sets whole
//!    (their elements need nft's range encoding; there are few), and every other set declared
//!    but empty; plus, as the first rule of every base chain, an `accept` — the gate — so that
//!    the table decides nothing: each packet leaves its chains as if the table were not there.
//!    `create table` makes this fail if the table appeared meanwhile. A netlink listing of
//!    the table's rules finds the gates' handles.
//! 2. One netlink transaction adds the other sets' elements and deletes the gates: the whole
//!    ruleset takes effect in that one commit, or nothing does. Its elements are encoded while
//!    nft runs.
//!
//! At 100k Services × 3 endpoints (800k elements) the kernel's commit of the batch is most of
//! the time (~1.4 s); the skeleton's nft process takes milliseconds, and tens to a few hundred
//! with large interval sets (load-balancer source ranges). Handles are not asked of nft's
//! `--echo`: nft 1.0.6 takes seconds to echo a large concatenated interval set (quadratic), and
//! crashes echoing one read from a file.
//!
//! If step 2 fails, the skeleton is deleted (the next attempt is cold again) and the caller
//! falls back to nft. A process killed between the two steps leaves an inert table behind;
//! the next start finds the table, so it is not cold: it replaces the table through nft.

use crate::kernel;
use crate::netlink::{plain, Batch, Socket};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use svc_nft_ir::{Chain, Data, Element, Family, Rule, Set, SetFlag, Stmt, Table, Verdict};

/// The comment of a gate rule, by which its handle is found in a listing of the table's rules.
const GATE: &str = "svc-nft: inert until loaded";

/// What a cold load sent and where its time went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loaded {
    /// The skeleton script plus the netlink batch.
    pub bytes: usize,
    /// nft loading the skeleton: its process, start to exit.
    pub skeleton: Duration,
    /// Encoding the elements, meanwhile.
    pub encode: Duration,
    /// Then finding the gates, and sending the batch until the kernel acknowledged its commit.
    pub commit: Duration,
}

/// Load `desired` the cold way when its table is not in the kernel yet. `Ok(None)`: the table
/// exists (or is not an `inet` one): nothing was done, replace it through nft. `Err`: it
/// failed, and nothing of `desired` is left in the kernel.
pub(crate) fn load(socket: &mut Socket, desired: &Table) -> Result<Option<Loaded>, String> {
    if desired.family != Family::Inet {
        return Ok(None); // the netlink batches speak inet only
    }
    let exists = socket.table_exists(&desired.name);
    if exists.map_err(|e| format!("cannot tell whether the table exists: {e}"))? {
        return Ok(None);
    }
    let netlink: BTreeSet<&str> = desired
        .sets
        .iter()
        .filter(|(_, set)| over_netlink(set))
        .map(|(name, _)| name.as_str())
        .collect();
    let script = skeleton_script(desired, &netlink);
    // nft loads the skeleton while the elements are encoded (nft runs in a process of its
    // own, which a thread started here forks in this thread's network namespace).
    let ((applied, skeleton), (mut batch, encode)) = std::thread::scope(|scope| {
        let nft = scope.spawn(|| {
            let start = Instant::now();
            (kernel::apply(&script), start.elapsed())
        });
        let start = Instant::now();
        let mut batch = Batch::new(socket);
        for &name in &netlink {
            let elements = desired.sets[name].elements.iter();
            batch.add_elements(socket, &desired.name, name, elements);
        }
        let encoded = (batch, start.elapsed());
        (nft.join().expect("the nft thread does not panic"), encoded)
    });
    applied.map_err(|e| e.to_string())?;
    // From here on the table exists: remove it again if anything fails.
    let start = Instant::now();
    let committed = gates(socket, desired).and_then(|gates| {
        for (chain, handle) in gates {
            batch.delete_rule(socket, &desired.name, chain, handle);
        }
        batch.commit(socket).map_err(|e| e.to_string())
    });
    match committed {
        Ok(bytes) => {
            let loaded = Loaded {
                bytes: script.len() + bytes,
                skeleton,
                encode,
                commit: start.elapsed(),
            };
            tracing::debug!(
                skeleton = ?loaded.skeleton,
                encode = ?loaded.encode,
                commit = ?loaded.commit,
                bytes = loaded.bytes,
                "cold load"
            );
            Ok(Some(loaded))
        }
        Err(e) => {
            let delete = format!("delete table {} {}\n", desired.family, desired.name);
            if let Err(d) = kernel::apply(&delete) {
                tracing::warn!("cannot delete the skeleton of a failed cold load: {d}");
            }
            Err(e)
        }
    }
}

/// Whether a set's elements go over netlink: a plain set (no intervals, no timeouts) whose
/// every element the netlink encoder knows. Empty sets need nothing.
fn over_netlink(set: &Set) -> bool {
    let plain_data = |e: &Element| match &e.data {
        Some(Data::Values(v)) => plain(v),
        _ => true,
    };
    !set.elements.is_empty()
        && !set.flags.contains(&SetFlag::Interval)
        && !set.flags.contains(&SetFlag::Timeout)
        && set.elements.iter().all(|(k, e)| plain(k) && plain_data(e))
}

/// The skeleton as an nft script: `create table` (fails if the table exists), then the table
/// with the sets named in `netlink` emptied and a gate first in every base chain.
fn skeleton_script(desired: &Table, netlink: &BTreeSet<&str>) -> String {
    let sets = desired.sets.iter().map(|(name, set)| {
        let set = if netlink.contains(name.as_str()) {
            Set {
                key: set.key.clone(),
                data: set.data.clone(),
                flags: set.flags.clone(),
                timeout: set.timeout,
                comment: set.comment.clone(),
                elements: Default::default(),
            }
        } else {
            set.clone()
        };
        (name.clone(), set)
    });
    let chains = desired.chains.iter().map(|(name, chain)| {
        let mut rules = chain.rules.clone();
        if chain.base.is_some() {
            rules.insert(0, gate());
        }
        let chain = Chain {
            base: chain.base,
            rules,
        };
        (name.clone(), chain)
    });
    let skeleton = Table {
        family: desired.family,
        name: desired.name.clone(),
        notes: vec![],
        sets: sets.collect(),
        chains: chains.collect(),
    };
    format!(
        "create table {} {}\n{skeleton}",
        desired.family, desired.name
    )
}

/// The gate: accept, so the rest of the chain (and of the table) is never reached.
fn gate() -> Rule {
    Rule::new(vec![Stmt::Verdict(Verdict::Accept)]).with_comment(GATE)
}

/// The handles of the gates, `(chain, handle)`, one per base chain, from a listing of the
/// table's rules over netlink. (nft's `--echo` would tell them too, but echoing a large
/// concatenated interval set takes nft 1.0.6 seconds.)
fn gates<'t>(socket: &mut Socket, desired: &'t Table) -> Result<Vec<(&'t str, u64)>, String> {
    let found = socket
        .rules_with_comment(&desired.name, GATE)
        .map_err(|e| format!("cannot list the gates: {e}"))?;
    let base = desired.chains.iter().filter(|(_, c)| c.base.is_some());
    base.map(|(chain, _)| {
        let mut handles = found.iter().filter(|(c, _)| c == chain);
        match (handles.next(), handles.next()) {
            (Some((_, handle)), None) => Ok((chain.as_str(), *handle)),
            _ => Err(format!("no single gate in chain {chain}")),
        }
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use svc_nft_ir::{BaseChain, ChainType, DataType, Hook, TypeSpec, Value};

    fn table() -> Table {
        let mut ips = Set::keys(TypeSpec::Type(vec![DataType::Ipv4Addr]));
        ips.elements.insert(
            vec![Value::Ipv4("10.96.0.1".parse().unwrap())],
            Element::default(),
        );
        let mut ranges = Set::keys(TypeSpec::Type(vec![DataType::Ipv4Addr]));
        ranges.flags = vec![SetFlag::Interval];
        ranges.elements.insert(
            vec![Value::Prefix("10.0.0.0/8".parse().unwrap())],
            Element::default(),
        );
        let base = BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Prerouting,
            priority: -100,
        };
        let rule = Rule::new(vec![Stmt::Verdict(Verdict::Return)]);
        Table {
            name: "svc-nft".into(),
            sets: [("ips".to_string(), ips), ("ranges".to_string(), ranges)].into(),
            chains: [
                (
                    "nat-prerouting".to_string(),
                    Chain::base(base, vec![rule.clone()]),
                ),
                ("services".to_string(), Chain::regular(vec![rule])),
            ]
            .into(),
            ..Table::default()
        }
    }

    #[test]
    fn the_skeleton_keeps_interval_sets_and_gates_base_chains() {
        let table = table();
        let netlink = table
            .sets
            .keys()
            .map(String::as_str)
            .filter(|s| over_netlink(&table.sets[*s]))
            .collect();
        assert_eq!(netlink, BTreeSet::from(["ips"]));
        let script = skeleton_script(&table, &netlink);
        assert!(script.starts_with("create table inet svc-nft\ntable inet svc-nft {\n"));
        assert!(!script.contains("10.96.0.1"), "{script}");
        assert!(script.contains("10.0.0.0/8"), "{script}");
        let gate = format!("accept comment \"{GATE}\"\n\t\treturn\n");
        assert_eq!(script.matches(&gate).count(), 1, "{script}");
    }
}
