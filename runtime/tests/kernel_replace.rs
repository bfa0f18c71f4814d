//! A full replace of a table already in the kernel (an agent restarting, taking over from
//! another, or recovering from a refused sync) reports what it changed against what the
//! kernel held, read over netlink — not everything as added.

mod netns;

use netns::inputs::examples;
use netns::Netns;
use std::collections::BTreeSet;
use svc_nft::engine::{Engine, Route};
use svc_nft::kernel::Changes;
use svc_nft_compiler::{compile, parse, NodeFacts};
use svc_nft_ir::{SetFlag, Table};

fn node() -> NodeFacts {
    NodeFacts {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..NodeFacts::default()
    }
}

/// The examples, less the objects `drop` picks (by position).
fn table(drop: impl Fn(usize) -> bool) -> Table {
    let (objects, errors) = parse("examples", &examples());
    assert!(errors.is_empty(), "{errors:?}");
    let kept: Vec<_> = objects
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop(*i))
        .map(|(_, o)| o)
        .collect();
    compile(&kept, &node()).table
}

/// Elements of `a`'s plain sets that `b` lacks (same key and data): what the inventory
/// compares. Sets with timeouts or intervals are left out, as it leaves them out.
fn elements_missing(a: &Table, b: &Table) -> usize {
    let plain = |flags: &[SetFlag]| flags.is_empty();
    let mut missing = 0;
    for (name, set) in a.sets.iter().filter(|(_, s)| plain(&s.flags)) {
        let other: BTreeSet<_> = b
            .sets
            .get(name)
            .into_iter()
            .flat_map(|s| s.elements.iter().map(|(k, e)| (k, &e.data)))
            .collect();
        let elems = set.elements.iter().map(|(k, e)| (k, &e.data));
        missing += elems.filter(|pair| !other.contains(pair)).count();
    }
    missing
}

/// A fresh engine's first sync of `table`: how it went and what it reported.
fn first_sync(ns: &Netns, table: Table) -> (Route, Changes) {
    ns.run(move || {
        let synced = Engine::new().sync(table).expect("sync");
        (synced.route, synced.changes)
    })
}

#[test]
fn a_replace_reports_what_the_kernel_held() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("replace");
    let full = table(|_| false);
    let (route, cold) = first_sync(&ns, full.clone());
    assert_eq!(route, Route::Full);
    assert!(
        cold.elements_added > 0,
        "a cold load adds everything: {cold}"
    );

    // A restart on the same input: the kernel already holds it all.
    let (route, again) = first_sync(&ns, full.clone());
    assert_eq!(route, Route::Full);
    assert!(again.is_empty(), "nothing changed, yet: {again}");

    // Restarted on input without its first two objects: only their part is reported.
    let smaller = table(|i| i < 2);
    let expected_removed = elements_missing(&full, &smaller);
    assert!(expected_removed > 0, "the test must remove something");
    let (_, changes) = first_sync(&ns, smaller.clone());
    assert_eq!(changes.elements_removed, expected_removed, "{changes}");
    assert_eq!(changes.elements_added, elements_missing(&smaller, &full));
    let (_, back) = first_sync(&ns, full.clone());
    assert_eq!(back.elements_added, expected_removed, "{back}");
    assert_eq!(
        back.chains_removed, changes.chains_added,
        "{back} after {changes}"
    );
}
