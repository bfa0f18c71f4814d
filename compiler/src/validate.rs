//! The API server's validation of the fields a Service proxy reads, so that svc-nft refuses
//! what the API refuses (and accepts what it accepts). Each rule names the function of
//! kubernetes' `pkg/apis/core/validation` or `pkg/apis/discovery/validation` it follows.
//!
//! Manifests are read as written, before the API server's defaulting (type ClusterIP, protocol
//! TCP, session affinity None, traffic policies Cluster, ipMode VIP, clusterIPs from clusterIP)
//! and before its allocators (cluster IPs, NodePorts, health-check NodePorts): a rule that
//! only a missing default or allocation would break is not applied. Format checks the model
//! already makes (port numbers, protocols, IP and CIDR syntax) stay in `model`.

use crate::model::Invalid;
use k8s_openapi::api::core::v1::{Endpoints, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::HashSet;
use std::net::IpAddr;

type Checked = Result<(), Invalid>;

fn fail(field: impl Into<String>, message: impl Into<String>) -> Checked {
    Err(Invalid {
        field: field.into(),
        message: message.into(),
    })
}

/// `IsDNS1123Label`: lower case alphanumerics and '-', alphanumeric at both ends, ≤ 63.
pub fn dns1123_label(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&s.len())
        && s.chars().all(|c| ok(c) || c == '-')
        && s.starts_with(ok)
        && s.ends_with(ok)
}

/// `IsDNS1035Label`: a DNS-1123 label that starts with a letter.
fn dns1035_label(s: &str) -> bool {
    dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// `IsDNS1123Subdomain`: dot-separated DNS-1123 labels, ≤ 253 in all.
fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns1123_label)
}

/// `IsValidPortName` (IANA_SVC_NAME): what a named targetPort must be.
fn iana_service_name(s: &str) -> Result<(), &'static str> {
    let chars_ok = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    match () {
        _ if s.is_empty() || s.len() > 15 => Err("must be 1 to 15 characters"),
        _ if !chars_ok => {
            Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
        }
        _ if !s.chars().any(|c| c.is_ascii_lowercase()) => {
            Err("must contain at least one letter (a-z)")
        }
        _ if s.contains("--") => Err("must not contain consecutive hyphens"),
        _ if s.starts_with('-') || s.ends_with('-') => Err("must not begin or end with a hyphen"),
        _ => Ok(()),
    }
}

const LABEL: &str = "must be a lowercase RFC 1123 label: lower case alphanumeric characters or '-', starting and ending with an alphanumeric character";
const SUBDOMAIN: &str = "must be a lowercase RFC 1123 subdomain: lower case alphanumeric characters, '-' or '.', starting and ending with an alphanumeric character";

/// `ValidateEndpointIP` (formerly `ValidateNonSpecialIP`): no address a Service may send to
/// could be one of these.
pub fn special_ip(ip: &IpAddr) -> Option<&'static str> {
    let (unspecified, loopback, link_local, link_local_multicast) = match ip {
        IpAddr::V4(a) => (
            a.is_unspecified(),
            a.is_loopback(),
            a.is_link_local(),
            a.octets()[..3] == [224, 0, 0],
        ),
        IpAddr::V6(a) => (
            a.is_unspecified(),
            a.is_loopback(),
            a.segments()[0] & 0xffc0 == 0xfe80,
            a.segments()[0] & 0xff0f == 0xff02,
        ),
    };
    match () {
        _ if unspecified => Some("may not be unspecified (0.0.0.0, ::)"),
        _ if loopback => Some("may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        _ if link_local => Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
        _ if link_local_multicast => {
            Some("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")
        }
        _ => None,
    }
}

/// An address that must be a usable IP (`ValidateEndpointIP`); syntax errors are left to
/// the model, which names them.
fn usable_ip(field: String, text: &str) -> Checked {
    match text.parse::<IpAddr>().ok().as_ref().and_then(special_ip) {
        Some(why) => fail(field, format!("{text}: {why}")),
        None => Ok(()),
    }
}

/// `ValidateObjectMeta`: the name (by `name_ok`, described by `rule`) and the namespace.
fn meta(meta: &ObjectMeta, name_ok: fn(&str) -> bool, rule: &str) -> Checked {
    match meta.name.as_deref() {
        None | Some("") => return fail("metadata.name", "is required"),
        Some(name) if !name_ok(name) => return fail("metadata.name", format!("{name:?} {rule}")),
        _ => {}
    }
    match meta.namespace.as_deref() {
        Some(ns) if !dns1123_label(ns) => fail("metadata.namespace", format!("{ns:?} {LABEL}")),
        _ => Ok(()),
    }
}

/// `validateService` and `ValidateServiceCreate`, for what the proxy reads.
pub fn service(svc: &Service) -> Checked {
    let rule = "must be a DNS-1035 label: lower case alphanumeric characters or '-', starting with a letter and ending with an alphanumeric character";
    meta(&svc.metadata, dns1035_label, rule)?;
    let Some(spec) = &svc.spec else {
        return Ok(());
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        external_name(spec)?;
    } else {
        cluster_ips(spec, kind)?;
    }
    ports(spec, kind)?;
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        usable_ip(format!("spec.externalIPs[{i}]"), ip)?;
    }
    policies(spec, kind)?;
    load_balancer(svc, kind)
}

/// ExternalName: `spec.externalName` a DNS name, no cluster IPs.
fn external_name(spec: &ServiceSpec) -> Checked {
    match spec
        .external_name
        .as_deref()
        .map(|n| n.strip_suffix('.').unwrap_or(n))
    {
        None | Some("") => return fail("spec.externalName", "is required for type ExternalName"),
        Some(name) if !dns1123_subdomain(name) => {
            return fail("spec.externalName", format!("{name:?} {SUBDOMAIN}"))
        }
        _ => {}
    }
    let set = |ips: &Option<Vec<String>>| ips.iter().flatten().any(|ip| !ip.is_empty());
    let cluster_ip = spec.cluster_ip.as_deref().is_some_and(|ip| !ip.is_empty());
    if cluster_ip || set(&spec.cluster_ips) {
        return fail(
            "spec.clusterIPs",
            "may not be set for ExternalName services",
        );
    }
    Ok(())
}

/// `ValidateServiceClusterIPsRelatedFields`: clusterIPs[0] is clusterIP; "None" alone; at
/// most two; headless is not for NodePort or LoadBalancer.
fn cluster_ips(spec: &ServiceSpec, kind: &str) -> Checked {
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    let first = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    if let (Some(ip), Some(listed)) = (first, ips.first()) {
        if ip != listed {
            return fail(
                "spec.clusterIPs",
                format!("first value {listed:?} must match clusterIP {ip:?}"),
            );
        }
    }
    if ips.len() > 1 && ips.iter().any(|ip| ip == "None") {
        return fail("spec.clusterIPs", "'None' must be the first and only value");
    }
    if ips.len() > 2 {
        return fail("spec.clusterIPs", "may only hold up to 2 values");
    }
    let headless = first == Some("None") || ips.first().is_some_and(|ip| ip == "None");
    if headless && matches!(kind, "NodePort" | "LoadBalancer") {
        let msg = format!("may not be set to 'None' for {kind} services");
        return fail("spec.clusterIPs[0]", msg);
    }
    if !headless && spec.ports.as_ref().is_none_or(Vec::is_empty) {
        return fail(
            "spec.ports",
            "is required (only headless and ExternalName Services may have none)",
        );
    }
    Ok(())
}

/// `validateServicePort` and the loops of `validateService` over ports.
fn ports(spec: &ServiceSpec, kind: &str) -> Checked {
    let list = spec.ports.as_deref().unwrap_or_default();
    let (mut names, mut ports, mut node_ports) = (HashSet::new(), HashSet::new(), HashSet::new());
    for (i, p) in list.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        port_name(p, list.len() > 1, &mut names, field("name"))?;
        target_port(p, field("targetPort"))?;
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !ports.insert((p.port, proto)) {
            let msg = format!("duplicate port {} and protocol {proto}", p.port);
            return fail(format!("spec.ports[{i}]"), msg);
        }
        match p.node_port.filter(|n| *n != 0) {
            Some(_) if kind == "ClusterIP" => {
                return fail(
                    field("nodePort"),
                    "may not be used when type is 'ClusterIP'",
                )
            }
            Some(n) if !node_ports.insert((n, proto)) => {
                return fail(
                    field("nodePort"),
                    format!("duplicate nodePort {n} for protocol {proto}"),
                )
            }
            _ => {}
        }
    }
    Ok(())
}

fn port_name(
    p: &ServicePort,
    required: bool,
    names: &mut HashSet<String>,
    field: String,
) -> Checked {
    match p.name.as_deref().unwrap_or_default() {
        "" if required => fail(field, "is required when a Service has more than one port"),
        "" => Ok(()),
        name if !dns1123_label(name) => fail(field, format!("{name:?} {LABEL}")),
        name if !names.insert(name.to_string()) => fail(field, format!("duplicate name {name:?}")),
        _ => Ok(()),
    }
}

/// `ValidatePortNumOrName`.
fn target_port(p: &ServicePort, field: String) -> Checked {
    match &p.target_port {
        Some(IntOrString::Int(n)) if !(0..=65535).contains(n) => {
            fail(field, format!("{n} must be between 1 and 65535, inclusive"))
        }
        Some(IntOrString::String(name)) => match iana_service_name(name) {
            Err(why) => fail(field, format!("{name:?} {why}")),
            Ok(()) => Ok(()),
        },
        _ => Ok(()),
    }
}

/// `validateServiceExternalTrafficPolicy`, the health-check NodePort, session affinity and
/// trafficDistribution.
fn policies(spec: &ServiceSpec, kind: &str) -> Checked {
    let external = matches!(kind, "NodePort" | "LoadBalancer")
        || (kind == "ClusterIP" && spec.external_ips.as_ref().is_some_and(|e| !e.is_empty()));
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    if spec.external_traffic_policy.is_some() && !external {
        let msg = "may only be set for externally-accessible services (NodePort, LoadBalancer, or externalIPs)";
        return fail("spec.externalTrafficPolicy", msg);
    }
    if spec.health_check_node_port.is_some_and(|p| p != 0) && !(kind == "LoadBalancer" && local) {
        let msg =
            "may only be set when type is 'LoadBalancer' and externalTrafficPolicy is 'Local'";
        return fail("spec.healthCheckNodePort", msg);
    }
    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    if affinity == "None" && spec.session_affinity_config.is_some() {
        return fail(
            "spec.sessionAffinityConfig",
            "must not be set when session affinity is None",
        );
    }
    match spec.traffic_distribution.as_deref() {
        None | Some("PreferClose" | "PreferSameZone" | "PreferSameNode") => Ok(()),
        Some(other) => fail(
            "spec.trafficDistribution",
            format!("unsupported value {other:?}: PreferClose, PreferSameZone or PreferSameNode"),
        ),
    }
}

/// `loadBalancerSourceRanges` and `ValidateLoadBalancerStatus`: for type LoadBalancer only.
fn load_balancer(svc: &Service, kind: &str) -> Checked {
    let spec = svc.spec.as_ref().expect("checked by the caller");
    let lb = kind == "LoadBalancer";
    if !lb
        && spec
            .load_balancer_source_ranges
            .as_ref()
            .is_some_and(|r| !r.is_empty())
    {
        return fail(
            "spec.loadBalancerSourceRanges",
            "may only be used when type is 'LoadBalancer'",
        );
    }
    let status = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    let ingress = status
        .and_then(|s| s.ingress.as_deref())
        .unwrap_or_default();
    if !lb && !ingress.is_empty() {
        return fail(
            "status.loadBalancer.ingress",
            "may only be used when spec.type is 'LoadBalancer'",
        );
    }
    for (i, ing) in ingress.iter().enumerate() {
        let field = format!("status.loadBalancer.ingress[{i}].ipMode");
        match (
            ing.ip.as_deref().unwrap_or_default(),
            ing.ip_mode.as_deref(),
        ) {
            ("", Some(_)) => return fail(field, "may not be specified when ip is not set"),
            (_, None | Some("VIP" | "Proxy")) => {}
            (_, Some(other)) => {
                return fail(field, format!("unsupported value {other:?}: VIP or Proxy"))
            }
        }
    }
    Ok(())
}

/// `ValidateServiceCIDR`'s object metadata: a cluster-scoped object with a DNS-1123 subdomain
/// name. Its CIDRs are checked by `model::service_cidr`, which reads them.
pub fn service_cidr_meta(cidr: &ServiceCIDR) -> Checked {
    meta(&cidr.metadata, dns1123_subdomain, SUBDOMAIN)
}

/// `ValidateEndpointSlice`: names, limits, usable addresses, unique port names.
pub fn endpoint_slice(slice: &EndpointSlice) -> Checked {
    meta(&slice.metadata, dns1123_subdomain, SUBDOMAIN)?;
    let endpoints = slice.endpoints.as_deref().unwrap_or_default();
    if endpoints.len() > 1000 {
        return fail(
            "endpoints",
            format!("{}: must have at most 1000 items", endpoints.len()),
        );
    }
    let ip_slice = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
    for (i, ep) in endpoints.iter().enumerate() {
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            return fail(
                format!("endpoints[{i}].addresses"),
                "must hold 1 to 100 addresses",
            );
        }
        for (j, address) in ep.addresses.iter().enumerate().filter(|_| ip_slice) {
            usable_ip(format!("endpoints[{i}].addresses[{j}]"), address)?;
        }
        if let Some(node) = ep.node_name.as_deref().filter(|n| !dns1123_subdomain(n)) {
            return fail(
                format!("endpoints[{i}].nodeName"),
                format!("{node:?} {SUBDOMAIN}"),
            );
        }
    }
    let mut names = HashSet::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}].name");
        match p.name.as_deref().unwrap_or_default() {
            name if !name.is_empty() && !dns1123_label(name) => {
                return fail(field, format!("{name:?} {LABEL}"))
            }
            // An unnamed port is a name too: two of them are duplicates.
            name if !names.insert(name) => return fail(field, format!("duplicate name {name:?}")),
            _ => {}
        }
    }
    Ok(())
}

/// `ValidateEndpoints`: each subset has addresses; they are usable; ports are named when
/// there are several.
pub fn endpoints(eps: &Endpoints) -> Checked {
    meta(&eps.metadata, dns1123_subdomain, SUBDOMAIN)?;
    for (s, subset) in eps.subsets.iter().flatten().enumerate() {
        let ready = subset.addresses.as_deref().unwrap_or_default();
        let not_ready = subset.not_ready_addresses.as_deref().unwrap_or_default();
        if ready.is_empty() && not_ready.is_empty() {
            return fail(
                format!("subsets[{s}]"),
                "must specify addresses or notReadyAddresses",
            );
        }
        let lists = [("addresses", ready), ("notReadyAddresses", not_ready)];
        for (list, addresses) in lists {
            for (a, address) in addresses.iter().enumerate() {
                usable_ip(format!("subsets[{s}].{list}[{a}].ip"), &address.ip)?;
            }
        }
        let ports = subset.ports.as_deref().unwrap_or_default();
        for (i, p) in ports.iter().enumerate() {
            let field = format!("subsets[{s}].ports[{i}].name");
            match p.name.as_deref().unwrap_or_default() {
                "" if ports.len() > 1 => {
                    return fail(field, "is required when a subset has more than one port")
                }
                "" => {}
                name if !dns1123_label(name) => return fail(field, format!("{name:?} {LABEL}")),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_api_servers_rules() {
        assert!(dns1123_label("my-name") && dns1123_label("123-abc"));
        assert!(!dns1123_label("My-name") && !dns1123_label("-a") && !dns1123_label("a.b"));
        assert!(!dns1123_label(&"a".repeat(64)));
        assert!(dns1035_label("web") && !dns1035_label("1web"));
        assert!(dns1123_subdomain("kube-dns.kube-system") && !dns1123_subdomain("a..b"));
        assert!(iana_service_name("http").is_ok() && iana_service_name("dns-tcp").is_ok());
        assert!(iana_service_name("8080").is_err() && iana_service_name("my--port").is_err());
        assert!(iana_service_name("a-very-long-port-name").is_err());
    }

    #[test]
    fn special_addresses_are_not_usable() {
        let special = |s: &str| special_ip(&s.parse().unwrap()).is_some();
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.5",
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(special(ip), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "192.0.2.1",
            "239.1.1.1",
            "2001:db8::1",
            "ff05::1",
        ] {
            assert!(!special(ip), "{ip}");
        }
    }
}
