//! From one validated Service to the Service ports the layout programs: its frontends on this
//! node (cluster IPs, NodePorts, external and load-balancer IPs), the endpoints each uses, and
//! notes for what is left out; and the claims on those frontends, since two Services cannot
//! share one.

use crate::endpoints::{choose, Chosen};
use crate::layout::{Frontend, ServicePort};
use crate::model::{ServiceInfo, ServiceName, Shape, SliceInfo};
use crate::node::NodeFacts;
use ipnet::IpNet;
use std::collections::HashSet;
use std::fmt::{self, Display, Formatter};
use std::net::{IpAddr, SocketAddr};
use svc_nft_ir::L4Proto;

/// Something only one Service can have on a node. A Service that does not hold a claim leaves
/// out what it covers, and only that; who holds it is decided by the per-Service compiler
/// (`crate::incremental`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Claim {
    /// A cluster IP as a whole: its entry in `cluster-ips` (connections to a port no Service
    /// port takes are refused) and every port on it.
    ClusterIp(IpAddr),
    /// A key of `service-ports`: a port on a cluster, external or load-balancer IP, or a
    /// NodePort on one node IP (`--nodeport-addresses primary`).
    Frontend(IpAddr, L4Proto, u16),
    /// A key of `service-nodeports`: a NodePort on every local address the
    /// `--nodeport-addresses` CIDRs cover, in one family.
    NodePort { v6: bool, proto: L4Proto, port: u16 },
}

impl Display for Claim {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        match self {
            Claim::ClusterIp(ip) => write!(f, "{ip}"),
            Claim::Frontend(ip, proto, port) => {
                let proto = format!("{proto}").to_uppercase();
                write!(f, "{}/{proto}", SocketAddr::new(*ip, *port))
            }
            Claim::NodePort { v6, proto, port } => {
                let proto = format!("{proto}").to_uppercase();
                let family = if *v6 { "IPv6" } else { "IPv4" };
                write!(f, "NodePort {port}/{proto} ({family})")
            }
        }
    }
}

/// The field of a Service that makes a claim, by index: what a message names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    ClusterIp(usize),
    /// A port on the cluster IP.
    Port(usize),
    ExternalIp(usize),
    LoadBalancer(usize),
    NodePort(usize),
}

impl Display for Field {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        match self {
            Field::ClusterIp(i) => write!(f, "spec.clusterIPs[{i}]"),
            Field::Port(i) => write!(f, "spec.ports[{i}].port"),
            Field::ExternalIp(i) => write!(f, "spec.externalIPs[{i}]"),
            Field::LoadBalancer(i) => write!(f, "status.loadBalancer.ingress[{i}].ip"),
            Field::NodePort(i) => write!(f, "spec.ports[{i}].nodePort"),
        }
    }
}

/// A claim a Service makes, the field that makes it, and the claim it only counts under (a
/// port on a cluster IP is programmed only with the cluster IP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub claim: Claim,
    pub field: Field,
    pub under: Option<Claim>,
}

impl Wanted {
    /// Whether this claim's frontend is programmed, given what the Service holds.
    fn programmed(&self, holds: &dyn Fn(&Claim) -> bool) -> bool {
        holds(&self.claim) && self.under.as_ref().is_none_or(holds)
    }

    /// Whether this claim is lost to another Service in a way worth a message of its own
    /// (not when the claim it counts under is lost too: that one says it).
    pub fn clashes(&self, holds: &dyn Fn(&Claim) -> bool) -> bool {
        !holds(&self.claim) && self.under.as_ref().is_none_or(holds)
    }
}

/// How a frontend reaches its Service port.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Cluster,
    /// External IPs and NodePorts.
    External,
    LoadBalancer,
}

/// One way into a Service port on this node, and what claims it.
struct Way {
    role: Role,
    at: Frontend,
    wanted: Wanted,
}

/// The ways into port `j` of a Service through its cluster IP `ip`: the cluster IP, then the external IPs, NodePorts and load-balancer IPs of the same family.
fn ways(info: &ServiceInfo, node_ips: &[IpAddr], ip: IpAddr, j: usize) -> Vec<Way> {
    let sp = &info.ports[j];
    let (proto, port) = (sp.port.proto, sp.port.port);
    let same = |a: &IpAddr| a.is_ipv6() == ip.is_ipv6();
    let way = |role, addr, port, field, under| Way {
        role,
        at: Frontend { addr, port },
        wanted: Wanted {
            claim: Claim::Frontend(addr, proto, port),
            field,
            under,
        },
    };
    let under = Some(Claim::ClusterIp(ip));
    let mut out = vec![way(Role::Cluster, ip, port, Field::Port(j), under)];
    let external = info.external_ips.iter().enumerate();
    for (k, &addr) in external.filter(|(_, a)| same(a)) {
        out.push(way(Role::External, addr, port, Field::ExternalIp(k), None));
    }
    if let Some(node_port) = sp.node_port {
        for &addr in node_ips.iter().filter(|a| same(a)) {
            out.push(way(
                Role::External,
                addr,
                node_port,
                Field::NodePort(j),
                None,
            ));
        }
    }
    for &(k, addr) in info.load_balancer_ips.iter().filter(|(_, a)| same(a)) {
        out.push(way(
            Role::LoadBalancer,
            addr,
            port,
            Field::LoadBalancer(k),
            None,
        ));
    }
    out
}

/// The claim of port `j`'s NodePort on the CIDRs of `--nodeport-addresses`, in the family of
/// cluster IP `ip` (none with `primary`: there NodePorts are frontends of node IPs).
fn nodeport_claim(info: &ServiceInfo, node: &NodeFacts, ip: IpAddr, j: usize) -> Option<Wanted> {
    let sp = &info.ports[j];
    let v6 = ip.is_ipv6();
    node.nodeport_ranges(v6)?;
    Some(Wanted {
        claim: Claim::NodePort {
            v6,
            proto: sp.port.proto,
            port: sp.node_port?,
        },
        field: Field::NodePort(j),
        under: None,
    })
}

/// Everything a Service claims on this node, each claim once (the first field that makes it).
pub fn wanted(info: &ServiceInfo, node: &NodeFacts) -> Vec<Wanted> {
    let node_ips = node.nodeport_ips();
    let mut out = Vec::new();
    for (i, &ip) in info.cluster_ips().iter().enumerate() {
        out.push(Wanted {
            claim: Claim::ClusterIp(ip),
            field: Field::ClusterIp(i),
            under: None,
        });
        for j in 0..info.ports.len() {
            out.extend(ways(info, &node_ips, ip, j).into_iter().map(|w| w.wanted));
            out.extend(nodeport_claim(info, node, ip, j));
        }
    }
    let mut seen = HashSet::new();
    out.retain(|w| seen.insert(w.claim));
    out
}

/// What one Service compiles to.
pub struct Expanded {
    pub ports: Vec<ServicePort>,
    pub notes: Vec<String>,
}

/// Expand a Service into its ports on this node, with only the frontends whose claims it
/// `holds`.
pub fn expand(
    name: &ServiceName,
    info: &ServiceInfo,
    slices: &[SliceInfo],
    node: &NodeFacts,
    holds: &dyn Fn(&Claim) -> bool,
) -> Expanded {
    let shown = format!("{}/{}", name.0, name.1);
    let ips = match &info.shape {
        Shape::ClusterIps(ips) => ips,
        Shape::Headless => {
            return note(format!(
                "{shown}: headless (clusterIP: None): DNS only, no rules"
            ))
        }
        Shape::ExternalName(target) => {
            return note(format!(
                "{shown}: ExternalName {target}: DNS only, no rules"
            ))
        }
        Shape::Unallocated => {
            return note(format!("{shown}: no cluster IP allocated yet, no rules"))
        }
    };
    let expanding = Expanding {
        shown,
        info,
        slices,
        node,
        node_ips: node.nodeport_ips(),
        holds,
    };
    let mut expanded = Expanded {
        ports: vec![],
        notes: vec![],
    };
    for ip in ips {
        for j in 0..info.ports.len() {
            let port = expanding.port(*ip, j, &mut expanded.notes);
            expanded.ports.extend(port);
        }
    }
    expanded
}

/// One Service being expanded.
struct Expanding<'a> {
    /// `namespace/name`.
    shown: String,
    info: &'a ServiceInfo,
    slices: &'a [SliceInfo],
    node: &'a NodeFacts,
    node_ips: Vec<IpAddr>,
    holds: &'a dyn Fn(&Claim) -> bool,
}

impl Expanding<'_> {
    /// Port `j` on cluster IP `ip`, unless the Service holds none of its frontends.
    fn port(&self, ip: IpAddr, j: usize, notes: &mut Vec<String>) -> Option<ServicePort> {
        let (info, sp) = (self.info, &self.info.ports[j]);
        let port = &sp.port;
        let label = match port.name.as_str() {
            "" => self.shown.clone(),
            port_name => format!("{}:{port_name}", self.shown),
        };
        let ways = ways(info, &self.node_ips, ip, j);
        let held = |role: Role| -> Vec<Frontend> {
            let mine = ways.iter().filter(|w| w.role == role);
            let mine = mine.filter(|w| w.wanted.programmed(self.holds));
            mine.map(|w| w.at).collect()
        };
        let (external, load_balancers) = (held(Role::External), held(Role::LoadBalancer));
        let node_port = nodeport_claim(info, self.node, ip, j)
            .filter(|w| w.programmed(self.holds))
            .and(sp.node_port);
        let holds_cluster_ip = (self.holds)(&Claim::ClusterIp(ip));
        let outside = !external.is_empty() || !load_balancers.is_empty() || node_port.is_some();
        if !holds_cluster_ip && !outside {
            return None;
        }
        let v6 = ip.is_ipv6();
        let primary = self.node.nodeport_ranges(v6).is_none();
        if let (Some(node_port), true) = (sp.node_port, primary) {
            if !self.node_ips.iter().any(|a| a.is_ipv6() == v6) {
                notes.push(format!(
                    "{label}: NodePort {node_port} not programmed: no node IP (--node-ip)"
                ));
            }
        }
        let endpoints = choose(self.slices, v6, port, self.node);
        notes.extend(endpoint_notes(
            &label, &ip, port.port, info, &endpoints, outside,
        ));
        let lb_ips = info.load_balancer_ips.iter().map(|&(_, a)| a);
        let lb_ips: Vec<IpAddr> = lb_ips.filter(|a| a.is_ipv6() == v6).collect();
        Some(ServicePort {
            label,
            proto: port.proto,
            cluster_ip: Frontend {
                addr: ip,
                port: port.port,
            },
            holds_cluster_ip,
            serves_cluster_ip: !held(Role::Cluster).is_empty(),
            external,
            load_balancers,
            node_port,
            allowed_sources: allowed_sources(info, &lb_ips, self.node),
            endpoints,
            internal_local: info.internal_local,
            external_local: info.external_local,
            affinity_timeout: info.affinity_timeout,
        })
    }
}

fn note(text: String) -> Expanded {
    Expanded {
        ports: vec![],
        notes: vec![text],
    }
}

/// Why some traffic of a Service port is refused or dropped, for the reader of the ruleset.
fn endpoint_notes(
    label: &str,
    ip: &IpAddr,
    port: u16,
    info: &ServiceInfo,
    chosen: &Chosen,
    external: bool,
) -> Vec<String> {
    let at = SocketAddr::new(*ip, port);
    if !chosen.any {
        return vec![format!("{label} ({at}): no usable endpoint: REJECT")];
    }
    let mut notes = Vec::new();
    if chosen.local.is_empty() && info.internal_local {
        notes.push(format!(
            "{label} ({at}): internalTrafficPolicy Local, no endpoint on this node: DROP"
        ));
    }
    if chosen.local.is_empty() && info.external_local && external {
        notes.push(format!(
            "{label} ({ip}): externalTrafficPolicy Local, no endpoint on this node: external traffic DROPped"
        ));
    }
    notes
}

/// The sources allowed to reach the load-balancer IPs, or none when everyone is. A range that
/// holds a node IP also admits the load-balancer IPs themselves, as kube-proxy does: some load
/// balancers deliver the node's own traffic with the VIP as its source.
fn allowed_sources(info: &ServiceInfo, lb_ips: &[IpAddr], node: &NodeFacts) -> Vec<IpNet> {
    let Some(v6) = lb_ips.first().map(IpAddr::is_ipv6) else {
        return vec![];
    };
    let mut ranges: Vec<IpNet> = info
        .source_ranges
        .iter()
        .filter(|r| matches!(r, IpNet::V6(_)) == v6)
        .copied()
        .collect();
    if ranges
        .iter()
        .any(|r| node.node_ips.iter().any(|ip| r.contains(ip)))
    {
        ranges.extend(lb_ips.iter().map(|ip| IpNet::from(*ip)));
    }
    // Merged: the API allows overlapping ranges, and a load-balancer IP inside one, but the
    // kernel refuses overlapping elements in an interval set (found by fuzz/ rulesets).
    IpNet::aggregate(&ranges)
}
