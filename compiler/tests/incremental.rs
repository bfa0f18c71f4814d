//! A change to one Service touches only that Service's elements: the transaction does not
//! grow with the number of Services.

use svc_nft_compiler::{compile, parse, Incremental, NodeFacts, Object, Resource};
use svc_nft_ir::{diff, Op};

/// `n` Services with two endpoints each; Service `moved` has its second endpoint elsewhere.
fn cluster(n: usize, moved: Option<usize>) -> Vec<Object> {
    let text: Vec<String> = (0..n)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            let second = if Some(i) == moved { 246 } else { 245 };
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n\
                 spec: {{clusterIP: 10.96.{hi}.{lo}, ports: [{{port: 80}}]}}\n---\n\
                 apiVersion: v1\nkind: Endpoints\nmetadata: {{name: s{i}}}\n\
                 subsets: [{{addresses: [{{ip: 10.244.{hi}.{lo}}}, {{ip: 10.{second}.{hi}.{lo}}}], ports: [{{port: 80}}]}}]\n"
            )
        })
        .collect();
    let (objects, errors) = parse("generated", &text.join("---\n"));
    assert!(errors.is_empty(), "{errors:?}");
    objects
}

/// Elements added plus deleted, and whether anything but elements changed: by the whole-table
/// diff, and by the per-Service compiler (which must agree).
fn size(n: usize) -> (usize, bool) {
    let node = NodeFacts::default();
    let moved = cluster(n, Some(n / 2));
    let tx = diff(
        &compile(&cluster(n, None), &node).table,
        &compile(&moved, &node).table,
    );
    let mut state = Incremental::new(&node);
    for obj in cluster(n, None) {
        state.upsert(&obj).unwrap();
    }
    state.flush();
    let endpoints = moved
        .iter()
        .filter(|o| matches!(o.resource, Resource::Endpoints(_)));
    for obj in endpoints.skip(n / 2).take(1) {
        state.upsert(obj).unwrap();
    }
    let delta = state.flush();
    assert_eq!(delta.recompiled, 1);
    assert_eq!(delta.transaction.expect("incremental").ops, tx.ops);
    let mut elements = 0;
    let mut structural = false;
    for op in &tx.ops {
        match op {
            Op::AddElements(_, e) => elements += e.len(),
            Op::DeleteElements(_, k) => elements += k.len(),
            _ => structural = true,
        }
    }
    (elements, structural)
}

#[test]
fn one_endpoint_moving_costs_the_same_at_any_size() {
    let small = size(100);
    assert_eq!(small, size(2000));
    // The slot's data element (delete + add) and the hairpin element (delete + add).
    assert_eq!(small, (4, false));
}

mod per_service {
    //! [`Incremental`] through random sequences of object changes: its transaction moves the
    //! previous table to the new one (applied to the in-memory fake kernel), and its table is
    //! the one a rebuild gives. Who holds a contested frontend depends on history (a holder
    //! keeps it); when Services arrive in creation order, as the API server creates them, the
    //! table after every flush is the one `compile` gives for the same objects.

    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use svc_nft_compiler::{compile, parse, Incremental, NodeFacts, NodePortAddresses, Object};

    /// A Service `s<i>` and its EndpointSlice, drawn from small pools so that Services clash
    /// on cluster IPs, external IPs and NodePorts, and share endpoints.
    #[derive(Clone, Debug)]
    struct Spec {
        cluster_ip: u8,
        port: u16,
        udp: bool,
        /// The NodePort, 30000 + this.
        node_port: Option<u16>,
        /// The external IP, 192.0.2.<this>.
        external_ip: Option<u8>,
        /// `metadata.creationTimestamp`, in seconds after a fixed instant.
        created: Option<u32>,
        local: bool,
        affinity: bool,
        /// (last byte of the endpoint address, on this node, ready)
        endpoints: Vec<(u8, bool, bool)>,
        /// Endpoints as v1 Endpoints instead of a slice (mirrored: no selector).
        mirrored: bool,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let endpoint = (1..5u8, any::<bool>(), prop::bool::weighted(0.8));
        let frontends = (
            prop::option::weighted(0.5, 0..2u16),
            prop::option::weighted(0.4, 1..3u8),
            prop::option::weighted(0.8, 0..4u32),
        );
        (
            (1..4u8, prop::sample::select(vec![80u16, 81]), any::<bool>()),
            frontends,
            (any::<bool>(), any::<bool>(), any::<bool>()),
            prop::collection::vec(endpoint, 0..4),
        )
            .prop_map(
                |(
                    (cluster_ip, port, udp),
                    (node_port, external_ip, created),
                    (local, affinity, mirrored),
                    endpoints,
                )| {
                    Spec {
                        cluster_ip,
                        port,
                        udp,
                        node_port,
                        external_ip,
                        created,
                        local,
                        affinity,
                        endpoints,
                        mirrored,
                    }
                },
            )
    }

    fn yaml(i: usize, s: &Spec) -> String {
        let proto = if s.udp { "UDP" } else { "TCP" };
        let kind = if s.node_port.is_some() {
            "NodePort"
        } else {
            "ClusterIP"
        };
        let node_port = match s.node_port {
            Some(n) => format!(", nodePort: {}", 30000 + n),
            None => String::new(),
        };
        let external = match s.external_ip {
            Some(ip) => format!("externalIPs: [192.0.2.{ip}], "),
            None => String::new(),
        };
        let created = match s.created {
            Some(t) => format!(
                ", creationTimestamp: '2024-05-01T00:{:02}:{:02}Z'",
                t / 60,
                t % 60
            ),
            None => String::new(),
        };
        let etp = if s.node_port.is_some() && s.local {
            "externalTrafficPolicy: Local, "
        } else {
            ""
        };
        let affinity = if s.affinity {
            "sessionAffinity: ClientIP, "
        } else {
            ""
        };
        let selector = if s.mirrored {
            ""
        } else {
            "selector: {app: x}, "
        };
        let service = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default{created}}}\n\
             spec: {{type: {kind}, {etp}{affinity}{selector}{external}clusterIP: 10.96.0.{}, \
             ports: [{{port: {}, protocol: {proto}{node_port}}}]}}\n",
            s.cluster_ip, s.port
        );
        let node = |on: bool| if on { "node-a" } else { "node-b" };
        let endpoints = if s.mirrored {
            let addrs: Vec<String> = s
                .endpoints
                .iter()
                .filter(|e| e.2)
                .map(|e| format!("{{ip: 10.244.0.{}, nodeName: {}}}", e.0, node(e.1)))
                .collect();
            // The API refuses a subset without addresses: no ready address, no subset.
            let subsets = match addrs.is_empty() {
                true => "[]".to_string(),
                false => format!(
                    "[{{addresses: [{}], ports: [{{port: 8080, protocol: {proto}}}]}}]",
                    addrs.join(", ")
                ),
            };
            format!(
                "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: s{i}, namespace: default}}\n\
                 subsets: {subsets}\n"
            )
        } else {
            let eps: Vec<String> = s
                .endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{{addresses: [10.244.0.{}], nodeName: {}, conditions: {{ready: {}}}}}",
                        e.0,
                        node(e.1),
                        e.2
                    )
                })
                .collect();
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: s{i}-x, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
                 addressType: IPv4\nendpoints: [{}]\nports: [{{port: 8080, protocol: {proto}}}]\n",
                eps.join(", ")
            )
        };
        format!("{service}---\n{endpoints}")
    }

    fn objects(text: &str) -> Vec<Object> {
        let (objects, errors) = parse("generated", text);
        assert!(errors.is_empty(), "{errors:?}\n{text}");
        objects
    }

    /// This node; `on_cidrs`: NodePorts on every local address of `--nodeport-addresses
    /// 192.168.0.0/16` (one `proto . port` frontend), else on the node IP (`primary`).
    fn node(on_cidrs: bool) -> NodeFacts {
        let nodeport_addresses = match on_cidrs {
            true => NodePortAddresses::Cidrs(vec!["192.168.0.0/16".parse().unwrap()]),
            false => NodePortAddresses::Primary,
        };
        NodeFacts {
            node_name: Some("node-a".into()),
            node_ips: vec!["192.168.0.10".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            nodeport_addresses,
            ..NodeFacts::default()
        }
    }

    /// Remove `s<i>` as `old` defined it.
    fn remove(state: &mut Incremental, i: usize, old: &Spec) {
        let (kind, name) = endpoints_object(i, old);
        state.remove(kind, "default", &name);
        state.remove("Service", "default", &format!("s{i}"));
    }

    fn endpoints_object(i: usize, s: &Spec) -> (&'static str, String) {
        match s.mirrored {
            true => ("Endpoints", format!("s{i}")),
            false => ("EndpointSlice", format!("s{i}-x")),
        }
    }

    /// Flush, check the transaction against the table, and return the table.
    fn flushed(
        state: &mut Incremental,
        kernel: &mut svc_nft_ir::Table,
    ) -> Result<(), TestCaseError> {
        let delta = state.flush();
        let table = state.table();
        match &delta.transaction {
            Some(tx) => kernel
                .apply(tx)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{tx}")))?,
            None => *kernel = table.clone(),
        }
        kernel.notes = table.notes.clone();
        prop_assert_eq!(&*kernel, &table);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// As the API server does it: a changed Service is deleted and created again, and
        /// each batch of creations is stamped later than the one before. Then every flush
        /// gives what `compile` gives.
        #[test]
        fn flushes_match_a_full_compile(
            steps in prop::collection::vec((0..5usize, prop::option::weighted(0.8, spec())), 1..30),
            batch in 1..4usize,
            on_cidrs in any::<bool>(),
        ) {
            let node = node(on_cidrs);
            let mut state = Incremental::new(&node);
            let mut kernel = state.table();
            let mut current: BTreeMap<usize, Spec> = BTreeMap::new();
            for (second, chunk) in steps.chunks(batch).enumerate() {
                for (i, spec) in chunk {
                    if let Some(old) = current.remove(i) {
                        remove(&mut state, *i, &old);
                    }
                    if let Some(spec) = spec {
                        let spec = Spec { created: Some(second as u32), ..spec.clone() };
                        for obj in objects(&yaml(*i, &spec)) {
                            state.upsert(&obj).unwrap();
                        }
                        current.insert(*i, spec);
                    }
                }
                flushed(&mut state, &mut kernel)?;
                let all: String = current.iter().map(|(i, s)| yaml(*i, s) + "---\n").collect();
                let expected = compile(&objects(&all), &node).table;
                prop_assert_eq!(&state.table(), &expected);
            }
        }

        /// Any history (changes in place, timestamps in any order or none): the per-Service
        /// flushes give the table a rebuild at every flush gives, so holders are kept alike.
        #[test]
        fn flushes_match_rebuilds(
            steps in prop::collection::vec((0..5usize, prop::option::weighted(0.8, spec())), 1..30),
            batch in 1..4usize,
            on_cidrs in any::<bool>(),
        ) {
            let node = node(on_cidrs);
            let elsewhere = NodeFacts { node_name: Some("node-b".into()), ..node.clone() };
            let (mut state, mut rebuilt) = (Incremental::new(&node), Incremental::new(&node));
            let mut kernel = state.table();
            let mut current: BTreeMap<usize, Spec> = BTreeMap::new();
            for chunk in steps.chunks(batch) {
                for (i, spec) in chunk {
                    let old = current.remove(i);
                    for s in [&mut state, &mut rebuilt] {
                        match (&old, spec) {
                            (Some(old), None) => remove(s, *i, old),
                            (old, Some(spec)) => {
                                if let Some(old) = old.as_ref().filter(|o| o.mirrored != spec.mirrored) {
                                    let (kind, name) = endpoints_object(*i, old);
                                    s.remove(kind, "default", &name);
                                }
                                for obj in objects(&yaml(*i, spec)) {
                                    s.upsert(&obj).unwrap();
                                }
                            }
                            (None, None) => {}
                        }
                    }
                    if let Some(spec) = spec {
                        current.insert(*i, spec.clone());
                    }
                }
                flushed(&mut state, &mut kernel)?;
                // Facts that differ and back: the next flush rebuilds everything.
                rebuilt.set_node(&elsewhere);
                rebuilt.set_node(&node);
                let delta = rebuilt.flush();
                prop_assert!(delta.transaction.is_none());
                prop_assert_eq!(state.table(), rebuilt.table());
            }
        }
    }
}

#[test]
fn health_check_node_ports_count_ready_local_endpoints() {
    let node = NodeFacts {
        node_name: Some("node-a".into()),
        ..NodeFacts::default()
    };
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: t}\n\
                spec: {type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 30100, \
                clusterIP: 10.96.5.9, ports: [{name: a, port: 80, nodePort: 30080}, \
                {name: b, port: 81, nodePort: 30081}]}\n";
    let slice = |endpoints: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: lb-x, namespace: t, labels: {{kubernetes.io/service-name: lb}}}}\n\
             addressType: IPv4\nports: [{{name: a, port: 8080}}, {{name: b, port: 8081}}]\n\
             endpoints: [{endpoints}]\n"
        )
    };
    let mut state = Incremental::new(&node);
    let mut local_endpoints = |endpoints: &str| {
        let text = format!("{service}---\n{}", slice(endpoints));
        let (objects, errors) = parse("lb", &text);
        assert!(errors.is_empty(), "{errors:?}");
        for obj in &objects {
            state.upsert(obj).unwrap();
        }
        state.flush();
        let checks = state.health_checks();
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].port, 30100);
        checks[0].local_endpoints
    };
    // One Pod behind both ports is one endpoint; the remote one is not counted.
    let two =
        "{addresses: [10.244.1.2], nodeName: node-a}, {addresses: [10.244.2.2], nodeName: node-b}";
    assert_eq!(local_endpoints(two), 1);
    // Terminating but still serving (the node is being drained): none, as kube-proxy says.
    let draining = "{addresses: [10.244.1.2], nodeName: node-a, \
                    conditions: {ready: false, serving: true, terminating: true}}";
    assert_eq!(local_endpoints(draining), 0);
}

#[test]
fn local_policy_ports_without_local_endpoints_are_counted() {
    use svc_nft_compiler::NoLocalEndpoints;
    let node = NodeFacts {
        node_name: Some("node-a".into()),
        node_ips: vec!["198.51.100.1".parse().unwrap()],
        ..NodeFacts::default()
    };
    let objects = |on: &str| {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: t}}\n\
             spec: {{type: LoadBalancer, externalTrafficPolicy: Local, internalTrafficPolicy: Local, \
             clusterIP: 10.96.5.9, ports: [{{name: a, port: 80, nodePort: 30080}}, \
             {{name: b, port: 81, nodePort: 30081}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: lb-x, namespace: t, labels: {{kubernetes.io/service-name: lb}}}}\n\
             addressType: IPv4\nports: [{{name: a, port: 8080}}, {{name: b, port: 8081}}]\n\
             endpoints: [{{addresses: [10.244.1.2], nodeName: {on}}}]\n"
        );
        let (objects, errors) = parse("lb", &text);
        assert!(errors.is_empty(), "{errors:?}");
        objects
    };
    fn counts(state: &mut Incremental, objects: &[Object]) -> NoLocalEndpoints {
        for obj in objects {
            state.upsert(obj).unwrap();
        }
        state.flush();
        state.no_local_endpoints()
    }
    let mut state = Incremental::new(&node);
    // An IPv4 Service: counted under IPv4 only.
    let both = |n| NoLocalEndpoints {
        internal: [n, 0],
        external: [n, 0],
    };
    // Both ports, for both policies, while the only endpoint is elsewhere.
    assert_eq!(counts(&mut state, &objects("node-b")), both(2));
    assert_eq!(counts(&mut state, &objects("node-a")), both(0));
    assert_eq!(counts(&mut state, &objects("node-b")), both(2));
    // A Service with no endpoints at all is REJECTed, not counted (as kube-proxy).
    state.remove("EndpointSlice", "t", "lb-x");
    assert_eq!(counts(&mut state, &[]), both(0));
    assert_eq!(counts(&mut state, &objects("node-b")), both(2));
    state.remove("Service", "t", "lb");
    assert_eq!(counts(&mut state, &[]), both(0));
}
