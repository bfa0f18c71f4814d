//! Validation: k8s-openapi objects in, the compiler's own checked model out. Every check names
//! the field it rejects, so the user can find it.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;
use svc_nft_ir::L4Proto;

/// Why an object is rejected: the field path and what is wrong with it.
#[derive(Debug)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid {
        field: field.into(),
        message: message.into(),
    })
}

/// `namespace/name` of a Service, the join key between Services and their endpoints.
/// Shared strings: the same names are held by a Service, its endpoints and the claims on its
/// frontends.
pub type ServiceName = (Arc<str>, Arc<str>);

/// How a Service is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// One cluster IP per family.
    ClusterIps(Vec<IpAddr>),
    /// `clusterIP: None`: DNS only.
    Headless,
    /// `type: ExternalName`: a DNS CNAME.
    ExternalName(String),
    /// No cluster IP yet: the API server has not allocated one.
    Unallocated,
}

/// A port of a Service or of an endpoint set; `name` is "" for an unnamed port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    #[serde(with = "proto_number")]
    pub proto: L4Proto,
    pub port: u16,
}

/// A port of a Service, and its NodePort if it has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub port: Port,
    pub node_port: Option<u16>,
}

/// A validated Service. Serializable: the per-Service compiler keeps it packed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// `metadata.creationTimestamp`, in seconds since the epoch: who came first gets a
    /// contested frontend.
    pub created: Option<i64>,
    pub shape: Shape,
    pub has_selector: bool,
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` with its index there, without those whose `ipMode`
    /// is `Proxy` (the load balancer itself delivers to the node, so the node must not claim
    /// the address).
    pub load_balancer_ips: Vec<(usize, IpAddr)>,
    /// `spec.loadBalancerSourceRanges`: who may use the load-balancer IPs (empty: anyone).
    pub source_ranges: Vec<IpNet>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP`: how long a client stays with its endpoint, in seconds.
    pub affinity_timeout: Option<u32>,
    /// `spec.healthCheckNodePort`: where load balancers ask whether this node has local
    /// endpoints (`externalTrafficPolicy: Local` LoadBalancers).
    pub health_check_node_port: Option<u16>,
}

impl ServiceInfo {
    /// The cluster IPs it claims (none unless it has some allocated).
    pub fn cluster_ips(&self) -> &[IpAddr] {
        match &self.shape {
            Shape::ClusterIps(ips) => ips,
            _ => &[],
        }
    }
}

/// A validated set of endpoints of one address family: an EndpointSlice, or the mirror of one
/// subset of v1 Endpoints. Serializable: the per-Service compiler keeps it packed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceInfo {
    pub service: ServiceName,
    pub ports: Vec<Port>,
    pub endpoints: Vec<EndpointInfo>,
}

/// One endpoint, with the conditions and placement that decide who may use it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<Arc<str>>,
    /// `hints.forNodes`: the nodes whose clients should use this endpoint.
    pub nodes: Hints,
    /// `hints.forZones`: the zones whose clients should use this endpoint.
    pub zones: Hints,
}

/// Topology hints (node or zone names); `None` when there are none. An empty list is none,
/// as kube-proxy reads it.
pub type Hints = Option<Box<[Arc<str>]>>;

fn hints<'a>(names: Option<impl ExactSizeIterator<Item = &'a str>>) -> Hints {
    names
        .filter(|names| names.len() > 0)
        .map(|names| names.map(Arc::from).collect())
}

impl EndpointInfo {
    /// A ready endpoint of v1 Endpoints, which carry no other conditions.
    fn plain(ip: IpAddr, ready: bool, node_name: Option<Arc<str>>) -> EndpointInfo {
        EndpointInfo {
            ip,
            ready,
            serving: ready,
            terminating: false,
            node_name,
            nodes: None,
            zones: None,
        }
    }
}

fn port_number(field: String, port: i32) -> Result<u16, Invalid> {
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => invalid(
            field,
            format!("{port} is not a valid port number (1-65535)"),
        ),
    }
}

fn protocol(field: String, protocol: Option<&str>) -> Result<L4Proto, Invalid> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(L4Proto::Tcp),
        "UDP" => Ok(L4Proto::Udp),
        "SCTP" => Ok(L4Proto::Sctp),
        other => invalid(
            field,
            format!("unknown protocol {other:?} (TCP, UDP or SCTP)"),
        ),
    }
}

fn ip(field: String, text: &str) -> Result<IpAddr, Invalid> {
    text.parse()
        .or_else(|_| invalid(field, format!("{text:?} is not an IP address")))
}

/// The Service types kube-proxy programs, plus what makes one DNS-only.
pub fn service(svc: &Service) -> Result<ServiceInfo, Invalid> {
    let Some(spec) = &svc.spec else {
        return invalid("spec", "is required");
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let shape = match kind {
        "ExternalName" => Shape::ExternalName(spec.external_name.clone().unwrap_or_default()),
        "ClusterIP" | "NodePort" | "LoadBalancer" => cluster_ips(svc)?,
        other => return invalid("spec.type", format!("unknown Service type {other:?}")),
    };
    let has_node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let port = Port {
            name: p.name.clone().unwrap_or_default(),
            proto: protocol(format!("spec.ports[{i}].protocol"), p.protocol.as_deref())?,
            port: port_number(format!("spec.ports[{i}].port"), p.port)?,
        };
        let node_port = match p.node_port {
            Some(n) if has_node_ports => Some(port_number(format!("spec.ports[{i}].nodePort"), n)?),
            _ => None,
        };
        ports.push(ServicePort { port, node_port });
    }
    let ips = |field: &str, list: &Option<Vec<String>>| -> Result<Vec<IpAddr>, Invalid> {
        let list = list.iter().flatten().enumerate();
        list.map(|(i, a)| ip(format!("{field}[{i}]"), a)).collect()
    };
    let mut load_balancer_ips = Vec::new();
    if kind == "LoadBalancer" {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
        for (i, ing) in ingress
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(text) = &ing.ip else { continue };
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            let addr = ip(format!("status.loadBalancer.ingress[{i}].ip"), text)?;
            load_balancer_ips.push((i, addr));
        }
    }
    let mut source_ranges = Vec::new();
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.loadBalancerSourceRanges[{i}]");
        match r.trim().parse::<IpNet>() {
            Ok(net) => source_ranges.push(net.trunc()),
            Err(_) => return invalid(field, format!("{r:?} is not a CIDR")),
        }
    }
    let policy = |field: &str, value: &Option<String>| match value.as_deref() {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => invalid(
            field,
            format!("unknown traffic policy {other:?} (Cluster or Local)"),
        ),
    };
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let config = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref());
            match config.and_then(|c| c.timeout_seconds) {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t @ 1..=86400) => Some(t as u32),
                Some(t) => {
                    let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
                    return invalid(field, format!("{t} is not in 1..=86400"));
                }
            }
        }
        Some(other) => {
            return invalid(
                "spec.sessionAffinity",
                format!("unknown affinity {other:?}"),
            )
        }
    };
    // The API server's rules, after the model's own checks of what it reads.
    crate::validate::service(svc)?;
    Ok(ServiceInfo {
        created: svc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        shape,
        has_selector: spec.selector.as_ref().is_some_and(|s| !s.is_empty()),
        ports,
        external_ips: ips("spec.externalIPs", &spec.external_ips)?,
        load_balancer_ips,
        source_ranges,
        external_local: policy("spec.externalTrafficPolicy", &spec.external_traffic_policy)?,
        internal_local: policy("spec.internalTrafficPolicy", &spec.internal_traffic_policy)?,
        affinity_timeout,
        health_check_node_port: match spec.health_check_node_port {
            None | Some(0) => None,
            Some(p @ 1..=65535) => Some(p as u16),
            Some(p) => return invalid("spec.healthCheckNodePort", format!("{p} is not a port")),
        },
    })
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset: three hours.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

fn cluster_ips(svc: &Service) -> Result<Shape, Invalid> {
    let spec = svc.spec.as_ref().expect("checked by the caller");
    let listed: Vec<(String, &str)> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("spec.clusterIPs[{i}]"), a.as_str()))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .map(|a| ("spec.clusterIP".to_string(), a.as_str()))
            .collect(),
    };
    match listed.first() {
        None | Some((_, "")) => return Ok(Shape::Unallocated),
        Some((_, "None")) => return Ok(Shape::Headless),
        _ => {}
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for (field, text) in listed {
        let addr = ip(field.clone(), text)?;
        if ips.iter().any(|a| a.is_ipv4() == addr.is_ipv4()) {
            return invalid(field, "a second address of the same family");
        }
        ips.push(addr);
    }
    Ok(Shape::ClusterIps(ips))
}

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service an EndpointSlice names in its `kubernetes.io/service-name` label.
pub fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    let labels = slice.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

/// An EndpointSlice of addressType IPv4 or IPv6; `None` for FQDN, and for a slice without the
/// `kubernetes.io/service-name` label: proxies ignore both (kube-proxy does).
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<Option<SliceInfo>, Invalid> {
    crate::validate::endpoint_slice(slice)?;
    let namespace = slice.metadata.namespace.clone().unwrap_or("default".into());
    let Some(service) = slice_service(slice) else {
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        tracing::debug!("EndpointSlice {namespace}/{name}: ignored: no {SERVICE_NAME_LABEL} label");
        return Ok(None);
    };
    let v6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        "FQDN" => return Ok(None),
        other => return invalid("addressType", format!("unknown address type {other:?}")),
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports"; kube-proxy cannot use it either.
        let Some(number) = p.port else { continue };
        ports.push(Port {
            name: p.name.clone().unwrap_or_default(),
            proto: protocol(format!("ports[{i}].protocol"), p.protocol.as_deref())?,
            port: port_number(format!("ports[{i}].port"), number)?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
        // Every address of an endpoint is the same Pod; proxies use the first.
        let Some(first) = ep.addresses.first() else {
            return invalid(format!("endpoints[{i}].addresses"), "is empty");
        };
        let field = format!("endpoints[{i}].addresses[0]");
        let addr = ip(field.clone(), first)?;
        if addr.is_ipv6() != v6 {
            let msg = format!("{addr} does not match addressType {}", slice.address_type);
            return invalid(field, msg);
        }
        let conditions = ep.conditions.as_ref();
        // Unknown conditions count as ready and serving, not terminating (the API's reading).
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let given = ep.hints.as_ref();
        let nodes = given.and_then(|h| h.for_nodes.as_ref());
        let zones = given.and_then(|h| h.for_zones.as_ref());
        endpoints.push(EndpointInfo {
            ip: addr,
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep.node_name.as_deref().map(Arc::from),
            nodes: hints(nodes.map(|n| n.iter().map(|n| n.name.as_str()))),
            zones: hints(zones.map(|z| z.iter().map(|z| z.name.as_str()))),
        });
    }
    Ok(Some(SliceInfo {
        service: (namespace.into(), service.into()),
        ports,
        endpoints,
    }))
}

/// v1 Endpoints converted as the EndpointSlice mirroring controller does: one slice per subset
/// and address family; `addresses` are ready, `notReadyAddresses` are not.
pub fn endpoints(eps: &Endpoints) -> Result<Vec<SliceInfo>, Invalid> {
    crate::validate::endpoints(eps)?;
    let namespace = eps.metadata.namespace.clone().unwrap_or("default".into());
    let name = eps.metadata.name.as_deref().unwrap_or_default();
    let service: ServiceName = (namespace.into(), name.into());
    let mut slices = Vec::new();
    for (s, subset) in eps.subsets.iter().flatten().enumerate() {
        let ports = subset_ports(s, subset.ports.iter().flatten())?;
        let mut by_family: [Vec<EndpointInfo>; 2] = [vec![], vec![]];
        let lists = [
            ("addresses", true, &subset.addresses),
            ("notReadyAddresses", false, &subset.not_ready_addresses),
        ];
        for (list, ready, addresses) in lists {
            for (a, address) in addresses.iter().flatten().enumerate() {
                let EndpointAddress {
                    ip: text,
                    node_name,
                    ..
                } = address;
                let addr = ip(format!("subsets[{s}].{list}[{a}].ip"), text)?;
                let node_name = node_name.as_deref().map(Arc::from);
                let endpoint = EndpointInfo::plain(addr, ready, node_name);
                by_family[usize::from(addr.is_ipv6())].push(endpoint);
            }
        }
        for endpoints in by_family.into_iter().filter(|e| !e.is_empty()) {
            slices.push(SliceInfo {
                service: service.clone(),
                ports: ports.clone(),
                endpoints,
            });
        }
    }
    Ok(slices)
}

fn subset_ports<'a>(
    subset: usize,
    ports: impl Iterator<Item = &'a EndpointPort>,
) -> Result<Vec<Port>, Invalid> {
    ports
        .enumerate()
        .map(|(i, p)| {
            let field = |f: &str| format!("subsets[{subset}].ports[{i}].{f}");
            Ok(Port {
                name: p.name.clone().unwrap_or_default(),
                proto: protocol(field("protocol"), p.protocol.as_deref())?,
                port: port_number(field("port"), p.port)?,
            })
        })
        .collect()
}

/// A protocol as its IANA number, for packed slices (the IR type is not serializable).
mod proto_number {
    use serde::{Deserialize, Deserializer, Serializer};
    use svc_nft_ir::L4Proto;

    pub fn serialize<S: Serializer>(p: &L4Proto, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(match p {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Sctp => 132,
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<L4Proto, D::Error> {
        match u8::deserialize(d)? {
            6 => Ok(L4Proto::Tcp),
            17 => Ok(L4Proto::Udp),
            132 => Ok(L4Proto::Sctp),
            n => Err(serde::de::Error::custom(format!("protocol {n}"))),
        }
    }
}

/// The ranges of a ServiceCIDR (`ValidateServiceCIDR`: one or two CIDRs, one per family, each
/// written as its network address).
pub fn service_cidr(cidr: &ServiceCIDR) -> Result<Vec<IpNet>, Invalid> {
    crate::validate::service_cidr_meta(cidr)?;
    let field = "spec.cidrs";
    let texts = cidr.spec.as_ref().and_then(|s| s.cidrs.as_deref());
    let texts = texts.unwrap_or_default();
    if texts.is_empty() {
        return invalid(field, "at least one CIDR required");
    }
    if texts.len() > 2 {
        return invalid(field, "may only hold up to 2 values");
    }
    let mut nets = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let net: IpNet = text.parse().or_else(|_| {
            let msg =
                format!("{text:?} must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)");
            invalid(format!("{field}[{i}]"), msg)
        })?;
        if net.trunc() != net {
            let msg = format!("{text:?} must be in canonical form ({})", net.trunc());
            return invalid(format!("{field}[{i}]"), msg);
        }
        nets.push(net);
    }
    if let [a, b] = nets[..] {
        if matches!(a, IpNet::V4(_)) == matches!(b, IpNet::V4(_)) {
            let msg = "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64";
            return invalid(field, msg);
        }
    }
    Ok(nets)
}
