//! Which endpoints a Service port uses on this node (kube-proxy's CategorizeEndpoints).
//!
//! - Cluster-wide: the ready endpoints, narrowed by topology hints to this node's or this
//!   zone's when the hints allow; if none is ready, the serving and terminating ones
//!   (KEP-1669), whatever the hints.
//! - Local (this node's, for `Local` traffic policies): the local ready ones, else the local
//!   serving and terminating ones. Topology never applies to them.
//! - Not-serving endpoints are never used.

use crate::model::{EndpointInfo, Hints, Port, SliceInfo};
use crate::node::NodeFacts;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// An endpoint address and the port its Pod listens on for this Service port.
pub type Backend = (IpAddr, u16);

/// The endpoint sets of one Service port on one address family, each sorted and unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chosen {
    pub cluster: Vec<Backend>,
    pub local: Vec<Backend>,
    /// Whether any endpoint anywhere can serve: without one, traffic is REJECTed.
    pub any: bool,
    /// Every serving endpoint's address, wherever it is and whatever its state or hints: the
    /// UDP flows to them are left alone when the choice changes (kube-proxy's conntrack
    /// cleanup keeps flows to any serving endpoint).
    pub serving: BTreeSet<IpAddr>,
}

/// Choose the endpoints of `port` among `slices` for a cluster IP of family `v6`.
pub fn choose(slices: &[SliceInfo], v6: bool, port: &Port, node: &NodeFacts) -> Chosen {
    // A slice maps the Service port, by name and protocol, to the number its Pods listen on:
    // that is how named targetPorts resolve, per endpoint.
    let candidates: Vec<(&EndpointInfo, u16)> = slices
        .iter()
        .flat_map(|slice| {
            let number = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.proto == port.proto)
                .map(|p| p.port);
            slice
                .endpoints
                .iter()
                .filter_map(move |ep| Some((ep, number?)))
        })
        .filter(|(ep, _)| ep.ip.is_ipv6() == v6)
        .collect();
    let fallback = |ep: &EndpointInfo| ep.serving && ep.terminating;
    let is_local = |ep: &EndpointInfo| is_local(ep, node);
    let pick = |keep: &dyn Fn(&EndpointInfo) -> bool| -> BTreeSet<Backend> {
        candidates
            .iter()
            .filter(|(ep, _)| keep(ep))
            .map(|(ep, port)| (ep.ip, *port))
            .collect()
    };

    let ready: Vec<&EndpointInfo> = candidates
        .iter()
        .map(|(ep, _)| *ep)
        .filter(|ep| ep.ready)
        .collect();
    let topology = Topology::of(&ready, node);
    let mut cluster = pick(&|ep| ep.ready && topology.allows(ep));
    if cluster.is_empty() {
        cluster = pick(&fallback);
    }
    let mut local = pick(&|ep| ep.ready && is_local(ep));
    if local.is_empty() {
        local = pick(&|ep| fallback(ep) && is_local(ep));
    }
    Chosen {
        cluster: cluster.into_iter().collect(),
        local: local.into_iter().collect(),
        any: candidates.iter().any(|(ep, _)| ep.ready || fallback(ep)),
        serving: pick(&|ep| ep.serving)
            .into_iter()
            .map(|(ip, _)| ip)
            .collect(),
    }
}

fn is_local(ep: &EndpointInfo, node: &NodeFacts) -> bool {
    node.node_name.is_some() && ep.node_name.as_deref() == node.node_name.as_deref()
}

/// What a health-check NodePort reports (kube-proxy's `LocalReadyEndpoints`): the ready
/// endpoints on this node, by distinct address, across every port of the Service's slices.
/// Terminating endpoints do not count even while they serve, so that load balancers drain
/// a node whose Pods are going away.
pub fn local_ready(slices: &[SliceInfo], node: &NodeFacts) -> usize {
    let ready = slices
        .iter()
        // kube-proxy knows endpoints through their slice's ports: a slice without any
        // gives it none.
        .filter(|slice| !slice.ports.is_empty())
        .flat_map(|slice| &slice.endpoints)
        .filter(|ep| ep.ready && is_local(ep, node));
    ready.map(|ep| ep.ip).collect::<BTreeSet<IpAddr>>().len()
}

/// Which ready endpoints topology hints leave to this node (kube-proxy's
/// topologyModeFromHints and availableForTopology). Only the hints decide: the EndpointSlice
/// controller has already turned the Service's trafficDistribution into them.
#[derive(Clone, Copy)]
enum Topology<'a> {
    Everywhere,
    SameNode(&'a str),
    SameZone(&'a str),
}

impl<'a> Topology<'a> {
    /// Node hints first, then zone hints; a kind of hint is trusted only when every ready
    /// endpoint has it and one names this node (its zone): otherwise a node or zone would
    /// be left without endpoints, or all of its clients sent to one of them.
    fn of(ready: &[&EndpointInfo], node: &'a NodeFacts) -> Topology<'a> {
        let trusted = |hints: fn(&EndpointInfo) -> &Hints, name: Option<&'a str>| {
            name.filter(|name| {
                ready.iter().all(|ep| hints(ep).is_some())
                    && ready.iter().any(|ep| names(hints(ep), name))
            })
        };
        if let Some(name) = trusted(|ep| &ep.nodes, node.node_name.as_deref()) {
            Topology::SameNode(name)
        } else if let Some(zone) = trusted(|ep| &ep.zones, node.zone.as_deref()) {
            Topology::SameZone(zone)
        } else {
            Topology::Everywhere
        }
    }

    fn allows(self, ep: &EndpointInfo) -> bool {
        match self {
            Topology::Everywhere => true,
            Topology::SameNode(name) => names(&ep.nodes, name),
            Topology::SameZone(zone) => names(&ep.zones, zone),
        }
    }
}

fn names(hints: &Hints, name: &str) -> bool {
    hints.iter().flatten().any(|h| &**h == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use svc_nft_ir::L4Proto;

    fn endpoint(ip: &str, node: &str, ready: bool, terminating: bool) -> EndpointInfo {
        EndpointInfo {
            ip: ip.parse().unwrap(),
            ready,
            serving: true,
            terminating,
            node_name: Some(node.into()),
            zones: None,
            nodes: None,
        }
    }

    fn slice(ports: &[&str], endpoints: Vec<EndpointInfo>) -> SliceInfo {
        let port = |name: &&str| Port {
            name: name.to_string(),
            proto: L4Proto::Tcp,
            port: 8080,
        };
        SliceInfo {
            service: ("t".into(), "lb".into()),
            ports: ports.iter().map(port).collect(),
            endpoints,
        }
    }

    #[test]
    fn local_ready_counts_distinct_ready_local_addresses() {
        let node = NodeFacts {
            node_name: Some("node-a".into()),
            ..NodeFacts::default()
        };
        // One Pod behind two ports and two slices counts once; the larger port does not
        // decide.
        let http = slice(
            &["http"],
            vec![
                endpoint("10.244.1.2", "node-a", true, false),
                endpoint("10.244.1.3", "node-a", true, false),
            ],
        );
        let both = slice(
            &["http", "https"],
            vec![
                endpoint("10.244.1.2", "node-a", true, false),
                endpoint("fd00:244:1::2", "node-a", true, false),
                endpoint("10.244.2.2", "node-b", true, false),
            ],
        );
        assert_eq!(local_ready(&[http.clone(), both], &node), 3);

        // Terminating endpoints serve, but do not keep the node in a load balancer.
        let draining = slice(
            &["http"],
            vec![endpoint("10.244.1.4", "node-a", false, true)],
        );
        assert_eq!(local_ready(std::slice::from_ref(&draining), &node), 0);
        assert_eq!(local_ready(&[draining, http], &node), 2);

        // A slice without ports gives kube-proxy no endpoints; a node without a name has
        // none of its own.
        let portless = slice(&[], vec![endpoint("10.244.1.5", "node-a", true, false)]);
        assert_eq!(local_ready(&[portless], &node), 0);
        let ready = slice(
            &["http"],
            vec![endpoint("10.244.1.5", "node-a", true, false)],
        );
        assert_eq!(local_ready(&[ready], &NodeFacts::default()), 0);
    }
}
