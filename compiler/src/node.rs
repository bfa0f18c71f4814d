//! Facts about the node the rules are compiled for. kube-proxy's flag names where they exist.

use ipnet::IpNet;
use std::net::IpAddr;

/// The table svc-nft owns when no other name is given.
pub const DEFAULT_TABLE: &str = "svc-nft";

/// Everything the compiler knows about the node besides the API objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// Name of the nftables table (`--table`, default `svc-nft`); the compiler owns it whole.
    pub table: String,
    /// This node's name (`--node-name`), matched against endpoints' `nodeName`.
    pub node_name: Option<String>,
    /// This node's addresses (`--node-ip`, v4 and/or v6).
    pub node_ips: Vec<IpAddr>,
    /// This node's zone (`--node-zone`, the Node's `topology.kubernetes.io/zone` label), for
    /// topology-aware routing.
    pub zone: Option<String>,
    /// Pod network (`--cluster-cidr`). Traffic to a Service from outside it is masqueraded;
    /// with none given for a family, none is (kube-proxy cannot tell either).
    pub cluster_cidrs: Vec<IpNet>,
    /// Service network (`--service-cidr`). New connections to an address in it that no
    /// Service owns are dropped; default none.
    pub service_cidrs: Vec<IpNet>,
    /// Which node IPs NodePorts answer on (`--nodeport-addresses`); default: all of them.
    /// Loopback addresses only when a range names them explicitly.
    pub nodeport_addresses: Vec<IpNet>,
    /// Masquerade all traffic to Services (`--masquerade-all`).
    pub masquerade_all: bool,
    /// The `AllowServiceExternalIPs` feature gate (KEP-5707, on by default until 1.40): off,
    /// `spec.externalIPs` get no rules.
    pub allow_external_ips: bool,
}

impl Default for NodeFacts {
    fn default() -> Self {
        NodeFacts {
            table: DEFAULT_TABLE.to_string(),
            node_name: None,
            node_ips: vec![],
            zone: None,
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            nodeport_addresses: vec![],
            masquerade_all: false,
            allow_external_ips: true,
        }
    }
}

impl NodeFacts {
    /// The addresses NodePorts answer on: the node IPs inside `--nodeport-addresses` (all of
    /// them when it is empty), plus loopback when a range names it (kube-proxy never opens
    /// NodePorts on loopback; they are off unless asked for).
    pub fn nodeport_ips(&self) -> Vec<IpAddr> {
        let wanted = |ip: &IpAddr| {
            self.nodeport_addresses.is_empty()
                || self.nodeport_addresses.iter().any(|n| n.contains(ip))
        };
        let mut ips: Vec<IpAddr> = self
            .node_ips
            .iter()
            .filter(|ip| !ip.is_loopback() && wanted(ip))
            .copied()
            .collect();
        let loopback = [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        ips.extend(
            loopback
                .into_iter()
                .filter(|ip| self.nodeport_addresses.iter().any(|n| n.contains(ip))),
        );
        ips.sort();
        ips.dedup();
        ips
    }
}
