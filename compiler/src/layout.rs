//! The ruleset layout: which sets and maps exist, and what each Service port puts in them.
//! The chains that read them are in [`crate::chains`].
//!
//! The layout is built so the kernel loads it in linear time and a Service change touches only
//! map elements (see README, "Ruleset layout"):
//! - every way into a Service port on this node — cluster IP, NodePort on a node IP, external
//!   IP, load-balancer IP — is a *frontend* `address . proto . port`, a key of one verdict map
//!   per family, `service-ports-v4|v6`;
//! - its element jumps to one of a few *shared* pick chains (one per kind of traffic, family,
//!   protocol and endpoint count in use, never one per Service: verdict elements that jump to
//!   many distinct chains that jump on are what loads in quadratic time);
//! - only a Service port with session affinity has chains of its own (sticky chains and a
//!   recorder, see [`chains::AffinityPort`]): leaves, reached through verdict maps, reading one
//!   shared set — sets per port would load in quadratic time (the kernel finds sets by name in
//!   a list);
//! - a pick chain draws a slot with `numgen random mod N` and DNATs through a data map keyed
//!   by `frontend address . port . slot`.

use crate::chains::{self, Pick};
use crate::endpoints::{Backend, Chosen};
use crate::family::{addr, Ipf, FAMILIES};
use crate::node::NodeFacts;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use svc_nft_ir::{
    Chain, Data, DataType, Element, Expr, Family, Key, L4Proto, Payload, Set, SetFlag, Table,
    TypeSpec, Value, Verdict,
};

/// An address and port on this node where a Service port is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
}

/// One Service port on one address family, with everything the layout needs.
#[derive(Clone, Debug)]
pub struct ServicePort {
    /// `namespace/name[:port-name]`, carried into element comments.
    pub label: String,
    pub proto: L4Proto,
    pub cluster_ip: Frontend,
    /// Whether the Service holds the cluster IP's address (it goes in `cluster-ips`), and this
    /// port on it (its frontend is programmed): another Service can hold either.
    pub holds_cluster_ip: bool,
    pub serves_cluster_ip: bool,
    /// NodePorts on node IPs, and external IPs.
    pub external: Vec<Frontend>,
    /// Load-balancer IPs: external too, and subject to `allowed_sources`.
    pub load_balancers: Vec<Frontend>,
    /// The NodePort on every local address `--nodeport-addresses` covers (CIDRs; with
    /// `primary` NodePorts are in `external`, one per node IP).
    pub node_port: Option<u16>,
    /// Who may reach the load-balancer IPs; empty: anyone.
    pub allowed_sources: Vec<IpNet>,
    pub endpoints: Chosen,
    pub internal_local: bool,
    pub external_local: bool,
    /// Session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

pub const PROTOCOLS: [L4Proto; 3] = [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp];

/// The data map of a family and protocol: all endpoints, or only this node's; of frontends
/// (keyed by address and port) or of NodePorts on CIDRs (by port).
pub fn endpoints_map(f: Ipf, proto: L4Proto, local: bool, nodeport: bool) -> String {
    let base = match local {
        true => "local-endpoints",
        false => "endpoints",
    };
    let name = f.name(base) + &format!("-{proto}");
    match nodeport {
        true => format!("nodeport-{name}"),
        false => name,
    }
}

/// What Service ports add to the table: elements, and the chains they jump to.
#[derive(Debug, Default)]
pub struct Contribution {
    /// (set, key, element), in the order written.
    pub elements: Vec<(String, Key, Element)>,
    pub picks: BTreeSet<(Ipf, L4Proto, Pick)>,
    /// The chains of Service ports with session affinity: theirs alone, named after them.
    pub chains: BTreeMap<String, Chain>,
}

impl Contribution {
    /// Everything `ports` add.
    pub fn of(ports: &[ServicePort]) -> Contribution {
        let mut out = Contribution::default();
        for sp in ports {
            let f = Ipf::of(&sp.cluster_ip.addr);
            Elements {
                out: &mut out,
                f,
                sp,
            }
            .add();
        }
        out
    }
}

/// The table with no Service in it: every set and map (empty but the node's CIDRs) and the
/// chains that do not depend on Services.
pub fn skeleton(node: &NodeFacts) -> Table {
    let mut table = Table {
        family: Family::Inet,
        name: node.table.clone(),
        ..Table::default()
    };
    for f in FAMILIES {
        add_family_sets(&mut table, node, f);
    }
    chains::add_fixed(&mut table, node);
    table
}

/// The service-CIDR set of each family, holding `cidrs`: a ServiceCIDR change rewrites only
/// these.
pub fn service_cidr_sets(cidrs: &[IpNet]) -> impl Iterator<Item = (String, Set)> + '_ {
    FAMILIES
        .into_iter()
        .map(|f| (f.name("service-cidrs"), interval_set(f, cidrs)))
}

/// An interval set of addresses of family `f`, holding the prefixes of `nets` of that family.
fn interval_set(f: Ipf, nets: &[IpNet]) -> Set {
    let mut set = Set::keys(TypeSpec::Type(vec![f.addr_type()]));
    set.flags = vec![SetFlag::Interval];
    set.elements = f
        .prefixes(nets)
        .map(|p| (vec![p], Element::default()))
        .collect();
    set
}

/// Sets and maps every table has, empty or not, so that a Service change never has to
/// create or delete one.
fn add_family_sets(table: &mut Table, node: &NodeFacts, f: Ipf) {
    let addr = f.addr_type();
    let intervals = |nets: &[IpNet]| interval_set(f, nets);
    let frontend = || vec![addr, DataType::InetProto, DataType::InetService];
    let mut sources = Set::keys(TypeSpec::Type([frontend(), vec![addr]].concat()));
    sources.flags = vec![SetFlag::Interval];
    // client . cluster IP . proto . port . endpoint address (see `chains::AffinityPort`)
    let mut affinity = Set::keys(TypeSpec::Type(
        [vec![addr], frontend(), vec![addr]].concat(),
    ));
    affinity.flags = vec![SetFlag::Dynamic, SetFlag::Timeout];
    let sets = [
        ("cluster-ips", Set::keys(TypeSpec::Type(vec![addr]))),
        ("service-cidrs", intervals(&node.service_cidrs)),
        ("hairpin", Set::keys(TypeSpec::Type(vec![addr, addr]))),
        (
            "service-ports",
            Set::verdict_map(TypeSpec::Type(frontend())),
        ),
        ("no-endpoints", Set::keys(TypeSpec::Type(frontend()))),
        ("firewalled", Set::keys(TypeSpec::Type(frontend()))),
        ("lb-sources", sources),
    ];
    for (name, set) in sets {
        table.sets.insert(f.name(name), set);
    }
    table.sets.insert(f.name("affinity"), affinity);
    for name in ["affinity-ports", "affinity-lookup", "affinity-lookup-local"] {
        let ports = Set::verdict_map(TypeSpec::Type(frontend()));
        table.sets.insert(f.name(name), ports);
    }
    add_endpoint_maps(table, f, false);
    if let Some(ranges) = node.nodeport_ranges(f.v6) {
        add_nodeport_sets(table, f, &ranges);
    }
}

/// The sets of NodePorts on CIDRs: which addresses, and per `proto . port` the verdict, the
/// refusal without endpoints and the affinity chains.
fn add_nodeport_sets(table: &mut Table, f: Ipf, ranges: &[IpNet]) {
    let port = || TypeSpec::Type(vec![DataType::InetProto, DataType::InetService]);
    let sets = [
        ("nodeport-addresses", interval_set(f, ranges)),
        ("service-nodeports", Set::verdict_map(port())),
        ("nodeport-no-endpoints", Set::keys(port())),
        ("nodeport-affinity-ports", Set::verdict_map(port())),
        ("nodeport-affinity-lookup", Set::verdict_map(port())),
        ("nodeport-affinity-lookup-local", Set::verdict_map(port())),
    ];
    for (name, set) in sets {
        table.sets.insert(f.name(name), set);
    }
    add_endpoint_maps(table, f, true);
}

/// The endpoint maps of family `f`, per protocol, all and local: keyed by frontend address,
/// port and slot, or for NodePorts on CIDRs by port and slot.
fn add_endpoint_maps(table: &mut Table, f: Ipf, nodeport: bool) {
    for proto in PROTOCOLS {
        for local in [false, true] {
            // One map per protocol: nft 1.0.6 cannot add a rule using a map whose data is
            // typed `ip daddr . th dport` once it has read that map back from the kernel, and
            // typing it `tcp dport` makes the rule match TCP only.
            let dport = Expr::Payload(Payload::Dport(proto));
            // The modulus in a `typeof` only types the slot; each pick chain uses its own.
            let mut key = vec![f.daddr(), dport.clone(), Expr::NumgenRandom(1)];
            if nodeport {
                key.remove(0);
            }
            let backend = vec![f.daddr(), dport];
            let map = Set::data_map(TypeSpec::Typeof(key), TypeSpec::Typeof(backend));
            table
                .sets
                .insert(endpoints_map(f, proto, local, nodeport), map);
        }
    }
}

/// nft refuses element comments longer than this (and the whole load with them).
const MAX_COMMENT: usize = 128;

/// A label as an element comment: cut to what nft accepts, on a character boundary, with an
/// ellipsis saying so. Namespace and name can be 63 characters each, and the port name 15.
fn element_comment(label: &str) -> String {
    if label.len() <= MAX_COMMENT {
        return label.to_string();
    }
    let mut end = MAX_COMMENT - '…'.len_utf8();
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &label[..end])
}

/// Where a frontend's elements go.
#[derive(Clone, Copy)]
enum At {
    /// `address . proto . port` in `service-ports`.
    Frontend(Frontend),
    /// `proto . port` in `service-nodeports`: every local address the CIDRs cover.
    NodePort(u16),
}

impl At {
    fn nodeport(self) -> bool {
        matches!(self, At::NodePort(_))
    }

    /// The name of set `base` this frontend uses in family `f`.
    fn set(self, f: Ipf, base: &str) -> String {
        match self {
            At::Frontend(_) => f.name(base),
            At::NodePort(_) => f.name(&format!("nodeport-{base}")),
        }
    }
}

/// Writes the elements of one Service port.
struct Elements<'a> {
    out: &'a mut Contribution,
    f: Ipf,
    sp: &'a ServicePort,
}

impl Elements<'_> {
    fn insert(&mut self, set: &str, key: Key, data: Option<Data>, comment: bool) {
        let comment = comment.then(|| element_comment(&self.sp.label));
        let element = Element { data, comment };
        self.out.elements.push((set.to_string(), key, element));
    }

    fn key(&self, at: At) -> Key {
        match at {
            At::Frontend(fe) => vec![
                addr(&fe.addr),
                Value::Proto(self.sp.proto),
                Value::Port(fe.port),
            ],
            At::NodePort(port) => vec![Value::Proto(self.sp.proto), Value::Port(port)],
        }
    }

    /// The external frontends: NodePorts, external and load-balancer IPs.
    fn externals(&self) -> Vec<At> {
        let sp = self.sp;
        let frontends = sp.external.iter().chain(&sp.load_balancers);
        let mut out: Vec<At> = frontends.copied().map(At::Frontend).collect();
        out.extend(sp.node_port.map(At::NodePort));
        out
    }

    fn add(&mut self) {
        let (f, sp) = (self.f, self.sp);
        if sp.holds_cluster_ip {
            let key = vec![addr(&sp.cluster_ip.addr)];
            self.insert(&f.name("cluster-ips"), key, None, false);
        }
        let chosen = &sp.endpoints;
        if !chosen.any {
            // Not DNATed: cluster-ips-check refuses the cluster IP, no-endpoints the others.
            for at in self.externals() {
                self.insert(&at.set(f, "no-endpoints"), self.key(at), None, true);
            }
            return;
        }
        let internal = match (sp.internal_local, chosen.local.len()) {
            (true, 0) => None,
            (true, n) => Some((true, n)),
            (false, _) => Some((false, chosen.cluster.len())),
        };
        if sp.serves_cluster_ip {
            let pick = internal.map(|(local, n)| Pick::Internal {
                local,
                n,
                nodeport: false,
            });
            self.frontend(At::Frontend(sp.cluster_ip), pick);
        }
        for at in self.externals() {
            let nodeport = at.nodeport();
            let external = match sp.external_local {
                true => Pick::ExternalLocal {
                    local: chosen.local.len(),
                    cluster: chosen.cluster.len(),
                    nodeport,
                },
                false => Pick::External {
                    n: chosen.cluster.len(),
                    nodeport,
                },
            };
            self.frontend(at, Some(external));
        }
        self.firewall();
        for (ip, _) in chosen.cluster.iter().chain(&chosen.local) {
            // An endpoint that reaches itself through its Service must be masqueraded, or it
            // would answer itself from the wrong address.
            self.insert(&f.name("hairpin"), vec![addr(ip), addr(ip)], None, false);
        }
    }

    /// `loadBalancerSourceRanges`: who may reach the load-balancer IPs.
    fn firewall(&mut self) {
        let (f, sp) = (self.f, self.sp);
        if sp.allowed_sources.is_empty() {
            return;
        }
        for fe in &sp.load_balancers {
            let key = self.key(At::Frontend(*fe));
            self.insert(&f.name("firewalled"), key.clone(), None, true);
            for range in &sp.allowed_sources {
                let mut source = key.clone();
                source.push(Value::Prefix(*range));
                self.insert(&f.name("lb-sources"), source, None, false);
            }
        }
    }

    /// Route one frontend: to a pick chain (filling the endpoint maps it reads), or, with no
    /// pick, DROP.
    fn frontend(&mut self, at: At, pick: Option<Pick>) {
        let (f, sp) = (self.f, self.sp);
        let key = self.key(at);
        let verdict = match pick {
            None => Verdict::Drop,
            Some(pick) => {
                let chain = chains::register(&mut self.out.picks, f, sp.proto, pick);
                let (cluster, local) = pick.maps();
                if cluster {
                    self.backends(at, false, &sp.endpoints.cluster);
                }
                if local {
                    self.backends(at, true, &sp.endpoints.local);
                }
                self.affinity(at, cluster, local);
                Verdict::Goto(chain)
            }
        };
        let ports = match at {
            At::Frontend(_) => f.name("service-ports"),
            At::NodePort(_) => f.name("service-nodeports"),
        };
        self.insert(&ports, key, Some(Data::Verdict(verdict)), true);
    }

    /// With session affinity: the frontend's clients go through the port's sticky chains of
    /// the endpoint lists its pick reads (all, this node's), and are recorded by its recorder.
    fn affinity(&mut self, at: At, cluster: bool, local: bool) {
        let (f, sp) = (self.f, self.sp);
        let Some(timeout) = sp.affinity_timeout else {
            return;
        };
        let port = chains::AffinityPort {
            label: &sp.label,
            proto: sp.proto,
            cluster_ip: sp.cluster_ip,
            timeout,
        };
        let lists = [
            (false, cluster, &sp.endpoints.cluster),
            (true, local, &sp.endpoints.local),
        ];
        for (is_local, _, backends) in lists.into_iter().filter(|l| l.1) {
            let (name, chain) = port.sticky(f, is_local, backends);
            let map = chains::affinity_lookup_map(f, is_local, at.nodeport());
            self.insert(
                &map,
                self.key(at),
                Some(Data::Verdict(Verdict::Jump(name.clone()))),
                false,
            );
            self.out.chains.insert(name, chain);
        }
        let (name, chain) = port.recorder(f);
        let remember = Some(Data::Verdict(Verdict::Jump(name.clone())));
        self.insert(&at.set(f, "affinity-ports"), self.key(at), remember, false);
        self.out.chains.insert(name, chain);
    }

    fn backends(&mut self, at: At, local: bool, backends: &[Backend]) {
        let map = endpoints_map(self.f, self.sp.proto, local, at.nodeport());
        for (slot, (ip, port)) in backends.iter().enumerate() {
            let mut key = match at {
                At::Frontend(fe) => vec![addr(&fe.addr), Value::Port(fe.port)],
                At::NodePort(port) => vec![Value::Port(port)],
            };
            key.push(Value::Int(slot as u32));
            let target = Data::Values(vec![addr(ip), Value::Port(*port)]);
            self.insert(&map, key, Some(target), false);
        }
    }
}

/// Where UDP flows to a Service port arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UdpFrontend {
    /// An address and port: a cluster, external or load-balancer IP, a NodePort on a node IP.
    At(IpAddr, u16),
    /// A NodePort on every local address the `--nodeport-addresses` CIDRs cover: known by its
    /// port alone, as kube-proxy's cleanup knows NodePorts.
    NodePort { v6: bool, port: u16 },
}

/// UDP frontends, each with the endpoint addresses whose flows through it may stay.
pub type UdpFrontends = BTreeMap<UdpFrontend, BTreeSet<IpAddr>>;

/// What a change leaves stale in the kernel's UDP conntrack table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UdpTargets {
    /// The UDP frontends whose endpoints changed, each with the endpoint addresses whose flows
    /// may stay (none: the frontend is gone, or has no endpoint left). An entry to one of them
    /// whose reply comes from another address is stale: it was NATed to an endpoint no longer
    /// serving the frontend, or recorded the frontend refusing before it had endpoints.
    pub frontends: UdpFrontends,
}

impl UdpTargets {
    /// The frontends whose endpoints differ between `old` and `new`.
    pub fn between(old: &UdpFrontends, new: &UdpFrontends) -> UdpTargets {
        let none = BTreeSet::new();
        let keys: BTreeSet<_> = old.keys().chain(new.keys()).collect();
        let changed = keys.into_iter().filter_map(|key| {
            let now = new.get(key).unwrap_or(&none);
            (old.get(key).unwrap_or(&none) != now).then(|| (*key, now.clone()))
        });
        UdpTargets {
            frontends: changed.collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }
}

/// The UDP frontends of Service ports on this node, each with every endpoint that serves its
/// port, wherever it is and whatever its state (kube-proxy's rule).
pub fn udp_serving(ports: &[ServicePort]) -> UdpFrontends {
    let mut out = UdpFrontends::new();
    for sp in ports.iter().filter(|sp| sp.proto == L4Proto::Udp) {
        let cluster_ip = sp.serves_cluster_ip.then_some(&sp.cluster_ip);
        let at = cluster_ip
            .into_iter()
            .chain(&sp.external)
            .chain(&sp.load_balancers);
        let at = at.map(|fe| UdpFrontend::At(fe.addr, fe.port));
        let v6 = sp.cluster_ip.addr.is_ipv6();
        let node_port = sp.node_port.map(|port| UdpFrontend::NodePort { v6, port });
        for fe in at.chain(node_port) {
            out.entry(fe).or_default().extend(&sp.endpoints.serving);
        }
    }
    out
}

/// The UDP frontends of a compiled table, each with the endpoints its maps DNAT to: what
/// `svc-nft apply`, which diffs whole tables, knows of them.
pub fn udp_frontends(table: &Table) -> UdpFrontends {
    let socket = |a: &Value, p: &Value| match (a, p) {
        (Value::Ipv4(a), Value::Port(p)) => Some((IpAddr::V4(*a), *p)),
        (Value::Ipv6(a), Value::Port(p)) => Some((IpAddr::V6(*a), *p)),
        _ => None,
    };
    let elements = |name: &str| {
        table
            .sets
            .get(name)
            .map(|s| &s.elements)
            .into_iter()
            .flatten()
    };
    let dnat = |e: &Element| matches!(e.data, Some(Data::Verdict(Verdict::Goto(_))));
    let mut out = UdpFrontends::new();
    for f in FAMILIES {
        let node_port = |port: &Value| match port {
            Value::Port(port) => Some(UdpFrontend::NodePort {
                v6: f.v6,
                port: *port,
            }),
            _ => None,
        };
        // Frontends keyed by address and port, then NodePorts on CIDRs, keyed by port.
        let frontends = elements(&f.name("service-ports")).filter_map(|(key, e)| match &key[..] {
            [a, Value::Proto(L4Proto::Udp), p] if dnat(e) => {
                socket(a, p).map(|(a, p)| UdpFrontend::At(a, p))
            }
            _ => None,
        });
        let nodeports = elements(&f.name("service-nodeports"));
        let node_ports = nodeports.filter_map(|(key, e)| match &key[..] {
            [Value::Proto(L4Proto::Udp), p] if dnat(e) => node_port(p),
            _ => None,
        });
        out.extend(frontends.chain(node_ports).map(|fe| (fe, BTreeSet::new())));
        for (local, nodeport) in [(false, false), (true, false), (false, true), (true, true)] {
            for (key, elem) in elements(&endpoints_map(f, L4Proto::Udp, local, nodeport)) {
                let fe = match nodeport {
                    false => socket(&key[0], &key[1]).map(|(a, p)| UdpFrontend::At(a, p)),
                    true => node_port(&key[0]),
                };
                let endpoint = match &elem.data {
                    Some(Data::Values(v)) => socket(&v[0], &v[1]).map(|(ip, _)| ip),
                    _ => None,
                };
                if let (Some(fe), Some(endpoint)) = (fe, endpoint) {
                    out.entry(fe).or_default().insert(endpoint);
                }
            }
        }
    }
    out
}
