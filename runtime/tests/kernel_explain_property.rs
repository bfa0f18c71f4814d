//! Property: for randomly generated Services, `svc-nft explain` and the kernel agree on every
//! connection — the same endpoints, the same masquerade, the same REJECT and DROP
//! (`Cluster::agrees`). The Services mix types, traffic policies, endpoint conditions and
//! placement, and source ranges.

mod netns;

use netns::cluster::{Cluster, CIDRS};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Svc {
    /// 0: ClusterIP, 1: NodePort, 2: LoadBalancer.
    kind: u8,
    external_local: bool,
    internal_local: bool,
    source_ranges: bool,
    /// (backend 1..=3, condition: 0 ready, 1 serving+terminating, 2 not serving).
    endpoints: Vec<(u8, u8)>,
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((1u8..4, 0u8..3), 0..4),
    )
        .prop_map(
            |(kind, external_local, internal_local, source_ranges, endpoints)| Svc {
                kind,
                external_local,
                internal_local,
                source_ranges,
                endpoints,
            },
        )
}

fn manifests(services: &[Svc]) -> String {
    let mut out = String::new();
    for (i, s) in services.iter().enumerate() {
        let kind = ["ClusterIP", "NodePort", "LoadBalancer"][s.kind as usize];
        let policy = |local: bool| if local { "Local" } else { "Cluster" };
        // The API allows source ranges on LoadBalancers only, and externalTrafficPolicy on
        // externally reachable Services only.
        let ranges = if s.source_ranges && s.kind == 2 {
            "loadBalancerSourceRanges: [198.51.100.0/24],"
        } else {
            ""
        };
        let external = if s.kind > 0 {
            format!("externalTrafficPolicy: {},", policy(s.external_local))
        } else {
            String::new()
        };
        let node_port = if s.kind > 0 {
            format!(", nodePort: {}", 30100 + i)
        } else {
            String::new()
        };
        out += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: p}}\n\
             spec: {{type: {kind}, clusterIP: 10.96.2.{}, {external} \
             internalTrafficPolicy: {}, {ranges} ports: [{{port: 80, targetPort: 8080{node_port}}}]}}\n",
            i + 1,
            policy(s.internal_local),
        );
        if s.kind == 2 {
            out += &format!(
                "status: {{loadBalancer: {{ingress: [{{ip: 203.0.113.{}}}]}}}}\n",
                100 + i
            );
        }
        let endpoints: Vec<String> = s
            .endpoints
            .iter()
            .map(|(b, cond)| {
                let node = if *b == 1 { "node-a" } else { "node-b" };
                let conditions = [
                    "{ready: true}",
                    "{ready: false, serving: true, terminating: true}",
                    "{ready: false, serving: false, terminating: true}",
                ][*cond as usize];
                format!("{{addresses: [10.244.{b}.2], nodeName: {node}, conditions: {conditions}}}")
            })
            .collect();
        out += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: s{i}-a, namespace: p, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{}]\n",
            endpoints.join(", ")
        );
    }
    out
}

#[test]
fn explain_agrees_with_the_kernel() {
    if !netns::require() {
        return;
    }
    let flags: Vec<&str> = CIDRS
        .iter()
        .copied()
        .chain(["--node-name", "node-a", "--node-ip", "198.51.100.1"])
        .collect();
    let config = ProptestConfig {
        cases: 12,
        // Every case builds namespaces and makes real connections: shrinking would take long.
        max_shrink_iters: 8,
        ..ProptestConfig::default()
    };
    proptest!(config, |(services in prop::collection::vec(svc(), 1..4))| {
        let k = Cluster::new(&manifests(&services), &flags);
        for (i, s) in services.iter().enumerate() {
            let vip = format!("10.96.2.{}:80", i + 1);
            k.agrees(Some(k.c1), &vip, 2);
            k.agrees(Some(k.x1), &vip, 2);
            if s.kind > 0 {
                let node_port = format!("198.51.100.1:{}", 30100 + i);
                k.agrees(Some(k.x2), &node_port, 2);
                k.agrees(Some(k.c1), &node_port, 2);
            }
            if s.kind == 2 {
                let lb = format!("203.0.113.{}:80", 100 + i);
                k.agrees(Some(k.x1), &lb, 2);
                k.agrees(Some(k.x2), &lb, 2);
            }
        }
    });
}
