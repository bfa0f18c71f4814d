//! Values, expressions and statements: the body of a rule, typed rather than text.

use ipnet::IpNet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Address family of a table (and of a NAT statement inside an `inet` table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
    #[default]
    Inet,
}

/// Layer-4 protocols a Service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
}

/// Connection-tracking states matched by `ct state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    New,
}

/// A constant: one component of a set key, of map data, or the right side of a match.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// An address prefix, for interval sets (`10.0.0.0/8`).
    Prefix(IpNet),
    Proto(L4Proto),
    /// A transport port (`th dport`, `inet_service`).
    Port(u16),
    /// A plain integer, e.g. a `numgen` slot.
    Int(u32),
    /// A bit pattern, printed in hex (packet marks).
    Bits(u32),
    CtState(CtState),
    /// The `dnat` bit of `ct status`.
    CtStatusDnat,
    /// The `local` address type of `fib … type`.
    LocalAddress,
}

/// The nft datatypes used in `type` declarations of sets and maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
}

/// Packet header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Payload {
    IpSaddr,
    IpDaddr,
    Ip6Saddr,
    Ip6Daddr,
    /// Transport-header destination port, whatever the L4 protocol (`th dport`).
    ThDport,
    /// Destination port of a given protocol (`tcp dport` …): the same bytes as `th dport`,
    /// plus a check of the protocol.
    Dport(L4Proto),
}

/// Packet metadata (`meta …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaKey {
    L4Proto,
    Mark,
}

/// Conntrack keys (`ct …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtKey {
    State,
    Status,
    /// The destination address of the connection's original direction (before DNAT).
    OriginalIpDaddr,
    OriginalIp6Daddr,
    /// The destination port of the original direction (`ct original proto-dst`).
    OriginalProtoDst,
}

/// Bitwise operators on an expression and a constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BinOp {
    And,
    Or,
    Xor,
}

/// Comparison of a match statement. `Eq` against a set means membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
}

/// An expression that yields a value for the packet being evaluated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expr {
    Payload(Payload),
    Meta(MetaKey),
    Ct(CtKey),
    /// `numgen random mod N`: a uniform random integer in `0..N`.
    NumgenRandom(u32),
    /// `a . b . c`: the key of a concatenated set or map.
    Concat(Vec<Expr>),
    /// `expr OP constant`, e.g. `meta mark & 0x4000`.
    Bitwise(Box<Expr>, BinOp, u32),
    /// `expr & 0 | value`: the constant `value` where nft's grammar only takes an expression
    /// (a component of a concatenated key, which nft 1.0.6 cannot type when it is a literal).
    /// `expr` gives the width and type; its bits are masked away.
    Fixed(Box<Expr>, Value),
    Value(Value),
    /// A named set of the same table: `@name`.
    SetRef(String),
    /// `fib saddr type`: what kind of address the source is on this host (e.g. local).
    FibSaddrType,
    /// `fib daddr type`: what kind of address the destination is on this host: `local` for
    /// every address of every interface, loopback included.
    FibDaddrType,
}

/// How a `reject` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectWith {
    /// ICMP / ICMPv6 port unreachable.
    PortUnreachable,
    /// A TCP reset (only for TCP packets).
    TcpReset,
}

/// Where evaluation goes after a rule matched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    /// The chain this verdict transfers control to, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// One statement of a rule. A rule is a list of statements evaluated left to right; a failed
/// match ends the rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stmt {
    /// `left right` / `left != right`; with a set on the right, membership.
    Match {
        left: Expr,
        op: CmpOp,
        right: Expr,
    },
    /// `key vmap @map`: look the key up in a verdict map and apply the verdict found.
    Vmap {
        key: Expr,
        map: String,
    },
    /// `dnat <family> to key map @map`: rewrite the destination to the map's data for key.
    DnatMap {
        family: Family,
        key: Expr,
        map: String,
    },
    /// `dnat <family> to address:port`: rewrite the destination to one endpoint.
    Dnat {
        family: Family,
        addr: Value,
        port: u16,
    },
    /// `masquerade fully-random`.
    Masquerade,
    /// `update @set { key [timeout Ns] [: data] }`: add or refresh an element from the packet.
    Update {
        set: String,
        key: Expr,
        timeout: Option<u32>,
        data: Option<Expr>,
    },
    /// `meta <key> set value`.
    MetaSet {
        key: MetaKey,
        value: Expr,
    },
    /// `reject [with tcp reset]`: refuse the connection.
    Reject(RejectWith),
    Verdict(Verdict),
}

impl Stmt {
    /// `left right`: equality or set membership.
    pub fn matches(left: Expr, right: Expr) -> Stmt {
        Stmt::Match {
            left,
            op: CmpOp::Eq,
            right,
        }
    }

    /// `left != right`.
    pub fn differs(left: Expr, right: Expr) -> Stmt {
        Stmt::Match {
            left,
            op: CmpOp::Ne,
            right,
        }
    }

    /// Every named set this statement reads.
    pub fn set_refs(&self) -> Vec<&str> {
        match self {
            Stmt::Match { left, right, .. } => [left, right]
                .into_iter()
                .filter_map(|e| match e {
                    Expr::SetRef(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            Stmt::Vmap { map, .. } | Stmt::DnatMap { map, .. } => vec![map],
            Stmt::Update { set, .. } => vec![set],
            _ => vec![],
        }
    }
}
