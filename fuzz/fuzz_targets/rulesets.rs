//! A random but valid cluster (what the API server would accept) and node, compiled and
//! rendered: the manifests parse without a diagnostic, the compile rejects nothing, and
//! `nft -c -f -` accepts the script. `nft -c` talks to the kernel: run this target only under
//! `fuzz/run rulesets`, which puts it in a private network namespace (the target refuses to
//! start in the host's).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};
use svc_nft_compiler::{compile, parse, NodeFacts, NodePortAddresses};
use svc_nft_ir::replace_script;

const NAMESPACES: [&str; 3] = ["default", "ns-a", "kube-system"];
const NODES: [&str; 3] = ["node-a", "node-b", "node-c.example"];
const ZONES: [&str; 2] = ["zone-a", "zone-b"];
/// IANA service names for named targetPorts.
const PORT_NAMES: [&str; 4] = ["http", "dns", "metrics", "https-alt"];

#[derive(Arbitrary, Debug)]
struct Input {
    node: Node,
    services: Vec<Svc>,
    /// EndpointSlices naming a Service that is not in the input (ignored, counted).
    orphans: Vec<Slice>,
}

#[derive(Arbitrary, Debug)]
struct Node {
    /// 0..=2: one of `NODES`; else none.
    name: u8,
    /// Bit 0: an IPv4 node IP, bit 1: an IPv6 one, bit 2: a second IPv4 one.
    ips: u8,
    /// Bit 0: IPv4 pod network, bit 1: IPv6.
    cluster_cidrs: u8,
    /// Bit 0: IPv4 Service network, bit 1: IPv6.
    service_cidrs: u8,
    /// 0: all addresses; else a selection of ranges.
    nodeport_addresses: u8,
    masquerade_all: bool,
    zone: Option<bool>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Kind {
    ClusterIp,
    /// `type` left out: ClusterIP.
    Untyped,
    NodePort,
    LoadBalancer,
    ExternalName,
    /// ClusterIP with `clusterIP: None`.
    Headless,
    /// ClusterIP the API server has not allocated yet (no clusterIP).
    Unallocated,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Family {
    V4,
    V6,
    V4V6,
    V6V4,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
    /// Left out: TCP.
    Default,
}

impl Proto {
    fn name(self) -> Option<&'static str> {
        match self {
            Proto::Tcp => Some("TCP"),
            Proto::Udp => Some("UDP"),
            Proto::Sctp => Some("SCTP"),
            Proto::Default => None,
        }
    }
    fn effective(self) -> &'static str {
        self.name().unwrap_or("TCP")
    }
}

#[derive(Arbitrary, Debug)]
enum Target {
    None,
    Number(u16),
    Name(u8),
}

#[derive(Arbitrary, Debug)]
struct PortSpec {
    port: u16,
    proto: Proto,
    target: Target,
    /// NodePort/LoadBalancer only: allocate a nodePort (else it is left to the allocator).
    node_port: bool,
    app_protocol: bool,
}

#[derive(Arbitrary, Debug)]
enum Affinity {
    None,
    Unset,
    ClientIp(Option<u32>),
}

#[derive(Arbitrary, Debug)]
struct Svc {
    kind: Kind,
    family: Family,
    namespace: u8,
    selector: bool,
    ports: Vec<PortSpec>,
    /// Each: (an IPv6 address?, host byte).
    external_ips: Vec<(bool, u8)>,
    external_local: Option<bool>,
    internal_local: Option<bool>,
    affinity: Affinity,
    /// LoadBalancer only: (IPv6?, prefix length, host bits).
    source_ranges: Vec<(bool, u8, u16)>,
    /// LoadBalancer only: (IPv6?, ipMode 0 unset 1 VIP 2 Proxy 3 hostname only).
    ingress: Vec<(bool, u8)>,
    health_check: bool,
    traffic_distribution: Option<u8>,
    publish_not_ready: bool,
    created: Option<u16>,
    slices: Vec<Slice>,
    /// Selectorless Services: plain v1 Endpoints instead of EndpointSlices.
    endpoints_v1: Option<Vec<Subset>>,
}

#[derive(Arbitrary, Debug)]
struct Slice {
    v6: bool,
    /// Which of the Service's ports the slice has (bit i: port i).
    ports: u8,
    /// A port number for each port the slice has, when its targetPort does not give one.
    numbers: [u16; 4],
    endpoints: Vec<Ep>,
    /// A second label, as the EndpointSlice controller sets.
    managed_by: bool,
}

#[derive(Arbitrary, Debug)]
struct Ep {
    host: u16,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    node: u8,
    zones: Option<u8>,
    second_address: bool,
}

#[derive(Arbitrary, Debug)]
struct Subset {
    /// (IPv6?, host, ready, node)
    addresses: Vec<(bool, u16, bool, u8)>,
    ports: u8,
    numbers: [u16; 4],
}

/// What the generator hands out uniquely across the cluster: cluster IPs, NodePorts,
/// external and load-balancer IPs.
#[derive(Default)]
struct Alloc {
    service: u32,
    node_port: u16,
    external: u32,
}

impl Alloc {
    fn node_port(&mut self) -> u16 {
        self.node_port += 1;
        30000 + self.node_port
    }
}

/// The `n`th (from 1) address of a /16; at most a few hundred are handed out.
fn v4(net: [u8; 2], n: u32) -> String {
    format!("{}.{}.{}.{}", net[0], net[1], n / 250, n % 250 + 1)
}

fn v6(prefix: &str, n: u32) -> String {
    format!("{prefix}{:x}", n + 1)
}

fn cluster_ip(family: Family, n: u32) -> Vec<String> {
    let (a, b) = (v4([10, 96], n), v6("fd00:96::", n));
    match family {
        Family::V4 => vec![a],
        Family::V6 => vec![b],
        Family::V4V6 => vec![a, b],
        Family::V6V4 => vec![b, a],
    }
}

fn endpoint_ip(v6_: bool, host: u16) -> String {
    if v6_ {
        format!("fd00:244::1:{host:x}")
    } else {
        // 10.244.0.0/16 without .0 / .255 hosts: nothing special about them, but tidy.
        format!("10.244.{}.{}", (host >> 8) as u8, (host as u8 % 254) + 1)
    }
}

/// The ports a Service ends up with: valid, unique (port, protocol), named when several.
struct GenPort {
    name: Option<String>,
    port: u16,
    proto: Proto,
    target: Value,
    /// The number endpoints serve it on, if the targetPort gives one.
    target_number: Option<u16>,
    node_port: Option<u16>,
    app_protocol: bool,
}

fn ports(svc: &Svc, alloc: &mut Alloc) -> Vec<GenPort> {
    let mut out: Vec<GenPort> = Vec::new();
    let node_ports = matches!(svc.kind, Kind::NodePort | Kind::LoadBalancer);
    for p in svc.ports.iter().take(4) {
        let port = p.port.max(1);
        if out
            .iter()
            .any(|q| q.port == port && q.proto.effective() == p.proto.effective())
        {
            continue;
        }
        let (target, target_number) = match p.target {
            Target::None => (Value::Null, Some(port)),
            Target::Number(0) => (Value::Null, Some(port)),
            Target::Number(n) => (json!(n), Some(n)),
            Target::Name(i) => (json!(PORT_NAMES[i as usize % PORT_NAMES.len()]), None),
        };
        out.push(GenPort {
            name: None,
            port,
            proto: p.proto,
            target,
            target_number,
            node_port: (node_ports && p.node_port).then(|| alloc.node_port()),
            app_protocol: p.app_protocol,
        });
    }
    if out.len() > 1 {
        for (i, p) in out.iter_mut().enumerate() {
            p.name = Some(format!("p{i}"));
        }
    }
    out
}

fn service(i: usize, svc: &Svc, alloc: &mut Alloc, docs: &mut Vec<Value>) {
    alloc.service += 1;
    let n = alloc.service;
    let name = format!("s{i}");
    let namespace = NAMESPACES[svc.namespace as usize % NAMESPACES.len()];
    let gen_ports = ports(svc, alloc);
    let mut spec = serde_json::Map::new();
    let kind = svc.kind;
    let typ = match kind {
        Kind::ClusterIp | Kind::Headless | Kind::Unallocated => Some("ClusterIP"),
        Kind::Untyped => None,
        Kind::NodePort => Some("NodePort"),
        Kind::LoadBalancer => Some("LoadBalancer"),
        Kind::ExternalName => Some("ExternalName"),
    };
    if let Some(t) = typ {
        spec.insert("type".into(), json!(t));
    }
    let families = |f: Family| match f {
        Family::V4 => json!(["IPv4"]),
        Family::V6 => json!(["IPv6"]),
        Family::V4V6 => json!(["IPv4", "IPv6"]),
        Family::V6V4 => json!(["IPv6", "IPv4"]),
    };
    match kind {
        Kind::ExternalName => {
            spec.insert("externalName".into(), json!(format!("{name}.example.com")));
        }
        Kind::Headless => {
            spec.insert("clusterIP".into(), json!("None"));
            spec.insert("clusterIPs".into(), json!(["None"]));
        }
        Kind::Unallocated => {}
        _ => {
            let ips = cluster_ip(svc.family, n);
            spec.insert("clusterIP".into(), json!(ips[0]));
            let dual = ips.len() > 1;
            spec.insert("clusterIPs".into(), json!(ips));
            spec.insert("ipFamilies".into(), families(svc.family));
            let policy = if dual {
                "RequireDualStack"
            } else {
                "SingleStack"
            };
            spec.insert("ipFamilyPolicy".into(), json!(policy));
        }
    }
    // Only headless and ExternalName Services may have no ports.
    let needs_ports = !matches!(kind, Kind::Headless | Kind::ExternalName);
    let mut gen_ports = gen_ports;
    if gen_ports.is_empty() && needs_ports {
        gen_ports.push(GenPort {
            name: None,
            port: 80,
            proto: Proto::Default,
            target: Value::Null,
            target_number: Some(80),
            node_port: None,
            app_protocol: false,
        });
    }
    if !gen_ports.is_empty() {
        let list: Vec<Value> = gen_ports
            .iter()
            .map(|p| {
                let mut m = serde_json::Map::new();
                if let Some(n) = &p.name {
                    m.insert("name".into(), json!(n));
                }
                m.insert("port".into(), json!(p.port));
                if let Some(proto) = p.proto.name() {
                    m.insert("protocol".into(), json!(proto));
                }
                if !p.target.is_null() {
                    m.insert("targetPort".into(), p.target.clone());
                }
                if let Some(np) = p.node_port {
                    m.insert("nodePort".into(), json!(np));
                }
                if p.app_protocol {
                    m.insert("appProtocol".into(), json!("kubernetes.io/h2c"));
                }
                Value::Object(m)
            })
            .collect();
        spec.insert("ports".into(), json!(list));
    }
    if svc.selector {
        spec.insert("selector".into(), json!({"app": name}));
    }
    let mut external = matches!(kind, Kind::NodePort | Kind::LoadBalancer);
    if kind != Kind::ExternalName && kind != Kind::Headless && !svc.external_ips.is_empty() {
        let ips: Vec<String> = svc
            .external_ips
            .iter()
            .take(3)
            .map(|&(is_v6, _)| {
                alloc.external += 1;
                if is_v6 {
                    v6("2001:db8:e::", alloc.external)
                } else {
                    v4([203, 0], alloc.external)
                }
            })
            .collect();
        spec.insert("externalIPs".into(), json!(ips));
        external |= matches!(kind, Kind::ClusterIp | Kind::Untyped | Kind::Unallocated);
    }
    let mut external_local = false;
    if external {
        if let Some(local) = svc.external_local {
            external_local = local;
            let p = if local { "Local" } else { "Cluster" };
            spec.insert("externalTrafficPolicy".into(), json!(p));
        }
    }
    if kind != Kind::ExternalName {
        if let Some(local) = svc.internal_local {
            let p = if local { "Local" } else { "Cluster" };
            spec.insert("internalTrafficPolicy".into(), json!(p));
        }
        match svc.affinity {
            Affinity::Unset => {}
            Affinity::None => {
                spec.insert("sessionAffinity".into(), json!("None"));
            }
            Affinity::ClientIp(timeout) => {
                spec.insert("sessionAffinity".into(), json!("ClientIP"));
                if let Some(t) = timeout {
                    let t = t % 86400 + 1;
                    spec.insert(
                        "sessionAffinityConfig".into(),
                        json!({"clientIP": {"timeoutSeconds": t}}),
                    );
                }
            }
        }
        if let Some(d) = svc.traffic_distribution {
            let d = ["PreferClose", "PreferSameZone", "PreferSameNode"][d as usize % 3];
            spec.insert("trafficDistribution".into(), json!(d));
        }
    }
    if svc.publish_not_ready {
        spec.insert("publishNotReadyAddresses".into(), json!(true));
    }
    let mut status = None;
    if kind == Kind::LoadBalancer {
        if external_local && svc.health_check {
            spec.insert("healthCheckNodePort".into(), json!(alloc.node_port()));
        }
        let mut lb_ips: Vec<IpAddr> = Vec::new();
        let ingress: Vec<Value> = svc
            .ingress
            .iter()
            .take(3)
            .map(|&(is_v6, mode)| {
                if mode % 4 == 3 {
                    return json!({"hostname": format!("{name}.lb.example")});
                }
                alloc.external += 1;
                let ip = if is_v6 {
                    v6("2001:db8:1b::", alloc.external)
                } else {
                    v4([192, 0], alloc.external)
                };
                lb_ips.push(ip.parse().unwrap());
                match mode % 4 {
                    0 => json!({"ip": ip}),
                    1 => json!({"ip": ip, "ipMode": "VIP"}),
                    _ => json!({"ip": ip, "ipMode": "Proxy"}),
                }
            })
            .collect();
        if !ingress.is_empty() {
            status = Some(json!({"loadBalancer": {"ingress": ingress}}));
        }
        let mut ranges: Vec<ipnet::IpNet> = Vec::new();
        for &(is_v6, len, bits) in svc.source_ranges.iter().take(3) {
            let net: ipnet::IpNet = if is_v6 {
                let addr: std::net::Ipv6Addr = format!("2001:db8:{bits:x}::").parse().unwrap();
                ipnet::Ipv6Net::new(addr, 16 + len % 113).unwrap().into()
            } else {
                let [a, b] = bits.to_be_bytes();
                let addr = std::net::Ipv4Addr::new(198, 51, a, b);
                ipnet::Ipv4Net::new(addr, 8 + len % 25).unwrap().into()
            };
            ranges.push(net.trunc());
        }
        if !ranges.is_empty() {
            let ranges: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            spec.insert("loadBalancerSourceRanges".into(), json!(ranges));
        }
    }
    let mut metadata = json!({"name": name, "namespace": namespace});
    if let Some(t) = svc.created {
        let (h, m) = (t / 60 % 24, t % 60);
        metadata["creationTimestamp"] = json!(format!("2024-01-01T{h:02}:{m:02}:00Z"));
    }
    let mut doc =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec});
    if let Some(s) = status {
        doc["status"] = s;
    }
    docs.push(doc);

    // Endpoints: v1 Endpoints for a selectorless Service when asked, else EndpointSlices.
    match &svc.endpoints_v1 {
        Some(subsets) if !svc.selector => {
            let subsets: Vec<Value> = subsets
                .iter()
                .take(3)
                .filter_map(|s| subset(s, &gen_ports))
                .collect();
            let mut doc = json!({"apiVersion": "v1", "kind": "Endpoints",
                                 "metadata": {"name": name, "namespace": namespace}});
            if !subsets.is_empty() {
                doc["subsets"] = json!(subsets);
            }
            docs.push(doc);
        }
        _ => {
            for (k, s) in svc.slices.iter().take(3).enumerate() {
                docs.push(slice(
                    &format!("{name}-{k}"),
                    &name,
                    namespace,
                    s,
                    &gen_ports,
                ));
            }
        }
    }
}

/// The slice's ports: those of the Service it has, by name, on the target numbers.
fn slice_ports(mask: u8, numbers: &[u16; 4], ports: &[GenPort]) -> Vec<Value> {
    ports
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(i, p)| {
            let number = p.target_number.unwrap_or(numbers[i].max(1));
            let mut m = serde_json::Map::new();
            if let Some(n) = &p.name {
                m.insert("name".into(), json!(n));
            }
            m.insert("port".into(), json!(number));
            if let Some(proto) = p.proto.name() {
                m.insert("protocol".into(), json!(proto));
            }
            Value::Object(m)
        })
        .collect()
}

fn slice(name: &str, service: &str, namespace: &str, s: &Slice, ports: &[GenPort]) -> Value {
    let endpoints: Vec<Value> = s
        .endpoints
        .iter()
        .take(6)
        .map(|e| {
            let mut addresses = vec![endpoint_ip(s.v6, e.host)];
            if e.second_address {
                addresses.push(endpoint_ip(s.v6, e.host.wrapping_add(1000)));
            }
            let mut m = json!({"addresses": addresses});
            let mut conditions = serde_json::Map::new();
            for (k, v) in [
                ("ready", e.ready),
                ("serving", e.serving),
                ("terminating", e.terminating),
            ] {
                if let Some(v) = v {
                    conditions.insert(k.into(), json!(v));
                }
            }
            if !conditions.is_empty() {
                m["conditions"] = Value::Object(conditions);
            }
            if let Some(node) = NODES.get(e.node as usize) {
                m["nodeName"] = json!(node);
            }
            if let Some(z) = e.zones {
                let zones: Vec<Value> = ZONES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| z & (1 << i) != 0)
                    .map(|(_, z)| json!({"name": z}))
                    .collect();
                m["hints"] = json!({"forZones": zones});
                m["zone"] = json!(ZONES[z as usize % 2]);
            }
            m
        })
        .collect();
    let mut labels = json!({"kubernetes.io/service-name": service});
    if s.managed_by {
        labels["endpointslice.kubernetes.io/managed-by"] = json!("endpointslice-controller.k8s.io");
    }
    let mut doc = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "addressType": if s.v6 { "IPv6" } else { "IPv4" },
        "endpoints": endpoints,
    });
    let p = slice_ports(s.ports, &s.numbers, ports);
    if !p.is_empty() {
        doc["ports"] = json!(p);
    }
    doc
}

fn subset(s: &Subset, ports: &[GenPort]) -> Option<Value> {
    let (mut ready, mut not_ready) = (vec![], vec![]);
    for &(is_v6, host, is_ready, node) in s.addresses.iter().take(6) {
        let mut a = json!({"ip": endpoint_ip(is_v6, host)});
        if let Some(node) = NODES.get(node as usize) {
            a["nodeName"] = json!(node);
        }
        if is_ready { &mut ready } else { &mut not_ready }.push(a);
    }
    if ready.is_empty() && not_ready.is_empty() {
        return None;
    }
    let mut m = json!({});
    if !ready.is_empty() {
        m["addresses"] = json!(ready);
    }
    if !not_ready.is_empty() {
        m["notReadyAddresses"] = json!(not_ready);
    }
    let p = slice_ports(s.ports, &s.numbers, ports);
    if !p.is_empty() {
        m["ports"] = json!(p);
    }
    Some(m)
}

fn node(n: &Node) -> NodeFacts {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    let mut facts = NodeFacts {
        node_name: NODES.get(n.name as usize).map(|s| s.to_string()),
        masquerade_all: n.masquerade_all,
        zone: n.zone.map(|z| ZONES[usize::from(z)].to_string()),
        ..NodeFacts::default()
    };
    for (bit, addr) in [
        (1, "198.51.100.1"),
        (2, "2001:db8:51::1"),
        (4, "192.0.2.200"),
    ] {
        if n.ips & bit != 0 {
            facts.node_ips.push(ip(addr));
        }
    }
    for (bit, cidr) in [(1, "10.244.0.0/16"), (2, "fd00:244::/32")] {
        if n.cluster_cidrs & bit != 0 {
            facts.cluster_cidrs.push(net(cidr));
        }
    }
    for (bit, cidr) in [(1, "10.96.0.0/16"), (2, "fd00:96::/112")] {
        if n.service_cidrs & bit != 0 {
            facts.service_cidrs.push(net(cidr));
        }
    }
    let ranges = [
        "198.51.100.0/24",
        "2001:db8:51::/64",
        "127.0.0.0/8",
        "::1/128",
        "192.0.2.0/24",
    ];
    let mut nodeport = Vec::new();
    for (bit, cidr) in ranges.into_iter().enumerate() {
        if n.nodeport_addresses & (1 << bit) != 0 {
            nodeport.push(net(cidr));
        }
    }
    // Bit 5: `all`; with no CIDR and no `all`, `primary`.
    if n.nodeport_addresses & (1 << 5) != 0 {
        nodeport.extend([net("0.0.0.0/0"), net("::/0")]);
    }
    if !nodeport.is_empty() {
        facts.nodeport_addresses = NodePortAddresses::Cidrs(ipnet::IpNet::aggregate(&nodeport));
    }
    facts
}

/// Refuse to run `nft` anywhere but in the namespace `fuzz/run` made: the one named by
/// `SVCNFT_FUZZ_NETNS` (`ip netns add` pins it at /run/netns/NAME) must be this process's.
fn require_private_netns() {
    use std::os::unix::fs::MetadataExt;
    static CHECK: Once = Once::new();
    CHECK.call_once(|| {
        let ns = |path: &str| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
        let ours = ns("/proc/self/ns/net");
        let named = std::env::var("SVCNFT_FUZZ_NETNS")
            .ok()
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .and_then(|n| ns(&format!("/run/netns/{n}")));
        if ours.is_none() || ours != named {
            eprintln!(
                "rulesets: not inside the network namespace fuzz/run made; refusing to run \
                 nft (use fuzz/run rulesets)"
            );
            std::process::exit(2);
        }
    });
}

/// Hashes of the scripts nft has accepted already.
static CHECKED: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

fn nft_check(script: &str) -> Result<(), String> {
    let nft = std::env::var("NFT").unwrap_or_else(|_| "/usr/sbin/nft".into());
    let mut child = Command::new(&nft)
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{nft}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .expect("write to nft");
    let out = child.wait_with_output().expect("wait for nft");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fuzz_target!(|data: &[u8]| {
    require_private_netns();
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    let mut alloc = Alloc::default();
    let mut docs = Vec::new();
    for (i, svc) in input.services.iter().take(8).enumerate() {
        service(i, svc, &mut alloc, &mut docs);
    }
    for (k, s) in input.orphans.iter().take(2).enumerate() {
        docs.push(slice(&format!("gone-{k}"), "gone", "default", s, &[]));
    }
    let text: String = docs.iter().map(|d| format!("{d}\n")).collect();
    let facts = node(&input.node);
    let context = || format!("node: {facts:?}\nmanifests (JSON stream):\n{text}");

    let (objects, diagnostics) = parse("fuzz.json", &text);
    assert!(
        diagnostics.is_empty(),
        "valid manifests got diagnostics: {diagnostics:#?}\n{}",
        context()
    );
    assert_eq!(objects.len(), docs.len(), "objects lost\n{}", context());
    let compiled = compile(&objects, &facts);
    let errors: Vec<String> = compiled
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "valid cluster rejected: {errors:#?}\n{}",
        context()
    );
    let script = replace_script(&compiled.table);
    if std::env::var_os("SVCNFT_FUZZ_DUMP").is_some() {
        eprintln!("{}\n--- script ---\n{script}", context());
    }
    // nft's answer depends on the script alone: ask once per distinct script.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    script.hash(&mut hasher);
    if !CHECKED.lock().unwrap().insert(hasher.finish()) {
        return;
    }
    if let Err(stderr) = nft_check(&script) {
        panic!(
            "nft -c rejected the ruleset:\n{stderr}\n--- script ---\n{script}\n--- input ---\n{}",
            context()
        );
    }
});
