//! ClusterIP semantics proven by packets: the real `svc-nft compile` output is loaded into a
//! node namespace, and clients inside and outside the cluster CIDR connect through it.
//!
//! Every test builds its own [`Cluster`] (see `netns/cluster.rs`); b3's endpoint is never
//! ready here.

mod netns;

use netns::cluster::{answers, ip, Cluster, CIDRS};
use netns::{tcp, udp, Outcome};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(1);
/// A dropped packet is one nobody answers; this long is enough to be sure.
const DROP_WAIT: Duration = Duration::from_millis(700);
const FLAGS: &[&str] = CIDRS;

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The services every test loads: names are documented where they are used.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIPs: [10.96.0.50, "fd00:96::50"]
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.244.1.2]
- addresses: [10.244.3.2]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8081}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.244.2.2]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: ["fd00:244:1::2"]
---
apiVersion: v1
kind: Service
metadata: {name: solo, namespace: shop}
spec:
  clusterIPs: [10.96.0.60, "fd00:96::60"]
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: solo, namespace: shop}
subsets:
- addresses: [{ip: 10.244.1.2}, {ip: "fd00:244:1::2"}]
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  selector: {app: nothing}
  clusterIPs: [10.96.0.70, "fd00:96::70"]
  ports: [{port: 80, name: http}, {port: 53, name: dns, protocol: UDP}]
"#;

#[test]
fn pod_traffic_reaches_every_ready_backend_unmasqueraded() {
    if !netns::require() {
        return;
    }
    let node = Cluster::new(MANIFESTS, FLAGS);
    let c1 = node.ns(node.c1);
    // b1 listens on 8080 and b2 on 8081 for the same named port "http"; b3 is not ready.
    let seen = node.agrees(Some(node.c1), "10.96.0.50:80", 40);
    let expected = BTreeSet::from([
        (ip("10.244.1.2"), ip("10.244.9.2")),
        (ip("10.244.2.2"), ip("10.244.9.2")),
    ]);
    assert_eq!(seen, expected);
    let seen = answers(40, || udp(c1, sock("10.96.0.50:53"), T));
    assert_eq!(seen, expected, "UDP");
}

#[test]
fn off_cluster_clients_are_masqueraded() {
    if !netns::require() {
        return;
    }
    let node = Cluster::new(MANIFESTS, FLAGS);
    let x1 = node.ns(node.x1);
    // The backend sees the node's address on its own link, not 198.51.100.2.
    let seen = node.agrees(Some(node.x1), "10.96.0.50:80", 30);
    let expected = BTreeSet::from([
        (ip("10.244.1.2"), ip("10.244.1.1")),
        (ip("10.244.2.2"), ip("10.244.2.1")),
    ]);
    assert_eq!(seen, expected);
    let seen = answers(3, || udp(x1, sock("[fd00:96::50]:53"), T));
    let v6 = BTreeSet::from([(ip("fd00:244:1::2"), ip("fd00:244:1::1"))]);
    assert_eq!(seen, v6, "UDP over IPv6");
}

#[test]
fn ipv6_cluster_ip_of_a_dual_stack_service() {
    if !netns::require() {
        return;
    }
    let node = Cluster::new(MANIFESTS, FLAGS);
    let seen = node.agrees(Some(node.c1), "[fd00:96::50]:80", 5);
    let expected = BTreeSet::from([(ip("fd00:244:1::2"), ip("fd00:244:9::2"))]);
    assert_eq!(seen, expected);
}

#[test]
fn selectorless_service_uses_its_v1_endpoints() {
    if !netns::require() {
        return;
    }
    let node = Cluster::new(MANIFESTS, FLAGS);
    for vip in ["10.96.0.60:80", "[fd00:96::60]:80"] {
        let seen = node.agrees(Some(node.c1), vip, 3);
        let backend = if vip.starts_with('[') {
            (ip("fd00:244:1::2"), ip("fd00:244:9::2"))
        } else {
            (ip("10.244.1.2"), ip("10.244.9.2"))
        };
        assert_eq!(seen, BTreeSet::from([backend]), "{vip}");
    }
}

#[test]
fn hairpin_traffic_is_masqueraded() {
    if !netns::require() {
        return;
    }
    let node = Cluster::new(MANIFESTS, FLAGS);
    // solo's only endpoint is b1; b1 calling solo reaches itself, from the node's address.
    let v4 = node.agrees(Some(node.b1), "10.96.0.60:80", 3);
    assert_eq!(v4, BTreeSet::from([(ip("10.244.1.2"), ip("10.244.1.1"))]));
    let v6 = node.agrees(Some(node.b1), "[fd00:96::60]:80", 3);
    assert_eq!(
        v6,
        BTreeSet::from([(ip("fd00:244:1::2"), ip("fd00:244:1::1"))])
    );
}

#[test]
fn no_endpoints_and_unknown_ports_are_rejected_at_once() {
    if !netns::require() {
        return;
    }
    let node = Cluster::new(MANIFESTS, FLAGS);
    for client in [node.c1, node.x1] {
        let ns = node.ns(client);
        for vip in [
            "10.96.0.70:80",      // Service without endpoints
            "[fd00:96::70]:80",   // the same, IPv6
            "10.96.0.50:81",      // a cluster IP, but not one of its ports
            "[fd00:96::50]:8080", // the same, IPv6
        ] {
            let start = Instant::now();
            assert_eq!(tcp(ns, sock(vip), T), Outcome::Refused, "TCP {vip}");
            assert!(
                start.elapsed() < T / 2,
                "{vip}: refused only after {:?}",
                start.elapsed()
            );
        }
        for vip in ["10.96.0.70:53", "[fd00:96::70]:53"] {
            assert_eq!(udp(ns, sock(vip), T), Outcome::Refused, "UDP {vip}");
        }
    }
}

#[test]
fn unowned_service_cidr_addresses_are_dropped() {
    if !netns::require() {
        return;
    }
    let node = Cluster::new(MANIFESTS, FLAGS);
    let c1 = node.ns(node.c1);
    for vip in ["10.96.0.99:80", "[fd00:96::99]:80"] {
        assert_eq!(tcp(c1, sock(vip), DROP_WAIT), Outcome::Timeout, "{vip}");
    }
}

#[test]
fn masquerade_all_masquerades_pod_traffic_too() {
    if !netns::require() {
        return;
    }
    let mut flags = FLAGS.to_vec();
    flags.push("--masquerade-all");
    let node = Cluster::new(MANIFESTS, &flags);
    let seen = node.agrees(Some(node.c1), "10.96.0.60:80", 3);
    assert_eq!(seen, BTreeSet::from([(ip("10.244.1.2"), ip("10.244.1.1"))]));
}

#[test]
fn node_itself_reaches_cluster_ips() {
    if !netns::require() {
        return;
    }
    let node = Cluster::new(MANIFESTS, FLAGS);
    let n = &node.lab.node;
    // From the node, the source is a node address (outside the cluster CIDR): masqueraded to
    // the address facing the backend, which is the same here.
    let seen = node.agrees(None, "10.96.0.60:80", 3);
    assert_eq!(seen, BTreeSet::from([(ip("10.244.1.2"), ip("10.244.1.1"))]));
    assert_eq!(tcp(n, sock("10.96.0.70:80"), T), Outcome::Refused);
}

#[test]
fn examples_load_into_a_fresh_namespace() {
    if !netns::require() {
        return;
    }
    let ns = netns::Netns::new("examples");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let out = Command::new(env!("CARGO_BIN_EXE_svc-nft"))
        .args(["compile", "-f", examples])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    ns.nft(&script).expect("examples load");
    // Loading again replaces the table in one transaction, without error.
    ns.nft(&script).expect("examples load a second time");
}

#[test]
fn every_golden_ruleset_loads() {
    if !netns::require() {
        return;
    }
    let ns = netns::Netns::new("goldens");
    let mut loaded = 0;
    for case in netns::inputs::golden_cases() {
        let path = case.join("expected.nft");
        let script = std::fs::read_to_string(&path).unwrap();
        ns.nft(&script)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        loaded += 1;
    }
    assert!(loaded > 10, "only {loaded} golden rulesets found");
}
