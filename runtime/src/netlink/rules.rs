//! Rules as nf_tables expressions, encoded from the IR: what nft 1.0.6 sends for the same
//! statements in an `inet` table, expression for expression and register for register — the
//! checks nft adds on its own included (`meta nfproto` before an IP header field, `meta
//! l4proto` before `tcp dport`) — so that a listing cannot tell which of the two added a rule.
//!
//! Only what svc-nft's chains hold is known. Any other statement, or a combination whose
//! encoding could differ from nft's (a check nft would add where this encoder does not know),
//! is refused with `None`, and the caller goes through nft instead.
//!
//! Here: what the IR's fields and constants are to the kernel; the statements' expressions
//! are in `encoder`.

mod encoder;
#[cfg(test)]
mod tests;

use super::elements::proto_number;
use super::{comment_attr, nested, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA};
use encoder::Encoder;
use svc_nft_ir::{
    CtKey, CtState, DataType, Expr, Family, L4Proto, MetaKey, Payload, Rule, Set, Stmt, Table,
    TypeSpec, Value,
};

const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;
/// nft refuses longer rule comments (`NFTNL_UDATA_COMMENT_MAXLEN`).
const MAX_COMMENT: usize = 128;

// Expression attributes and values (linux/netfilter/nf_tables.h).
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const META_MARK: u32 = 3;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const CT_STATE: u32 = 0;
const CT_STATUS: u32 = 2;
const CT_PROTO_DST: u32 = 12;
const CT_DST_IP: u32 = 20;
const CT_DST_IP6: u32 = 22;
/// `NF_CT_STATE_BIT(IP_CT_NEW)` and `IPS_DST_NAT`.
const CT_STATE_NEW: u32 = 1 << 3;
const CT_STATUS_DNAT: u32 = 1 << 5;
/// `RTN_LOCAL`: what `fib … type local` compares with.
const RTN_LOCAL: u32 = 2;

/// A rule ready for NEWRULE: its expressions and its comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedRule {
    /// The payload of NFTA_RULE_EXPRESSIONS: one NFTA_LIST_ELEM per expression.
    exprs: Vec<u8>,
    comment: Option<String>,
}

impl EncodedRule {
    /// Its attributes, appended to a NEWRULE message; the comment is what `nft list` shows.
    pub(super) fn put(&self, buf: &mut Vec<u8>) {
        nested(buf, NFTA_RULE_EXPRESSIONS, |b| {
            b.extend_from_slice(&self.exprs)
        });
        if let Some(comment) = &self.comment {
            comment_attr(buf, NFTA_RULE_USERDATA, comment);
        }
    }
}

/// What loads a field: a packet header (base, offset), metadata, conntrack (key, of the
/// original direction), a generator, a route lookup.
enum Load {
    Payload(u32, u32),
    Meta(u32),
    Ct(u32, bool),
    Numgen(u32),
    /// `fib saddr|daddr type`.
    FibType {
        daddr: bool,
    },
}

/// A field: how it is loaded, its length in bytes, whether the kernel keeps it in host order.
struct Field(Load, usize, bool);

fn field(e: &Expr) -> Option<Field> {
    use Load::{Ct, Meta, Payload as Header};
    Some(match e {
        Expr::Payload(Payload::IpSaddr) => Field(Header(PAYLOAD_NETWORK, 12), 4, false),
        Expr::Payload(Payload::IpDaddr) => Field(Header(PAYLOAD_NETWORK, 16), 4, false),
        Expr::Payload(Payload::Ip6Saddr) => Field(Header(PAYLOAD_NETWORK, 8), 16, false),
        Expr::Payload(Payload::Ip6Daddr) => Field(Header(PAYLOAD_NETWORK, 24), 16, false),
        // TCP, UDP and SCTP all have the destination port at offset 2.
        Expr::Payload(Payload::ThDport | Payload::Dport(_)) => {
            Field(Header(PAYLOAD_TRANSPORT, 2), 2, false)
        }
        Expr::Meta(MetaKey::L4Proto) => Field(Meta(META_L4PROTO), 1, true),
        Expr::Meta(MetaKey::Mark) => Field(Meta(META_MARK), 4, true),
        Expr::Ct(CtKey::State) => Field(Ct(CT_STATE, false), 4, true),
        Expr::Ct(CtKey::Status) => Field(Ct(CT_STATUS, false), 4, true),
        Expr::Ct(CtKey::OriginalIpDaddr) => Field(Ct(CT_DST_IP, true), 4, false),
        Expr::Ct(CtKey::OriginalIp6Daddr) => Field(Ct(CT_DST_IP6, true), 16, false),
        Expr::Ct(CtKey::OriginalProtoDst) => Field(Ct(CT_PROTO_DST, true), 2, false),
        Expr::NumgenRandom(n) => Field(Load::Numgen(*n), 4, true),
        Expr::FibSaddrType => Field(Load::FibType { daddr: false }, 4, true),
        Expr::FibDaddrType => Field(Load::FibType { daddr: true }, 4, true),
        _ => return None,
    })
}

/// Bytes an expression takes in the registers: each field of a concatenation padded to 32
/// bits.
fn size(e: &Expr) -> Option<usize> {
    match e {
        Expr::Concat(parts) => parts
            .iter()
            .map(|p| field(unfixed(p)).map(|f| f.1.next_multiple_of(4)))
            .sum(),
        Expr::Bitwise(..) => Some(4),
        _ => field(e).map(|f| f.1),
    }
}

/// A check nft puts before a statement that reads a field of a protocol the rule has not
/// established yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dependency {
    /// `meta nfproto ipv4` / `ipv6`, before an IP header field in an `inet` table.
    Nfproto(u8),
    /// `meta l4proto P`, before `P dport` (`th dport` needs none).
    L4proto(L4Proto),
}

fn dependency(e: &Expr) -> Option<Dependency> {
    match e {
        Expr::Payload(Payload::IpSaddr | Payload::IpDaddr) => {
            Some(Dependency::Nfproto(NFPROTO_IPV4))
        }
        Expr::Payload(Payload::Ip6Saddr | Payload::Ip6Daddr) => {
            Some(Dependency::Nfproto(NFPROTO_IPV6))
        }
        Expr::Payload(Payload::Dport(p)) => Some(Dependency::L4proto(*p)),
        _ => None,
    }
}

/// The fields an expression reads, in order.
fn fields<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::Concat(parts) => parts.iter().for_each(|p| fields(p, out)),
        Expr::Bitwise(inner, ..) | Expr::Fixed(inner, _) => fields(inner, out),
        other => out.push(other),
    }
}

/// The field a component of a concatenation loads: a fixed value's, its expression.
fn unfixed(e: &Expr) -> &Expr {
    match e {
        Expr::Fixed(inner, _) => inner,
        other => other,
    }
}

/// The expressions a statement reads, in order.
fn operands(stmt: &Stmt) -> Vec<&Expr> {
    match stmt {
        Stmt::Match { left, right, .. } => vec![left, right],
        Stmt::Vmap { key, .. } | Stmt::DnatMap { key, .. } => vec![key],
        Stmt::Update { key, data, .. } => {
            [Some(key), data.as_ref()].into_iter().flatten().collect()
        }
        Stmt::MetaSet { value, .. } => vec![value],
        Stmt::Dnat { .. } | Stmt::Masquerade | Stmt::Reject(_) | Stmt::Verdict(_) => vec![],
    }
}

/// A constant as the kernel compares it: addresses and ports in network order, protocol
/// numbers as one byte, marks and other 32-bit values in host order.
fn value_bytes(v: &Value) -> Option<Vec<u8>> {
    Some(match v {
        Value::Ipv4(a) => a.octets().to_vec(),
        Value::Ipv6(a) => a.octets().to_vec(),
        Value::Proto(p) => vec![proto_number(*p)],
        Value::Port(p) => p.to_be_bytes().to_vec(),
        Value::Int(i) | Value::Bits(i) => i.to_ne_bytes().to_vec(),
        Value::LocalAddress => RTN_LOCAL.to_ne_bytes().to_vec(),
        Value::Prefix(_) | Value::CtState(_) | Value::CtStatusDnat => return None,
    })
}

/// The bit a flag match tests: `ct state new` is `ct state & new != 0`.
fn flag_bit(left: &Expr, v: &Value) -> Option<u32> {
    match (left, v) {
        (Expr::Ct(CtKey::State), Value::CtState(CtState::New)) => Some(CT_STATE_NEW),
        (Expr::Ct(CtKey::Status), Value::CtStatusDnat) => Some(CT_STATUS_DNAT),
        _ => None,
    }
}

/// The address length of a NAT map's data, and whether a port follows it.
fn nat_data(set: &Set) -> Option<(usize, bool)> {
    let Some(Some(data)) = &set.data else {
        return None;
    };
    let addr_type = |t: &DataType| match t {
        DataType::Ipv4Addr => Some(4),
        DataType::Ipv6Addr => Some(16),
        _ => None,
    };
    let addr_expr = |e: &Expr| match e {
        Expr::Payload(Payload::IpSaddr | Payload::IpDaddr) => Some(4),
        Expr::Payload(Payload::Ip6Saddr | Payload::Ip6Daddr) => Some(16),
        _ => None,
    };
    let port_expr = |e: &Expr| matches!(e, Expr::Payload(Payload::ThDport | Payload::Dport(_)));
    match data {
        TypeSpec::Type(types) => match types.as_slice() {
            [a] => Some((addr_type(a)?, false)),
            [a, DataType::InetService] => Some((addr_type(a)?, true)),
            _ => None,
        },
        TypeSpec::Typeof(exprs) => match exprs.as_slice() {
            [a] => Some((addr_expr(a)?, false)),
            [a, p] if port_expr(p) => Some((addr_expr(a)?, true)),
            _ => None,
        },
    }
}

/// Encode a rule of table `table` (an `inet` one: the checks nft adds are those of `inet`),
/// whose sets it reads must be declared there. `None`: not something this encoder knows to
/// encode as nft does.
pub fn encode_rule(rule: &Rule, table: &Table) -> Option<EncodedRule> {
    if table.family != Family::Inet {
        return None;
    }
    if let Some(c) = &rule.comment {
        if c.len() > MAX_COMMENT || c.contains('\0') {
            return None;
        }
    }
    let mut encoder = Encoder::new(&table.sets);
    for stmt in &rule.stmts {
        encoder.stmt(stmt)?;
    }
    Some(EncodedRule {
        exprs: encoder.out,
        comment: rule.comment.clone(),
    })
}
