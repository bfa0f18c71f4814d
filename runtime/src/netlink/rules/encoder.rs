//! A rule's statements as expressions, register for register as nft places them.

use super::{
    dependency, field, fields, flag_bit, nat_data, operands, size, unfixed, value_bytes,
    Dependency, Field, Load, META_L4PROTO, META_MARK, META_NFPROTO, NFPROTO_IPV4, NFPROTO_IPV6,
};
use crate::netlink::elements::{proto_number, put_verdict, NFTA_DATA_VALUE};
use crate::netlink::{attr, cstr, nested, NFTA_LIST_ELEM};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use svc_nft_ir::{
    BinOp, CmpOp, Expr, Family, L4Proto, MetaKey, RejectWith, Set, SetFlag, Stmt, Value, Verdict,
};

const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
/// The verdict register, then the 32-bit words of the data registers (`NFT_REG32_00..15`).
const REG_VERDICT: u32 = 0;
const WORDS: usize = 16;

// Expression attributes and values (linux/netfilter/nf_tables.h).
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
const FIB_F_DADDR: u32 = 2;

/// The register holding 32-bit word `word`, named as nft names it (and the kernel in its
/// dumps): a 128-bit `NFT_REG_n` where one starts, else `NFT_REG32_nn`.
fn reg(word: usize) -> u32 {
    if word.is_multiple_of(4) {
        1 + word as u32 / 4
    } else {
        8 + word as u32
    }
}

/// A rule being encoded, with what its checks so far established.
pub(super) struct Encoder<'t> {
    /// The expressions so far, as NFTA_RULE_EXPRESSIONS holds them.
    pub(super) out: Vec<u8>,
    sets: &'t BTreeMap<String, Set>,
    /// The network protocol checked (`meta nfproto`).
    nfproto: Option<u8>,
    /// The transport protocol checked (`meta l4proto`).
    l4proto: Option<L4Proto>,
}

impl<'t> Encoder<'t> {
    pub(super) fn new(sets: &'t BTreeMap<String, Set>) -> Encoder<'t> {
        Encoder {
            out: Vec::new(),
            sets,
            nfproto: None,
            l4proto: None,
        }
    }

    /// Append a statement's expressions; `None`: not one nft would encode the same way.
    pub(super) fn stmt(&mut self, stmt: &Stmt) -> Option<()> {
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
            Stmt::Dnat { family, addr, port } => self.dnat_to(*family, addr, *port),
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
                    self.bitwise(0, &bit.to_ne_bytes(), &[0; 4]);
                    self.cmp(CMP_NEQ, &0u32.to_ne_bytes());
                    return Some(());
                }
                if matches!(left, Expr::Concat(_)) {
                    return None;
                }
                if let Value::Prefix(net) = v {
                    return self.prefix(left, op, net);
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

    /// `ADDRESS-FIELD [!=] PREFIX` on a byte boundary, as nft has it: a load of the prefix's
    /// bytes only, compared with them.
    fn prefix(&mut self, left: &Expr, op: CmpOp, net: &IpNet) -> Option<()> {
        let Some(Field(Load::Payload(base, offset), len, false)) = field(left) else {
            return None;
        };
        let bytes = match net.network() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let take = usize::from(net.prefix_len() / 8);
        if !net.prefix_len().is_multiple_of(8) || bytes.len() != len || take == 0 {
            return None;
        }
        self.field(&Field(Load::Payload(base, offset), take, false), 0);
        self.cmp(
            if op == CmpOp::Eq { CMP_EQ } else { CMP_NEQ },
            &bytes[..take],
        );
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
        // The key's fields checked the family, or a transport field (`tcp dport`, a NodePort's
        // key) its protocol: then nft adds no check of its own; otherwise it would.
        let checked = match self.nfproto {
            Some(p) => p == nfproto,
            None => self.l4proto.is_some(),
        };
        if !checked {
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

    /// `dnat <family> to address:port`: the address in the first register, the port in the
    /// second 128-bit one, as nft puts them.
    fn dnat_to(&mut self, family: Family, addr: &Value, port: u16) -> Option<()> {
        let (nfproto, addr_len) = match family {
            Family::Ip => (NFPROTO_IPV4, 4),
            Family::Ip6 => (NFPROTO_IPV6, 16),
            Family::Inet => return None,
        };
        // Unless the rule checked both, nft would add checks of its own.
        if self.nfproto != Some(nfproto) || self.l4proto.is_none() {
            return None;
        }
        let addr = value_bytes(addr).filter(|a| a.len() == addr_len)?;
        self.immediate(reg(0), &addr);
        self.immediate(reg(4), &port.to_be_bytes());
        self.expr("nat", |b| {
            u32_attr(b, 1, NAT_DNAT); // NFTA_NAT_TYPE
            u32_attr(b, 2, u32::from(nfproto)); // NFTA_NAT_FAMILY
            u32_attr(b, 3, reg(0)); // NFTA_NAT_REG_ADDR_MIN
            u32_attr(b, 5, reg(4)); // NFTA_NAT_REG_PROTO_MIN
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
                    let f = field(unfixed(part))?;
                    self.field(&f, at);
                    if let Expr::Fixed(_, value) = part {
                        // `field & 0 ^ value`: the value, at the field's place and width.
                        let value = value_bytes(value).filter(|v| v.len() == f.1 && !interval)?;
                        self.bitwise(at, &vec![0; f.1], &value);
                    }
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
                self.bitwise(word, &mask.to_ne_bytes(), &xor.to_ne_bytes());
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
            Load::FibType { daddr } => self.expr("fib", |b| {
                u32_attr(b, 1, dreg); // NFTA_FIB_DREG
                u32_attr(b, 2, FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
                let flags = if daddr { FIB_F_DADDR } else { FIB_F_SADDR };
                u32_attr(b, 3, flags); // NFTA_FIB_FLAGS
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

    /// `reg = (reg & mask) ^ xor` on the register at `word`, as wide as `mask`.
    fn bitwise(&mut self, word: usize, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |b| {
            u32_attr(b, 1, reg(word)); // NFTA_BITWISE_SREG
            u32_attr(b, 2, reg(word)); // NFTA_BITWISE_DREG
            u32_attr(b, 3, mask.len() as u32); // NFTA_BITWISE_LEN
            nested(b, 4, |b| attr(b, NFTA_DATA_VALUE, mask)); // MASK
            nested(b, 5, |b| attr(b, NFTA_DATA_VALUE, xor)); // XOR
        });
    }

    /// `[ immediate reg DREG VALUE ]`.
    fn immediate(&mut self, dreg: u32, value: &[u8]) {
        self.expr("immediate", |b| {
            u32_attr(b, 1, dreg); // NFTA_IMMEDIATE_DREG
            nested(b, 2, |b| attr(b, NFTA_DATA_VALUE, value)); // NFTA_IMMEDIATE_DATA
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
