//! NodePorts, load-balancer and external IPs, traffic policies, endpoint conditions, topology
//! (zone and node hints) and session affinity, proven by packets (fixture: `netns/cluster.rs`).
//! This node is `node-a` in `zone-a` with IPs 198.51.100.1 and 2001:db8:51::1; b1's endpoints
//! are on this node, b2's and b3's on others.

mod netns;

use netns::cluster::{answers, ip, pairs, service, Cluster, B1, B1_V6, B2, B2_V6, CIDRS};
use netns::{tcp, Outcome};
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(1);
const DROP_WAIT: Duration = Duration::from_millis(700);

fn flags() -> Vec<&'static str> {
    let node = [
        "--node-name",
        "node-a",
        "--node-zone",
        "zone-a",
        "--node-ip",
        "198.51.100.1,2001:db8:51::1",
    ];
    CIDRS.iter().chain(&node).copied().collect()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn manifests() -> String {
    manifests_with_sticky(&[B1, B2])
}

/// b1, b3 and b2, and the hints the EndpointSlice controller gives them for a PreferSameNode
/// Service: b1 is on this node (node-a), b3 on node-c in this zone, b2 on node-b in zone-b.
const NEAR_V4: [&str; 3] = ["10.244.1.2", "10.244.3.2", "10.244.2.2"];
const NEAR_V6: [&str; 3] = [
    "\"fd00:244:1::2\"",
    "\"fd00:244:3::2\"",
    "\"fd00:244:2::2\"",
];
const NEAR: [(&str, &str); 3] = [
    ("node-a", "zone-a"),
    ("node-c", "zone-a"),
    ("node-b", "zone-b"),
];

/// The endpoints at `addresses` on the nodes and zones of `placement`, hinted for them.
fn hinted(addresses: &[&str], placement: &[(&str, &str)]) -> String {
    let endpoint = |(address, (node, zone)): (&&str, &(&str, &str))| {
        let hints = format!("{{forNodes: [{{name: {node}}}], forZones: [{{name: {zone}}}]}}");
        format!("{{addresses: [{address}], nodeName: {node}, hints: {hints}}}")
    };
    let endpoints: Vec<String> = addresses.iter().zip(placement).map(endpoint).collect();
    endpoints.join(", ")
}

/// The manifests, with `sticky`'s IPv4 endpoints given.
fn manifests_with_sticky(sticky: &[&str]) -> String {
    let dual = |v4: &str, v6: &str| format!("clusterIPs: [{v4}, \"{v6}\"]");
    let lb = |ips: &str| format!("status: {{loadBalancer: {{ingress: [{ips}]}}}}");
    [
        service(
            "np",
            &format!("{{type: NodePort, {}, ports: [{{port: 80, targetPort: 8080, nodePort: 30001}}]}}", dual("10.96.1.1", "fd00:96::101")),
            "",
            &[B1, B2],
            &[B1_V6, B2_V6],
        ),
        service(
            "local",
            &format!("{{type: LoadBalancer, externalTrafficPolicy: Local, {}, ports: [{{port: 80, nodePort: 30002}}]}}", dual("10.96.1.2", "fd00:96::102")),
            &lb("{ip: 203.0.113.2}, {ip: \"2001:db8:113::2\", ipMode: VIP}"),
            &[B1, B2],
            &[B1_V6, B2_V6],
        ),
        service(
            "away",
            &format!("{{type: NodePort, externalTrafficPolicy: Local, {}, ports: [{{port: 80, nodePort: 30003}}]}}", dual("10.96.1.3", "fd00:96::103")),
            "",
            &[B2],
            &[B2_V6],
        ),
        service(
            "fw",
            &format!("{{type: LoadBalancer, {}, loadBalancerSourceRanges: [198.51.100.0/24, \"2001:db8:51::/64\"], ports: [{{port: 80, nodePort: 30004}}]}}", dual("10.96.1.4", "fd00:96::104")),
            &lb("{ip: 203.0.113.4}, {ip: 203.0.113.5, ipMode: Proxy}, {ip: \"2001:db8:113::4\"}"),
            &[B1],
            &[B1_V6],
        ),
        service("ext", "{clusterIP: 10.96.1.6, externalIPs: [203.0.113.6], ports: [{port: 80}]}", "", &[B1], &[]),
        service("itp", &format!("{{internalTrafficPolicy: Local, {}, ports: [{{port: 80}}]}}", dual("10.96.1.7", "fd00:96::107")), "", &[B1, B2], &[B1_V6, B2_V6]),
        service("itp-away", &format!("{{internalTrafficPolicy: Local, {}, ports: [{{port: 80}}]}}", dual("10.96.1.8", "fd00:96::108")), "", &[B2], &[B2_V6]),
        service(
            "term",
            &format!("{{{}, ports: [{{port: 80}}]}}", dual("10.96.1.9", "fd00:96::109")),
            "",
            &["{addresses: [10.244.3.2], conditions: {ready: false, serving: true, terminating: true}}"],
            &["{addresses: [\"fd00:244:3::2\"], conditions: {ready: false, serving: true, terminating: true}}"],
        ),
        service(
            "dead",
            &format!("{{{}, ports: [{{port: 80}}]}}", dual("10.96.1.10", "fd00:96::110")),
            "",
            &["{addresses: [10.244.3.2], conditions: {ready: false, serving: false, terminating: true}}"],
            &["{addresses: [\"fd00:244:3::2\"], conditions: {ready: false, serving: false, terminating: true}}"],
        ),
        service(
            "zoned",
            &format!("{{{}, ports: [{{port: 80}}]}}", dual("10.96.1.11", "fd00:96::111")),
            "",
            &[
                "{addresses: [10.244.1.2], hints: {forZones: [{name: zone-a}]}}",
                "{addresses: [10.244.2.2], hints: {forZones: [{name: zone-b}]}}",
            ],
            &[
                "{addresses: [\"fd00:244:1::2\"], hints: {forZones: [{name: zone-a}]}}",
                "{addresses: [\"fd00:244:2::2\"], hints: {forZones: [{name: zone-b}]}}",
            ],
        ),
        service(
            "near",
            &format!("{{trafficDistribution: PreferSameNode, {}, ports: [{{port: 80}}]}}", dual("10.96.1.13", "fd00:96::113")),
            "",
            &[&hinted(&NEAR_V4, &NEAR)],
            &[&hinted(&NEAR_V6, &NEAR)],
        ),
        service(
            "node-elsewhere",
            &format!("{{trafficDistribution: PreferSameNode, {}, ports: [{{port: 80}}]}}", dual("10.96.1.14", "fd00:96::114")),
            "",
            &[&hinted(&NEAR_V4[1..], &NEAR[1..])],
            &[&hinted(&NEAR_V6[1..], &NEAR[1..])],
        ),
        service(
            "sticky",
            &format!("{{sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}, {}, ports: [{{port: 80}}]}}", dual("10.96.1.12", "fd00:96::112")),
            "",
            sticky,
            &[B1_V6, B2_V6],
        ),
    ]
    .concat()
}

#[test]
fn nodeports_and_external_ips_reach_all_endpoints_masqueraded() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new(&manifests(), &flags());
    let both = pairs(&[("10.244.1.2", "10.244.1.1"), ("10.244.2.2", "10.244.2.1")]);
    assert_eq!(k.agrees(Some(k.x1), "198.51.100.1:30001", 30), both);
    let v6 = pairs(&[
        ("fd00:244:1::2", "fd00:244:1::1"),
        ("fd00:244:2::2", "fd00:244:2::1"),
    ]);
    assert_eq!(k.agrees(Some(k.x1), "[2001:db8:51::1]:30001", 30), v6);
    let b1 = pairs(&[("10.244.1.2", "10.244.1.1")]);
    assert_eq!(k.agrees(Some(k.x1), "203.0.113.6:80", 3), b1, "externalIP");
    // A NodePort is not open on addresses that are not node IPs: the node itself refuses.
    let on_pod_link = tcp(k.ns(k.c1), sock("10.244.9.1:30001"), T);
    assert_eq!(on_pod_link, Outcome::Refused);
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new(&manifests(), &flags());
    // Only b1 is on this node; the client address reaches it unchanged.
    for fe in ["203.0.113.2:80", "198.51.100.1:30002"] {
        let seen = k.agrees(Some(k.x1), fe, 12);
        assert_eq!(seen, pairs(&[("10.244.1.2", "198.51.100.2")]), "{fe}");
    }
    let v6 = k.agrees(Some(k.x1), "[2001:db8:113::2]:80", 12);
    assert_eq!(v6, pairs(&[("fd00:244:1::2", "2001:db8:51::2")]));
    // Pods are short-circuited to every endpoint, and keep their address.
    let seen = k.agrees(Some(k.c1), "203.0.113.2:80", 30);
    assert_eq!(
        seen,
        pairs(&[("10.244.1.2", "10.244.9.2"), ("10.244.2.2", "10.244.9.2")])
    );
    // The node itself too, masqueraded.
    let seen = k.agrees(None, "203.0.113.2:80", 30);
    assert_eq!(
        seen,
        pairs(&[("10.244.1.2", "10.244.1.1"), ("10.244.2.2", "10.244.2.1")])
    );
}

#[test]
fn external_traffic_policy_local_without_local_endpoints_drops() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new(&manifests(), &flags());
    assert_eq!(
        tcp(k.ns(k.x1), sock("198.51.100.1:30003"), DROP_WAIT),
        Outcome::Timeout
    );
    let seen = k.agrees(Some(k.c1), "198.51.100.1:30003", 3);
    assert_eq!(
        seen,
        pairs(&[("10.244.2.2", "10.244.9.2")]),
        "pods are short-circuited"
    );
}

#[test]
fn load_balancer_source_ranges_filter_only_the_load_balancer_ip() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new(&manifests(), &flags());
    let b1 = |peer: &str| pairs(&[("10.244.1.2", peer)]);
    assert_eq!(k.agrees(Some(k.x1), "203.0.113.4:80", 3), b1("10.244.1.1"));
    assert_eq!(
        tcp(k.ns(k.x2), sock("203.0.113.4:80"), DROP_WAIT),
        Outcome::Timeout
    );
    // NodePorts bypass loadBalancerSourceRanges.
    assert_eq!(
        k.agrees(Some(k.x2), "198.51.100.1:30004", 3),
        b1("10.244.1.1")
    );
    // ipMode: Proxy addresses are the load balancer's business, not the node's.
    assert!(!matches!(
        tcp(k.ns(k.x1), sock("203.0.113.5:80"), DROP_WAIT),
        Outcome::Answered { .. }
    ));
}

#[test]
fn internal_traffic_policy_local() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new(&manifests(), &flags());
    let c1 = k.ns(k.c1);
    assert_eq!(
        k.agrees(Some(k.c1), "10.96.1.7:80", 12),
        pairs(&[("10.244.1.2", "10.244.9.2")])
    );
    assert_eq!(
        tcp(c1, sock("10.96.1.8:80"), DROP_WAIT),
        Outcome::Timeout,
        "no local endpoint: DROP"
    );
}

#[test]
fn endpoint_conditions_and_topology() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new(&manifests(), &flags());
    let c1 = k.ns(k.c1);
    // Not ready, but serving and terminating: used when nothing is ready.
    assert_eq!(
        k.agrees(Some(k.c1), "10.96.1.9:80", 3),
        pairs(&[("10.244.3.2", "10.244.9.2")])
    );
    // Not serving: never used; with nothing else the Service refuses.
    assert_eq!(tcp(c1, sock("10.96.1.10:80"), T), Outcome::Refused);
    // Zone hints: only the endpoint for this node's zone.
    assert_eq!(
        k.agrees(Some(k.c1), "10.96.1.11:80", 12),
        pairs(&[("10.244.1.2", "10.244.9.2")])
    );
    // Node hints first: only the endpoint for this node, though b3 is in this zone too.
    assert_eq!(
        k.agrees(Some(k.c1), "10.96.1.13:80", 12),
        pairs(&[("10.244.1.2", "10.244.9.2")])
    );
    // None for this node: the zone hints decide.
    assert_eq!(
        k.agrees(Some(k.c1), "10.96.1.14:80", 12),
        pairs(&[("10.244.3.2", "10.244.9.2")])
    );
}

#[test]
fn session_affinity_pins_each_client() {
    if !netns::require() {
        return;
    }
    let mut k = Cluster::new(&manifests(), &flags());
    for (client, vip) in [
        (k.c1, "10.96.1.12:80"),
        (k.x1, "10.96.1.12:80"),
        (k.c1, "[fd00:96::112]:80"),
    ] {
        // Not `agrees`: explain shows a first connection's candidates, affinity pins later ones.
        let seen = answers(12, || tcp(k.ns(client), sock(vip), T));
        assert_eq!(
            seen.len(),
            1,
            "{vip}: one backend for one client, got {seen:?}"
        );
    }
    // The endpoint a client is pinned to goes away: its clients move to the one left.
    let pinned = answers(1, || tcp(k.ns(k.c1), sock("10.96.1.12:80"), T));
    let (gone, _) = *pinned.iter().next().unwrap();
    let left = if gone == ip("10.244.1.2") { B2 } else { B1 };
    k.reload(&manifests_with_sticky(&[left]));
    let after = answers(6, || tcp(k.ns(k.c1), sock("10.96.1.12:80"), T));
    assert!(
        after.iter().all(|(b, _)| *b != gone),
        "still sent to the removed endpoint: {after:?}"
    );
}

#[test]
fn the_same_over_ipv6() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new(&manifests(), &flags());
    let b1 = |peer: &str| pairs(&[("fd00:244:1::2", peer)]);
    // externalTrafficPolicy Local without a local endpoint: external DROP, pods get through.
    let x1 = Some(k.x1);
    assert!(k.agrees(x1, "[2001:db8:51::1]:30003", 1).is_empty(), "DROP");
    let pod = k.agrees(Some(k.c1), "[2001:db8:51::1]:30003", 3);
    assert_eq!(pod, pairs(&[("fd00:244:2::2", "fd00:244:9::2")]));
    // Source ranges: x1's network is admitted, x2's dropped; the NodePort is not filtered.
    assert_eq!(k.agrees(x1, "[2001:db8:113::4]:80", 3), b1("fd00:244:1::1"));
    assert!(
        k.agrees(Some(k.x2), "[2001:db8:113::4]:80", 1).is_empty(),
        "DROP"
    );
    assert_eq!(
        k.agrees(Some(k.x2), "[2001:db8:51::1]:30004", 3),
        b1("fd00:244:1::1")
    );
    // internalTrafficPolicy Local: the local endpoint only; DROP without one.
    let c1 = Some(k.c1);
    assert_eq!(k.agrees(c1, "[fd00:96::107]:80", 12), b1("fd00:244:9::2"));
    assert!(k.agrees(c1, "[fd00:96::108]:80", 1).is_empty(), "DROP");
    // Serving and terminating used when nothing is ready; not serving: REJECT.
    let term = k.agrees(c1, "[fd00:96::109]:80", 3);
    assert_eq!(term, pairs(&[("fd00:244:3::2", "fd00:244:9::2")]));
    assert_eq!(
        tcp(k.ns(k.c1), sock("[fd00:96::110]:80"), T),
        Outcome::Refused
    );
    // Zone hints; node hints before them; zone hints when none is for this node.
    assert_eq!(k.agrees(c1, "[fd00:96::111]:80", 12), b1("fd00:244:9::2"));
    assert_eq!(k.agrees(c1, "[fd00:96::113]:80", 12), b1("fd00:244:9::2"));
    let b3 = pairs(&[("fd00:244:3::2", "fd00:244:9::2")]);
    assert_eq!(k.agrees(c1, "[fd00:96::114]:80", 12), b3);
}
