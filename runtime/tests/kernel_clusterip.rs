//! ClusterIP semantics proven by packets: the real `svc-nft compile` output is loaded into a
//! node namespace, and clients inside and outside the cluster CIDR connect through it.
//!
//! Topology (every test builds its own):
//! - node: forwards between all hosts, holds the svc-nft table;
//! - b1, b2, b3: backends in the pod network 10.244.N.2 / fd00:244:N::2 (b3's endpoint is
//!   never ready);
//! - c1: a pod client, 10.244.9.2 (inside --cluster-cidr);
//! - x1: an off-cluster client, 198.51.100.2 / 2001:db8:51::2 (also the node's default route).

mod netns;

use netns::{tcp, udp, Lab, Outcome, Proto};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(1);
/// A dropped packet is one nobody answers; this long is enough to be sure.
const DROP_WAIT: Duration = Duration::from_millis(700);
const FLAGS: &[&str] = &[
    "--cluster-cidr",
    "10.244.0.0/16,fd00:244::/32",
    "--service-cidr",
    "10.96.0.0/16,fd00:96::/112",
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

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
  ports: [{port: 80}, {port: 53, protocol: UDP}]
"#;

struct Node {
    lab: Lab,
    b1: usize,
    c1: usize,
    x1: usize,
}

impl Node {
    /// Build the topology, start the backends, compile MANIFESTS with `flags` and load them.
    fn new(flags: &[&str]) -> Node {
        let mut lab = Lab::new();
        let mut backend = |n: u8| {
            let i = lab.add_host(
                &format!("b{n}"),
                &format!("10.244.{n}.2/24"),
                &format!("10.244.{n}.1"),
                &format!("fd00:244:{n}::2/64"),
                &format!("fd00:244:{n}::1"),
            );
            for port in [8080, 8081] {
                lab.serve(i, Proto::Tcp, port);
            }
            lab.serve(i, Proto::Udp, 5353);
            i
        };
        let (b1, _, _) = (backend(1), backend(2), backend(3));
        let c1 = lab.add_host(
            "c1",
            "10.244.9.2/24",
            "10.244.9.1",
            "fd00:244:9::2/64",
            "fd00:244:9::1",
        );
        let x1 = lab.add_host(
            "x1",
            "198.51.100.2/24",
            "198.51.100.1",
            "2001:db8:51::2/64",
            "2001:db8:51::1",
        );
        // Locally generated packets are routed before the nat output hook sees them.
        lab.node.ip("route add default via 198.51.100.2");
        lab.node.ip("-6 route add default via 2001:db8:51::2");
        let node = Node { lab, b1, c1, x1 };
        node.load(MANIFESTS, flags);
        node
    }

    fn load(&self, manifests: &str, flags: &[&str]) {
        let script = compile(manifests, flags);
        self.lab
            .node
            .nft(&script)
            .unwrap_or_else(|e| panic!("nft rejected the compiled ruleset: {e}\n{script}"));
    }

    fn ns(&self, host: usize) -> &netns::Netns {
        &self.lab.host(host).ns
    }
}

/// Run the real binary: `svc-nft compile -f - FLAGS` with the manifests on stdin.
fn compile(manifests: &str, flags: &[&str]) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_svc-nft"))
        .args(["compile", "-f", "-"])
        .args(flags)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run svc-nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifests.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "svc-nft compile failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Connect `n` times; return the set of (backend, peer) pairs that answered. Panics on any
/// other outcome.
fn answers(n: usize, connect: impl Fn() -> Outcome) -> BTreeSet<(IpAddr, IpAddr)> {
    (0..n)
        .map(|_| match connect() {
            Outcome::Answered { backend, peer } => (backend, peer),
            other => panic!("expected an answer, got {other:?}"),
        })
        .collect()
}

#[test]
fn pod_traffic_reaches_every_ready_backend_unmasqueraded() {
    if !netns::require() {
        return;
    }
    let node = Node::new(FLAGS);
    let c1 = node.ns(node.c1);
    // b1 listens on 8080 and b2 on 8081 for the same named port "http"; b3 is not ready.
    let seen = answers(40, || tcp(c1, sock("10.96.0.50:80"), T));
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
    let node = Node::new(FLAGS);
    let x1 = node.ns(node.x1);
    // The backend sees the node's address on its own link, not 198.51.100.2.
    let seen = answers(30, || tcp(x1, sock("10.96.0.50:80"), T));
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
    let node = Node::new(FLAGS);
    let c1 = node.ns(node.c1);
    let seen = answers(5, || tcp(c1, sock("[fd00:96::50]:80"), T));
    let expected = BTreeSet::from([(ip("fd00:244:1::2"), ip("fd00:244:9::2"))]);
    assert_eq!(seen, expected);
}

#[test]
fn selectorless_service_uses_its_v1_endpoints() {
    if !netns::require() {
        return;
    }
    let node = Node::new(FLAGS);
    let c1 = node.ns(node.c1);
    for vip in ["10.96.0.60:80", "[fd00:96::60]:80"] {
        let seen = answers(3, || tcp(c1, sock(vip), T));
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
    let node = Node::new(FLAGS);
    // solo's only endpoint is b1; b1 calling solo reaches itself, from the node's address.
    let b1 = node.ns(node.b1);
    let v4 = answers(3, || tcp(b1, sock("10.96.0.60:80"), T));
    assert_eq!(v4, BTreeSet::from([(ip("10.244.1.2"), ip("10.244.1.1"))]));
    let v6 = answers(3, || tcp(b1, sock("[fd00:96::60]:80"), T));
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
    let node = Node::new(FLAGS);
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
    let node = Node::new(FLAGS);
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
    let node = Node::new(&flags);
    let c1 = node.ns(node.c1);
    let seen = answers(3, || tcp(c1, sock("10.96.0.60:80"), T));
    assert_eq!(seen, BTreeSet::from([(ip("10.244.1.2"), ip("10.244.1.1"))]));
}

#[test]
fn node_itself_reaches_cluster_ips() {
    if !netns::require() {
        return;
    }
    let node = Node::new(FLAGS);
    let n = &node.lab.node;
    // From the node, the source is a node address (outside the cluster CIDR): masqueraded to
    // the address facing the backend, which is the same here.
    let seen = answers(3, || tcp(n, sock("10.96.0.60:80"), T));
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
