//! Facts about the node the rules are compiled for. kube-proxy's flag names where they exist.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::IpAddr;

/// The table svc-nft owns when no other name is given.
pub const DEFAULT_TABLE: &str = "svc-nft";

/// Which local addresses NodePorts answer on (`--nodeport-addresses`, kube-proxy 1.37's
/// KEP-6032 semantics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// `primary`, the default: the node's primary IPs (`--node-ip`, the Node's InternalIPs),
    /// each a frontend of its own.
    #[default]
    Primary,
    /// CIDRs (`all` is `0.0.0.0/0,::/0`): every local address they cover, whatever interface
    /// holds it, matched by `fib daddr type local`. A family without a CIDR covers every
    /// local address of that family.
    Cidrs(Vec<IpNet>),
}

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
    /// Where NodePorts answer (`--nodeport-addresses`). Never on loopback.
    pub nodeport_addresses: NodePortAddresses,
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
            nodeport_addresses: NodePortAddresses::Primary,
            masquerade_all: false,
            allow_external_ips: true,
        }
    }
}

/// What `fib daddr type local` also calls local, and NodePorts must not answer on: kube-proxy's
/// nftables mode refuses localhost NodePorts.
pub fn loopback(v6: bool) -> IpNet {
    match v6 {
        false => IpNet::V4(Ipv4Net::new([127, 0, 0, 0].into(), 8).expect("valid")),
        true => IpNet::V6(Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).expect("valid")),
    }
}

impl NodeFacts {
    /// The addresses that are NodePort frontends of their own (`primary`): the node IPs but
    /// loopback. None when NodePorts follow CIDRs.
    pub fn nodeport_ips(&self) -> Vec<IpAddr> {
        if self.nodeport_addresses != NodePortAddresses::Primary {
            return vec![];
        }
        let mut ips = self.node_ips.clone();
        ips.retain(|ip| !ip.is_loopback());
        ips.sort();
        ips.dedup();
        ips
    }

    /// With CIDRs: the prefixes of one family whose local addresses NodePorts answer on (the
    /// rule that reads them leaves loopback out). None with `primary`.
    pub fn nodeport_ranges(&self, v6: bool) -> Option<Vec<IpNet>> {
        let NodePortAddresses::Cidrs(cidrs) = &self.nodeport_addresses else {
            return None;
        };
        let family = |n: &&IpNet| matches!(n, IpNet::V6(_)) == v6;
        let mut mine: Vec<IpNet> = cidrs.iter().filter(family).copied().collect();
        if mine.is_empty() {
            mine.push(
                IpNet::new(loopback(v6).network(), 0)
                    .expect("valid")
                    .trunc(),
            );
        }
        Some(IpNet::aggregate(&mine))
    }

    /// What to tell the user about these facts: a loopback CIDR in `--nodeport-addresses`.
    pub fn warnings(&self) -> Vec<String> {
        let NodePortAddresses::Cidrs(cidrs) = &self.nodeport_addresses else {
            return vec![];
        };
        let named = |v6| {
            let lo = loopback(v6);
            cidrs
                .iter()
                .any(|n| n.contains(&lo.network()) && n.prefix_len() > 0)
        };
        [false, true]
            .into_iter()
            .filter(|&v6| named(v6))
            .map(|v6| {
                format!(
                    "--nodeport-addresses: {} is loopback: NodePorts never answer on localhost (as in kube-proxy's nftables mode)",
                    loopback(v6)
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(cidrs: &[&str]) -> NodeFacts {
        let cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        NodeFacts {
            node_ips: vec![
                "198.51.100.1".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
            ],
            nodeport_addresses: NodePortAddresses::Cidrs(cidrs),
            ..NodeFacts::default()
        }
    }

    #[test]
    fn primary_is_the_node_ips_but_loopback() {
        let primary = NodeFacts {
            nodeport_addresses: NodePortAddresses::Primary,
            ..on(&[])
        };
        assert_eq!(
            primary.nodeport_ips(),
            ["198.51.100.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(primary.nodeport_ranges(false), None);
    }

    #[test]
    fn a_family_without_a_cidr_takes_every_local_address() {
        let facts = on(&["10.0.0.0/8"]);
        assert!(facts.nodeport_ips().is_empty());
        assert_eq!(
            facts.nodeport_ranges(false),
            Some(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert_eq!(
            facts.nodeport_ranges(true),
            Some(vec!["::/0".parse().unwrap()])
        );
        assert!(facts.warnings().is_empty());
    }

    #[test]
    fn loopback_cidrs_are_warned_about_but_zero_cidrs_are_not() {
        assert_eq!(on(&["127.0.0.0/16", "::1/128"]).warnings().len(), 2);
        assert!(on(&["0.0.0.0/0", "::/0"]).warnings().is_empty());
    }
}
