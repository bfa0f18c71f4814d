//! Rules as nf_tables expressions, encoded from the IR: what nft 1.0.6 sends for the same
//! statements in an `inet` table, expression for expression and register for register — the
//! checks nft adds on its own included (`meta nfproto` before an IP header field, `meta
//! l4proto` before `tcp dport`) — so that a listing cannot tell which of the two added a rule.
//!
//! Only what svc-nft's chains hold is known. Any other statement, or a combination whose
//! encoding could differ from nft's (a check nft would add where this encoder does not know),
//! is refused with `None`, and the caller goes through nft instead.

use super::{
    attr, attr_with, cstr, nested, proto_number, put_cstr, put_verdict, Batch, Socket,
    NFTA_DATA_VALUE, NFTA_LIST_ELEM, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA, UDATA_RULE_COMMENT,
};
use std::collections::BTreeMap;
use std::io;
use svc_nft_compiler::AffinityRecorder;
use svc_nft_ir::{
    BinOp, CmpOp, CtKey, CtState, DataType, Expr, Family, L4Proto, MetaKey, Payload, RejectWith,
    Rule, Set, SetFlag, Stmt, Table, TypeSpec, Value, Verdict,
};

const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
/// The verdict register, then the 32-bit words of the data registers (`NFT_REG32_00..15`).
const REG_VERDICT: u32 = 0;
const WORDS: usize = 16;
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
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const LOOKUP_F_INV: u32 = 1;
const NAT_DNAT: u32 = 1;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
const NAT_RANDOM_FULLY: u32 = 0x10;
const REJECT_TCP_RST: u32 = 1;
const REJECT_ICMPX_UNREACH: u32 = 2;
const REJECT_ICMPX_PORT_UNREACH: u8 = 1;
const DYNSET_OP_UPDATE: u32 = 1;
const BYTEORDER_HTON: u32 = 1;
const NUMGEN_RANDOM: u32 = 1;
const FIB_RESULT_ADDRTYPE: u32 = 3;
const FIB_F_SADDR: u32 = 1;
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
    /// Its attributes, appended to a NEWRULE message: the expressions, and the comment in the
    /// user data as nftnl's TLV (type, length, value with its NUL), which `nft list` shows.
    pub(super) fn put(&self, buf: &mut Vec<u8>) {
        nested(buf, NFTA_RULE_EXPRESSIONS, |b| {
            b.extend_from_slice(&self.exprs)
        });
        if let Some(comment) = &self.comment {
            attr_with(buf, NFTA_RULE_USERDATA, |b| {
                b.extend_from_slice(&[UDATA_RULE_COMMENT, (comment.len() + 1) as u8]);
                put_cstr(b, comment);
            });
        }
    }
}

/// The register holding 32-bit word `word`, named as nft names it (and the kernel in its
/// dumps): a 128-bit `NFT_REG_n` where one starts, else `NFT_REG32_nn`.
fn reg(word: usize) -> u32 {
    if word.is_multiple_of(4) {
        1 + word as u32 / 4
    } else {
        8 + word as u32
    }
}

/// What loads a field: a packet header (base, offset), metadata, conntrack (key, of the
/// original direction), a generator, a route lookup.
enum Load {
    Payload(u32, u32),
    Meta(u32),
    Ct(u32, bool),
    Numgen(u32),
    FibSaddrType,
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
        Expr::FibSaddrType => Field(Load::FibSaddrType, 4, true),
        _ => return None,
    })
}

/// Bytes an expression takes in the registers: each field of a concatenation padded to 32
/// bits.
fn size(e: &Expr) -> Option<usize> {
    match e {
        Expr::Concat(parts) => parts
            .iter()
            .map(|p| field(p).map(|f| f.1.next_multiple_of(4)))
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
        Expr::Bitwise(inner, ..) => fields(inner, out),
        other => out.push(other),
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
        Stmt::Masquerade | Stmt::Reject(_) | Stmt::Verdict(_) => vec![],
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
    let mut encoder = Encoder {
        out: Vec::new(),
        sets: &table.sets,
        nfproto: None,
        l4proto: None,
    };
    for stmt in &rule.stmts {
        encoder.stmt(stmt)?;
    }
    Some(EncodedRule {
        exprs: encoder.out,
        comment: rule.comment.clone(),
    })
}

/// The rule that records IPv6 session affinity into its chain: the IPv4 recorder's twin,
/// `meta l4proto P update @set { ip6 saddr . ct original ip6 daddr . meta l4proto .
/// ct original proto-dst timeout T : ip6 daddr . P dport }`, which nft 1.0.6 cannot compile
/// (see `svc_nft_compiler::affinity_recorders`).
pub fn recorder_rule(rec: &AffinityRecorder) -> Rule {
    let key = Expr::Concat(vec![
        Expr::Payload(Payload::Ip6Saddr),
        Expr::Ct(CtKey::OriginalIp6Daddr),
        Expr::Meta(MetaKey::L4Proto),
        Expr::Ct(CtKey::OriginalProtoDst),
    ]);
    let data = Expr::Concat(vec![
        Expr::Payload(Payload::Ip6Daddr),
        Expr::Payload(Payload::Dport(rec.proto)),
    ]);
    Rule::new(vec![
        Stmt::matches(
            Expr::Meta(MetaKey::L4Proto),
            Expr::Value(Value::Proto(rec.proto)),
        ),
        Stmt::Update {
            set: rec.set.clone(),
            key,
            timeout: Some(rec.timeout),
            data: Some(data),
        },
    ])
}

impl Socket {
    /// Append the rule that records IPv6 session affinity to its (empty) chain of `table`, all
    /// in one transaction.
    pub fn add_affinity_recorders(
        &mut self,
        table: &Table,
        recorders: &[AffinityRecorder],
    ) -> io::Result<()> {
        let mut batch = Batch::new(self);
        for rec in recorders {
            let rule = encode_rule(&recorder_rule(rec), table)
                .ok_or_else(|| io::Error::other(format!("cannot encode {}", rec.chain)))?;
            batch.add_rule(self, &table.name, &rec.chain, &rule);
        }
        batch.commit(self).map(drop)
    }
}

/// A rule being encoded, with what its checks so far established.
struct Encoder<'t> {
    out: Vec<u8>,
    sets: &'t BTreeMap<String, Set>,
    /// The network protocol checked (`meta nfproto`).
    nfproto: Option<u8>,
    /// The transport protocol checked (`meta l4proto`).
    l4proto: Option<L4Proto>,
}

impl<'t> Encoder<'t> {
    fn stmt(&mut self, stmt: &Stmt) -> Option<()> {
        // nft checks the protocol of the fields the statement reads first, each once a rule.
        let mut read = Vec::new();
        operands(stmt)
            .into_iter()
            .for_each(|e| fields(e, &mut read));
        for dep in read.into_iter().filter_map(dependency) {
            self.require(dep)?;
        }
        match stmt {
            Stmt::Match { left, op, right } => self.matches(left, *op, right),
            Stmt::Vmap { key, map } => {
                let set = self.set(map)?;
                if set.data != Some(None) {
                    return None;
                }
                self.key(key, set)?;
                self.lookup(map, Some(REG_VERDICT), false);
                Some(())
            }
            Stmt::DnatMap { family, key, map } => self.dnat(*family, key, map),
            Stmt::Update {
                set,
                key,
                timeout,
                data,
            } => self.update(set, key, *timeout, data.as_ref()),
            Stmt::MetaSet {
                key: MetaKey::Mark,
                value,
            } => {
                if self.load(value, 0, false)? != 4 {
                    return None;
                }
                self.expr("meta", |b| {
                    u32_attr(b, 2, META_MARK); // NFTA_META_KEY
                    u32_attr(b, 3, reg(0)); // NFTA_META_SREG
                });
                Some(())
            }
            Stmt::MetaSet { .. } => None,
            Stmt::Masquerade => {
                self.expr("masq", |b| u32_attr(b, 1, NAT_RANDOM_FULLY)); // NFTA_MASQ_FLAGS
                Some(())
            }
            Stmt::Reject(RejectWith::TcpReset) => {
                // nft would add `meta l4proto tcp` where the rule has not checked it.
                if self.l4proto != Some(L4Proto::Tcp) {
                    return None;
                }
                self.expr("reject", |b| u32_attr(b, 1, REJECT_TCP_RST)); // NFTA_REJECT_TYPE
                Some(())
            }
            Stmt::Reject(RejectWith::PortUnreachable) => {
                self.expr("reject", |b| {
                    u32_attr(b, 1, REJECT_ICMPX_UNREACH); // NFTA_REJECT_TYPE
                    attr(b, 2, &[REJECT_ICMPX_PORT_UNREACH]); // NFTA_REJECT_ICMP_CODE
                });
                Some(())
            }
            Stmt::Verdict(v) => {
                self.verdict(v);
                Some(())
            }
        }
    }

    /// Check a protocol unless the rule already did; a rule checking two different ones is
    /// not something nft would make.
    fn require(&mut self, dep: Dependency) -> Option<()> {
        match dep {
            Dependency::Nfproto(p) => match self.nfproto {
                Some(q) => (q == p).then_some(()),
                None => {
                    self.meta_equals(META_NFPROTO, p);
                    self.nfproto = Some(p);
                    Some(())
                }
            },
            Dependency::L4proto(p) => match self.l4proto {
                Some(q) => (q == p).then_some(()),
                None => {
                    self.meta_equals(META_L4PROTO, proto_number(p));
                    self.l4proto = Some(p);
                    Some(())
                }
            },
        }
    }

    fn set(&self, name: &str) -> Option<&'t Set> {
        self.sets.get(name)
    }

    /// `left right` / `left != right`: membership of a set, or comparison with a constant.
    fn matches(&mut self, left: &Expr, op: CmpOp, right: &Expr) -> Option<()> {
        match right {
            Expr::SetRef(name) => {
                let set = self.set(name)?;
                if set.is_map() {
                    return None;
                }
                self.key(left, set)?;
                self.lookup(name, None, op == CmpOp::Ne);
            }
            Expr::Value(v) => {
                if let Some(bit) = flag_bit(left, v) {
                    if op != CmpOp::Eq {
                        return None;
                    }
                    self.load(left, 0, false)?;
                    self.bitwise(0, bit, 0);
                    self.cmp(CMP_NEQ, &0u32.to_ne_bytes());
                    return Some(());
                }
                if matches!(left, Expr::Concat(_)) {
                    return None;
                }
                let data = value_bytes(v)?;
                if self.load(left, 0, false)? != data.len() {
                    return None;
                }
                self.cmp(if op == CmpOp::Eq { CMP_EQ } else { CMP_NEQ }, &data);
                if let (Expr::Meta(MetaKey::L4Proto), CmpOp::Eq, Value::Proto(p)) = (left, op, v) {
                    self.l4proto = Some(*p);
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// `dnat <family> to key map @map`: look the key up, then DNAT to the address (and port)
    /// found.
    fn dnat(&mut self, family: Family, key: &Expr, map: &str) -> Option<()> {
        let (nfproto, addr_len) = match family {
            Family::Ip => (NFPROTO_IPV4, 4),
            Family::Ip6 => (NFPROTO_IPV6, 16),
            Family::Inet => return None,
        };
        // The key's fields checked the family; else nft would add a check of its own.
        if self.nfproto != Some(nfproto) {
            return None;
        }
        let set = self.set(map)?;
        let (len, port) = nat_data(set)?;
        if len != addr_len {
            return None;
        }
        self.key(key, set)?;
        self.lookup(map, Some(reg(0)), false);
        self.expr("nat", |b| {
            u32_attr(b, 1, NAT_DNAT); // NFTA_NAT_TYPE
            u32_attr(b, 2, u32::from(nfproto)); // NFTA_NAT_FAMILY
            u32_attr(b, 3, reg(0)); // NFTA_NAT_REG_ADDR_MIN
            if port {
                u32_attr(b, 5, reg(addr_len / 4)); // NFTA_NAT_REG_PROTO_MIN
            }
        });
        Some(())
    }

    /// `update @set { key [timeout T] [: data] }`: the key from the first register on, the
    /// data from the next 128-bit register after it — where nft puts it — or right after the
    /// key when that would not fit.
    fn update(
        &mut self,
        name: &str,
        key: &Expr,
        timeout: Option<u32>,
        data: Option<&Expr>,
    ) -> Option<()> {
        let set = self.set(name)?;
        if set.flags.contains(&SetFlag::Interval) {
            return None;
        }
        let key_words = self.load(key, 0, false)?.div_ceil(4);
        let data_word = match data {
            Some(d) => {
                let words = size(d)?.div_ceil(4);
                let aligned = key_words.next_multiple_of(4);
                let at = if aligned + words <= WORDS {
                    aligned
                } else {
                    key_words
                };
                self.load(d, at, false)?;
                Some(at)
            }
            None => None,
        };
        self.expr("dynset", |b| {
            attr(b, 1, &cstr(name)); // NFTA_DYNSET_SET_NAME
            u32_attr(b, 3, DYNSET_OP_UPDATE); // NFTA_DYNSET_OP
            u32_attr(b, 4, reg(0)); // NFTA_DYNSET_SREG_KEY
            if let Some(at) = data_word {
                u32_attr(b, 5, reg(at)); // NFTA_DYNSET_SREG_DATA
            }
            if let Some(t) = timeout {
                attr(b, 6, &(u64::from(t) * 1000).to_be_bytes()); // NFTA_DYNSET_TIMEOUT, ms
            }
        });
        Some(())
    }

    /// Load the key of a lookup in `set`.
    fn key(&mut self, key: &Expr, set: &Set) -> Option<()> {
        let interval = set.flags.contains(&SetFlag::Interval);
        self.load(key, 0, interval).map(drop)
    }

    /// Load `e` into the registers from 32-bit word `word` on; returns its size in bytes.
    /// `interval`: the key of an interval set, whose host-order fields nft converts to network
    /// order inside a concatenation (only `meta l4proto` is known here).
    fn load(&mut self, e: &Expr, word: usize, interval: bool) -> Option<usize> {
        let len = size(e)?;
        if word + len.div_ceil(4) > WORDS {
            return None;
        }
        match e {
            Expr::Concat(parts) => {
                let mut at = word;
                for part in parts {
                    let f = field(part)?;
                    self.field(&f, at);
                    if interval && f.2 {
                        if part != &Expr::Meta(MetaKey::L4Proto) {
                            return None;
                        }
                        self.expr("byteorder", |b| {
                            u32_attr(b, 1, reg(at)); // NFTA_BYTEORDER_SREG
                            u32_attr(b, 2, reg(at)); // NFTA_BYTEORDER_DREG
                            u32_attr(b, 3, BYTEORDER_HTON); // NFTA_BYTEORDER_OP
                            u32_attr(b, 4, 1); // NFTA_BYTEORDER_LEN
                            u32_attr(b, 5, 2); // NFTA_BYTEORDER_SIZE
                        });
                    }
                    at += f.1.div_ceil(4);
                }
            }
            Expr::Bitwise(inner, op, value) => {
                if **inner != Expr::Meta(MetaKey::Mark) || interval {
                    return None;
                }
                self.field(&field(inner)?, word);
                let (mask, xor) = match op {
                    BinOp::And => (*value, 0),
                    BinOp::Or => (!value, *value),
                    BinOp::Xor => (u32::MAX, *value),
                };
                self.bitwise(word, mask, xor);
            }
            _ => {
                let f = field(e)?;
                if interval && f.2 {
                    return None;
                }
                self.field(&f, word);
            }
        }
        Some(len)
    }

    /// Load a field into the register at `word`.
    fn field(&mut self, Field(load, len, _): &Field, word: usize) {
        let dreg = reg(word);
        match *load {
            Load::Payload(base, offset) => self.expr("payload", |b| {
                u32_attr(b, 1, dreg); // NFTA_PAYLOAD_DREG
                u32_attr(b, 2, base); // NFTA_PAYLOAD_BASE
                u32_attr(b, 3, offset); // NFTA_PAYLOAD_OFFSET
                u32_attr(b, 4, *len as u32); // NFTA_PAYLOAD_LEN
            }),
            Load::Meta(key) => self.expr("meta", |b| {
                u32_attr(b, 1, dreg); // NFTA_META_DREG
                u32_attr(b, 2, key); // NFTA_META_KEY
            }),
            Load::Ct(key, original) => self.expr("ct", |b| {
                u32_attr(b, 1, dreg); // NFTA_CT_DREG
                u32_attr(b, 2, key); // NFTA_CT_KEY
                if original {
                    attr(b, 3, &[0]); // NFTA_CT_DIRECTION: IP_CT_DIR_ORIGINAL
                }
            }),
            Load::Numgen(modulus) => self.expr("numgen", |b| {
                u32_attr(b, 1, dreg); // NFTA_NG_DREG
                u32_attr(b, 2, modulus); // NFTA_NG_MODULUS
                u32_attr(b, 3, NUMGEN_RANDOM); // NFTA_NG_TYPE
                u32_attr(b, 4, 0); // NFTA_NG_OFFSET
            }),
            Load::FibSaddrType => self.expr("fib", |b| {
                u32_attr(b, 1, dreg); // NFTA_FIB_DREG
                u32_attr(b, 2, FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
                u32_attr(b, 3, FIB_F_SADDR); // NFTA_FIB_FLAGS
            }),
        }
    }

    /// `[ meta load KEY => reg 1 ]`, `[ cmp eq reg 1 VALUE ]`: a check nft adds.
    fn meta_equals(&mut self, key: u32, value: u8) {
        self.expr("meta", |b| {
            u32_attr(b, 1, reg(0)); // NFTA_META_DREG
            u32_attr(b, 2, key); // NFTA_META_KEY
        });
        self.cmp(CMP_EQ, &[value]);
    }

    /// Compare the first register with `data`.
    fn cmp(&mut self, op: u32, data: &[u8]) {
        self.expr("cmp", |b| {
            u32_attr(b, 1, reg(0)); // NFTA_CMP_SREG
            u32_attr(b, 2, op); // NFTA_CMP_OP
            nested(b, 3, |b| attr(b, NFTA_DATA_VALUE, data)); // NFTA_CMP_DATA
        });
    }

    /// `reg = (reg & mask) ^ xor` on the 32-bit register at `word`.
    fn bitwise(&mut self, word: usize, mask: u32, xor: u32) {
        self.expr("bitwise", |b| {
            u32_attr(b, 1, reg(word)); // NFTA_BITWISE_SREG
            u32_attr(b, 2, reg(word)); // NFTA_BITWISE_DREG
            u32_attr(b, 3, 4); // NFTA_BITWISE_LEN
            nested(b, 4, |b| attr(b, NFTA_DATA_VALUE, &mask.to_ne_bytes())); // MASK
            nested(b, 5, |b| attr(b, NFTA_DATA_VALUE, &xor.to_ne_bytes())); // XOR
        });
    }

    /// Look the first registers up in `set`; `dreg`: where a map's data goes.
    fn lookup(&mut self, set: &str, dreg: Option<u32>, inverted: bool) {
        self.expr("lookup", |b| {
            attr(b, 1, &cstr(set)); // NFTA_LOOKUP_SET
            u32_attr(b, 2, reg(0)); // NFTA_LOOKUP_SREG
            if let Some(dreg) = dreg {
                u32_attr(b, 3, dreg); // NFTA_LOOKUP_DREG
            }
            if inverted {
                u32_attr(b, 5, LOOKUP_F_INV); // NFTA_LOOKUP_FLAGS
            }
        });
    }

    /// `[ immediate reg 0 VERDICT ]`.
    fn verdict(&mut self, v: &Verdict) {
        self.expr("immediate", |b| {
            u32_attr(b, 1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
            nested(b, 2, |b| put_verdict(b, v)); // NFTA_IMMEDIATE_DATA
        });
    }

    /// One expression: its name and its attributes, which `fill` writes.
    fn expr(&mut self, name: &str, fill: impl FnOnce(&mut Vec<u8>)) {
        nested(&mut self.out, NFTA_LIST_ELEM, |b| {
            attr(b, NFTA_EXPR_NAME, &cstr(name));
            nested(b, NFTA_EXPR_DATA, fill);
        });
    }
}

fn u32_attr(buf: &mut Vec<u8>, kind: u16, value: u32) {
    attr(buf, kind, &value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let endpoints = Set::data_map(
            TypeSpec::Type(vec![DataType::Ipv4Addr, DataType::InetService]),
            TypeSpec::Type(vec![DataType::Ipv4Addr, DataType::InetService]),
        );
        let mut affinity = Set::data_map(
            TypeSpec::Type(vec![DataType::Ipv6Addr]),
            TypeSpec::Type(vec![DataType::Ipv6Addr, DataType::InetService]),
        );
        affinity.flags = vec![SetFlag::Dynamic, SetFlag::Timeout];
        Table {
            name: "t".into(),
            sets: [("m".into(), endpoints), ("affinity-v6".into(), affinity)].into(),
            ..Table::default()
        }
    }

    fn dnat(key: Expr) -> Rule {
        let map = "m".into();
        Rule::new(vec![Stmt::DnatMap {
            family: Family::Ip,
            key,
            map,
        }])
    }

    /// Where nft would add a check this encoder does not place, or refuse the rule, the
    /// encoder refuses it too.
    #[test]
    fn what_nft_would_encode_otherwise_is_refused() {
        let t = table();
        let frontend = Expr::Concat(vec![
            Expr::Payload(Payload::IpDaddr),
            Expr::Payload(Payload::ThDport),
        ]);
        assert!(encode_rule(&dnat(frontend.clone()), &t).is_some());
        // No IP field checked the family before the DNAT.
        assert!(encode_rule(&dnat(Expr::Meta(MetaKey::Mark)), &t).is_none());
        // An IPv6 field after an IPv4 one.
        let mixed = Expr::Concat(vec![
            Expr::Payload(Payload::IpDaddr),
            Expr::Payload(Payload::Ip6Daddr),
        ]);
        assert!(encode_rule(&dnat(mixed), &t).is_none());
        // A TCP reset where the rule has not checked for TCP.
        let reset = Rule::new(vec![Stmt::Reject(RejectWith::TcpReset)]);
        assert!(encode_rule(&reset, &t).is_none());
        // A set the table does not declare; a table of another family; a long comment.
        let unknown = Rule::new(vec![Stmt::matches(
            Expr::Payload(Payload::IpDaddr),
            Expr::SetRef("nowhere".into()),
        )]);
        assert!(encode_rule(&unknown, &t).is_none());
        let ip = Table {
            family: Family::Ip,
            ..table()
        };
        assert!(encode_rule(&dnat(frontend), &ip).is_none());
        let accept = Rule::new(vec![Stmt::Verdict(Verdict::Accept)]);
        assert!(encode_rule(&accept.clone().with_comment("x".repeat(128)), &t).is_some());
        assert!(encode_rule(&accept.with_comment("x".repeat(129)), &t).is_none());
    }

    /// The IPv6 recorder's key takes ten 32-bit registers: its data follows right after it,
    /// as the next 128-bit register would leave too few for it.
    #[test]
    fn the_ipv6_recorder_keeps_its_data_within_the_registers() {
        let rec = AffinityRecorder {
            chain: "remember-v6-tcp-600s".into(),
            set: "affinity-v6".into(),
            proto: L4Proto::Tcp,
            timeout: 600,
        };
        let rule = encode_rule(&recorder_rule(&rec), &table()).expect("encoded");
        // NFTA_DYNSET_SREG_DATA = NFT_REG32_10.
        let mut sreg_data = vec![8, 0, 5, 0];
        sreg_data.extend_from_slice(&(8u32 + 10).to_be_bytes());
        assert!(rule.exprs.windows(8).any(|w| w == sreg_data));
    }
}
