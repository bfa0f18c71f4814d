//! ServiceCIDR objects add to `--service-cidr`: the per-Service state rewrites only the
//! service-CIDR sets, in a transaction that moves the previous table to what `compile` gives.

use svc_nft_compiler::{compile, parse, Incremental, NodeFacts, Object};
use svc_nft_ir::Table;

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
                       spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";

fn service_cidr(name: &str, cidrs: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: {name}}}\n\
         spec: {{cidrs: [{cidrs}]}}\n"
    )
}

fn objects(text: &str) -> Vec<Object> {
    let (objects, errors) = parse("test", text);
    assert!(errors.is_empty(), "{errors:?}");
    objects
}

fn node() -> NodeFacts {
    NodeFacts {
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        ..NodeFacts::default()
    }
}

/// Flush `state` into `kernel` (which held its previous table) and check both against a
/// compile of `all`; returns the transaction's text.
fn flush(state: &mut Incremental, kernel: &mut Table, all: &str) -> String {
    let tx = state
        .flush()
        .transaction
        .expect("a transaction, not a replace");
    kernel.apply(&tx).unwrap();
    let expected = compile(&objects(all), &node()).table;
    assert_eq!(state.table(), expected);
    assert_eq!(*kernel, expected);
    tx.to_string()
}

fn prefixes(table: &Table) -> Vec<String> {
    let set = &table.sets["service-cidrs-v4"];
    set.elements.keys().map(|k| format!("{k:?}")).collect()
}

#[test]
fn a_service_cidr_change_rewrites_only_the_service_cidr_sets() {
    let mut state = Incremental::new(&node());
    for obj in objects(SERVICE) {
        state.upsert(&obj).unwrap();
    }
    state.flush();
    let mut kernel = state.table();
    let before = prefixes(&kernel);

    let extra = service_cidr("extra", "10.97.0.0/16, \"fd00:97::/112\"");
    for obj in objects(&extra) {
        assert!(state.upsert(&obj).unwrap(), "a new range changes the table");
    }
    let tx = flush(&mut state, &mut kernel, &format!("{SERVICE}---\n{extra}"));
    assert!(
        tx.contains("service-cidrs-v4") && tx.contains("service-cidrs-v6"),
        "{tx}"
    );
    assert!(
        !tx.contains("service-ports"),
        "no Service is touched:\n{tx}"
    );

    // A range inside one already there changes nothing.
    let inside = service_cidr("inside", "10.96.128.0/17");
    for obj in objects(&inside) {
        assert!(!state.upsert(&obj).unwrap());
    }
    // An invalid version of "extra" is refused; its ranges stay in force.
    let invalid = service_cidr("extra", "10.98.0.0/16, 10.99.0.0/16");
    for obj in objects(&invalid) {
        let refused = state.upsert(&obj).unwrap_err();
        assert_eq!(refused.field.as_deref(), Some("spec.cidrs"), "{refused}");
    }
    let all = format!("{SERVICE}---\n{extra}---\n{inside}");
    assert_eq!(state.flush().transaction.map(|t| t.ops.len()), Some(0));
    assert_eq!(state.table(), compile(&objects(&all), &node()).table);

    assert!(state.remove("ServiceCIDR", "", "extra"));
    flush(&mut state, &mut kernel, &format!("{SERVICE}---\n{inside}"));
    assert_eq!(prefixes(&kernel), before);
}

#[test]
fn the_flag_and_the_objects_are_merged() {
    let mut state = Incremental::new(&node());
    for obj in objects(&service_cidr("extra", "10.97.0.0/16")) {
        state.upsert(&obj).unwrap();
    }
    state.flush();
    // 10.96.0.0/16 (the flag) and 10.97.0.0/16 are one interval: nft refuses overlaps and
    // would merge neighbours anyway.
    assert_eq!(prefixes(&state.table()).len(), 1);
    // A new flag keeps the objects' ranges.
    state.set_node(&NodeFacts::default());
    state.flush();
    assert_eq!(prefixes(&state.table()).len(), 1);
}
