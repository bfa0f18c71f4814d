//! `svc-nft explain`: where would this node send a new connection, according to the compiled
//! IR? Text for people, JSON (`-o json`) for machines and tests.

use clap::ValueEnum;
use ipnet::IpNet;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use svc_nft_compiler::NodeFacts;
use svc_nft_ir::{explain, Fate, L4Proto, Outcome, Packet, Table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

/// Where the connection comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Origin {
    /// A Pod on this node or another (its address is in --cluster-cidr).
    Pod,
    /// A process on this node (the output hook; `fib saddr type local`).
    Node,
    /// Anything else, arriving from the network.
    External,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The connection to explain.
pub struct Query {
    pub from: IpAddr,
    pub to: SocketAddr,
    pub proto: Proto,
    pub origin: Option<Origin>,
    /// This node's addresses besides `--node-ip`.
    pub local_addresses: Vec<IpAddr>,
}

impl Query {
    /// The origin given, or the one the source address implies.
    fn origin(&self, node: &NodeFacts) -> Origin {
        let inside = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&self.from));
        self.origin.unwrap_or(if self.is_node(node, self.from) {
            Origin::Node
        } else if inside(&node.cluster_cidrs) {
            Origin::Pod
        } else {
            Origin::External
        })
    }

    /// Whether `ip` is an address of the node: `--node-ip` or `--local-address`.
    fn is_node(&self, node: &NodeFacts, ip: IpAddr) -> bool {
        node.node_ips.contains(&ip) || self.local_addresses.contains(&ip)
    }

    /// Whether `fib daddr type local` holds: a node address, or loopback.
    fn to_node(&self, node: &NodeFacts) -> bool {
        self.to.ip().is_loopback() || self.is_node(node, self.to.ip())
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    }
}

fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Pod => "pod",
        Origin::Node => "node",
        Origin::External => "external",
    }
}

fn verdict(fate: &Fate) -> &'static str {
    match fate {
        Fate::Dnat { .. } => "dnat",
        Fate::Reject => "reject",
        Fate::Drop => "drop",
        Fate::Untouched => "not-handled",
    }
}

/// Evaluate the query against the table; returns the report in the requested format.
pub fn report(table: &Table, node: &NodeFacts, q: &Query, format: Format) -> String {
    let origin = q.origin(node);
    let packet = Packet {
        saddr: q.from,
        daddr: q.to.ip(),
        proto: match q.proto {
            Proto::Tcp => L4Proto::Tcp,
            Proto::Udp => L4Proto::Udp,
            Proto::Sctp => L4Proto::Sctp,
        },
        dport: q.to.port(),
        from_node: origin == Origin::Node,
        to_node: q.to_node(node),
    };
    let outcomes = explain(table, &packet);
    let connection = format!(
        "{} {} -> {} (origin: {})",
        proto_name(q.proto),
        q.from,
        q.to,
        origin_name(origin)
    );
    match format {
        Format::Text => text(&connection, &outcomes),
        Format::Json => {
            let first = &outcomes[0];
            let candidates: Vec<_> = outcomes
                .iter()
                .filter_map(|o| match o.fate {
                    Fate::Dnat { addr, port } => Some(json!({
                        "address": addr.to_string(),
                        "port": port,
                        "share": o.share,
                        "masquerade": o.masquerade,
                    })),
                    _ => None,
                })
                .collect();
            let value = json!({
                "connection": {
                    "proto": proto_name(q.proto),
                    "from": q.from.to_string(),
                    "to": q.to.to_string(),
                    "origin": origin_name(origin),
                },
                "verdict": verdict(&first.fate),
                "service": first.services.last(),
                "candidates": candidates,
                "masquerade": outcomes.iter().any(|o| o.masquerade),
                "outcomes": outcomes.iter().map(|o| json!({"verdict": verdict(&o.fate), "share": o.share})).collect::<Vec<_>>(),
                "path": first.path,
            });
            format!("{value:#}\n")
        }
    }
}

fn text(connection: &str, outcomes: &[Outcome]) -> String {
    let first = &outcomes[0];
    let mut out = format!("{connection}\n");
    if let Some(service) = first.services.last() {
        out += &format!("service port: {service}\n");
    }
    for o in outcomes {
        let share = o.share * 100.0;
        let masq = if o.masquerade {
            "masqueraded"
        } else {
            "source kept"
        };
        out += &match o.fate {
            Fate::Dnat { addr, port } => {
                format!(
                    "DNAT to {}  {share:.1}%  {masq}\n",
                    SocketAddr::new(addr, port)
                )
            }
            Fate::Reject => format!("REJECT  {share:.1}%\n"),
            Fate::Drop => format!("DROP  {share:.1}%\n"),
            Fate::Untouched => format!("not handled by svc-nft  {share:.1}%  {masq}\n"),
        };
    }
    out += "path:\n";
    for step in &first.path {
        out += &format!("  {step}\n");
    }
    out
}
