//! `svc-nft run` in a cluster: Services, EndpointSlices, ServiceCIDRs and this node's Node
//! object from the API server, compiled per Service and applied by the engine.

mod rest_metrics;
pub mod watch;

pub use rest_metrics::RequestMetrics;

/// One kind of request the agent makes to the API server. `deploy/` grants exactly these
/// (a test checks the ClusterRole against this list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCall {
    /// API group: "" for the core group.
    pub group: &'static str,
    /// Resource, plural and lower case, as RBAC names it.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// Every API call the agent makes. Rejected objects are reported in the log (and counted in
/// `svcnft_rejected_objects_total`), not as Events: no write access needed.
pub const API_CALLS: &[ApiCall] = &[
    ApiCall {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
    },
    ApiCall {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
    },
    // The ranges cluster IPs come from: their unowned addresses are dropped.
    ApiCall {
        group: "networking.k8s.io",
        resource: "servicecidrs",
        verbs: &["list", "watch"],
    },
    // Its own Node: addresses (node IPs) and zone label, watched by field selector.
    ApiCall {
        group: "",
        resource: "nodes",
        verbs: &["list", "watch"],
    },
];
