//! Synthetic clusters for the svc-nft benchmarks.
//!
//! [`synthetic_cluster`] builds k8s-openapi objects directly (no YAML round trip), the way the
//! control plane would hand them over: one `ClusterIP` Service per index, each with one
//! EndpointSlice per address family holding N ready endpoints.
//!
//! Everything is deterministic and derived from the Service index `i`:
//! - Service `bench/svc-<i>`, cluster IP `10.96.0.0/12` + `i + 1` (room for ~1M Services),
//!   port 80 → targetPort 8080 (unnamed);
//! - EndpointSlice `bench/svc-<i>-v4`, endpoint `j` at `10.128.0.0/11` + `j * services + i + 1`.
//!   Addresses are laid out column by column, so endpoint `j` of a Service never collides with
//!   another Service's, whatever the endpoint count of any one Service (which is what
//!   [`Synthetic::with_endpoints`] relies on to grow one Service).
//!
//! # The mix
//!
//! [`Synthetic::mixed`] spreads every Service feature the compiler knows over the Services, each
//! by a residue of `i` so they overlap in every combination (Service 0 has all of them):
//!
//! - `i % 3 == 1`: UDP instead of TCP;
//! - `i % 8 == 0`: dual-stack, with a second cluster IP from `fd00:10:96::/108` and a second
//!   EndpointSlice `svc-<i>-v6` from `fd00:10:128::/64`;
//! - `i % 5 == 0`: `type: NodePort` (see below);
//! - `i % 7 == 0`: `type: LoadBalancer` (wins over NodePort), with one ingress IP,
//!   `100.64.0.0/10` + `i + 1`;
//! - NodePort and LoadBalancer Services with `i % 16 < 8`: `externalTrafficPolicy: Local`
//!   (half of each type, dual-stack ones included);
//! - `i % 11 == 0`: `internalTrafficPolicy: Local`;
//! - `i % 14 == 0`: `loadBalancerSourceRanges: [10.0.0.0/8, 192.168.0.0/16]` (LoadBalancers
//!   only);
//! - `i % 13 == 0`: `sessionAffinity: ClientIP`, with `timeoutSeconds: 600` when
//!   `i % 26 == 13`, else the default (3 h);
//! - `i % 6 == 0`: one more endpoint per slice, serving and terminating but not ready, at
//!   `10.160.0.0/11` + `i + 1` (v6: `fd00:10:128:0:8000::` + `i + 1`); never programmed, since
//!   the ready ones win;
//! - `i % 9 == 0`: zone hints, every endpoint hinted for its own zone.
//!
//! NodePorts come from `30000-32767` in Service order, one per NodePort or LoadBalancer Service,
//! so that no two collide: the first 2768 such Services get one (those up to index ~8800),
//! later would-be NodePort Services stay `ClusterIP`, and later LoadBalancers have
//! `allocateLoadBalancerNodePorts: false` (as with a load balancer that routes to Pods).
//! See [`Synthetic::node_port`].
//!
//! Endpoint `j` of Service `i` runs on node `node-<(i + j) % 50>` (the terminating one on
//! endpoint 0's node), and node `node-<k>` is in zone `zone-<k % 3>`. [`node_facts`] is
//! `node-0` in `zone-0`: three Services in fifty have an endpoint on it, so most of those
//! with a `Local` policy have none, which the compiler reports as notes (DROP), and zone hints
//! narrow a Service to its one or two endpoints in `zone-0`.
//!
//! Without the mix, the endpoints carry no node, zone or hint, and only the `ready` condition.

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use svc_nft_compiler::{Compiled, NodeFacts, Object, Origin, Resource};

/// Namespace of every generated object.
pub const NAMESPACE: &str = "bench";
/// The Service port.
pub const PORT: u16 = 80;
/// The port the endpoints listen on (the Service's targetPort).
pub const TARGET_PORT: u16 = 8080;
/// Cluster IPs are allocated from here (v4).
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/12";
/// The Pod network (v4): ready endpoints in its lower half, terminating ones in its upper.
pub const POD_CIDR_V4: &str = "10.128.0.0/10";
/// Cluster IPs of dual-stack Services (v6).
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/108";
/// Endpoints of dual-stack Services (v6).
pub const POD_CIDR_V6: &str = "fd00:10:128::/64";
/// Load-balancer ingress IPs of the mix.
pub const LOAD_BALANCER_CIDR: &str = "100.64.0.0/10";
/// `loadBalancerSourceRanges` of the mix.
pub const SOURCE_RANGES: [&str; 2] = ["10.0.0.0/8", "192.168.0.0/16"];
/// The NodePort range (kube-apiserver's default `--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Nodes the mix's endpoints are spread over, `node-0` … `node-49`.
pub const NODES: usize = 50;
/// Zones of those nodes: `node-<k>` is in `zone-<k % ZONES>`.
pub const ZONES: usize = 3;
/// The node the rules are compiled for ([`node_facts`]), its zone and addresses.
pub const NODE_NAME: &str = "node-0";
pub const NODE_ZONE: &str = "zone-0";
pub const NODE_IP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const NODE_IP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

const SERVICE_BASE_V4: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const SERVICE_SIZE_V4: u64 = 1 << 20;
const POD_BASE_V4: u32 = u32::from_be_bytes([10, 128, 0, 0]);
/// Ready endpoints: the lower half of the Pod network.
const READY_SIZE_V4: u64 = 1 << 21;
const TERMINATING_BASE_V4: u32 = u32::from_be_bytes([10, 160, 0, 0]);
const LB_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
const LB_SIZE: u64 = 1 << 22;
const SERVICE_BASE_V6: u128 = 0xfd00_0010_0096_0000_0000_0000_0000_0000;
const SERVICE_SIZE_V6: u64 = 1 << 20;
const POD_BASE_V6: u128 = 0xfd00_0010_0128_0000_0000_0000_0000_0000;
const TERMINATING_BASE_V6: u128 = POD_BASE_V6 + (1 << 63);

/// `services` TCP, IPv4-only Services with `endpoints_per_service` ready endpoints each: see
/// the [module documentation](self) for names and addresses.
pub fn synthetic_cluster(services: usize, endpoints_per_service: usize) -> Vec<Object> {
    Synthetic::new(services, endpoints_per_service).objects()
}

/// The shape of a synthetic cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Synthetic {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Every Service feature mixed in: see [the mix](self#the-mix).
    pub mix: bool,
}

impl Synthetic {
    /// TCP, IPv4-only `ClusterIP` Services.
    pub fn new(services: usize, endpoints_per_service: usize) -> Synthetic {
        Synthetic {
            services,
            endpoints_per_service,
            mix: false,
        }
    }

    /// Every Service feature the compiler knows, spread over the Services: protocols,
    /// dual-stack, NodePorts, load balancers, traffic policies, source ranges, affinity,
    /// terminating endpoints and zone hints (see [the mix](self#the-mix)).
    pub fn mixed(self) -> Synthetic {
        Synthetic { mix: true, ..self }
    }

    /// The cluster's objects: for each Service, the Service then its EndpointSlice(s).
    pub fn objects(&self) -> Vec<Object> {
        self.build(None)
    }

    /// The same cluster, except that Service `service` has `endpoints` ready endpoints (per
    /// family) instead of [`Synthetic::endpoints_per_service`].
    pub fn with_endpoints(&self, service: usize, endpoints: usize) -> Vec<Object> {
        assert!(service < self.services, "no Service {service}");
        self.build(Some((service, endpoints)))
    }

    /// Whether Service `i` is UDP.
    pub fn is_udp(&self, i: usize) -> bool {
        self.mix && i % 3 == 1
    }

    /// Whether Service `i` also has a v6 cluster IP and v6 endpoints.
    pub fn is_dual_stack(&self, i: usize) -> bool {
        self.mix && i.is_multiple_of(8)
    }

    /// Whether Service `i` is `type: LoadBalancer`.
    pub fn is_load_balancer(&self, i: usize) -> bool {
        self.mix && i.is_multiple_of(7)
    }

    /// The NodePort of Service `i`, if it has one: NodePort and LoadBalancer Services are
    /// numbered in index order from the bottom of [`NODE_PORTS`], until the range runs out.
    pub fn node_port(&self, i: usize) -> Option<u16> {
        if !self.mix || !(i.is_multiple_of(5) || i.is_multiple_of(7)) {
            return None;
        }
        // How many Services before `i` wanted one: multiples of 5 or 7 in 0..i.
        let rank = i.div_ceil(5) + i.div_ceil(7) - i.div_ceil(35);
        let port = usize::from(*NODE_PORTS.start()) + rank;
        u16::try_from(port).ok().filter(|p| NODE_PORTS.contains(p))
    }

    /// `spec.type` of Service `i`.
    pub fn service_type(&self, i: usize) -> &'static str {
        if self.is_load_balancer(i) {
            "LoadBalancer"
        } else if self.node_port(i).is_some() {
            "NodePort"
        } else {
            "ClusterIP"
        }
    }

    /// Whether Service `i` has `externalTrafficPolicy: Local`.
    pub fn is_external_local(&self, i: usize) -> bool {
        self.service_type(i) != "ClusterIP" && i % 16 < 8
    }

    /// Whether Service `i` has `internalTrafficPolicy: Local`.
    pub fn is_internal_local(&self, i: usize) -> bool {
        self.mix && i.is_multiple_of(11)
    }

    /// Whether Service `i` has [`SOURCE_RANGES`] (all of them are LoadBalancers).
    pub fn has_source_ranges(&self, i: usize) -> bool {
        self.mix && i.is_multiple_of(14)
    }

    /// `sessionAffinity: ClientIP` of Service `i`: `Some(timeoutSeconds)`, where `None` is
    /// the default timeout.
    pub fn affinity(&self, i: usize) -> Option<Option<i32>> {
        (self.mix && i.is_multiple_of(13)).then_some((i % 26 == 13).then_some(600))
    }

    /// Whether Service `i` has a serving, terminating, not ready endpoint (per family).
    pub fn has_terminating(&self, i: usize) -> bool {
        self.mix && i.is_multiple_of(6)
    }

    /// Whether the endpoints of Service `i` carry zone hints.
    pub fn has_zone_hints(&self, i: usize) -> bool {
        self.mix && i.is_multiple_of(9)
    }

    /// What Service `i` is made of, e.g. `["TCP", "NodePort 30001", "eTP Local"]`, for
    /// reports.
    pub fn features(&self, i: usize) -> Vec<String> {
        let mut out = vec![self.protocol(i)];
        if self.is_dual_stack(i) {
            out.push("dual-stack".into());
        }
        if self.is_load_balancer(i) {
            out.push("LoadBalancer".into());
        }
        out.extend(self.node_port(i).map(|port| format!("NodePort {port}")));
        let flags = [
            (self.is_external_local(i), "eTP Local"),
            (self.is_internal_local(i), "iTP Local"),
            (self.has_source_ranges(i), "source ranges"),
            (self.affinity(i).is_some(), "ClientIP affinity"),
            (self.has_terminating(i), "terminating endpoint"),
            (self.has_zone_hints(i), "zone hints"),
        ];
        out.extend(flags.iter().filter(|f| f.0).map(|f| f.1.to_string()));
        out
    }

    /// The node endpoint `j` of Service `i` runs on, `0..NODES`.
    pub fn node_of(&self, i: usize, j: usize) -> usize {
        (i + j) % NODES
    }

    /// The v4 cluster IP of Service `i`.
    pub fn cluster_ip(&self, i: usize) -> Ipv4Addr {
        nth_v4(
            SERVICE_BASE_V4,
            SERVICE_SIZE_V4,
            i as u64 + 1,
            SERVICE_CIDR_V4,
        )
    }

    /// The v6 cluster IP of Service `i` (used when it is dual-stack).
    pub fn cluster_ip_v6(&self, i: usize) -> Ipv6Addr {
        let offset = i as u64 + 1;
        assert!(
            offset < SERVICE_SIZE_V6,
            "{SERVICE_CIDR_V6} holds no cluster IP for Service {i}"
        );
        Ipv6Addr::from(SERVICE_BASE_V6 + u128::from(offset))
    }

    /// The load-balancer IP of Service `i` (used when it is a LoadBalancer).
    pub fn load_balancer_ip(&self, i: usize) -> Ipv4Addr {
        nth_v4(LB_BASE, LB_SIZE, i as u64 + 1, LOAD_BALANCER_CIDR)
    }

    /// The v4 address of endpoint `j` of Service `i`.
    pub fn endpoint_ip(&self, i: usize, j: usize) -> Ipv4Addr {
        let offset = j as u64 * self.services as u64 + i as u64 + 1;
        nth_v4(POD_BASE_V4, READY_SIZE_V4, offset, "10.128.0.0/11")
    }

    /// The v6 address of endpoint `j` of Service `i`.
    pub fn endpoint_ip_v6(&self, i: usize, j: usize) -> Ipv6Addr {
        let offset = j as u128 * self.services as u128 + i as u128 + 1;
        Ipv6Addr::from(POD_BASE_V6 + offset)
    }

    /// The address of the terminating endpoint of Service `i` in family `v6`.
    pub fn terminating_ip(&self, i: usize, v6: bool) -> IpAddr {
        if v6 {
            Ipv6Addr::from(TERMINATING_BASE_V6 + i as u128 + 1).into()
        } else {
            nth_v4(
                TERMINATING_BASE_V4,
                READY_SIZE_V4,
                i as u64 + 1,
                "10.160.0.0/11",
            )
            .into()
        }
    }

    fn build(&self, changed: Option<(usize, usize)>) -> Vec<Object> {
        let mut resources = Vec::with_capacity(self.services * 2);
        for i in 0..self.services {
            let endpoints = match changed {
                Some((service, n)) if service == i => n,
                _ => self.endpoints_per_service,
            };
            resources.push(Resource::Service(Box::new(self.service(i))));
            resources.push(Resource::EndpointSlice(Box::new(
                self.slice(i, false, endpoints),
            )));
            if self.is_dual_stack(i) {
                resources.push(Resource::EndpointSlice(Box::new(
                    self.slice(i, true, endpoints),
                )));
            }
        }
        resources
            .into_iter()
            .enumerate()
            .map(|(k, resource)| Object {
                origin: Origin::document("bench", k + 1),
                resource,
            })
            .collect()
    }

    fn protocol(&self, i: usize) -> String {
        if self.is_udp(i) { "UDP" } else { "TCP" }.to_string()
    }

    fn service(&self, i: usize) -> Service {
        let name = format!("svc-{i}");
        let v4 = self.cluster_ip(i).to_string();
        let (ips, families, policy) = if self.is_dual_stack(i) {
            let v6 = self.cluster_ip_v6(i).to_string();
            (
                vec![v4.clone(), v6],
                vec!["IPv4", "IPv6"],
                "PreferDualStack",
            )
        } else {
            (vec![v4.clone()], vec!["IPv4"], "SingleStack")
        };
        let kind = self.service_type(i);
        let local = |yes: bool| yes.then(|| "Local".to_string());
        let external_policy = (kind != "ClusterIP")
            .then(|| local(self.is_external_local(i)).unwrap_or_else(|| "Cluster".to_string()));
        let affinity = self.affinity(i);
        let load_balancer = |ip: Ipv4Addr| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            ..ServiceStatus::default()
        };
        Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(kind.into()),
                selector: Some(BTreeMap::from([("app".to_string(), name)])),
                cluster_ip: Some(v4),
                cluster_ips: Some(ips),
                ip_families: Some(families.into_iter().map(String::from).collect()),
                ip_family_policy: Some(policy.into()),
                ports: Some(vec![ServicePort {
                    port: PORT.into(),
                    protocol: Some(self.protocol(i)),
                    target_port: Some(IntOrString::Int(TARGET_PORT.into())),
                    node_port: self.node_port(i).map(i32::from),
                    ..ServicePort::default()
                }]),
                allocate_load_balancer_node_ports: (kind == "LoadBalancer"
                    && self.node_port(i).is_none())
                .then_some(false),
                external_traffic_policy: external_policy,
                internal_traffic_policy: local(self.is_internal_local(i)),
                load_balancer_source_ranges: self
                    .has_source_ranges(i)
                    .then(|| SOURCE_RANGES.map(String::from).to_vec()),
                session_affinity: affinity.map(|_| "ClientIP".to_string()),
                session_affinity_config: affinity.flatten().map(|timeout| SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig {
                        timeout_seconds: Some(timeout),
                    }),
                }),
                ..ServiceSpec::default()
            }),
            status: self
                .is_load_balancer(i)
                .then(|| load_balancer(self.load_balancer_ip(i))),
        }
    }

    fn slice(&self, i: usize, v6: bool, count: usize) -> EndpointSlice {
        let (family, address_type) = if v6 { ("v6", "IPv6") } else { ("v4", "IPv4") };
        let address = |j: usize| -> IpAddr {
            if v6 {
                self.endpoint_ip_v6(i, j).into()
            } else {
                self.endpoint_ip(i, j).into()
            }
        };
        let mut endpoints: Vec<Endpoint> = (0..count)
            .map(|j| self.endpoint(i, address(j), self.node_of(i, j), true))
            .collect();
        if self.has_terminating(i) {
            let ip = self.terminating_ip(i, v6);
            endpoints.push(self.endpoint(i, ip, self.node_of(i, 0), false));
        }
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("svc-{i}-{family}")),
                namespace: Some(NAMESPACE.into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_string(),
                    format!("svc-{i}"),
                )])),
                ..ObjectMeta::default()
            },
            address_type: address_type.into(),
            ports: Some(vec![EndpointPort {
                port: Some(TARGET_PORT.into()),
                protocol: Some(self.protocol(i)),
                ..EndpointPort::default()
            }]),
            endpoints: Some(endpoints),
        }
    }

    /// An endpoint of Service `i` on `node`: ready, or serving and terminating but not ready.
    /// Only the mix says where it runs.
    fn endpoint(&self, i: usize, ip: IpAddr, node: usize, ready: bool) -> Endpoint {
        let conditions = EndpointConditions {
            ready: Some(ready),
            serving: (!ready).then_some(true),
            terminating: (!ready).then_some(true),
        };
        let zone = format!("zone-{}", node % ZONES);
        let hints = self.has_zone_hints(i).then(|| EndpointHints {
            for_zones: Some(vec![ForZone { name: zone.clone() }]),
            for_nodes: None,
        });
        Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(conditions),
            node_name: self.mix.then(|| format!("node-{node}")),
            zone: self.mix.then_some(zone),
            hints,
            ..Endpoint::default()
        }
    }
}

/// Address `base + offset` of a v4 range of `size` addresses, short of its broadcast address.
fn nth_v4(base: u32, size: u64, offset: u64, range: &str) -> Ipv4Addr {
    assert!(
        offset < size - 1,
        "{range} holds no address at offset {offset}"
    );
    Ipv4Addr::from(base + offset as u32)
}

/// A node of the synthetic cluster, [`NODE_NAME`] in [`NODE_ZONE`] with [`NODE_IP_V4`] and
/// [`NODE_IP_V6`] (so NodePorts are programmed in both families), the default table and the
/// Pod and Service CIDRs of both families (so masquerade and the service-CIDR drop rules are
/// in the ruleset, as on a real node). None of it changes the ruleset of a cluster without
/// [the mix](self#the-mix).
pub fn node_facts() -> NodeFacts {
    NodeFacts {
        node_name: Some(NODE_NAME.into()),
        zone: Some(NODE_ZONE.into()),
        node_ips: vec![NODE_IP_V4.into(), NODE_IP_V6.into()],
        cluster_cidrs: vec![
            POD_CIDR_V4.parse().expect("a CIDR"),
            POD_CIDR_V6.parse().expect("a CIDR"),
        ],
        service_cidrs: vec![
            SERVICE_CIDR_V4.parse().expect("a CIDR"),
            SERVICE_CIDR_V6.parse().expect("a CIDR"),
        ],
        ..NodeFacts::default()
    }
}

/// [`svc_nft_compiler::compile`], panicking if any object was rejected: a benchmark of a
/// cluster that does not compile whole would measure the wrong thing. Notes (what the
/// compiler chose not to program, e.g. a `Local` policy without a local endpoint) are fine.
pub fn compile_clean(objects: &[Object], node: &NodeFacts) -> Compiled {
    let compiled = svc_nft_compiler::compile(objects, node);
    if let Some(first) = compiled.diagnostics.first() {
        panic!(
            "the synthetic cluster has {} diagnostics, the first: {first}",
            compiled.diagnostics.len()
        );
    }
    compiled
}

#[cfg(test)]
mod tests;
