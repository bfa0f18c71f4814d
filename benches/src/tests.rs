//! Unit tests of the synthetic clusters: each feature of the mix compiles, and only it.

use super::*;
use svc_nft_ir::{Data, Value};

fn elements(compiled: &Compiled, set: &str) -> usize {
    compiled.table.sets[set].elements.len()
}

/// How many of Services `0..n` `has` says yes to.
fn count(n: usize, has: impl Fn(usize) -> bool) -> usize {
    (0..n).filter(|&i| has(i)).count()
}

#[test]
fn plain_cluster_compiles_whole() {
    let objects = synthetic_cluster(100, 3);
    assert_eq!(objects.len(), 200);
    let compiled = compile_clean(&objects, &node_facts());
    assert_eq!(elements(&compiled, "service-ports-v4"), 100);
    assert_eq!(elements(&compiled, "endpoints-v4-tcp"), 300);
    assert_eq!(elements(&compiled, "hairpin-v4"), 300);
    assert_eq!(elements(&compiled, "service-ports-v6"), 0);
    assert_eq!(elements(&compiled, "local-endpoints-v4-tcp"), 0);
    // The node's name, zone and IPs change nothing without the mix.
    assert!(
        compiled.table.notes.is_empty(),
        "{:?}",
        compiled.table.notes
    );
}

#[test]
fn mixed_cluster_compiles_whole() {
    let n = 240;
    let gen = Synthetic::new(n, 2).mixed();
    let compiled = compile_clean(&gen.objects(), &node_facts());
    let lbs = count(n, |i| gen.is_load_balancer(i));
    let node_ports = count(n, |i| gen.node_port(i).is_some());
    let dual = count(n, |i| gen.is_dual_stack(i));
    let dual_node_ports = count(n, |i| gen.is_dual_stack(i) && gen.node_port(i).is_some());
    assert_eq!((lbs, node_ports, dual, dual_node_ports), (35, 76, 30, 10));
    // Cluster IPs, NodePorts on the node IP, load-balancer IPs (v4 only).
    assert_eq!(
        elements(&compiled, "service-ports-v4"),
        n + node_ports + lbs
    );
    assert_eq!(
        elements(&compiled, "service-ports-v6"),
        dual + dual_node_ports
    );
    assert_eq!(elements(&compiled, "cluster-ips-v6"), dual);
    let firewalled = count(n, |i| gen.has_source_ranges(i));
    assert_eq!(elements(&compiled, "firewalled-v4"), firewalled);
    assert_eq!(elements(&compiled, "lb-sources-v4"), 2 * firewalled);
    let sticky_frontends: usize = (0..n)
        .filter(|&i| gen.affinity(i).is_some())
        .map(|i| 1 + usize::from(gen.node_port(i).is_some()) + usize::from(gen.is_load_balancer(i)))
        .sum();
    // Every frontend of them that DNATs (not one that DROPs: `internalTrafficPolicy: Local`
    // without a local endpoint) goes through its port's sticky chains and is recorded.
    let sets = &compiled.table.sets;
    let looked_up: std::collections::BTreeSet<_> =
        ["affinity-lookup-v4", "affinity-lookup-local-v4"]
            .iter()
            .flat_map(|set| sets[*set].elements.keys())
            .collect();
    let recorded = elements(&compiled, "affinity-ports-v4");
    assert_eq!(recorded, looked_up.len());
    assert!(recorded > 0 && recorded <= sticky_frontends);
    // Terminating endpoints are never programmed: each of their Services has ready ones.
    let script = svc_nft_ir::replace_script(&compiled.table);
    assert!(gen.has_terminating(0) && !script.contains(&gen.terminating_ip(0, false).to_string()));
    assert!(!script.contains("10.160.") && !script.contains("fd00:10:128:0:8000:"));
    // Some Services have an endpoint on this node, which the Local policies use.
    assert!(elements(&compiled, "local-endpoints-v4-tcp") > 0);
}

#[test]
fn every_feature_reaches_the_ruleset() {
    let compiled = compile_clean(&Synthetic::new(400, 3).mixed().objects(), &node_facts());
    let chains: Vec<&str> = compiled.table.chains.keys().map(String::as_str).collect();
    let has = |prefix: &str| chains.iter().any(|c| c.starts_with(prefix));
    for prefix in [
        "pick-v4-tcp-3",
        "pick-v4-udp-3",
        "pick-v6-tcp-3",
        "pick-v4-tcp-1", // zone hints: one endpoint in zone-0
        "pick-local-v4-",
        "external-v4-tcp-3",
        "external-v6-",
        "external-local-v4-tcp-0-3",
        "external-local-v4-tcp-1-3",
        "remember-v4-",
        "remember-v6-",
        "sticky-v4-",
        "sticky-local-v4-",
    ] {
        assert!(has(prefix), "no chain {prefix}*: {chains:?}");
    }
    // Notes, and only of the expected kinds.
    let kinds = [
        "internalTrafficPolicy Local, no endpoint on this node",
        "externalTrafficPolicy Local, no endpoint on this node",
    ];
    let notes = &compiled.table.notes;
    for note in notes {
        assert!(kinds.iter().any(|k| note.contains(k)), "{note}");
    }
    for kind in kinds {
        assert!(notes.iter().any(|n| n.contains(kind)), "no note {kind:?}");
    }
}

#[test]
fn node_ports_are_unique_until_they_run_out() {
    let gen = Synthetic::new(100_000, 1).mixed();
    let ports: Vec<(usize, u16)> = (0..gen.services)
        .filter_map(|i| Some((i, gen.node_port(i)?)))
        .collect();
    assert_eq!(ports.len(), NODE_PORTS.len());
    assert_eq!(&ports[..3], &[(0, 30000), (5, 30001), (7, 30002)]);
    assert!(ports.windows(2).all(|w| w[1].1 == w[0].1 + 1));
    let (last, port) = *ports.last().unwrap();
    assert_eq!(port, *NODE_PORTS.end());
    assert!((8_700..8_900).contains(&last), "{last}");
    // Later, NodePort Services stay ClusterIP, load balancers have no NodePort.
    assert_eq!(gen.service_type(last + 5 - last % 5), "ClusterIP");
    assert_eq!(gen.service_type(14_000), "LoadBalancer");
    assert_eq!(gen.node_port(14_000), None);
    assert!(!gen.is_external_local(last + 40 - last % 20));
    assert!(gen.is_external_local(14_000));
}

#[test]
fn mixed_cluster_compiles_whole_past_the_node_ports() {
    let gen = Synthetic::new(9_500, 1).mixed();
    let compiled = compile_clean(&gen.objects(), &node_facts());
    let lbs = count(gen.services, |i| gen.is_load_balancer(i));
    let v4 = gen.services + NODE_PORTS.len() + lbs;
    assert_eq!(elements(&compiled, "service-ports-v4"), v4);
}

#[test]
fn addresses_are_the_documented_ones() {
    let gen = Synthetic::new(1000, 3);
    assert_eq!(gen.cluster_ip(0), Ipv4Addr::new(10, 96, 0, 1));
    assert_eq!(gen.cluster_ip(1_048_572), Ipv4Addr::new(10, 111, 255, 253));
    assert_eq!(gen.endpoint_ip(0, 0), Ipv4Addr::new(10, 128, 0, 1));
    assert_eq!(gen.endpoint_ip(0, 1), Ipv4Addr::new(10, 128, 3, 233));
    assert_eq!(
        gen.cluster_ip_v6(0),
        "fd00:10:96::1".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(
        gen.load_balancer_ip(99_999),
        Ipv4Addr::new(100, 65, 134, 160)
    );
    assert_eq!(gen.terminating_ip(6, false), IpAddr::from([10, 160, 0, 7]));
    assert_eq!(
        gen.terminating_ip(6, true),
        "fd00:10:128:0:8000::7".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn one_more_endpoint_touches_one_service() {
    let node = node_facts();
    // In the mix, Service 20 is a TCP NodePort with externalTrafficPolicy Local.
    for (gen, changed) in [
        (Synthetic::new(50, 3), 25),
        (Synthetic::new(50, 3).mixed(), 20),
    ] {
        let old = compile_clean(&gen.objects(), &node);
        let new = compile_clean(&gen.with_endpoints(changed, 4), &node);
        let text = svc_nft_ir::diff(&old.table, &new.table).to_string();
        let vip = gen.cluster_ip(changed).to_string();
        let added = gen.endpoint_ip(changed, 3);
        assert!(text.contains(&vip), "{text}");
        assert!(text.contains(&added.to_string()), "{text}");
        assert!(text.contains("pick-v4-tcp-4"), "{text}");
        // Nothing about any other Service.
        for other in [changed - 1, changed + 1] {
            assert!(!text.contains(&gen.cluster_ip(other).to_string()), "{text}");
        }
        let slot = new.table.sets["endpoints-v4-tcp"]
            .elements
            .iter()
            .find(|(k, _)| k[0] == Value::Ipv4(gen.cluster_ip(changed)) && k[2] == Value::Int(3))
            .map(|(_, e)| e.data.clone());
        assert_eq!(
            slot,
            Some(Some(Data::Values(vec![
                Value::Ipv4(added),
                Value::Port(TARGET_PORT)
            ])))
        );
    }
}

#[test]
fn deterministic() {
    let node = node_facts();
    let a = compile_clean(&Synthetic::new(30, 3).mixed().objects(), &node);
    let b = compile_clean(&Synthetic::new(30, 3).mixed().objects(), &node);
    assert_eq!(
        svc_nft_ir::replace_script(&a.table),
        svc_nft_ir::replace_script(&b.table)
    );
}

#[test]
fn features_name_the_mix() {
    let gen = Synthetic::new(1000, 3).mixed();
    assert_eq!(gen.features(1), ["UDP"]);
    assert_eq!(gen.features(5), ["TCP", "NodePort 30001", "eTP Local"]);
    assert_eq!(
        gen.features(0),
        [
            "TCP",
            "dual-stack",
            "LoadBalancer",
            "NodePort 30000",
            "eTP Local",
            "iTP Local",
            "source ranges",
            "ClientIP affinity",
            "terminating endpoint",
            "zone hints"
        ]
    );
    assert_eq!(Synthetic::new(1000, 3).features(0), ["TCP"]);
}
