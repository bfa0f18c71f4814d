//! From one validated Service to the Service ports the layout programs: its frontends on this
//! node (cluster IPs, NodePorts, external and load-balancer IPs), the endpoints each uses, and
//! notes for what is left out.

use crate::endpoints::{choose, Chosen};
use crate::family::Ipf;
use crate::layout::{Frontend, ServicePort};
use crate::model::{Invalid, ServiceInfo, ServiceName, Shape, SliceInfo};
use crate::node::NodeFacts;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use svc_nft_ir::L4Proto;

/// Addresses and ports already taken, and by whom: two Services cannot share a frontend.
#[derive(Default)]
pub struct Claims {
    cluster_ips: HashMap<IpAddr, ServiceName>,
    frontends: HashMap<(IpAddr, L4Proto, u16), ServiceName>,
}

/// What one Service compiles to.
pub struct Expanded {
    pub ports: Vec<ServicePort>,
    pub notes: Vec<String>,
}

/// Expand a Service, claiming its frontends; a clash rejects the whole Service (the one that
/// comes later in namespace/name order), so that the earlier one keeps working unchanged.
pub fn expand(
    name: &ServiceName,
    info: &ServiceInfo,
    slices: &[SliceInfo],
    node: &NodeFacts,
    claims: &mut Claims,
) -> Result<Expanded, Invalid> {
    let shown = format!("{}/{}", name.0, name.1);
    let ips = match &info.shape {
        Shape::ClusterIps(ips) => ips,
        Shape::Headless => {
            return Ok(note(format!(
                "{shown}: headless (clusterIP: None): DNS only, no rules"
            )))
        }
        Shape::ExternalName(target) => {
            return Ok(note(format!(
                "{shown}: ExternalName {target}: DNS only, no rules"
            )))
        }
        Shape::Unallocated => {
            return Ok(note(format!(
                "{shown}: no cluster IP allocated yet, no rules"
            )))
        }
    };
    let mut notes = Vec::new();
    let mut ports = Vec::new();
    for ip in ips {
        let v6 = ip.is_ipv6();
        let same_family = |a: &&IpAddr| a.is_ipv6() == v6;
        let external_ips: Vec<IpAddr> = info
            .external_ips
            .iter()
            .filter(same_family)
            .copied()
            .collect();
        let lb_ips: Vec<IpAddr> = info
            .load_balancer_ips
            .iter()
            .filter(same_family)
            .copied()
            .collect();
        let node_ips: Vec<IpAddr> = node
            .nodeport_ips()
            .into_iter()
            .filter(|a| a.is_ipv6() == v6)
            .collect();
        for sp in &info.ports {
            let port = &sp.port;
            let label = match port.name.as_str() {
                "" => shown.clone(),
                port_name => format!("{shown}:{port_name}"),
            };
            let at = |addrs: &[IpAddr], port: u16| -> Vec<Frontend> {
                addrs.iter().map(|&addr| Frontend { addr, port }).collect()
            };
            let mut external = at(&external_ips, port.port);
            if let Some(node_port) = sp.node_port {
                if node_ips.is_empty() {
                    notes.push(format!(
                        "{label}: NodePort {node_port} not programmed: no node IP (--node-ip)"
                    ));
                }
                external.extend(at(&node_ips, node_port));
            }
            if info.affinity_timeout.is_some() && !Ipf::of(ip).nft_can_record_affinity() {
                notes.push(format!(
                    "{label} ({ip}): sessionAffinity is recorded by a rule svc-nft apply/run add over netlink (nft 1.0.6 cannot compile it)"
                ));
            }
            let endpoints = choose(slices, v6, port, node);
            notes.extend(endpoint_notes(
                &label,
                ip,
                port.port,
                info,
                &endpoints,
                !external.is_empty() || !lb_ips.is_empty(),
            ));
            ports.push(ServicePort {
                label,
                proto: port.proto,
                cluster_ip: Frontend {
                    addr: *ip,
                    port: port.port,
                },
                external,
                load_balancers: at(&lb_ips, port.port),
                allowed_sources: allowed_sources(info, &lb_ips, node),
                endpoints,
                internal_local: info.internal_local,
                external_local: info.external_local,
                affinity_timeout: info.affinity_timeout,
            });
        }
    }
    claim(name, ips, &ports, claims)?;
    Ok(Expanded { ports, notes })
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
    ranges
}

impl Claims {
    /// Give back what a Service claimed: its cluster IPs and its ports' frontends.
    pub fn release(&mut self, ips: &[IpAddr], ports: &[ServicePort]) {
        for ip in ips {
            self.cluster_ips.remove(ip);
        }
        for key in frontend_keys(ports) {
            self.frontends.remove(&key);
        }
    }
}

/// Every `address, protocol, port` at which `ports` are reached.
fn frontend_keys(ports: &[ServicePort]) -> impl Iterator<Item = (IpAddr, L4Proto, u16)> + '_ {
    ports.iter().flat_map(|sp| {
        let all = std::iter::once(&sp.cluster_ip)
            .chain(&sp.external)
            .chain(&sp.load_balancers);
        all.map(|f| (f.addr, sp.proto, f.port))
    })
}

fn claim(
    name: &ServiceName,
    ips: &[IpAddr],
    ports: &[ServicePort],
    claims: &mut Claims,
) -> Result<(), Invalid> {
    if let Some((ip, owner)) = ips
        .iter()
        .find_map(|ip| claims.cluster_ips.get(ip).map(|o| (ip, o)))
    {
        return Err(Invalid {
            field: "spec.clusterIPs".into(),
            message: format!("{ip} is already the cluster IP of {}/{}", owner.0, owner.1),
        });
    }
    let wanted: Vec<_> = frontend_keys(ports).collect();
    if let Some((key, owner)) = wanted
        .iter()
        .find_map(|k| claims.frontends.get(k).map(|o| (k, o)))
    {
        let at = SocketAddr::new(key.0, key.2);
        return Err(Invalid {
            field: "spec".into(),
            message: format!("{at}/{} is already used by {}/{}", key.1, owner.0, owner.1),
        });
    }
    claims
        .cluster_ips
        .extend(ips.iter().map(|ip| (*ip, name.clone())));
    claims
        .frontends
        .extend(wanted.into_iter().map(|k| (k, name.clone())));
    Ok(())
}
