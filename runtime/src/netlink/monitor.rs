//! nf_tables change notifications (the `NFNLGRP_NFTABLES` multicast group): the kernel
//! announces every committed transaction — each object it added or deleted, then a NEWGEN
//! message with the new generation and the committing process's pid and name. Here they are
//! read and grouped per transaction, so that the agent can tell its own commits to its table
//! from anyone else's.

use super::{attrs, bound_socket, cstr_text, last_error, set_int_option, NFNL_SUBSYS_NFTABLES};
use std::io;

const NFNLGRP_NFTABLES: libc::c_int = 7;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const SOL_NETLINK: libc::c_int = 270;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
/// The receive buffer asked for: a flush of a 100k-Service table announces every element.
const RECEIVE_BYTES: usize = 64 << 20;

/// What one notification announced: a kind of object added or deleted, in a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    /// `NEWTABLE`, `DELCHAIN`, `DELSETELEM`, …
    pub what: &'static str,
    /// `family table`, e.g. `inet svc-nft`.
    pub table: String,
}

/// One committed transaction, as the kernel announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub changes: Vec<Announced>,
    /// The committing thread's id and name (NFTA_GEN_PROC_PID / _NAME).
    pub pid: Option<u32>,
    pub process: Option<String>,
}

/// A socket subscribed to nf_tables notifications of the network namespace it was opened in.
pub struct Monitor {
    fd: libc::c_int,
    /// The changes of the transaction being announced.
    pending: Vec<Announced>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this struct owns.
        unsafe { libc::close(self.fd) };
    }
}

impl Monitor {
    pub fn open() -> io::Result<Monitor> {
        let monitor = Monitor {
            fd: bound_socket()?,
            pending: Vec::new(),
        };
        let size = libc::c_int::try_from(RECEIVE_BYTES).unwrap_or(libc::c_int::MAX);
        set_int_option(monitor.fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size);
        let group = NFNLGRP_NFTABLES;
        if !set_int_option(monitor.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group) {
            return Err(last_error("netlink monitor subscribe"));
        }
        Ok(monitor)
    }

    /// Wait (at most `timeout`; `None`: for ever) for the next committed transactions.
    /// `Ok(empty)` when the wait timed out; an `ENOBUFS` error when notifications were lost
    /// (the socket stays subscribed).
    pub fn next(&mut self, timeout: Option<std::time::Duration>) -> io::Result<Vec<Commit>> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut poll = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one descriptor we own.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready < 0 {
            return Err(last_error("netlink monitor poll"));
        }
        if ready == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; 1 << 16];
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.parse(&buf[..n as usize]))
    }

    /// The transactions whose end (NEWGEN) is in `data`; the changes of one not ended yet
    /// wait for it.
    fn parse(&mut self, mut data: &[u8]) -> Vec<Commit> {
        let mut commits = Vec::new();
        while data.len() >= 20 {
            let len = u32::from_ne_bytes(data[..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
            if len < 20 || len > data.len() {
                break;
            }
            if kind >> 8 == NFNL_SUBSYS_NFTABLES {
                let family = data[16];
                let payload = &data[20..len];
                match kind & 0xff {
                    NFT_MSG_NEWGEN => commits.push(self.ended(payload)),
                    msg => self.pending.extend(announced(msg, family, payload)),
                }
            }
            data = &data[len.next_multiple_of(4).min(data.len())..];
        }
        commits
    }

    fn ended(&mut self, payload: &[u8]) -> Commit {
        let (mut pid, mut process) = (None, None);
        for (kind, value, _) in attrs(payload) {
            match kind {
                NFTA_GEN_PROC_PID => {
                    pid = value.try_into().ok().map(u32::from_be_bytes);
                }
                NFTA_GEN_PROC_NAME => process = Some(cstr_text(value)),
                _ => {}
            }
        }
        Commit {
            changes: std::mem::take(&mut self.pending),
            pid,
            process,
        }
    }
}

/// The object change a notification of type `msg` announces; its table name is the first
/// attribute of every kind of object (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, …).
fn announced(msg: u16, family: u8, payload: &[u8]) -> Option<Announced> {
    let what = match msg {
        0 => "NEWTABLE",
        2 => "DELTABLE",
        3 => "NEWCHAIN",
        5 => "DELCHAIN",
        6 => "NEWRULE",
        8 => "DELRULE",
        9 => "NEWSET",
        11 => "DELSET",
        12 => "NEWSETELEM",
        14 => "DELSETELEM",
        18 => "NEWOBJ",
        20 => "DELOBJ",
        22 => "NEWFLOWTABLE",
        24 => "DELFLOWTABLE",
        _ => return None,
    };
    let name = attrs(payload).into_iter().find(|a| a.0 == 1)?;
    let family = match i32::from(family) {
        libc::NFPROTO_INET => "inet",
        libc::NFPROTO_IPV4 => "ip",
        libc::NFPROTO_IPV6 => "ip6",
        libc::NFPROTO_ARP => "arp",
        libc::NFPROTO_BRIDGE => "bridge",
        libc::NFPROTO_NETDEV => "netdev",
        _ => "unknown",
    };
    Some(Announced {
        what,
        table: format!("{family} {}", cstr_text(name.1)),
    })
}
