//! Inputs the fuzzers in fuzz/ found (fuzz/README.md), minimised. The `rulesets` target has
//! the kernel check each ruleset (`nft -c`); these tests check, without a kernel, the property
//! that the kernel refused.

use svc_nft_compiler::{compile, parse, NodeFacts};
use svc_nft_ir::{replace_script, SetFlag, Table, Value};

/// Whether two key components can match the same packet field.
fn meet(a: &Value, b: &Value) -> bool {
    let net = |v: &Value| match v {
        Value::Prefix(n) => Some(*n),
        Value::Ipv4(ip) => Some(ipnet::IpNet::from(std::net::IpAddr::V4(*ip))),
        Value::Ipv6(ip) => Some(ipnet::IpNet::from(std::net::IpAddr::V6(*ip))),
        _ => None,
    };
    match (net(a), net(b)) {
        (Some(x), Some(y)) => x.contains(&y.network()) || y.contains(&x.network()),
        _ => a == b,
    }
}

/// Pairs of elements of an interval set that overlap: the kernel refuses the whole
/// transaction for one ("Could not process rule: File exists").
fn overlaps(table: &Table) -> Vec<String> {
    let mut out = Vec::new();
    for (name, set) in &table.sets {
        if !set.flags.contains(&SetFlag::Interval) {
            continue;
        }
        let keys: Vec<_> = set.elements.keys().collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                if a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| meet(x, y)) {
                    out.push(format!("{name}: {a:?} overlaps {b:?}"));
                }
            }
        }
    }
    out
}

/// A node with this one IP (`--node-ip`).
fn node_ip(ip: &str) -> NodeFacts {
    NodeFacts {
        node_ips: vec![ip.parse().unwrap()],
        ..NodeFacts::default()
    }
}

fn loads(manifests: &str, node: &NodeFacts) {
    let (objects, diagnostics) = parse("fuzz.yaml", manifests);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let compiled = compile(&objects, node);
    assert!(
        compiled.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        compiled.diagnostics
    );
    let overlaps = overlaps(&compiled.table);
    assert!(
        overlaps.is_empty(),
        "{overlaps:#?}\n{}",
        replace_script(&compiled.table)
    );
}

/// A LoadBalancer Service with `ranges` and one ingress IP, and one endpoint.
fn load_balancer(cluster_ip: &str, ranges: &str, ingress: &str, endpoint: &str) -> String {
    let family = if endpoint.contains(':') {
        "IPv6"
    } else {
        "IPv4"
    };
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: s0}}
spec:
  type: LoadBalancer
  clusterIP: {cluster_ip}
  ports: [{{port: 80, nodePort: 30080}}]
  loadBalancerSourceRanges: [{ranges}]
status:
  loadBalancer:
    ingress: [{{ip: {ingress}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s0-a, labels: {{kubernetes.io/service-name: s0}}}}
addressType: {family}
ports: [{{port: 80}}]
endpoints: [{{addresses: [{endpoint}]}}]
"
    )
}

/// What the checks below rely on: separate ranges, none holding a node IP, load.
#[test]
fn separate_source_ranges() {
    let manifests = load_balancer(
        "10.96.0.10",
        "10.0.0.0/16, 10.1.0.0/16, 198.51.100.0/24",
        "198.51.100.200",
        "10.244.1.2",
    );
    loads(&manifests, &node_ip("192.0.2.1"));
}

/// fuzz `rulesets`: overlapping loadBalancerSourceRanges (the API server allows them) become
/// overlapping elements of `lb-sources-v4`,
/// `198.51.100.200 . tcp . 80 . 10.0.0.0/8` and `198.51.100.200 . tcp . 80 . 10.1.0.0/16`,
/// and `nft -f` refuses the whole ruleset: "Could not process rule: File exists".
#[test]
fn overlapping_source_ranges() {
    let manifests = load_balancer(
        "10.96.0.10",
        "10.0.0.0/8, 10.1.0.0/16",
        "198.51.100.200",
        "10.244.1.2",
    );
    loads(&manifests, &NodeFacts::default());
}

/// fuzz `rulesets`: a source range that holds a node IP admits the load-balancer IPs too,
/// each as a /32 (/128) element; when the range also holds the load-balancer IP, that element
/// overlaps the range's (`198.51.100.200 . tcp . 80 . 198.51.100.0/24` and
/// `… . 198.51.100.200/32`): "File exists" again.
#[test]
fn source_range_holding_the_node_ip_and_the_load_balancer_ip() {
    let manifests = load_balancer(
        "10.96.0.10",
        "198.51.100.0/24",
        "198.51.100.200",
        "10.244.1.2",
    );
    loads(&manifests, &node_ip("198.51.100.1"));
}

/// The same over IPv6, as the fuzzer first found it: 2001:da0::/27 holds both the node IP
/// 2001:db8:51::1 and the load-balancer IP 2001:db8:1b::4.
#[test]
fn source_range_holding_the_node_ip_and_the_load_balancer_ip_v6() {
    let manifests = load_balancer(
        "fd00:96::2",
        "2001:da0::/27",
        "2001:db8:1b::4",
        "fd00:244::1:b0b",
    );
    loads(&manifests, &node_ip("2001:db8:51::1"));
}
