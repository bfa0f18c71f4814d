//! What differs between IPv4 and IPv6 in the layout: names, header fields, datatypes.

use ipnet::IpNet;
use std::net::IpAddr;
use svc_nft_ir::{CtKey, DataType, Expr, Family, MetaKey, Payload, Value};

/// An IP family, with the names and expressions that differ between v4 and v6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ipf {
    pub v6: bool,
}

pub const FAMILIES: [Ipf; 2] = [Ipf { v6: false }, Ipf { v6: true }];

impl Ipf {
    pub fn of(addr: &IpAddr) -> Ipf {
        Ipf { v6: addr.is_ipv6() }
    }

    /// `name-v4` / `name-v6`.
    pub fn name(self, base: &str) -> String {
        format!("{base}-{}", if self.v6 { "v6" } else { "v4" })
    }

    pub fn saddr(self) -> Expr {
        Expr::Payload(if self.v6 {
            Payload::Ip6Saddr
        } else {
            Payload::IpSaddr
        })
    }

    pub fn daddr(self) -> Expr {
        Expr::Payload(if self.v6 {
            Payload::Ip6Daddr
        } else {
            Payload::IpDaddr
        })
    }

    /// The destination before DNAT, as conntrack remembers it.
    pub fn original_daddr(self) -> Expr {
        Expr::Ct(if self.v6 {
            CtKey::OriginalIp6Daddr
        } else {
            CtKey::OriginalIpDaddr
        })
    }

    pub fn addr_type(self) -> DataType {
        if self.v6 {
            DataType::Ipv6Addr
        } else {
            DataType::Ipv4Addr
        }
    }

    pub fn nat_family(self) -> Family {
        if self.v6 {
            Family::Ip6
        } else {
            Family::Ip
        }
    }

    /// Prefixes of this family, as interval-set elements.
    pub fn prefixes<'a>(self, nets: &'a [IpNet]) -> impl Iterator<Item = Value> + 'a {
        nets.iter()
            .filter(move |n| matches!(n, IpNet::V6(_)) == self.v6)
            .map(|n| Value::Prefix(n.trunc()))
    }

    /// `daddr . meta l4proto . th dport`: the key every frontend lookup starts from.
    pub fn frontend_key(self) -> Vec<Expr> {
        vec![
            self.daddr(),
            Expr::Meta(MetaKey::L4Proto),
            Expr::Payload(Payload::ThDport),
        ]
    }
}

pub fn addr(ip: &IpAddr) -> Value {
    match ip {
        IpAddr::V4(a) => Value::Ipv4(*a),
        IpAddr::V6(a) => Value::Ipv6(*a),
    }
}
