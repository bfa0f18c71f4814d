//! Chains and rules over netlink (`runtime/src/netlink/rules.rs`): an incremental sync that
//! creates or deletes pick and affinity chains goes to the kernel as one netlink batch, and
//! what it creates is what nft creates for the same IR — for every chain the compiler makes.

mod netns;

use netns::cluster::{answers, pairs, Cluster, CIDRS};
use netns::inputs::golden_cases;
use netns::listing::{pretty, unified_diff, without_handles};
use netns::{tcp, Netns, ANSWER_WAIT};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use svc_nft::cli::{compile_paths, NodeArgs};
use svc_nft::engine::{Engine, Route};
use svc_nft_compiler::{parse, Delta, Incremental, NodeFacts, Object, StalePins, UdpTargets};
use svc_nft_ir::{diff, replace_script, Op, Table};

/// Every golden case compiled with its flags: `(case, table)`.
fn golden_tables() -> Vec<(String, Table)> {
    golden_cases()
        .into_iter()
        .map(|dir| {
            let case = dir.file_name().unwrap().to_string_lossy().into_owned();
            let flags = std::fs::read_to_string(dir.join("flags")).unwrap_or_default();
            let facts = NodeArgs::parse_flags(flags.split_whitespace())
                .unwrap_or_else(|e| panic!("{case}/flags: {e}"))
                .facts();
            let (compiled, _) = compile_paths(&[dir.join("input")], &facts, &mut Vec::new());
            (case, compiled.table)
        })
        .collect()
}

/// The table with every set emptied: what its chains need, without the elements.
fn without_elements(table: &Table) -> Table {
    let mut t = table.clone();
    t.sets.values_mut().for_each(|s| s.elements.clear());
    t
}

/// `nft -j list chain` without the handles (which depend on history).
fn listing(ns: &Netns, table: &str, chain: &str) -> Json {
    let mut json: Json =
        serde_json::from_str(&ns.nft_list(&format!("-j list chain inet {table} {chain}")))
            .expect("nft -j output is JSON");
    without_handles(&mut json);
    json
}

/// The kernel's expressions of a chain's rules as `nft --debug=netlink list chain` prints
/// them, a line per rule (without its handle and position) and per expression.
fn expressions(ns: &Netns, table: &str, chain: &str) -> Vec<String> {
    let text = ns.nft_list(&format!("--debug=netlink list chain inet {table} {chain}"));
    let header = format!("inet {table} {chain} ");
    text.lines()
        .filter_map(|l| match l {
            _ if l.starts_with(&header) => Some("rule".to_string()),
            _ if l.starts_with("  [") || l.starts_with("  userdata") => Some(l.to_string()),
            _ => None,
        })
        .collect()
}

/// Both views of every chain of `table` in the kernel.
fn chains(ns: &Netns, table: &Table) -> BTreeMap<String, (Json, Vec<String>)> {
    let t = &table.name;
    let view = |c: &str| (listing(ns, t, c), expressions(ns, t, c));
    table.chains.keys().map(|c| (c.clone(), view(c))).collect()
}

/// Every chain of every golden case: nft loads the table; then, in its place, a table with
/// the same sets and only its base chains (empty) is synced to the whole one by a delta the
/// engine sends over netlink — every regular chain created, every chain filled. Each chain
/// lists the same (`nft -j list chain`, handles aside) and holds the same kernel expressions
/// (`nft --debug=netlink list chain`) both ways.
#[test]
fn every_compiled_chain_created_over_netlink_is_what_nft_creates() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("nlrules");
    let mut checked = 0;
    for (case, table) in golden_tables() {
        let target = without_elements(&table);
        let name = target.name.clone();
        let delete = format!("delete table inet {name}\n");
        ns.nft(&replace_script(&target))
            .unwrap_or_else(|e| panic!("{case}: nft refuses the table: {e}"));
        let by_nft = chains(&ns, &target);
        ns.nft(&delete).unwrap();

        let mut start = target.clone();
        start.chains.retain(|_, c| c.base.is_some());
        start.chains.values_mut().for_each(|c| c.rules.clear());
        let tx = diff(&start, &target);
        assert!(tx.ops.iter().any(|op| matches!(op, Op::AddChain(..))));
        let delta = Delta {
            transaction: Some(tx),
            recompiled: 0,
            udp: UdpTargets::default(),
            pins: StalePins::default(),
            diagnostics: vec![],
        };
        let whole = target.clone();
        let (route, failures) = ns.run(move || {
            let mut engine = Engine::new();
            engine.sync(start).expect("the base chains load");
            let synced = engine.sync_delta(&whole, &delta, || whole.clone());
            (synced.expect("sync").route, engine.failures)
        });
        assert_eq!((route, failures), (Route::Netlink, 0), "{case}");
        let by_netlink = chains(&ns, &target);
        for (chain, (json, exprs)) in &by_nft {
            let (nl_json, nl_exprs) = &by_netlink[chain];
            if json != nl_json || exprs != nl_exprs {
                let delta = unified_diff(
                    &format!("{}\n{}\n", pretty(json), exprs.join("\n")),
                    &format!("{}\n{}\n", pretty(nl_json), nl_exprs.join("\n")),
                    ("created by nft", "created over netlink"),
                );
                panic!("{case}: chain {chain} differs\n{delta}");
            }
            checked += 1;
        }
        ns.nft(&delete).unwrap();
    }
    eprintln!("{checked} chains compared");
    assert!(checked > 100, "only {checked} chains compared");
}

/// Services whose changes bring chains into and out of use: ClientIP affinity (v4 and v6)
/// and `externalTrafficPolicy: Local`. `n`: endpoints of each; `timeout`: affinity seconds.
fn services(n: usize, timeout: u32) -> Vec<Object> {
    let addrs = |f: &dyn Fn(usize) -> String| {
        let eps: Vec<String> = (1..=n)
            .map(|i| format!("{{addresses: [\"{}\"], nodeName: node-{i}}}", f(i)))
            .collect();
        eps.join(", ")
    };
    let v4 = addrs(&|i| format!("10.244.{i}.2"));
    let v6 = addrs(&|i| format!("fd00:244:{i}::2"));
    let sticky = format!(
        "sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout}}}}}"
    );
    let service = |name: &str, spec: &str, family: &str, eps: &str| {
        // The API refuses a nodePort on a ClusterIP Service.
        let node_port = if spec.contains("NodePort") {
            ", nodePort: 30080"
        } else {
            ""
        };
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\n\
             spec: {{{spec}, ports: [{{port: 80, targetPort: 8080{node_port}}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: {family}\nports: [{{port: 8080}}]\nendpoints: [{eps}]\n"
        )
    };
    let text = service(
        "web",
        &format!("clusterIP: 10.96.0.10, {sticky}"),
        "IPv4",
        &v4,
    ) + &service(
        "web6",
        &format!("clusterIP: \"fd00:96::10\", ipFamilies: [IPv6], {sticky}"),
        "IPv6",
        &v6,
    ) + &service(
        "local",
        "type: NodePort, externalTrafficPolicy: Local, clusterIP: 10.96.0.11",
        "IPv4",
        &v4,
    );
    let (objects, errors) = parse("test", &text);
    assert!(errors.is_empty(), "{errors:?}\n{text}");
    objects
}

fn node() -> NodeFacts {
    NodeFacts {
        node_name: Some("node-1".into()),
        node_ips: vec!["198.51.100.1".parse().unwrap()],
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/32".parse().unwrap(),
        ],
        ..NodeFacts::default()
    }
}

/// The chains a delta creates, deletes and refills.
fn moved(delta: &Delta) -> (Vec<String>, Vec<String>, Vec<String>) {
    let ops = &delta.transaction.as_ref().expect("a transaction").ops;
    let names = |pick: fn(&Op) -> Option<&String>| ops.iter().filter_map(pick).cloned().collect();
    let added = names(|op| match op {
        Op::AddChain(name, _) => Some(name),
        _ => None,
    });
    let deleted = names(|op| match op {
        Op::DeleteChain(name) => Some(name),
        _ => None,
    });
    let flushed: Vec<String> = names(|op| match op {
        Op::FlushChain(name) => Some(name),
        _ => None,
    });
    // A chain deleted is flushed first.
    let refilled = flushed
        .into_iter()
        .filter(|c| !deleted.contains(c))
        .collect();
    (added, deleted, refilled)
}

/// The per-Service compiler's deltas that add and remove pick and external-local chains, and
/// refill or delete a Service port's affinity chains (IPv6 included), go over netlink in one
/// batch each, and leave the kernel
/// holding exactly the table loaded whole: a full replace by `reconcile` finds nothing to
/// change.
#[test]
fn deltas_that_move_chains_go_over_netlink() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("nlchains");
    let results = ns.run(|| {
        let mut inc = Incremental::new(&node());
        let mut engine = Engine::new();
        let mut results = Vec::new();
        for step in ["first", "scaled", "scaled back", "removed"] {
            match step {
                "first" | "scaled back" => upsert(&mut inc, services(2, 600)),
                "scaled" => upsert(&mut inc, services(3, 900)),
                _ => {
                    for name in ["web", "web6", "local"] {
                        inc.remove("Service", "t", name);
                        inc.remove("EndpointSlice", "t", &format!("{name}-1"));
                    }
                }
            }
            let delta = inc.flush();
            let moved = delta.transaction.as_ref().map(|_| moved(&delta));
            let synced = engine.sync_delta(inc.shape(), &delta, || inc.table());
            let route = synced.expect("sync").route;
            let drift = engine.reconcile(&inc.table()).expect("reconcile");
            results.push((step, moved, route, drift, engine.failures));
        }
        results
    });
    for (step, moved, route, drift, failures) in results {
        eprintln!("{step}: {moved:?} {route:?}");
        assert_eq!(failures, 0, "{step}");
        assert!(
            drift.is_empty(),
            "{step}: the kernel differs from the table: {drift}"
        );
        let Some((added, deleted, refilled)) = moved else {
            assert_eq!(step, "first");
            continue;
        };
        assert_eq!(route, Route::Netlink, "{step}");
        let expect = |names: &[String], what: &str, prefixes: &[&str]| {
            for prefix in prefixes {
                assert!(
                    names.iter().any(|n| n.starts_with(prefix)),
                    "{step}: no {prefix} chain {what}: {names:?}"
                );
            }
        };
        let shared = ["pick-v4-", "pick-v6-", "external-local-v4-"];
        let own = ["sticky-v4-t/web", "sticky-v6-t/web6", "remember-v6-t/web6"];
        match step {
            "removed" => expect(&deleted, "deleted", &[&shared[..], &own].concat()),
            _ => {
                expect(&added, "added", &shared);
                expect(&deleted, "deleted", &shared);
                expect(&refilled, "refilled", &own);
            }
        }
    }
}

fn upsert(inc: &mut Incremental, objects: Vec<Object>) {
    for obj in &objects {
        inc.upsert(obj).expect("valid");
    }
}

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: t}\n\
                   spec: {clusterIP: 10.96.5.1, ports: [{port: 80, targetPort: 8080}]}\n";

/// `web`'s EndpointSlice with endpoints on the backends `hosts` (1 to 3).
fn web_endpoints(hosts: &[u8]) -> String {
    let eps: Vec<String> = hosts
        .iter()
        .map(|i| format!("{{addresses: [10.244.{i}.2]}}"))
        .collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-a, namespace: t, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

/// A Service scaled from two endpoints to three: its new pick chain is created over netlink
/// (the old one deleted) and connections reach all three backends through it.
#[test]
fn traffic_flows_through_a_pick_chain_created_over_netlink() {
    if !netns::require() {
        return;
    }
    let two = format!("{WEB}{}", web_endpoints(&[1, 2]));
    let k = Cluster::new(&two, CIDRS);
    let three = format!("{WEB}{}", web_endpoints(&[1, 2, 3]));
    let node_facts = NodeArgs::parse_flags(CIDRS.iter().copied())
        .unwrap()
        .facts();
    let (route, moved, failures) = k.lab.node.run(move || {
        let mut inc = Incremental::new(&node_facts);
        let mut engine = Engine::new();
        let objects = |text: &str| parse("test", text).0;
        upsert(&mut inc, objects(&two));
        let first = inc.flush();
        engine
            .sync_delta(inc.shape(), &first, || inc.table())
            .expect("full sync");
        upsert(&mut inc, objects(&three));
        let delta = inc.flush();
        let synced = engine.sync_delta(inc.shape(), &delta, || inc.table());
        (synced.expect("sync").route, moved(&delta), engine.failures)
    });
    assert_eq!((route, failures), (Route::Netlink, 0));
    assert_eq!(
        moved,
        (
            vec!["pick-v4-tcp-3".to_string()],
            vec!["pick-v4-tcp-2".to_string()],
            vec![]
        )
    );
    let vip = "10.96.5.1:80".parse().unwrap();
    let connect = || tcp(k.ns(k.c1), vip, ANSWER_WAIT);
    let all = pairs(&[
        ("10.244.1.2", "10.244.9.2"),
        ("10.244.2.2", "10.244.9.2"),
        ("10.244.3.2", "10.244.9.2"),
    ]);
    assert_eq!(answers(40, connect), all);
}
