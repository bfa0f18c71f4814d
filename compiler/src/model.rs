//! Validation: k8s-openapi objects in, the compiler's own checked model out. Every check names
//! the field it rejects, so the user can find it.

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::IpAddr;
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
pub type ServiceName = (String, String);

/// How a Service is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub name: String,
    pub proto: L4Proto,
    pub port: u16,
}

/// A validated Service.
#[derive(Clone, Debug)]
pub struct ServiceInfo {
    pub shape: Shape,
    pub has_selector: bool,
    pub ports: Vec<Port>,
}

/// A validated set of endpoints of one address family: an EndpointSlice, or the mirror of one
/// subset of v1 Endpoints.
#[derive(Clone, Debug)]
pub struct SliceInfo {
    pub service: ServiceName,
    pub ports: Vec<Port>,
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Clone, Debug)]
pub struct EndpointInfo {
    pub ip: IpAddr,
    pub ready: bool,
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
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        ports.push(Port {
            name: p.name.clone().unwrap_or_default(),
            proto: protocol(format!("spec.ports[{i}].protocol"), p.protocol.as_deref())?,
            port: port_number(format!("spec.ports[{i}].port"), p.port)?,
        });
    }
    let has_selector = spec.selector.as_ref().is_some_and(|s| !s.is_empty());
    let shape = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ExternalName" => Shape::ExternalName(spec.external_name.clone().unwrap_or_default()),
        "ClusterIP" | "NodePort" | "LoadBalancer" => cluster_ips(svc)?,
        other => return invalid("spec.type", format!("unknown Service type {other:?}")),
    };
    Ok(ServiceInfo {
        shape,
        has_selector,
        ports,
    })
}

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

/// An EndpointSlice of addressType IPv4 or IPv6 (`None` for FQDN, which proxies ignore).
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<Option<SliceInfo>, Invalid> {
    let namespace = slice.metadata.namespace.clone().unwrap_or("default".into());
    let labels = slice.metadata.labels.as_ref();
    let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        let field = format!("metadata.labels[{SERVICE_NAME_LABEL}]");
        return invalid(field, "is required: it names the slice's Service");
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
        endpoints.push(EndpointInfo {
            ip: addr,
            // Unknown readiness counts as ready (the API's documented reading).
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        });
    }
    Ok(Some(SliceInfo {
        service: (namespace, service.clone()),
        ports,
        endpoints,
    }))
}

/// v1 Endpoints converted as the EndpointSlice mirroring controller does: one slice per subset
/// and address family; `addresses` are ready, `notReadyAddresses` are not.
pub fn endpoints(eps: &Endpoints) -> Result<Vec<SliceInfo>, Invalid> {
    let namespace = eps.metadata.namespace.clone().unwrap_or("default".into());
    let service = (namespace, eps.metadata.name.clone().unwrap_or_default());
    let mut slices = Vec::new();
    for (s, subset) in eps.subsets.iter().flatten().enumerate() {
        let ports = subset_ports(s, subset.ports.iter().flatten())?;
        let mut by_family: [Vec<EndpointInfo>; 2] = [vec![], vec![]];
        let lists = [
            ("addresses", true, &subset.addresses),
            ("notReadyAddresses", false, &subset.not_ready_addresses),
        ];
        for (list, ready, addresses) in lists {
            for (a, EndpointAddress { ip: text, .. }) in addresses.iter().flatten().enumerate() {
                let addr = ip(format!("subsets[{s}].{list}[{a}].ip"), text)?;
                by_family[usize::from(addr.is_ipv6())].push(EndpointInfo { ip: addr, ready });
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
