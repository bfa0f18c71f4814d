//! Synthetic clusters for the svc-nft benchmarks.
//!
//! [`synthetic_cluster`] builds k8s-openapi objects directly (no YAML round trip), the way the
//! control plane would hand them over: one `ClusterIP` Service per index, each with one
//! EndpointSlice per address family holding N ready endpoints.
//!
//! Everything is deterministic and derived from the Service index `i`:
//! - Service `bench/svc-<i>`, cluster IP `10.96.0.0/12` + `i + 1` (room for ~1M Services),
//!   port 80 → targetPort 8080 (unnamed);
//! - EndpointSlice `bench/svc-<i>-v4`, endpoint `j` at `10.128.0.0/10` + `j * services + i + 1`.
//!   Addresses are laid out column by column, so endpoint `j` of a Service never collides with
//!   another Service's, whatever the endpoint count of any one Service (which is what
//!   [`Synthetic::with_endpoints`] relies on to grow one Service).
//!
//! With [`Synthetic::mixed`], one Service in three is UDP instead of TCP and one in eight is
//! dual-stack, with a second cluster IP from `fd00:10:96::/108` and a second EndpointSlice
//! `svc-<i>-v6` from `fd00:10:128::/64`.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use svc_nft_compiler::{Compiled, NodeFacts, Object, Origin, Resource};

/// Namespace of every generated object.
pub const NAMESPACE: &str = "bench";
/// The Service port.
pub const PORT: u16 = 80;
/// The port the endpoints listen on (the Service's targetPort).
pub const TARGET_PORT: u16 = 8080;
/// Cluster IPs are allocated from here (v4).
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/12";
/// Endpoints (Pod IPs) are allocated from here (v4).
pub const POD_CIDR_V4: &str = "10.128.0.0/10";
/// Cluster IPs of dual-stack Services (v6).
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/108";
/// Endpoints of dual-stack Services (v6).
pub const POD_CIDR_V6: &str = "fd00:10:128::/64";

const SERVICE_BASE_V4: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const SERVICE_SIZE_V4: u64 = 1 << 20;
const POD_BASE_V4: u32 = u32::from_be_bytes([10, 128, 0, 0]);
const POD_SIZE_V4: u64 = 1 << 22;
const SERVICE_BASE_V6: u128 = 0xfd00_0010_0096_0000_0000_0000_0000_0000;
const SERVICE_SIZE_V6: u64 = 1 << 20;
const POD_BASE_V6: u128 = 0xfd00_0010_0128_0000_0000_0000_0000_0000;

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
    /// One Service in three UDP, one in eight dual-stack.
    pub mix: bool,
}

impl Synthetic {
    /// TCP, IPv4-only Services.
    pub fn new(services: usize, endpoints_per_service: usize) -> Synthetic {
        Synthetic {
            services,
            endpoints_per_service,
            mix: false,
        }
    }

    /// Some UDP Services and some dual-stack ones (see the module documentation).
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

    /// The v4 cluster IP of Service `i`.
    pub fn cluster_ip(&self, i: usize) -> Ipv4Addr {
        let offset = i as u64 + 1;
        assert!(
            offset < SERVICE_SIZE_V4 - 1,
            "{SERVICE_CIDR_V4} holds no cluster IP for Service {i}"
        );
        Ipv4Addr::from(SERVICE_BASE_V4 + offset as u32)
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

    /// The v4 address of endpoint `j` of Service `i`.
    pub fn endpoint_ip(&self, i: usize, j: usize) -> Ipv4Addr {
        let offset = j as u64 * self.services as u64 + i as u64 + 1;
        assert!(
            offset < POD_SIZE_V4 - 1,
            "{POD_CIDR_V4} holds no address for endpoint {j} of Service {i}"
        );
        Ipv4Addr::from(POD_BASE_V4 + offset as u32)
    }

    /// The v6 address of endpoint `j` of Service `i`.
    pub fn endpoint_ip_v6(&self, i: usize, j: usize) -> Ipv6Addr {
        let offset = j as u128 * self.services as u128 + i as u128 + 1;
        Ipv6Addr::from(POD_BASE_V6 + offset)
    }

    fn build(&self, changed: Option<(usize, usize)>) -> Vec<Object> {
        let mut resources = Vec::with_capacity(self.services * 2);
        for i in 0..self.services {
            let endpoints = match changed {
                Some((service, n)) if service == i => n,
                _ => self.endpoints_per_service,
            };
            resources.push(Resource::Service(Box::new(self.service(i))));
            let v4: Vec<String> = (0..endpoints)
                .map(|j| self.endpoint_ip(i, j).to_string())
                .collect();
            resources.push(Resource::EndpointSlice(Box::new(self.slice(i, "IPv4", v4))));
            if self.is_dual_stack(i) {
                let v6: Vec<String> = (0..endpoints)
                    .map(|j| self.endpoint_ip_v6(i, j).to_string())
                    .collect();
                resources.push(Resource::EndpointSlice(Box::new(self.slice(i, "IPv6", v6))));
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
        Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(BTreeMap::from([("app".to_string(), name)])),
                cluster_ip: Some(v4),
                cluster_ips: Some(ips),
                ip_families: Some(families.into_iter().map(String::from).collect()),
                ip_family_policy: Some(policy.into()),
                ports: Some(vec![ServicePort {
                    port: PORT.into(),
                    protocol: Some(self.protocol(i)),
                    target_port: Some(IntOrString::Int(TARGET_PORT.into())),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn slice(&self, i: usize, address_type: &str, addresses: Vec<String>) -> EndpointSlice {
        let family = if address_type == "IPv6" { "v6" } else { "v4" };
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
            endpoints: Some(
                addresses
                    .into_iter()
                    .map(|address| Endpoint {
                        addresses: vec![address],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            ..EndpointConditions::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
        }
    }
}

/// A node of the synthetic cluster: the default table, the Pod and Service CIDRs of both
/// families (so masquerade and the service-CIDR drop rules are in the ruleset, as on a real
/// node).
pub fn node_facts() -> NodeFacts {
    NodeFacts {
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
/// cluster that does not compile whole would measure the wrong thing.
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
mod tests {
    use super::*;
    use svc_nft_ir::{Data, Value};

    fn elements(compiled: &Compiled, set: &str) -> usize {
        compiled.table.sets[set].elements.len()
    }

    #[test]
    fn plain_cluster_compiles_whole() {
        let objects = synthetic_cluster(100, 3);
        assert_eq!(objects.len(), 200);
        let compiled = compile_clean(&objects, &node_facts());
        assert_eq!(elements(&compiled, "service-ports-v4"), 100);
        assert_eq!(elements(&compiled, "endpoints-v4-tcp"), 300);
        assert_eq!(elements(&compiled, "hairpin-v4"), 300);
        assert_eq!(elements(&compiled, "service-ports-v6"), 0);
        assert!(
            compiled.table.notes.is_empty(),
            "{:?}",
            compiled.table.notes
        );
    }

    #[test]
    fn mixed_cluster_compiles_whole() {
        let gen = Synthetic::new(240, 2).mixed();
        let compiled = compile_clean(&gen.objects(), &node_facts());
        assert_eq!(elements(&compiled, "service-ports-v4"), 240);
        assert_eq!(elements(&compiled, "endpoints-v4-udp"), 80 * 2);
        assert_eq!(elements(&compiled, "endpoints-v4-tcp"), 160 * 2);
        assert_eq!(elements(&compiled, "service-ports-v6"), 30);
        assert_eq!(elements(&compiled, "cluster-ips-v6"), 30);
        assert!(
            compiled.table.notes.is_empty(),
            "{:?}",
            compiled.table.notes
        );
    }

    #[test]
    fn addresses_are_the_documented_ones() {
        let gen = Synthetic::new(1000, 3);
        assert_eq!(gen.cluster_ip(0), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(gen.cluster_ip(1_048_572), Ipv4Addr::new(10, 111, 255, 253));
        assert_eq!(gen.endpoint_ip(0, 0), Ipv4Addr::new(10, 128, 0, 1));
        assert_eq!(gen.endpoint_ip(0, 1), Ipv4Addr::new(10, 128, 3, 233));
        assert_eq!(
            gen.cluster_ip_v6(0),
            "fd00:10:96::1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn one_more_endpoint_touches_one_service() {
        let gen = Synthetic::new(50, 3);
        let node = node_facts();
        let old = compile_clean(&gen.objects(), &node);
        let new = compile_clean(&gen.with_endpoints(25, 4), &node);
        let text = svc_nft_ir::diff(&old.table, &new.table).to_string();
        let vip = gen.cluster_ip(25).to_string();
        let added = gen.endpoint_ip(25, 3);
        assert!(text.contains(&vip), "{text}");
        assert!(text.contains(&added.to_string()), "{text}");
        assert!(text.contains("pick-v4-tcp-4"), "{text}");
        // Nothing about any other Service.
        assert!(!text.contains(&gen.cluster_ip(24).to_string()), "{text}");
        let slot = new.table.sets["endpoints-v4-tcp"]
            .elements
            .iter()
            .find(|(k, _)| k[0] == Value::Ipv4(gen.cluster_ip(25)) && k[2] == Value::Int(3))
            .map(|(_, e)| e.data.clone());
        assert_eq!(
            slot,
            Some(Some(Data::Values(vec![
                Value::Ipv4(added),
                Value::Port(TARGET_PORT)
            ])))
        );
    }

    #[test]
    fn deterministic() {
        let node = node_facts();
        let a = compile_clean(&Synthetic::new(30, 3).mixed().objects(), &node);
        let b = compile_clean(&Synthetic::new(30, 3).mixed().objects(), &node);
        assert_eq!(
            svc_nft_ir::replace_script(&a.table),
            svc_nft_ir::replace_script(&b.table)
        );
    }
}
