//! Stale UDP conntrack entries, found and deleted over ctnetlink, by kube-proxy's rule
//! (pkg/proxy/conntrack, 1.31+). UDP has no connection to close: a client that keeps sending
//! from the same port keeps its conntrack entry, and with it the old DNAT, for as long as it
//! sends. So after a sync that changed a UDP frontend's endpoints, an entry to that frontend
//! whose reply comes from an address that is not one of its serving endpoints is deleted,
//! and the next packet is NATed afresh: it was NATed to an endpoint that stopped serving the
//! frontend (also when the endpoint still serves another Service), or it recorded the
//! frontend refusing before it had endpoints. Flows to an endpoint that still serves —
//! terminating, or left out by a traffic policy or topology — stay.

use crate::netlink::{self, attrs, Socket, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use std::io;
use std::net::IpAddr;
use svc_nft_compiler::{UdpFrontend, UdpFrontends};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const UDP: u8 = 17;

/// One direction of a connection, as conntrack keeps it.
#[derive(Debug, Default)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: u8,
    sport: u16,
    dport: u16,
}

/// One family's pass of the cleanup: entries deleted, and how long the pass took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub deleted: usize,
    pub took: std::time::Duration,
}

/// Delete the UDP entries to the `stale` frontends whose reply comes from none of the
/// addresses given for the frontend; what each family's pass (IPv4, IPv6) did.
pub fn clear_udp(stale: &UdpFrontends) -> io::Result<[Reconciled; 2]> {
    let mut out = [Reconciled::default(); 2];
    if stale.is_empty() {
        return Ok(out);
    }
    let mut socket = Socket::open()?;
    for (family, pass) in [libc::AF_INET as u8, libc::AF_INET6 as u8]
        .into_iter()
        .zip(&mut out)
    {
        let start = std::time::Instant::now();
        let stale: Vec<Vec<u8>> = dump(&mut socket, family)?
            .into_iter()
            .filter(|(orig, reply, _)| orig.proto == UDP && is_stale(stale, orig, reply))
            .map(|(_, _, raw)| raw)
            .collect();
        for raw in stale {
            // An entry may expire between the dump and the delete: that is fine.
            match delete(&mut socket, family, &raw) {
                Ok(()) => pass.deleted += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        pass.took = start.elapsed();
    }
    Ok(out)
}

/// Whether an entry goes to a stale frontend and its reply comes from another address than
/// that frontend's endpoints.
fn is_stale(stale: &UdpFrontends, orig: &Tuple, reply: &Tuple) -> bool {
    let Some(dst) = orig.dst else {
        return false;
    };
    let node_port = UdpFrontend::NodePort {
        v6: dst.is_ipv6(),
        port: orig.dport,
    };
    let frontends = [UdpFrontend::At(dst, orig.dport), node_port];
    let mut endpoints = frontends.iter().filter_map(|fe| stale.get(fe));
    endpoints.any(|serving| reply.src.is_some_and(|src| !serving.contains(&src)))
}

/// Every entry of a family: its original and reply tuples, and the original tuple's raw
/// attribute (to name the entry in a delete).
fn dump(socket: &mut Socket, family: u8) -> io::Result<Vec<(Tuple, Tuple, Vec<u8>)>> {
    let mut msg = Vec::new();
    let seq = socket.next_seq();
    let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    netlink::header(&mut msg, kind, NLM_F_REQUEST | NLM_F_DUMP, seq, family, 0);
    socket.send(&msg)?;
    let mut entries = Vec::new();
    socket.dump(seq, |payload| entries.extend(entry(payload)))?;
    Ok(entries)
}

fn entry(payload: &[u8]) -> Option<(Tuple, Tuple, Vec<u8>)> {
    let mut orig = None;
    let mut reply = None;
    for (kind, value, whole) in attrs(payload) {
        match kind {
            CTA_TUPLE_ORIG => orig = Some((tuple(value), whole.to_vec())),
            CTA_TUPLE_REPLY => reply = Some(tuple(value)),
            _ => {}
        }
    }
    let (orig, raw) = orig?;
    Some((orig, reply?, raw))
}

fn tuple(data: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (kind, value, _) in attrs(data) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v, _) in attrs(value) {
                    let addr = match v.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(v).unwrap()),
                        16 => IpAddr::from(<[u8; 16]>::try_from(v).unwrap()),
                        _ => continue,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => t.src = Some(addr),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => t.dst = Some(addr),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v, _) in attrs(value) {
                    match (k, v) {
                        (CTA_PROTO_NUM, [p, ..]) => t.proto = *p,
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => t.sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => t.dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

fn delete(socket: &mut Socket, family: u8, orig_tuple: &[u8]) -> io::Result<()> {
    let mut msg = Vec::new();
    let seq = socket.next_seq();
    let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
    netlink::header(&mut msg, kind, NLM_F_REQUEST | NLM_F_ACK, seq, family, 0);
    msg.extend_from_slice(orig_tuple);
    netlink::finish(&mut msg, 0);
    socket.send(&msg)?;
    socket.wait_acks(&[seq])
}
