//! kube-proxy's `TestInternalExternalMasquerade` (pkg/proxy/nftables/proxier_test.go) with
//! real packets, IPv4 and IPv6: which endpoints a pod, the node and an off-cluster client
//! reach through the cluster IP, the NodePort and the load-balancer IP of three Services
//! (plain; `externalTrafficPolicy: Local`; `internalTrafficPolicy: Local`), and whether they
//! are masqueraded, in the table's four variants: `--cluster-cidr` given or not (kube-proxy's
//! local traffic detector) times `--masquerade-all` or not. Each connection is also asked of
//! `svc-nft explain` (`Cluster::agrees`). Fixture: `netns/cluster.rs`; this node is `node-a`.

mod netns;

use netns::cluster::{ip, service, Cluster, B1, B1_V6, B2, B2_V6};
use std::collections::BTreeSet;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Svc {
    Plain,
    ExternalLocal,
    InternalLocal,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    Pod,
    Node,
    External,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum To {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

const SERVICES: [Svc; 3] = [Svc::Plain, Svc::ExternalLocal, Svc::InternalLocal];

/// The flags of a variant.
#[derive(Clone, Copy, Debug)]
struct Variant {
    cluster_cidr: bool,
    masquerade_all: bool,
}

impl Variant {
    fn flags(self) -> Vec<&'static str> {
        let mut flags = vec![
            "--node-name",
            "node-a",
            "--node-ip",
            "198.51.100.1,2001:db8:51::1",
        ];
        flags.extend(["--service-cidr", "10.96.0.0/16,fd00:96::/112"]);
        if self.cluster_cidr {
            flags.extend(["--cluster-cidr", "10.244.0.0/16,fd00:244::/32"]);
        }
        if self.masquerade_all {
            flags.push("--masquerade-all");
        }
        flags
    }

    /// A row of the table as this variant changes it: (only this node's endpoint,
    /// masqueraded).
    fn expected(self, row: &Row) -> (bool, bool) {
        let &(svc, from, to, mut local, mut masquerade) = row;
        if to == To::ClusterIp && self.masquerade_all {
            masquerade = true;
        } else if to == To::ClusterIp && !self.cluster_cidr {
            // Without a way to tell pods, every client of a cluster IP is taken for one.
            masquerade = false;
        }
        if svc == Svc::ExternalLocal && from == Client::Pod && to != To::ClusterIp {
            // ... and pods are not short-circuited: they are external traffic.
            local |= !self.cluster_cidr;
        }
        (local, masquerade)
    }
}

/// A flow: Service, client, frontend, only this node's endpoint, masqueraded.
type Row = (Svc, Client, To, bool, bool);

/// kube-proxy's rows for the base variant (`--cluster-cidr`, no `--masquerade-all`). Its
/// "node to NodePort with eTP:Local" row names the plain Service's NodePort (a slip: its
/// comment says the traffic is short-circuited); here it is the Local Service's, with the
/// result that comment gives.
#[rustfmt::skip]
const ROWS: [Row; 27] = {
    use {Client::*, Svc::*, To::*};
    [
        (Plain, Pod, ClusterIp, false, false),
        (Plain, Pod, NodePort, false, true),
        (Plain, Pod, LoadBalancer, false, true),
        (Plain, Node, ClusterIp, false, true),
        (Plain, Node, NodePort, false, true),
        (Plain, Node, LoadBalancer, false, true),
        (Plain, External, ClusterIp, false, true),
        (Plain, External, NodePort, false, true),
        (Plain, External, LoadBalancer, false, true),
        (ExternalLocal, Pod, ClusterIp, false, false),
        (ExternalLocal, Pod, NodePort, false, false),
        (ExternalLocal, Pod, LoadBalancer, false, false),
        (ExternalLocal, Node, ClusterIp, false, true),
        (ExternalLocal, Node, NodePort, false, true),
        (ExternalLocal, Node, LoadBalancer, false, true),
        (ExternalLocal, External, ClusterIp, false, true),
        (ExternalLocal, External, NodePort, true, false),
        (ExternalLocal, External, LoadBalancer, true, false),
        (InternalLocal, Pod, ClusterIp, true, false),
        (InternalLocal, Pod, NodePort, false, true),
        (InternalLocal, Pod, LoadBalancer, false, true),
        (InternalLocal, Node, ClusterIp, true, true),
        (InternalLocal, Node, NodePort, false, true),
        (InternalLocal, Node, LoadBalancer, false, true),
        (InternalLocal, External, ClusterIp, true, true),
        (InternalLocal, External, NodePort, false, true),
        (InternalLocal, External, LoadBalancer, false, true),
    ]
};

/// The three Services, dual-stack, each with an endpoint on this node and one elsewhere.
fn manifests() -> String {
    let spec = |svc: Svc, n: u8| {
        let policy = match svc {
            Svc::Plain => "",
            Svc::ExternalLocal => "externalTrafficPolicy: Local, ",
            Svc::InternalLocal => "internalTrafficPolicy: Local, ",
        };
        format!(
            "{{type: LoadBalancer, {policy}clusterIPs: [10.96.2.{n}, \"fd00:96::20{n}\"], \
             ports: [{{port: 80, targetPort: 8080, nodePort: 3004{n}}}]}}"
        )
    };
    let status = |n: u8| {
        format!("status: {{loadBalancer: {{ingress: [{{ip: 203.0.113.4{n}}}, {{ip: \"2001:db8:113::4{n}\"}}]}}}}")
    };
    (1..)
        .zip(SERVICES)
        .map(|(n, svc)| {
            let name = format!("{svc:?}").to_lowercase();
            service(&name, &spec(svc, n), &status(n), &[B1, B2], &[B1_V6, B2_V6])
        })
        .collect()
}

/// Where `to` is for Service number `n` (1-based), in the family `v6` says.
fn destination(to: To, n: usize, v6: bool) -> String {
    match (to, v6) {
        (To::ClusterIp, false) => format!("10.96.2.{n}:80"),
        (To::ClusterIp, true) => format!("[fd00:96::20{n}]:80"),
        (To::NodePort, false) => format!("198.51.100.1:3004{n}"),
        (To::NodePort, true) => format!("[2001:db8:51::1]:3004{n}"),
        (To::LoadBalancer, false) => format!("203.0.113.4{n}:80"),
        (To::LoadBalancer, true) => format!("[2001:db8:113::4{n}]:80"),
    }
}

/// The (backend, peer) pairs kube-proxy's expectation means in this fixture.
fn seen(client: IpAddr, local: bool, masquerade: bool) -> BTreeSet<(IpAddr, IpAddr)> {
    let backends: &[u8] = if local { &[1] } else { &[1, 2] };
    let pair = |n: &u8| {
        let (backend, link) = match client {
            IpAddr::V4(_) => (format!("10.244.{n}.2"), format!("10.244.{n}.1")),
            IpAddr::V6(_) => (format!("fd00:244:{n}::2"), format!("fd00:244:{n}::1")),
        };
        let peer = if masquerade { ip(&link) } else { client };
        (ip(&backend), peer)
    };
    backends.iter().map(pair).collect()
}

/// Every flow of the table, in both families, through the kernel and explain.
fn check(variant: Variant) {
    if !netns::require() {
        return;
    }
    let k = Cluster::new(&manifests(), &variant.flags());
    let clients = [
        (Client::Pod, Some(k.c1), ["10.244.9.2", "fd00:244:9::2"]),
        (Client::Node, None, ["198.51.100.1", "2001:db8:51::1"]),
        (
            Client::External,
            Some(k.x1),
            ["198.51.100.2", "2001:db8:51::2"],
        ),
    ];
    for row in &ROWS {
        let (svc, from, to, ..) = *row;
        let n = 1 + SERVICES.iter().position(|s| *s == svc).unwrap();
        let &(_, host, addresses) = clients.iter().find(|c| c.0 == from).unwrap();
        let (local, masquerade) = variant.expected(row);
        for (v6, address) in [false, true].into_iter().zip(addresses) {
            let fe = destination(to, n, v6);
            let want = seen(ip(address), local, masquerade);
            let got = k.agrees(host, &fe, 8);
            assert_eq!(got, want, "{variant:?}: {svc:?} {from:?} -> {to:?} ({fe})");
        }
    }
}

#[test]
fn base() {
    check(Variant {
        cluster_cidr: true,
        masquerade_all: false,
    });
}

#[test]
fn no_local_traffic_detector() {
    check(Variant {
        cluster_cidr: false,
        masquerade_all: false,
    });
}

#[test]
fn masquerade_all() {
    check(Variant {
        cluster_cidr: true,
        masquerade_all: true,
    });
}

#[test]
fn masquerade_all_without_local_traffic_detector() {
    check(Variant {
        cluster_cidr: false,
        masquerade_all: true,
    });
}
