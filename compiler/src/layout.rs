//! The ruleset layout: which tables, chains, sets and maps exist, and what each Service port
//! contributes to them.
//!
//! The layout is built so the kernel loads it in linear time and a Service change touches only
//! map elements (see README, "Ruleset layout"):
//! - one verdict map per family, `service-ports-v4|v6`, keyed by `VIP . proto . port`, whose
//!   elements jump to one of a few *shared* chains, `pick-<family>-<proto>-N` (one per endpoint
//!   count N in use, not one per Service: verdict elements that jump to many distinct chains
//!   are what loads in quadratic time);
//! - a pick chain draws a slot with `numgen random mod N` and DNATs through one data map per
//!   family and protocol, `endpoints-<family>-<proto>`, keyed by `VIP . port . slot`;
//! - whatever reaches a cluster IP without having been DNATed is REJECTed (the port has no
//!   ready endpoint, or the Service has no such port), and the rest of the service CIDR is
//!   DROPped.

use crate::node::NodeFacts;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;
use svc_nft_ir::{
    BaseChain, BinOp, Chain, ChainType, CtKey, CtState, Data, DataType, Element, Expr, Family,
    Hook, L4Proto, MetaKey, Payload, RejectWith, Rule, Set, SetFlag, Stmt, Table, TypeSpec, Value,
    Verdict,
};

/// The packet-mark bit that asks nat-postrouting to masquerade (kube-proxy's bit).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// What one Service port on one cluster IP compiles from.
#[derive(Clone, Debug)]
pub struct ServicePort {
    pub vip: IpAddr,
    pub proto: L4Proto,
    pub port: u16,
    /// `namespace/name[:port-name]`, carried into element comments.
    pub label: String,
    /// The endpoints to DNAT to, sorted and unique; empty means REJECT.
    pub backends: Vec<(IpAddr, u16)>,
}

/// An IP family, with the names and expressions that differ between v4 and v6.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ipf {
    v6: bool,
}

const FAMILIES: [Ipf; 2] = [Ipf { v6: false }, Ipf { v6: true }];

impl Ipf {
    fn of(addr: &IpAddr) -> Ipf {
        Ipf { v6: addr.is_ipv6() }
    }

    /// `name-v4` / `name-v6`.
    fn name(self, base: &str) -> String {
        format!("{base}-{}", if self.v6 { "v6" } else { "v4" })
    }

    fn saddr(self) -> Expr {
        Expr::Payload(if self.v6 {
            Payload::Ip6Saddr
        } else {
            Payload::IpSaddr
        })
    }

    fn daddr(self) -> Expr {
        Expr::Payload(if self.v6 {
            Payload::Ip6Daddr
        } else {
            Payload::IpDaddr
        })
    }

    fn addr_type(self) -> DataType {
        if self.v6 {
            DataType::Ipv6Addr
        } else {
            DataType::Ipv4Addr
        }
    }

    fn nat_family(self) -> Family {
        if self.v6 {
            Family::Ip6
        } else {
            Family::Ip
        }
    }

    /// Prefixes of this family, as interval-set elements.
    fn prefixes<'a>(self, nets: &'a [IpNet]) -> impl Iterator<Item = Value> + 'a {
        nets.iter()
            .filter(move |n| matches!(n, IpNet::V6(_)) == self.v6)
            .map(|n| Value::Prefix(n.trunc()))
    }

    /// `daddr . meta l4proto . th dport`: the key every Service lookup starts from.
    fn service_key(self) -> Vec<Expr> {
        vec![
            self.daddr(),
            Expr::Meta(MetaKey::L4Proto),
            Expr::Payload(Payload::ThDport),
        ]
    }
}

fn addr(ip: &IpAddr) -> Value {
    match ip {
        IpAddr::V4(a) => Value::Ipv4(*a),
        IpAddr::V6(a) => Value::Ipv6(*a),
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

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule::new(stmts)
}

fn jump(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(chain.into()))
}

fn goto(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain.into()))
}

/// Build the table for these Service ports on this node. `notes` become comments above it.
pub fn build(node: &NodeFacts, ports: &[ServicePort], notes: Vec<String>) -> Table {
    let mut table = Table {
        family: Family::Inet,
        name: node.table.clone(),
        notes,
        ..Table::default()
    };
    for f in FAMILIES {
        add_family_sets(&mut table, node, f);
    }
    let mut picks = BTreeSet::new();
    for sp in ports {
        add_service_port(&mut table, sp, &mut picks);
    }
    for (f, proto, n) in picks {
        let chain = pick_chain(node, f, proto, n);
        table.chains.insert(pick_chain_name(f, proto, n), chain);
    }
    add_fixed_chains(&mut table);
    table
}

/// Sets and maps every table has, empty or not, so that a Service change never has to
/// create or delete one.
fn add_family_sets(table: &mut Table, node: &NodeFacts, f: Ipf) {
    let addr = f.addr_type();
    let intervals = |nets: &[IpNet]| {
        let mut set = Set::keys(TypeSpec::Type(vec![addr]));
        set.flags = vec![SetFlag::Interval];
        set.elements = f
            .prefixes(nets)
            .map(|p| (vec![p], Element::default()))
            .collect();
        set
    };
    let service_key = TypeSpec::Type(vec![addr, DataType::InetProto, DataType::InetService]);
    let sets = [
        ("cluster-ips", Set::keys(TypeSpec::Type(vec![addr]))),
        ("service-cidrs", intervals(&node.service_cidrs)),
        ("cluster-cidrs", intervals(&node.cluster_cidrs)),
        ("hairpin", Set::keys(TypeSpec::Type(vec![addr, addr]))),
        ("service-ports", Set::verdict_map(service_key)),
    ];
    for (name, set) in sets {
        table.sets.insert(f.name(name), set);
    }
    for proto in PROTOCOLS {
        // One map per protocol: nft 1.0.6 cannot add a rule using a map whose data is typed
        // `ip daddr . th dport` once it has read that map back from the kernel, and typing
        // it `tcp dport` makes the rule match TCP only.
        let dport = Expr::Payload(Payload::Dport(proto));
        // The modulus in a `typeof` only types the slot; each pick chain uses its own.
        let key = vec![f.daddr(), dport.clone(), Expr::NumgenRandom(1)];
        let backend = vec![f.daddr(), dport];
        let map = Set::data_map(TypeSpec::Typeof(key), TypeSpec::Typeof(backend));
        table.sets.insert(endpoints_map(f, proto), map);
    }
}

const PROTOCOLS: [L4Proto; 3] = [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp];

/// `endpoints-v4-tcp` …
fn endpoints_map(f: Ipf, proto: L4Proto) -> String {
    f.name("endpoints") + &format!("-{proto}")
}

/// `pick-v4-tcp-3` …: the chain for Service ports with `n` endpoints.
fn pick_chain_name(f: Ipf, proto: L4Proto, n: usize) -> String {
    f.name("pick") + &format!("-{proto}-{n}")
}

fn add_service_port(table: &mut Table, sp: &ServicePort, picks: &mut BTreeSet<Pick>) {
    let f = Ipf::of(&sp.vip);
    let mut insert = |set: &str, key: Vec<Value>, data: Option<Data>, comment: Option<String>| {
        let set = table
            .sets
            .get_mut(set)
            .expect("every set is created up front");
        set.elements.insert(key, Element { data, comment });
    };
    insert(&f.name("cluster-ips"), vec![addr(&sp.vip)], None, None);
    let n = sp.backends.len();
    if n == 0 {
        return; // not DNATed, so cluster-ips-check rejects it
    }
    let key = vec![addr(&sp.vip), Value::Proto(sp.proto), Value::Port(sp.port)];
    let pick = Data::Verdict(Verdict::Goto(pick_chain_name(f, sp.proto, n)));
    insert(
        &f.name("service-ports"),
        key,
        Some(pick),
        Some(sp.label.clone()),
    );
    picks.insert((f, sp.proto, n));
    let endpoints = endpoints_map(f, sp.proto);
    for (slot, (ip, port)) in sp.backends.iter().enumerate() {
        let slot_key = vec![addr(&sp.vip), Value::Port(sp.port), Value::Int(slot as u32)];
        let target = Data::Values(vec![addr(ip), Value::Port(*port)]);
        insert(&endpoints, slot_key, Some(target), None);
        // An endpoint that reaches itself through its Service must be masqueraded, or it would
        // answer itself from the wrong address.
        insert(&f.name("hairpin"), vec![addr(ip), addr(ip)], None, None);
    }
}

/// A shared pick chain, by family, protocol and endpoint count.
type Pick = (Ipf, L4Proto, usize);

/// The chain for Service ports of family `f` and protocol `proto` with `n` endpoints: mark
/// off-cluster clients for masquerade, then DNAT to slot `random mod n`.
fn pick_chain(node: &NodeFacts, f: Ipf, proto: L4Proto, n: usize) -> Chain {
    let mark = Stmt::MetaSet {
        key: MetaKey::Mark,
        value: Expr::Bitwise(
            Box::new(Expr::Meta(MetaKey::Mark)),
            BinOp::Or,
            MASQUERADE_MARK,
        ),
    };
    let has_cluster_cidr = f.prefixes(&node.cluster_cidrs).next().is_some();
    let mut rules = Vec::new();
    if node.masquerade_all {
        rules.push(rule(vec![mark]));
    } else if has_cluster_cidr {
        let off_cluster = Stmt::differs(f.saddr(), Expr::SetRef(f.name("cluster-cidrs")));
        rules.push(rule(vec![off_cluster, mark]));
    }
    let dport = Expr::Payload(Payload::Dport(proto));
    let key = vec![f.daddr(), dport, Expr::NumgenRandom(n as u32)];
    rules.push(rule(vec![Stmt::DnatMap {
        family: f.nat_family(),
        key: Expr::Concat(key),
        map: endpoints_map(f, proto),
    }]));
    Chain::regular(rules)
}

/// Hooks and the chains that do not depend on the Services.
fn add_fixed_chains(table: &mut Table) {
    use ChainType::{Filter, Nat};
    let ct_new = || {
        Stmt::matches(
            Expr::Ct(CtKey::State),
            Expr::Value(Value::CtState(CtState::New)),
        )
    };
    let mark = || Expr::Meta(MetaKey::Mark);
    let mut services = Vec::new();
    let mut check = Vec::new();
    let mut postrouting = Vec::new();
    for f in FAMILIES {
        services.push(rule(vec![Stmt::Vmap {
            key: Expr::Concat(f.service_key()),
            map: f.name("service-ports"),
        }]));
        let to = |set: &str| Stmt::matches(f.daddr(), Expr::SetRef(f.name(set)));
        check.push(
            rule(vec![to("cluster-ips"), goto("reject-chain")])
                .with_comment("cluster IP, but no endpoint for this port"),
        );
        check.push(
            rule(vec![to("service-cidrs"), Stmt::Verdict(Verdict::Drop)])
                .with_comment("service CIDR address no Service owns"),
        );
        let pair = Expr::Concat(vec![f.saddr(), f.daddr()]);
        postrouting.push(
            rule(vec![
                Stmt::matches(Expr::Ct(CtKey::Status), Expr::Value(Value::CtStatusDnat)),
                Stmt::matches(pair, Expr::SetRef(f.name("hairpin"))),
                Stmt::Masquerade,
            ])
            .with_comment("hairpin: an endpoint reached itself"),
        );
    }
    let marked = Expr::Bitwise(Box::new(mark()), BinOp::And, MASQUERADE_MARK);
    postrouting.extend([
        rule(vec![
            Stmt::matches(marked, Expr::Value(Value::Bits(0))),
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
    let tcp = Stmt::matches(
        Expr::Meta(MetaKey::L4Proto),
        Expr::Value(Value::Proto(L4Proto::Tcp)),
    );
    let reject = vec![
        rule(vec![tcp, Stmt::Reject(RejectWith::TcpReset)]),
        rule(vec![Stmt::Reject(RejectWith::PortUnreachable)]),
    ];
    let check_new = || vec![rule(vec![ct_new(), jump("cluster-ips-check")])];
    let chains = [
        ("services", Chain::regular(services)),
        ("cluster-ips-check", Chain::regular(check)),
        ("reject-chain", Chain::regular(reject)),
        (
            "nat-prerouting",
            base(
                Nat,
                Hook::Prerouting,
                -100,
                vec![rule(vec![jump("services")])],
            ),
        ),
        (
            "nat-output",
            base(Nat, Hook::Output, -100, vec![rule(vec![jump("services")])]),
        ),
        (
            "nat-postrouting",
            base(Nat, Hook::Postrouting, 100, postrouting),
        ),
        // After DNAT (-100): what still heads for a cluster IP was not DNATed.
        (
            "filter-prerouting",
            base(Filter, Hook::Prerouting, -90, check_new()),
        ),
        (
            "filter-output",
            base(Filter, Hook::Output, -90, check_new()),
        ),
    ];
    for (name, chain) in chains {
        table.chains.insert(name.to_string(), chain);
    }
}

/// Sorted, de-duplicated backends: the slot order of the endpoints map.
pub fn sorted(backends: impl IntoIterator<Item = (IpAddr, u16)>) -> Vec<(IpAddr, u16)> {
    backends
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
