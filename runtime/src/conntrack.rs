//! Stale UDP conntrack entries, found and deleted over ctnetlink (kube-proxy's conntrack
//! reconciler is the model). UDP has no connection to close: a client that keeps sending from
//! the same port keeps its conntrack entry, and with it the old DNAT, forever. So after a sync:
//! - entries whose reply comes from a UDP endpoint that went away are deleted (the next
//!   packet is NATed afresh, to a live endpoint);
//! - entries towards a UDP frontend that just got its first endpoint are deleted (they
//!   recorded the REJECT of before); for a NodePort on `--nodeport-addresses` CIDRs, every
//!   entry of its family to its port, as kube-proxy does (its addresses are the kernel's).

use crate::netlink::{self, attrs, Socket, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use std::io;
use std::net::IpAddr;
use svc_nft_compiler::UdpTargets;

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

/// Delete the UDP entries answered by endpoints that are gone or addressed to frontends that
/// are new in `stale`; returns how many were deleted.
pub fn clear_udp(stale: &UdpTargets) -> io::Result<usize> {
    let (gone, new) = (&stale.endpoints, &stale.frontends);
    let mut socket = Socket::open()?;
    let mut deleted = 0;
    for (family, v6) in [(libc::AF_INET as u8, false), (libc::AF_INET6 as u8, true)] {
        let new_node_port = |port| stale.node_ports.contains(&(v6, port));
        let stale: Vec<Vec<u8>> = dump(&mut socket, family)?
            .into_iter()
            .filter(|(orig, reply, _)| {
                orig.proto == UDP
                    && (reply.src.is_some_and(|a| gone.contains(&(a, reply.sport)))
                        || orig.dst.is_some_and(|a| new.contains(&(a, orig.dport)))
                        || new_node_port(orig.dport))
            })
            .map(|(_, _, raw)| raw)
            .collect();
        for raw in stale {
            // An entry may expire between the dump and the delete: that is fine.
            match delete(&mut socket, family, &raw) {
                Ok(()) => deleted += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
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
