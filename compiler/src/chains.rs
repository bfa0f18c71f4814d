//! The chains: hooks, the frontend lookup, the shared pick chains, and the checks that REJECT
//! or DROP what no Service port takes.

use crate::endpoints::Backend;
use crate::family::{addr, Ipf, FAMILIES};
use crate::layout::{endpoints_map, Frontend, PROTOCOLS};
use crate::node::{loopback, NodeFacts};
use std::collections::BTreeSet;
use std::net::IpAddr;
use svc_nft_ir::{
    BaseChain, BinOp, Chain, ChainType, CtKey, CtState, Expr, Hook, L4Proto, MetaKey, Payload,
    RejectWith, Rule, Stmt, Table, Value, Verdict,
};

/// The packet-mark bit that asks nat-postrouting to masquerade (kube-proxy's bit).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// How a frontend's traffic picks its endpoint. Chains are shared by every Service port with
/// the same kind, family, protocol and endpoint counts. `nodeport`: the frontend is a NodePort
/// on every covered local address (`--nodeport-addresses` CIDRs), so its endpoints are keyed
/// by port alone, not by address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pick {
    /// Traffic to a cluster IP, and what `ExternalLocal` short-circuits: masquerade only
    /// off-cluster clients (with `--masquerade-all`, every client of a cluster IP); `local`:
    /// this node's endpoints (`internalTrafficPolicy: Local`).
    Internal {
        local: bool,
        n: usize,
        nodeport: bool,
    },
    /// External traffic with `externalTrafficPolicy: Cluster`: always masqueraded.
    External { n: usize, nodeport: bool },
    /// External traffic with `externalTrafficPolicy: Local`: this node's endpoints, client
    /// address kept; DROP without one. Pods and the node itself are short-circuited to all
    /// endpoints, as kube-proxy does.
    ExternalLocal {
        local: usize,
        cluster: usize,
        nodeport: bool,
    },
}

impl Pick {
    /// Which endpoint maps the chain reads: (all endpoints, local endpoints).
    pub fn maps(self) -> (bool, bool) {
        match self {
            Pick::Internal { local, .. } => (!local, local),
            Pick::External { .. } => (true, false),
            Pick::ExternalLocal { local, .. } => (true, local > 0),
        }
    }

    pub fn nodeport(self) -> bool {
        match self {
            Pick::Internal { nodeport, .. }
            | Pick::External { nodeport, .. }
            | Pick::ExternalLocal { nodeport, .. } => nodeport,
        }
    }

    fn name(self, f: Ipf, proto: L4Proto) -> String {
        let name = match self {
            Pick::Internal {
                local: false, n, ..
            } => f.name("pick") + &format!("-{proto}-{n}"),
            Pick::Internal { local: true, n, .. } => {
                f.name("pick-local") + &format!("-{proto}-{n}")
            }
            Pick::External { n, .. } => f.name("external") + &format!("-{proto}-{n}"),
            Pick::ExternalLocal { local, cluster, .. } => {
                f.name("external-local") + &format!("-{proto}-{local}-{cluster}")
            }
        };
        match self.nodeport() {
            true => format!("nodeport-{name}"),
            false => name,
        }
    }

    /// The chain `ExternalLocal` sends pods and the node to: all endpoints.
    fn short_circuit(cluster: usize, nodeport: bool) -> Pick {
        Pick::Internal {
            local: false,
            n: cluster,
            nodeport,
        }
    }
}

/// Note that `pick` is used (and the chains it goes to); returns its chain's name.
pub fn register(
    picks: &mut BTreeSet<(Ipf, L4Proto, Pick)>,
    f: Ipf,
    proto: L4Proto,
    pick: Pick,
) -> String {
    picks.insert((f, proto, pick));
    if let Pick::ExternalLocal {
        cluster, nodeport, ..
    } = pick
    {
        picks.insert((f, proto, Pick::short_circuit(cluster, nodeport)));
    }
    pick.name(f, proto)
}

/// `meta l4proto P`: also what lets nft 1.0.6 type `ct original proto-dst` (without it: "can
/// not use variable sized data types").
fn is_proto(proto: L4Proto) -> Stmt {
    matches_value(Expr::Meta(MetaKey::L4Proto), Value::Proto(proto))
}

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule::new(stmts)
}

fn jump(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(chain.into()))
}

fn goto(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain.into()))
}

fn matches_value(left: Expr, value: Value) -> Stmt {
    Stmt::matches(left, Expr::Value(value))
}

fn set_mark() -> Stmt {
    Stmt::MetaSet {
        key: MetaKey::Mark,
        value: Expr::Bitwise(
            Box::new(Expr::Meta(MetaKey::Mark)),
            BinOp::Or,
            MASQUERADE_MARK,
        ),
    }
}

fn base(kind: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain::base(
        BaseChain {
            kind,
            hook,
            priority,
        },
        rules,
    )
}

/// The chain a pick uses, with its name.
pub fn pick(node: &NodeFacts, f: Ipf, proto: L4Proto, pick: Pick) -> (String, Chain) {
    (pick.name(f, proto), pick_chain(node, f, proto, pick))
}

/// The verdict map that sends a frontend's clients to their Service port's affinity chain:
/// the one choosing among all endpoints, or among this node's (`local`); of frontends (keyed
/// by address and port) or of NodePorts on CIDRs (by port).
pub fn affinity_lookup_map(f: Ipf, local: bool, nodeport: bool) -> String {
    let name = match local {
        true => f.name("affinity-lookup-local"),
        false => f.name("affinity-lookup"),
    };
    match nodeport {
        true => format!("nodeport-{name}"),
        false => name,
    }
}

/// DNAT to the endpoint a client with session affinity is pinned to, if its Service port has
/// affinity and it has one there, else to slot `random mod n` of the map (keyed by frontend
/// address and port, or for NodePorts on CIDRs by port alone).
fn dnat(f: Ipf, proto: L4Proto, local: bool, n: usize, nodeport: bool) -> Vec<Rule> {
    let dport = Expr::Payload(Payload::Dport(proto));
    let frontend = match nodeport {
        true => vec![
            Expr::Meta(MetaKey::L4Proto),
            Expr::Payload(Payload::ThDport),
        ],
        false => f.frontend_key(),
    };
    let pinned = rule(vec![Stmt::Vmap {
        key: Expr::Concat(frontend),
        map: affinity_lookup_map(f, local, nodeport),
    }]);
    let slot = Expr::NumgenRandom(n as u32);
    let key = match nodeport {
        true => vec![dport, slot],
        false => vec![f.daddr(), dport, slot],
    };
    let random = rule(vec![Stmt::DnatMap {
        family: f.nat_family(),
        key: Expr::Concat(key),
        map: endpoints_map(f, proto, local, nodeport),
    }]);
    vec![pinned, random]
}

fn pick_chain(node: &NodeFacts, f: Ipf, proto: L4Proto, pick: Pick) -> Chain {
    let mut rules = Vec::new();
    match pick {
        Pick::Internal { local, n, nodeport } => {
            let has_cluster_cidr = f.prefixes(&node.cluster_cidrs).next().is_some();
            if node.masquerade_all {
                // Only traffic to a cluster IP, as kube-proxy: pods short-circuited here from
                // an `externalTrafficPolicy: Local` frontend keep their address.
                let to_cluster_ip = Stmt::matches(f.daddr(), Expr::SetRef(f.name("cluster-ips")));
                rules.push(rule(vec![to_cluster_ip, set_mark()]));
            } else if has_cluster_cidr {
                // Compared with constants, not looked up in a set: a full replace deletes the
                // old table's sets, and a packet its old chain still holds would find the
                // cluster CIDRs gone, be marked, and be masqueraded by the new table.
                let mut off_cluster: Vec<Stmt> = f
                    .prefixes(&node.cluster_cidrs)
                    .map(|net| Stmt::differs(f.saddr(), Expr::Value(net)))
                    .collect();
                off_cluster.push(set_mark());
                rules.push(rule(off_cluster));
            }
            rules.extend(dnat(f, proto, local, n, nodeport));
        }
        Pick::External { n, nodeport } => {
            rules.push(rule(vec![set_mark()]));
            rules.extend(dnat(f, proto, false, n, nodeport));
        }
        Pick::ExternalLocal {
            local,
            cluster,
            nodeport,
        } => {
            let all = Pick::short_circuit(cluster, nodeport).name(f, proto);
            for net in f.prefixes(&node.cluster_cidrs) {
                let from_pod = Stmt::matches(f.saddr(), Expr::Value(net));
                rules.push(
                    rule(vec![from_pod, goto(&all)]).with_comment("pod traffic: all endpoints"),
                );
            }
            let from_node = matches_value(Expr::FibSaddrType, Value::LocalAddress);
            rules.push(
                rule(vec![from_node, set_mark(), goto(&all)])
                    .with_comment("node traffic: all endpoints, masqueraded"),
            );
            if local == 0 {
                rules.push(
                    rule(vec![Stmt::Verdict(Verdict::Drop)])
                        .with_comment("no endpoint on this node"),
                );
            } else {
                rules.extend(dnat(f, proto, true, local, nodeport));
            }
        }
    }
    Chain::regular(rules)
}

/// The affinity entry of a client of a Service port on an endpoint: `client . cluster IP .
/// proto . port . endpoint address`. The cluster IP and port name the Service port whatever
/// frontend the client used, so all its frontends share the entry; the endpoint is what the
/// packet holds, or a fixed one. (No endpoint port: an IPv6 key with one is more than nft
/// 1.0.6 can compile, and an address is one endpoint of a Service port.)
fn affinity_key(f: Ipf, port: &AffinityPort, endpoint: Option<&IpAddr>) -> Expr {
    let fixed = |e: Expr, v: Value| Expr::Fixed(Box::new(e), v);
    let port_number = Value::Port(port.cluster_ip.port);
    Expr::Concat(vec![
        f.saddr(),
        fixed(f.daddr(), addr(&port.cluster_ip.addr)),
        Expr::Meta(MetaKey::L4Proto),
        fixed(Expr::Payload(Payload::ThDport), port_number),
        match endpoint {
            Some(ip) => fixed(f.daddr(), addr(ip)),
            None => f.daddr(),
        },
    ])
}

/// A Service port with session affinity, as its chains need it.
pub struct AffinityPort<'a> {
    /// `namespace/name[:port]`: names the chains.
    pub label: &'a str,
    pub proto: L4Proto,
    pub cluster_ip: Frontend,
    pub timeout: u32,
}

impl AffinityPort<'_> {
    fn chain_name(&self, f: Ipf, base: &str) -> String {
        format!("{}-{}", f.name(base), self.label.replace(':', "/"))
    }

    /// The chain that DNATs a client to the endpoint among `backends` it is pinned to, if it
    /// is pinned to one of them: endpoints no longer in use are never chosen again, whatever
    /// entries they still have. `local`: `backends` are this node's endpoints.
    pub fn sticky(&self, f: Ipf, local: bool, backends: &[Backend]) -> (String, Chain) {
        let rules = backends.iter().map(|(ip, port)| {
            rule(vec![
                is_proto(self.proto),
                Stmt::matches(
                    affinity_key(f, self, Some(ip)),
                    Expr::SetRef(f.name("affinity")),
                ),
                Stmt::Dnat {
                    family: f.nat_family(),
                    addr: addr(ip),
                    port: *port,
                },
            ])
        });
        let base = if local { "sticky-local" } else { "sticky" };
        (self.chain_name(f, base), Chain::regular(rules.collect()))
    }

    /// The chain that records (or refreshes) which endpoint a client got, after DNAT.
    pub fn recorder(&self, f: Ipf) -> (String, Chain) {
        let update = Stmt::Update {
            set: f.name("affinity"),
            key: affinity_key(f, self, None),
            timeout: Some(self.timeout),
            data: None,
        };
        let rules = vec![rule(vec![is_proto(self.proto), update])];
        (self.chain_name(f, "remember"), Chain::regular(rules))
    }
}

/// The rules of NodePorts on every local address `--nodeport-addresses` covers, for family `f`.
struct NodePortRules {
    /// In `services`, after the frontends: a local address in the CIDRs takes the NodePort.
    services: Rule,
    /// In `cluster-ips-check`: the same address match refuses a NodePort without endpoints.
    check: Rule,
    /// In `nat-postrouting`, per protocol: record affinity of a NodePort's clients. Cluster IPs
    /// (which `all` covers) have their own recorders in `affinity-ports`.
    remember: Vec<Rule>,
}

fn nodeport_rules(f: Ipf) -> NodePortRules {
    let set = |name: &str| Expr::SetRef(f.name(name));
    let port_key = || {
        Expr::Concat(vec![
            Expr::Meta(MetaKey::L4Proto),
            Expr::Payload(Payload::ThDport),
        ])
    };
    // `fib` calls loopback local too; kube-proxy's nftables mode leaves it out the same way.
    let loopback = match f.v6 {
        false => Value::Prefix(loopback(false)),
        true => Value::Ipv6(std::net::Ipv6Addr::LOCALHOST),
    };
    let local = || {
        vec![
            matches_value(Expr::FibDaddrType, Value::LocalAddress),
            Stmt::differs(f.daddr(), Expr::Value(loopback.clone())),
            Stmt::matches(f.daddr(), set("nodeport-addresses")),
        ]
    };
    let mut services = local();
    services.push(Stmt::Vmap {
        key: port_key(),
        map: f.name("service-nodeports"),
    });
    let mut check = local();
    check.extend([
        Stmt::matches(port_key(), set("nodeport-no-endpoints")),
        goto("reject-chain"),
    ]);
    let remember = PROTOCOLS.into_iter().map(|proto| {
        let original = Expr::Concat(vec![
            Expr::Meta(MetaKey::L4Proto),
            Expr::Ct(CtKey::OriginalProtoDst),
        ]);
        rule(vec![
            is_proto(proto),
            matches_value(Expr::Ct(CtKey::Status), Value::CtStatusDnat),
            Stmt::matches(f.original_daddr(), set("nodeport-addresses")),
            Stmt::differs(f.original_daddr(), set("cluster-ips")),
            Stmt::Vmap {
                key: original,
                map: f.name("nodeport-affinity-ports"),
            },
        ])
    });
    NodePortRules {
        services: rule(services),
        check: rule(check).with_comment("NodePort of a Service without endpoints"),
        remember: remember.collect(),
    }
}

/// Add the hooks and the chains that do not depend on the Services.
pub fn add_fixed(table: &mut Table, node: &NodeFacts) {
    use ChainType::{Filter, Nat};
    let ct_new = || matches_value(Expr::Ct(CtKey::State), Value::CtState(CtState::New));
    let ct_dnat = || matches_value(Expr::Ct(CtKey::Status), Value::CtStatusDnat);
    let mark = || Expr::Meta(MetaKey::Mark);
    let mut services = Vec::new();
    let mut check = Vec::new();
    let mut firewall = Vec::new();
    let mut postrouting = Vec::new();
    for f in FAMILIES {
        let frontend = || Expr::Concat(f.frontend_key());
        let set = |name: &str| Expr::SetRef(f.name(name));
        services.push(rule(vec![Stmt::Vmap {
            key: frontend(),
            map: f.name("service-ports"),
        }]));
        let nodeports = node.nodeport_ranges(f.v6).map(|_| nodeport_rules(f));
        check.extend([
            rule(vec![
                Stmt::matches(frontend(), set("no-endpoints")),
                goto("reject-chain"),
            ])
            .with_comment("external address of a Service without endpoints"),
            rule(vec![
                Stmt::matches(f.daddr(), set("cluster-ips")),
                goto("reject-chain"),
            ])
            .with_comment("cluster IP, but no endpoint for this port"),
            rule(vec![
                Stmt::matches(f.daddr(), set("service-cidrs")),
                Stmt::Verdict(Verdict::Drop),
            ])
            .with_comment("service CIDR address no Service owns"),
        ]);
        if let Some(NodePortRules {
            services: s,
            check: c,
            remember,
        }) = nodeports
        {
            services.push(s);
            check.push(c);
            postrouting.extend(remember);
        }
        let mut source = f.frontend_key();
        source.push(f.saddr());
        firewall.push(
            rule(vec![
                Stmt::matches(frontend(), set("firewalled")),
                Stmt::differs(Expr::Concat(source), set("lb-sources")),
                Stmt::Verdict(Verdict::Drop),
            ])
            .with_comment("loadBalancerSourceRanges"),
        );
        for proto in PROTOCOLS {
            let original = Expr::Concat(vec![
                f.original_daddr(),
                Expr::Meta(MetaKey::L4Proto),
                Expr::Ct(CtKey::OriginalProtoDst),
            ]);
            let remember = Stmt::Vmap {
                key: original,
                map: f.name("affinity-ports"),
            };
            postrouting.push(rule(vec![is_proto(proto), ct_dnat(), remember]));
        }
        let pair = Expr::Concat(vec![f.saddr(), f.daddr()]);
        postrouting.push(
            rule(vec![
                ct_dnat(),
                Stmt::matches(pair, set("hairpin")),
                Stmt::Masquerade,
            ])
            .with_comment("hairpin: an endpoint reached itself"),
        );
    }
    let marked = Expr::Bitwise(Box::new(mark()), BinOp::And, MASQUERADE_MARK);
    postrouting.extend([
        rule(vec![
            matches_value(marked, Value::Bits(0)),
            Stmt::Verdict(Verdict::Return),
        ]),
        rule(vec![Stmt::MetaSet {
            key: MetaKey::Mark,
            value: Expr::Bitwise(Box::new(mark()), BinOp::Xor, MASQUERADE_MARK),
        }]),
        rule(vec![Stmt::Masquerade]),
    ]);
    // A TCP reset refuses at once whatever the load: ICMP errors are rate-limited by the
    // kernel, and one that arrives while the client's socket is busy only counts as a soft
    // error, so the client waits for its SYN retransmission.
    let reject = vec![
        rule(vec![
            is_proto(L4Proto::Tcp),
            Stmt::Reject(RejectWith::TcpReset),
        ]),
        rule(vec![Stmt::Reject(RejectWith::PortUnreachable)]),
    ];
    let when_new = |chain: &str| vec![rule(vec![ct_new(), jump(chain)])];
    let to_services = || vec![rule(vec![jump("services")])];
    let chains = [
        ("services", Chain::regular(services)),
        ("cluster-ips-check", Chain::regular(check)),
        ("firewall-check", Chain::regular(firewall)),
        ("reject-chain", Chain::regular(reject)),
        (
            "nat-prerouting",
            base(Nat, Hook::Prerouting, -100, to_services()),
        ),
        ("nat-output", base(Nat, Hook::Output, -100, to_services())),
        (
            "nat-postrouting",
            base(Nat, Hook::Postrouting, 100, postrouting),
        ),
        // Before DNAT (-100): the destination is still the load-balancer IP.
        (
            "filter-prerouting-pre-dnat",
            base(Filter, Hook::Prerouting, -110, when_new("firewall-check")),
        ),
        (
            "filter-output-pre-dnat",
            base(Filter, Hook::Output, -110, when_new("firewall-check")),
        ),
        // After DNAT: what still heads for a Service address was not DNATed.
        (
            "filter-prerouting",
            base(Filter, Hook::Prerouting, -90, when_new("cluster-ips-check")),
        ),
        (
            "filter-output",
            base(Filter, Hook::Output, -90, when_new("cluster-ips-check")),
        ),
    ];
    for (name, chain) in chains {
        table.chains.insert(name.to_string(), chain);
    }
}
