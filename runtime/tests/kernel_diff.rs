//! The IR diff against the kernel: for random pairs of clusters A and B, a namespace holding A
//! that applies `diff(A, B)` ends up holding exactly what loading B from scratch gives
//! (compared as `nft -j list table`, without handles and element order).

mod netns;

use netns::{listing, Netns};
use proptest::prelude::*;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use svc_nft_compiler::{compile, parse, NodeFacts};
use svc_nft_ir::{
    diff, replace_script, BaseChain, Chain, ChainType, Expr, Hook, Payload, Rule, Set, SetFlag,
    Stmt, Table, TypeSpec, Value, Verdict,
};

/// The kernel's view of the table, in a canonical form.
fn kernel_state(ns: &Netns, table: &Table) -> Json {
    listing::table(ns, &table.name)
}

/// Apply `diff(a, b)` on top of `a` and compare with `b` loaded whole.
fn check_diff(ns: &Netns, a: &Table, b: &Table) -> Result<(), TestCaseError> {
    ns.nft(&replace_script(b)).expect("B loads");
    let expected = kernel_state(ns, b);
    ns.nft(&replace_script(a)).expect("A loads");
    let tx = diff(a, b).to_string();
    if let Err(e) = ns.nft(&tx) {
        return Err(TestCaseError::fail(format!("diff rejected: {e}\n{tx}")));
    }
    let actual = kernel_state(ns, b);
    if actual != expected {
        let headers = ("B loaded whole", "A + diff(A, B)");
        let delta = listing::json_diff(&expected, &actual, headers);
        return Err(TestCaseError::fail(format!(
            "{delta}\nafter applying:\n{tx}"
        )));
    }
    Ok(())
}

/// A random cluster: Services on a few VIPs, ports and endpoints drawn from small pools so
/// that two clusters overlap.
fn cluster() -> impl Strategy<Value = String> {
    let vip = prop_oneof![
        (1u8..6).prop_map(|i| format!("10.96.0.{i}")),
        (1u8..4).prop_map(|i| format!("fd00:96::{i}")),
    ];
    let port = (prop::sample::select(vec!["TCP", "UDP", "SCTP"]), 1u16..4);
    // Port names are DNS labels: lower case.
    let endpoint = (1u8..6, any::<bool>());
    let service = (
        vip,
        prop::collection::btree_map(port, 8000u16..8003, 1..3),
        prop::collection::vec(endpoint, 0..5),
    );
    prop::collection::btree_map(0u8..6, service, 0..6).prop_map(|services| {
        let mut used = BTreeMap::new();
        let mut out = String::new();
        for (n, (vip, ports, endpoints)) in services {
            if used.insert(vip.clone(), n).is_some() {
                continue; // one Service per VIP
            }
            let v6 = vip.contains(':');
            let svc_ports: Vec<String> = ports
                .keys()
                .map(|(proto, p)| {
                    format!(
                        "{{name: p{p}-{}, port: {p}, protocol: {proto}}}",
                        proto.to_lowercase()
                    )
                })
                .collect();
            let slice_ports: Vec<String> = ports
                .iter()
                .map(|((proto, p), target)| {
                    format!(
                        "{{name: p{p}-{}, port: {target}, protocol: {proto}}}",
                        proto.to_lowercase()
                    )
                })
                .collect();
            let eps: Vec<String> = endpoints
                .iter()
                .map(|(i, ready)| {
                    let addr = if v6 {
                        format!("\"fd00:244::{i}\"")
                    } else {
                        format!("10.244.0.{i}")
                    };
                    format!("{{addresses: [{addr}], conditions: {{ready: {ready}}}}}")
                })
                .collect();
            out += &format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{n}}}\n\
                 spec: {{clusterIP: \"{vip}\", selector: {{app: s{n}}}, ports: [{}]}}\n\
                 ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: s{n}-a, labels: {{kubernetes.io/service-name: s{n}}}}}\n\
                 addressType: {}\nports: [{}]\nendpoints: [{}]\n",
                svc_ports.join(", "),
                if v6 { "IPv6" } else { "IPv4" },
                slice_ports.join(", "),
                eps.join(", "),
            );
        }
        out
    })
}

fn compiled(manifests: &str, node: &NodeFacts) -> Table {
    let (objects, errors) = parse("generated", manifests);
    assert!(errors.is_empty(), "{errors:?}\n{manifests}");
    let out = compile(&objects, node);
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    out.table
}

#[test]
fn diff_moves_the_kernel_from_a_to_b() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("diff");
    let node = NodeFacts {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        ..NodeFacts::default()
    };
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(a in cluster(), b in cluster())| {
        check_diff(&ns, &compiled(&a, &node), &compiled(&b, &node))?;
    });
}

#[test]
fn diff_recreates_changed_sets_and_base_chains() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("recreate");
    let daddr = || Expr::Payload(Payload::IpDaddr);
    let table = |interval: bool, priority: i32| {
        let mut set = Set::keys(TypeSpec::Type(vec![svc_nft_ir::DataType::Ipv4Addr]));
        if interval {
            set.flags = vec![SetFlag::Interval];
            set.elements.insert(
                vec![Value::Prefix("10.1.0.0/16".parse().unwrap())],
                Default::default(),
            );
        }
        let hook = BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Input,
            priority,
        };
        let rule = Rule::new(vec![
            Stmt::matches(daddr(), Expr::SetRef("blocked".into())),
            Stmt::Verdict(Verdict::Drop),
        ]);
        // A set rules may fill, whose elements expire: declared the same in both tables.
        let mut recent = Set::keys(TypeSpec::Type(vec![svc_nft_ir::DataType::Ipv4Addr]));
        recent.flags = vec![SetFlag::Dynamic, SetFlag::Timeout];
        recent.timeout = Some(10800);
        Table {
            name: "svc-nft-recreate".into(),
            sets: [("blocked".to_string(), set), ("recent".to_string(), recent)].into(),
            chains: [("input".to_string(), Chain::base(hook, vec![rule]))].into(),
            ..Table::default()
        }
    };
    let (a, b) = (table(false, 0), table(true, -5));
    check_diff(&ns, &a, &b).unwrap();
    check_diff(&ns, &b, &a).unwrap();
    check_diff(
        &ns,
        &Table {
            name: a.name.clone(),
            ..Table::default()
        },
        &a,
    )
    .unwrap();
}

/// The engine's incremental sync — element changes over netlink, the rest through nft —
/// moves the kernel from A to B exactly as loading B whole does.
#[test]
fn engine_syncs_from_a_to_b() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use svc_nft::engine::{Engine, Route};
    if !netns::require() {
        return;
    }
    let ns = Netns::new("engine");
    let node = NodeFacts {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..NodeFacts::default()
    };
    let over_netlink = Arc::new(AtomicUsize::new(0));
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(a in cluster(), b in cluster())| {
        let (a, b) = (compiled(&a, &node), compiled(&b, &node));
        ns.nft(&replace_script(&b)).expect("B loads");
        let expected = kernel_state(&ns, &b);
        let (target, counter) = (b.clone(), over_netlink.clone());
        let route = ns.run(move || {
            let mut engine = Engine::new();
            engine.sync(a).expect("first sync");
            let synced = engine.sync(target).expect("incremental sync");
            assert_eq!(engine.failures, 0);
            synced.route
        });
        prop_assert!(route != Route::Full, "an incremental sync fell back to a full replace");
        if route == Route::Netlink {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        prop_assert_eq!(kernel_state(&ns, &b), expected);
    });
    let n = over_netlink.load(Ordering::Relaxed);
    eprintln!("{n} of 48 cases went over netlink");
    assert!(n > 0, "no case exercised the netlink path");
}

/// Element changes of every kind the layout has — verdict elements with comments, v4 and v6
/// data maps, concatenated sets — go over netlink and land exactly.
#[test]
fn element_only_changes_go_over_netlink() {
    use svc_nft::engine::{Engine, Route};
    if !netns::require() {
        return;
    }
    let text = netns::inputs::examples();
    // Same endpoint counts everywhere, so no chain changes: endpoints move, a Service moves
    // to another cluster IP, an IPv6 endpoint changes.
    let changed = text
        .replace("10.244.2.7", "10.244.2.8")
        .replace("10.96.181.102", "10.96.181.103")
        .replace("fd00:244:2::3", "fd00:244:2::4");
    let node = NodeFacts::default();
    let (a, b) = (compiled(&text, &node), compiled(&changed, &node));
    let ns = Netns::new("netlink");
    ns.nft(&replace_script(&b)).expect("B loads");
    let expected = kernel_state(&ns, &b);
    let target = b.clone();
    let route = ns.run(move || {
        let mut engine = Engine::new();
        engine.sync(a).expect("first sync");
        engine.sync(target).expect("incremental sync").route
    });
    assert_eq!(route, Route::Netlink);
    assert_eq!(kernel_state(&ns, &b), expected);
}

/// One engine through a sequence of changes; after each sync the kernel holds exactly what
/// loading that step's table whole gives.
#[test]
fn engine_follows_a_sequence_of_changes() {
    use svc_nft::engine::Engine;
    if !netns::require() {
        return;
    }
    let svc = |name: &str, vip: &str, ports: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {vip}, ports: [{ports}]}}\n")
    };
    let eps = |name: &str, addrs: &[&str], ports: &str| {
        let addrs: Vec<String> = addrs.iter().map(|a| format!("{{ip: {a}}}")).collect();
        format!(
            "---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}}}\n\
             subsets: [{{addresses: [{}], ports: [{ports}]}}]\n",
            addrs.join(", ")
        )
    };
    let web = |ports: &str| svc("web", "10.96.0.1", ports);
    let one = "{name: http, port: 80}";
    let two = "{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}";
    let steps = [
        // a Service and its endpoints
        web(one) + &eps("web", &["10.244.0.1", "10.244.0.2"], one),
        // another Service
        web(one) + &eps("web", &["10.244.0.1", "10.244.0.2"], one) + &svc("api", "10.96.0.2", one),
        // a port added
        web(two) + &eps("web", &["10.244.0.1", "10.244.0.2"], two) + &svc("api", "10.96.0.2", one),
        // an endpoint added, an endpoint IP changed
        web(two) + &eps("web", &["10.244.0.1", "10.244.0.3", "10.244.0.4"], two),
        // emptied
        web(two),
        // refilled
        web(two) + &eps("web", &["10.244.0.9"], two),
        // removed
        String::new(),
    ];
    let node = NodeFacts::default();
    let ns = Netns::new("sequence");
    let tables: Vec<Table> = steps.iter().map(|s| compiled(s, &node)).collect();
    let mut expected = Vec::new();
    for t in &tables {
        ns.nft(&replace_script(t)).expect("step loads");
        expected.push(kernel_state(&ns, t));
    }
    let name = tables[0].name.clone();
    ns.nft(&format!("delete table inet {name}\n")).unwrap();
    let states = ns.run(move || {
        let mut engine = Engine::new();
        let list = |name: &str| {
            let out = std::process::Command::new("nft")
                .args(["-j", "list", "table", "inet", name])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        tables
            .into_iter()
            .map(|t| {
                engine.sync(t).expect("sync");
                list(&name)
            })
            .collect::<Vec<_>>()
    });
    for (i, (state, want)) in states.iter().zip(expected).enumerate() {
        assert_eq!(listing::canonical(state), want, "step {i}");
    }
}
