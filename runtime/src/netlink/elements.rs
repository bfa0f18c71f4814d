//! Set elements (NEWSETELEM / DELSETELEM of plain sets and maps) and the data they and rules
//! carry: values as the kernel's registers hold them, verdicts.

use super::{
    attr, attr_with, comment_attr, cstr, finish, nested, put_cstr, Batch, Socket, NFTA_LIST_ELEM,
    NLA_F_NESTED, NLM_F_CREATE,
};
use svc_nft_ir::{Data, Element, Key, L4Proto, Value, Verdict};

const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
/// DELSETELEM without the error for an element not there (Linux 6.3).
const NFT_MSG_DESTROYSETELEM: u16 = 30;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// Attribute lengths are 16 bits: keep each message's element list well below.
const MAX_ELEMENTS_BYTES: usize = 48 * 1024;

/// What deleting an element a set does not hold does to the batch.
#[derive(Clone, Copy)]
pub(super) enum Missing {
    /// Fails it (DELSETELEM).
    Error,
    /// Nothing (DESTROYSETELEM, Linux 6.3).
    Ignored,
}

impl Batch {
    /// Add elements to a plain set or map (see [`plain`]).
    pub fn add_elements<'e>(
        &mut self,
        socket: &mut Socket,
        table: &str,
        set: &str,
        elems: impl Iterator<Item = (&'e Key, &'e Element)>,
    ) {
        let elems = elems.map(|(k, e)| (k, Some(e)));
        self.elements(socket, NFT_MSG_NEWSETELEM, NLM_F_CREATE, table, set, elems);
    }

    /// Delete elements of a set; with [`Missing::Ignored`], those it no longer holds (an
    /// entry that expired) are no error.
    pub(super) fn delete_elements<'e>(
        &mut self,
        socket: &mut Socket,
        (table, set): (&str, &str),
        keys: impl Iterator<Item = &'e Key>,
        missing: Missing,
    ) {
        let kind = match missing {
            Missing::Error => NFT_MSG_DELSETELEM,
            Missing::Ignored => NFT_MSG_DESTROYSETELEM,
        };
        let elems = keys.map(|k| (k, None));
        self.elements(socket, kind, 0, table, set, elems);
    }

    /// Element messages for one set: as many elements per message as fit in its 16-bit
    /// element list attribute.
    fn elements<'e>(
        &mut self,
        socket: &mut Socket,
        kind: u16,
        flags: u16,
        table: &str,
        set: &str,
        elems: impl Iterator<Item = (&'e Key, Option<&'e Element>)>,
    ) {
        let mut one = Vec::new();
        // (message start, element list start) of the message being filled.
        let mut open: Option<(usize, usize)> = None;
        for (key, elem) in elems {
            one.clear();
            element(&mut one, key, elem);
            if let Some((msg, list)) = open {
                if self.buf.len() - list + one.len() > MAX_ELEMENTS_BYTES {
                    self.close_elements(msg, list);
                    open = None;
                }
            }
            let (_, list) = *open.get_or_insert_with(|| {
                let msg = self.open(socket, kind, flags);
                attr(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
                attr(&mut self.buf, NFTA_SET_ELEM_LIST_SET, &cstr(set));
                let list = self.buf.len();
                self.buf.extend_from_slice(&[0, 0]);
                let nested = NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED;
                self.buf.extend_from_slice(&nested.to_ne_bytes());
                (msg, list)
            });
            debug_assert!(list < self.buf.len());
            self.buf.extend_from_slice(&one);
        }
        if let Some((msg, list)) = open {
            self.close_elements(msg, list);
        }
    }

    fn close_elements(&mut self, msg: usize, list: usize) {
        let len = (self.buf.len() - list) as u16;
        self.buf[list..list + 2].copy_from_slice(&len.to_ne_bytes());
        finish(&mut self.buf, msg);
    }
}

/// One NFTA_LIST_ELEM, appended to `buf`: key, and for additions data and comment.
fn element(buf: &mut Vec<u8>, key: &Key, elem: Option<&Element>) {
    nested(buf, NFTA_LIST_ELEM, |b| {
        nested(b, NFTA_SET_ELEM_KEY, |b| {
            attr_with(b, NFTA_DATA_VALUE, |b| put_values(b, key))
        });
        let Some(elem) = elem else { return };
        match &elem.data {
            Some(Data::Values(values)) => nested(b, NFTA_SET_ELEM_DATA, |b| {
                attr_with(b, NFTA_DATA_VALUE, |b| put_values(b, values))
            }),
            Some(Data::Verdict(v)) => nested(b, NFTA_SET_ELEM_DATA, |b| put_verdict(b, v)),
            None => {}
        }
        if let Some(comment) = &elem.comment {
            comment_attr(b, NFTA_SET_ELEM_USERDATA, comment);
        }
    });
}

/// An element's data as the kernel dumps it.
pub(super) enum RawData<'a> {
    None,
    Value(&'a [u8]),
    /// The verdict's code and the chain it goes to.
    Verdict(i32, Option<String>),
}

/// A hash of an element's key and data as the kernel holds them, for comparing what it has
/// with what a table wants without decoding either.
pub(super) fn fingerprint(key: &Key, data: Option<&Data>) -> u64 {
    let mut bytes = Vec::new();
    put_values(&mut bytes, key);
    let mut value = Vec::new();
    let data = match data {
        None => RawData::None,
        Some(Data::Values(values)) => {
            put_values(&mut value, values);
            RawData::Value(&value)
        }
        Some(Data::Verdict(v)) => RawData::Verdict(verdict_code(v), v.target().map(str::to_string)),
    };
    fingerprint_parts(&bytes, &data)
}

pub(super) fn fingerprint_parts(key: &[u8], data: &RawData) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    match data {
        RawData::None => 0u8.hash(&mut h),
        RawData::Value(v) => (1u8, v).hash(&mut h),
        RawData::Verdict(code, chain) => (2u8, code, chain).hash(&mut h),
    }
    h.finish()
}

/// NFTA_DATA_VERDICT: the verdict's code, and the chain it goes to.
pub(super) fn put_verdict(buf: &mut Vec<u8>, v: &Verdict) {
    nested(buf, NFTA_DATA_VERDICT, |b| {
        attr(b, NFTA_VERDICT_CODE, &verdict_code(v).to_be_bytes());
        if let Some(chain) = v.target() {
            attr_with(b, NFTA_VERDICT_CHAIN, |b| put_cstr(b, chain));
        }
    })
}

fn verdict_code(v: &Verdict) -> i32 {
    match v {
        Verdict::Drop => 0,
        Verdict::Accept => 1,
        Verdict::Jump(_) => -3,
        Verdict::Goto(_) => -4,
        Verdict::Return => -5,
    }
}

/// Values as the kernel's registers hold them: each field of a concatenation padded to 32
/// bits; addresses and ports in network order, numgen slots and marks in host order.
fn put_values(out: &mut Vec<u8>, values: &[Value]) {
    for v in values {
        match v {
            Value::Ipv4(a) => out.extend_from_slice(&a.octets()),
            Value::Ipv6(a) => out.extend_from_slice(&a.octets()),
            Value::Proto(p) => out.extend_from_slice(&[proto_number(*p), 0, 0, 0]),
            Value::Port(p) => out.extend_from_slice(&[(p >> 8) as u8, *p as u8, 0, 0]),
            Value::Int(i) | Value::Bits(i) => out.extend_from_slice(&i.to_ne_bytes()),
            other => unreachable!("not a plain set value: {other:?}"),
        }
    }
}

pub(super) fn proto_number(p: L4Proto) -> u8 {
    match p {
        L4Proto::Tcp => 6,
        L4Proto::Udp => 17,
        L4Proto::Sctp => 132,
    }
}

/// Whether a value can be sent as a plain element (prefixes need interval encoding).
pub fn plain(values: &[Value]) -> bool {
    values.iter().all(|v| {
        matches!(
            v,
            Value::Ipv4(_)
                | Value::Ipv6(_)
                | Value::Proto(_)
                | Value::Port(_)
                | Value::Int(_)
                | Value::Bits(_)
        )
    })
}
