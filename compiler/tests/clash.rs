//! Two Services claiming one frontend: only that frontend is contested. `compile` gives it to
//! the Service created first (then namespace/name); a running agent leaves it with its holder
//! until the holder lets go. Either way one warning names both Services and the frontend.

use svc_nft_compiler::{
    compile, parse, Incremental, NodeFacts, NodePortAddresses, Object, Severity,
};
use svc_nft_ir::{L4Proto, Table, Value};

/// A Service with a cluster IP, one port 80 and optionally an external IP, and its endpoint.
fn service(
    ns: &str,
    name: &str,
    created: Option<&str>,
    cluster_ip: &str,
    external: &str,
) -> String {
    let created = created
        .map(|t| format!(", creationTimestamp: '{t}'"))
        .unwrap_or_default();
    let external = match external {
        "" => String::new(),
        ip => format!("externalIPs: [{ip}], "),
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}{created}}}\n\
         spec: {{{external}clusterIP: {cluster_ip}, selector: {{app: {name}}}, ports: [{{port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [10.244.0.{}]}}]\n---\n",
        cluster_ip.rsplit('.').next().unwrap()
    )
}

fn objects(text: &str) -> Vec<Object> {
    let (objects, errors) = parse("clash.yaml", text);
    assert!(errors.is_empty(), "{errors:?}");
    objects
}

/// The label (namespace/name) of the Service that `address:port/TCP` leads to, if any.
fn owner(table: &Table, address: &str, port: u16) -> Option<String> {
    let key = vec![
        Value::Ipv4(address.parse().unwrap()),
        Value::Proto(L4Proto::Tcp),
        Value::Port(port),
    ];
    let set = &table.sets["service-ports-v4"];
    set.elements
        .get(&key)
        .map(|e| e.comment.clone().unwrap_or_default())
}

const EARLY: Option<&str> = Some("2024-01-01T00:00:00Z");
const LATE: Option<&str> = Some("2024-06-01T00:00:00Z");

#[test]
fn the_frontend_goes_to_the_service_created_first_and_the_other_keeps_the_rest() {
    let text = service("demo", "ext-a", LATE, "10.96.0.1", "192.0.2.10")
        + &service("demo", "ext-b", EARLY, "10.96.0.2", "192.0.2.10");
    let compiled = compile(&objects(&text), &NodeFacts::default());
    let table = &compiled.table;
    assert_eq!(
        owner(table, "192.0.2.10", 80).as_deref(),
        Some("demo/ext-b")
    );
    assert_eq!(owner(table, "10.96.0.1", 80).as_deref(), Some("demo/ext-a"));
    assert_eq!(owner(table, "10.96.0.2", 80).as_deref(), Some("demo/ext-b"));
    let shown: Vec<String> = compiled.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        shown,
        ["clash.yaml: document 1: Service demo/ext-a: spec.externalIPs[0]: 192.0.2.10:80/TCP is held by Service demo/ext-b; not programmed for this Service"]
    );
    assert_eq!(compiled.diagnostics[0].severity, Severity::Warning);
}

#[test]
fn equal_or_missing_timestamps_fall_back_to_names() {
    for (a, b) in [(EARLY, EARLY), (None, None)] {
        let text = service("demo", "z", a, "10.96.0.1", "192.0.2.10")
            + &service("demo", "y", b, "10.96.0.2", "192.0.2.10");
        let table = compile(&objects(&text), &NodeFacts::default()).table;
        assert_eq!(owner(&table, "192.0.2.10", 80).as_deref(), Some("demo/y"));
    }
    // A Service without a timestamp comes after those with one.
    let text = service("demo", "z", EARLY, "10.96.0.1", "192.0.2.10")
        + &service("demo", "y", None, "10.96.0.2", "192.0.2.10");
    let table = compile(&objects(&text), &NodeFacts::default()).table;
    assert_eq!(owner(&table, "192.0.2.10", 80).as_deref(), Some("demo/z"));
}

#[test]
fn a_service_sharing_a_cluster_ip_loses_only_that_address() {
    // b: a NodePort Service on a's cluster IP.
    let nodeport = service("demo", "b", None, "10.96.0.1", "")
        .replace("spec: {", "spec: {type: NodePort, ")
        .replace("port: 80}", "port: 80, nodePort: 30080}");
    let text = service("demo", "a", None, "10.96.0.1", "") + &nodeport;
    let node = NodeFacts {
        node_ips: vec!["192.168.0.10".parse().unwrap()],
        ..NodeFacts::default()
    };
    let compiled = compile(&objects(&text), &node);
    assert_eq!(
        owner(&compiled.table, "10.96.0.1", 80).as_deref(),
        Some("demo/a")
    );
    assert_eq!(
        owner(&compiled.table, "192.168.0.10", 30080).as_deref(),
        Some("demo/b")
    );
    let [d] = &compiled.diagnostics[..] else {
        panic!("{:?}", compiled.diagnostics)
    };
    assert_eq!(d.field.as_deref(), Some("spec.clusterIPs[0]"));
    assert!(!d.is_error());
}

/// NodePorts on `--nodeport-addresses` CIDRs are claimed by protocol and port alone: one
/// NodePort number twice is one clash, whatever the node's addresses, and the Service created
/// first keeps it.
#[test]
fn nodeports_on_cidrs_clash_by_port() {
    let nodeport = |name, created, ip| {
        service("demo", name, created, ip, "")
            .replace("spec: {", "spec: {type: NodePort, ")
            .replace("port: 80}", "port: 80, nodePort: 30080}")
    };
    let text = nodeport("late", LATE, "10.96.0.1") + &nodeport("early", EARLY, "10.96.0.2");
    let node = NodeFacts {
        nodeport_addresses: NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap()]),
        ..NodeFacts::default()
    };
    let compiled = compile(&objects(&text), &node);
    let key = vec![Value::Proto(L4Proto::Tcp), Value::Port(30080)];
    let element = &compiled.table.sets["service-nodeports-v4"].elements[&key];
    assert_eq!(element.comment.as_deref(), Some("demo/early"));
    let shown: Vec<String> = compiled.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        shown,
        ["clash.yaml: document 1: Service demo/late: spec.ports[0].nodePort: NodePort 30080/TCP (IPv4) is held by Service demo/early; not programmed for this Service"]
    );
    assert_eq!(
        owner(&compiled.table, "10.96.0.1", 80).as_deref(),
        Some("demo/late")
    );
}

/// The agent: `demo/y` holds the external IP; `aaa/x` sorts first and is older, and still
/// waits until `demo/y` lets go. Neither step is a full replace.
#[test]
fn a_running_holder_keeps_its_frontend_until_it_lets_go() {
    let node = NodeFacts::default();
    let mut state = Incremental::new(&node);
    for obj in objects(&service("demo", "y", LATE, "10.96.0.2", "192.0.2.10")) {
        state.upsert(&obj).unwrap();
    }
    state.flush();
    for obj in objects(&service("aaa", "x", EARLY, "10.96.0.1", "192.0.2.10")) {
        state.upsert(&obj).unwrap();
    }
    let delta = state.flush();
    assert!(delta.transaction.is_some(), "a clash is no full replace");
    assert_eq!(delta.recompiled, 1);
    let [warning] = &delta.diagnostics[..] else {
        panic!("{:?}", delta.diagnostics)
    };
    assert!(
        warning.to_string().ends_with("Service aaa/x: spec.externalIPs[0]: 192.0.2.10:80/TCP is held by Service demo/y; not programmed for this Service"),
        "{warning}"
    );
    let table = state.table();
    assert_eq!(owner(&table, "192.0.2.10", 80).as_deref(), Some("demo/y"));
    assert_eq!(owner(&table, "10.96.0.1", 80).as_deref(), Some("aaa/x"));

    // Said once: a later change of the waiting Service does not repeat it.
    let moved =
        service("aaa", "x", EARLY, "10.96.0.1", "192.0.2.10").replace("10.244.0.1]", "10.244.0.9]");
    for obj in objects(&moved) {
        state.upsert(&obj).unwrap();
    }
    assert!(state.flush().diagnostics.is_empty());

    state.remove("Service", "demo", "y");
    let delta = state.flush();
    assert!(delta.transaction.is_some(), "a release is no full replace");
    assert_eq!(delta.recompiled, 2, "the holder and the one next in line");
    assert!(delta.diagnostics.is_empty());
    assert_eq!(
        owner(&state.table(), "192.0.2.10", 80).as_deref(),
        Some("aaa/x")
    );
}

/// What a clash and a release cost the kernel: the contested frontend's elements, nothing
/// of any other Service, whatever the number of Services.
#[test]
fn a_clash_and_a_release_cost_the_same_at_any_size() {
    let cost = |n: usize| {
        let node = NodeFacts::default();
        let mut state = Incremental::new(&node);
        let others: String = (0..n)
            .map(|i| {
                service(
                    "bulk",
                    &format!("s{i}"),
                    EARLY,
                    &format!("10.97.{}.{}", i / 250, i % 250 + 1),
                    "",
                )
            })
            .collect();
        let holder = service("demo", "y", LATE, "10.96.0.2", "192.0.2.10");
        for obj in objects(&(others + &holder)) {
            state.upsert(&obj).unwrap();
        }
        state.flush();
        for obj in objects(&service("aaa", "x", EARLY, "10.96.0.1", "192.0.2.10")) {
            state.upsert(&obj).unwrap();
        }
        let clash = state.flush().transaction.expect("incremental").ops.len();
        state.remove("Service", "demo", "y");
        let release = state.flush().transaction.expect("incremental").ops.len();
        (clash, release)
    };
    assert_eq!(cost(10), cost(1000));
}
