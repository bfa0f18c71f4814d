//! The incremental fast path: a sync's changes sent as one nf_tables batch over a persistent
//! `NETLINK_NETFILTER` socket — no process, no cache refill (nft spends ~55 ms of a 58 ms
//! element add refilling its cache at 10k Services).
//!
//! It also carries the cold load's element batch (see `crate::cold`): hundreds of thousands of
//! elements, many per message, in one datagram.
//!
//! Only what the engine needs is encoded: NEWSETELEM / DELSETELEM of plain (non-interval)
//! sets and maps, with value or verdict data and comments (module `elements`); NEWCHAIN /
//! DELCHAIN of regular chains; NEWRULE with the expressions of the rules svc-nft's chains hold
//! (module `rules`); DELRULE by handle or of a whole chain (a flush); GETTABLE and a GETRULE
//! dump to find a table and its rules; a GETSETELEM dump and DESTROYSETELEM to delete stale
//! session-affinity entries (module `pins`). Everything else
//! (sets created or deleted, base chains, interval sets) goes through `nft -f -`. Pure Rust
//! over libc: no libnftnl (GPL) linked.

mod elements;
mod inventory;
pub mod monitor;
mod pins;
mod rules;

pub use elements::plain;
pub use inventory::Inventory;
pub use rules::{encode_rule, EncodedRule};
use std::io;
use svc_nft_ir::{Element, Key};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
pub(crate) const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
/// The socket buffers asked for at first (the kernel doubles them); a larger batch raises the
/// send buffer to its own size.
const BUFFER_BYTES: usize = 32 << 20;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
/// nftnl's tag for a comment inside a rule's or an element's user data.
const UDATA_COMMENT: u8 = 0;

/// One command of a batch.
pub enum Op<'a> {
    /// Add elements to a plain set or map (see [`plain`]).
    AddElements(&'a str, &'a [(Key, Element)]),
    DeleteElements(&'a str, &'a [Key]),
    /// Create a regular chain, empty.
    AddChain(&'a str),
    /// Delete a chain (it must hold no rules and be referred to by none).
    DeleteChain(&'a str),
    /// Delete every rule of a chain.
    FlushChain(&'a str),
    /// Append a rule to a chain.
    AddRule(&'a str, EncodedRule),
}

/// A bound netfilter netlink socket, kept open between syncs.
pub struct Socket {
    fd: i32,
    seq: u32,
    /// The send buffer asked for: a batch is one datagram, which must fit.
    sndbuf: usize,
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this struct owns.
        unsafe { libc::close(self.fd) };
    }
}

/// A NUL-terminated name.
fn cstr_text(value: &[u8]) -> String {
    let name = value.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(name).into_owned()
}

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A `NETLINK_NETFILTER` socket, bound (the kernel picks its port id); closed on error.
fn bound_socket() -> io::Result<libc::c_int> {
    // SAFETY: socket(2)/bind(2)/close(2) on a descriptor this function owns until it returns it.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        );
        if fd < 0 {
            return Err(last_error("netlink socket"));
        }
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        let p = &addr as *const libc::sockaddr_nl as *const libc::sockaddr;
        if libc::bind(fd, p, std::mem::size_of::<libc::sockaddr_nl>() as u32) < 0 {
            let e = last_error("netlink bind");
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

/// `setsockopt(2)` of an int option; whether it took.
fn set_int_option(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> bool {
    let size = std::mem::size_of_val(&value) as u32;
    let value = &value as *const libc::c_int as *const libc::c_void;
    // SAFETY: setsockopt(2) with a pointer to a live int and its size.
    unsafe { libc::setsockopt(fd, level, opt, value, size) == 0 }
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        let mut socket = Socket {
            fd: bound_socket()?,
            seq: 1,
            sndbuf: BUFFER_BYTES,
        };
        // Large batches and their acknowledgements must fit the socket buffers.
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            socket.set_buffer(opt, BUFFER_BYTES);
        }
        // Errors carry only the failed message's header, not the whole (up to 48 KiB)
        // message: a batch whose every message fails must not flood the receive buffer.
        set_int_option(socket.fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
        Ok(socket)
    }

    /// Send the commands as one transaction on table `inet <table>` (svc-nft's tables are all
    /// `inet`); the kernel applies all of them or none.
    /// Returns the size of the batch sent.
    pub fn apply(&mut self, table: &str, ops: &[Op]) -> io::Result<usize> {
        let mut batch = Batch::new(self);
        for op in ops {
            match op {
                Op::AddElements(set, elems) => {
                    batch.add_elements(self, table, set, elems.iter().map(|(k, e)| (k, e)))
                }
                Op::DeleteElements(set, keys) => {
                    let strict = elements::Missing::Error;
                    batch.delete_elements(self, (table, set), keys.iter(), strict)
                }
                Op::AddChain(chain) => batch.add_chain(self, table, chain),
                Op::DeleteChain(chain) => batch.delete_chain(self, table, chain),
                Op::FlushChain(chain) => batch.flush_chain(self, table, chain),
                Op::AddRule(chain, rule) => batch.add_rule(self, table, chain, rule),
            }
        }
        batch.commit(self)
    }

    /// Whether table `inet <table>` exists: one GETTABLE request, no listing.
    pub fn table_exists(&mut self, table: &str) -> io::Result<bool> {
        let seq = self.request(NFT_MSG_GETTABLE, NLM_F_ACK, NFTA_TABLE_NAME, table)?;
        // The table (NEWTABLE) comes first if it exists, then the acknowledgement.
        match self.wait_acks(&[seq]) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The rules of table `inet <table>` whose comment is `comment`, as `(chain, handle)`:
    /// one GETRULE dump of the table.
    pub fn rules_with_comment(
        &mut self,
        table: &str,
        comment: &str,
    ) -> io::Result<Vec<(String, u64)>> {
        let seq = self.request(NFT_MSG_GETRULE, NLM_F_DUMP, NFTA_RULE_TABLE, table)?;
        let mut found = Vec::new();
        self.dump(seq, |payload| {
            let (mut chain, mut handle, mut commented) = (None, None, false);
            for (kind, value, _) in attrs(payload) {
                match kind {
                    NFTA_RULE_CHAIN => chain = value.split(|b| *b == 0).next(),
                    NFTA_RULE_HANDLE => handle = value.try_into().ok().map(u64::from_be_bytes),
                    NFTA_RULE_USERDATA => commented = rule_comment(value) == Some(comment),
                    _ => {}
                }
            }
            if let (Some(chain), Some(handle), true) = (chain, handle, commented) {
                found.push((String::from_utf8_lossy(chain).into_owned(), handle));
            }
        })?;
        Ok(found)
    }

    /// Send one nf_tables request naming table `inet <table>` in attribute `table_attr`;
    /// returns its sequence number.
    fn request(&mut self, kind: u16, flags: u16, table_attr: u16, table: &str) -> io::Result<u32> {
        let mut msg = Vec::new();
        let seq = self.next_seq();
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        let inet = libc::NFPROTO_INET as u8;
        header(&mut msg, kind, NLM_F_REQUEST | flags, seq, inet, 0);
        attr(&mut msg, table_attr, &cstr(table));
        finish(&mut msg, 0);
        self.send(&msg)?;
        Ok(seq)
    }

    /// Read the answer to dump request `seq` to its end, handing each message's attributes
    /// (after the nfgenmsg) to `each`; an error message ends it with that error.
    pub(crate) fn dump(&self, seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = self.recv(&mut buf)?;
            let mut data = &buf[..n];
            while data.len() >= 20 {
                let len = u32::from_ne_bytes(data[..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
                let of = u32::from_ne_bytes(data[8..12].try_into().unwrap());
                if len < 20 || len > data.len() {
                    return Err(io::Error::other("netlink dump: malformed message"));
                }
                match kind {
                    _ if of != seq => {} // a late answer to something else
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(data[16..20].try_into().unwrap());
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    _ => each(&data[20..len]),
                }
                data = &data[align(len).min(data.len())..];
            }
        }
    }

    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Receive one datagram (possibly several messages) into `buf`.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            return Err(last_error("netlink receive"));
        }
        Ok(n as usize)
    }

    /// Ask for `bytes` of socket buffer (`SO_SNDBUFFORCE` or `SO_RCVBUFFORCE`: root may exceed
    /// the sysctl limits). Best effort: a buffer too small shows up as a send or receive error.
    fn set_buffer(&mut self, opt: libc::c_int, bytes: usize) {
        let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX / 2);
        // SAFETY: setsockopt(2) on the descriptor this struct owns, with an int option.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                opt,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of_val(&size) as u32,
            );
        }
        if opt == libc::SO_SNDBUFFORCE {
            self.sndbuf = bytes;
        }
    }

    pub(crate) fn send(&mut self, batch: &[u8]) -> io::Result<()> {
        // A batch is one datagram: the kernel refuses one larger than the send buffer.
        if batch.len() + 4096 > self.sndbuf {
            self.set_buffer(libc::SO_SNDBUFFORCE, batch.len() + 4096);
        }
        // SAFETY: sending a buffer we own to the kernel (nl_pid 0).
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd,
                batch.as_ptr() as *const libc::c_void,
                batch.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        match sent {
            n if n < 0 => Err(last_error("netlink send")),
            n if n as usize != batch.len() => Err(io::Error::other("netlink send: short write")),
            _ => Ok(()),
        }
    }

    /// Read acknowledgements until every message has one; the first error wins.
    pub(crate) fn wait_acks(&self, seqs: &[u32]) -> io::Result<()> {
        let mut pending: std::collections::BTreeSet<u32> = seqs.iter().copied().collect();
        let mut failure = None;
        let mut buf = vec![0u8; 1 << 16];
        while !pending.is_empty() {
            let n = self.recv(&mut buf)?;
            let mut at = 0;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
                if kind == NLMSG_ERROR && len >= 20 {
                    let errno = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                    // Only our messages' answers count, not a late one of an earlier batch.
                    if pending.remove(&seq) && errno != 0 && failure.is_none() {
                        failure = Some(io::Error::from_raw_os_error(-errno));
                    }
                }
                if len == 0 {
                    break;
                }
                at += align(len);
            }
            // After an error the kernel aborts the batch: the rest are not acknowledged.
            if failure.is_some() {
                break;
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

pub(crate) fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// nlmsghdr + nfgenmsg; the length is patched by `finish` (BEGIN/END are header-only).
pub(crate) fn header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    let len: u32 = 20;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
}

pub(crate) fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

pub(crate) fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align(buf.len()), 0);
}

/// An attribute whose payload `fill` writes in place.
fn attr_with(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&kind.to_ne_bytes());
    fill(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf.resize(align(buf.len()), 0);
}

fn put_cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

/// A user data attribute holding `comment` as nftnl's TLV (type, length, value with its NUL),
/// which `nft list` shows.
fn comment_attr(buf: &mut Vec<u8>, kind: u16, comment: &str) {
    attr_with(buf, kind, |b| {
        b.extend_from_slice(&[UDATA_COMMENT, (comment.len() + 1) as u8]);
        put_cstr(b, comment);
    });
}

pub(crate) fn nested(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    fill(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

pub(crate) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Attributes as (type without flags, payload, the whole attribute).
pub(crate) fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len], &data[..len]));
        data = &data[align(len).min(data.len())..];
    }
    out
}

/// The comment in a rule's user data (nftnl's TLVs: type, length, value), without its NUL.
fn rule_comment(mut udata: &[u8]) -> Option<&str> {
    while let [kind, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *kind == UDATA_COMMENT {
            return std::str::from_utf8(value.strip_suffix(&[0]).unwrap_or(value)).ok();
        }
        udata = &rest[value.len()..];
    }
    None
}

/// A transaction being built on table `inet <table>`: nf_tables messages between BATCH_BEGIN
/// and BATCH_END, encoded straight into the one datagram that is sent, each acknowledged. The
/// kernel applies all of it or none.
pub struct Batch {
    buf: Vec<u8>,
    acked: Vec<u32>,
}

impl Batch {
    pub fn new(socket: &mut Socket) -> Batch {
        let mut buf = Vec::new();
        let seq = socket.next_seq();
        header(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        Batch {
            buf,
            acked: Vec::new(),
        }
    }

    /// Open a message of nf_tables type `kind` on family inet; returns where it starts.
    fn open(&mut self, socket: &mut Socket, kind: u16, flags: u16) -> usize {
        let seq = socket.next_seq();
        let start = self.buf.len();
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        let flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header(&mut self.buf, kind, flags, seq, libc::NFPROTO_INET as u8, 0);
        self.acked.push(seq);
        start
    }

    /// One message whose attributes `fill` writes.
    fn message(
        &mut self,
        socket: &mut Socket,
        kind: u16,
        flags: u16,
        fill: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = self.open(socket, kind, flags);
        fill(&mut self.buf);
        finish(&mut self.buf, start);
    }

    /// Delete a rule by its handle.
    pub fn delete_rule(&mut self, socket: &mut Socket, table: &str, chain: &str, handle: u64) {
        self.message(socket, NFT_MSG_DELRULE, 0, |b| {
            attr(b, NFTA_RULE_TABLE, &cstr(table));
            attr(b, NFTA_RULE_CHAIN, &cstr(chain));
            attr(b, NFTA_RULE_HANDLE, &handle.to_be_bytes());
        });
    }

    /// Create a regular chain (`add chain`: no error if it exists).
    pub fn add_chain(&mut self, socket: &mut Socket, table: &str, chain: &str) {
        self.message(socket, NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
            attr(b, NFTA_CHAIN_TABLE, &cstr(table));
            attr(b, NFTA_CHAIN_NAME, &cstr(chain));
        });
    }

    /// Delete a chain by name.
    pub fn delete_chain(&mut self, socket: &mut Socket, table: &str, chain: &str) {
        self.message(socket, NFT_MSG_DELCHAIN, 0, |b| {
            attr(b, NFTA_CHAIN_TABLE, &cstr(table));
            attr(b, NFTA_CHAIN_NAME, &cstr(chain));
        });
    }

    /// Delete every rule of a chain: DELRULE naming the chain but no rule.
    pub fn flush_chain(&mut self, socket: &mut Socket, table: &str, chain: &str) {
        self.message(socket, NFT_MSG_DELRULE, 0, |b| {
            attr(b, NFTA_RULE_TABLE, &cstr(table));
            attr(b, NFTA_RULE_CHAIN, &cstr(chain));
        });
    }

    /// Append a rule to a chain.
    pub fn add_rule(&mut self, socket: &mut Socket, table: &str, chain: &str, rule: &EncodedRule) {
        self.message(socket, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
            attr(b, NFTA_RULE_TABLE, &cstr(table));
            attr(b, NFTA_RULE_CHAIN, &cstr(chain));
            rule.put(b);
        });
    }

    /// Close the batch, send it and wait for every acknowledgement; the batch's size.
    pub fn commit(mut self, socket: &mut Socket) -> io::Result<usize> {
        let seq = socket.next_seq();
        header(
            &mut self.buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        socket.send(&self.buf)?;
        socket.wait_acks(&self.acked)?;
        Ok(self.buf.len())
    }
}
