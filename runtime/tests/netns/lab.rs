//! A "node" namespace routing between hosts, servers in the hosts, and
//! client probes that report what a connection attempt saw.

use super::Netns;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;
use std::{mem, ptr};

/// A backend or client: its own namespace, joined to the node by a veth pair.
pub struct Host {
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub gw4: Ipv4Addr,
    pub gw6: Ipv6Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A routing "node" namespace with hosts hanging off it, plus server threads.
/// Field order is drop order: servers are joined in `Drop`, then host
/// namespaces go, then the node.
pub struct Lab {
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    hosts: Vec<Host>,
    pub node: Netns,
}

impl Lab {
    /// A node namespace that forwards IPv4 and IPv6.
    pub fn new() -> Lab {
        let node = Netns::new("node");
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        Lab {
            stop: Arc::default(),
            servers: Vec::new(),
            hosts: Vec::new(),
            node,
        }
    }

    /// Adds a host: node side `h<index>` gets the gateways, host side `eth0`
    /// gets the addresses and default routes via the node. `nodad` keeps the
    /// IPv6 addresses from being tentative (unusable) for ~1-2 s.
    pub fn add_host(
        &mut self,
        tag: &str,
        v4_cidr: &str,
        gw4: &str,
        v6_cidr: &str,
        gw6: &str,
    ) -> usize {
        let i = self.hosts.len();
        let (v4, len4) = split_cidr(v4_cidr);
        let (v6, len6) = split_cidr(v6_cidr);
        let ns = Netns::new(tag);
        let dev = format!("h{i}");
        let node = &self.node;
        node.ip(&format!(
            "link add {dev} type veth peer name eth0 netns {}",
            ns.name
        ));
        node.ip(&format!("link set {dev} up"));
        node.ip(&format!("addr add {gw4}/{len4} dev {dev}"));
        node.ip(&format!("-6 addr add {gw6}/{len6} dev {dev} nodad"));
        ns.ip("link set eth0 up");
        ns.ip(&format!("addr add {v4_cidr} dev eth0"));
        ns.ip(&format!("-6 addr add {v6_cidr} dev eth0 nodad"));
        ns.ip(&format!("route add default via {gw4}"));
        ns.ip(&format!("-6 route add default via {gw6}"));
        self.hosts.push(Host {
            ns,
            v4: parse(v4, "v4"),
            v6: parse(v6, "v6"),
            gw4: parse(gw4, "gw4"),
            gw6: parse(gw6, "gw6"),
        });
        i
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Starts a server in host `i` on a dual-stack `[::]:port` socket, so one
    /// server answers IPv4 and IPv6. Every connection (TCP) or datagram (UDP)
    /// gets `"<local ip> <peer ip>\n"`. Returns once the socket is bound.
    pub fn serve(&mut self, i: usize, proto: Proto, port: u16) {
        let stop = self.stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = self.hosts[i].ns.spawn(move || {
            let ty = match proto {
                Proto::Tcp => libc::SOCK_STREAM,
                Proto::Udp => libc::SOCK_DGRAM,
            };
            let fd = match dual_stack_socket(ty, port) {
                Ok(fd) => fd,
                Err(e) => return ready_tx.send(Err(e)).unwrap(),
            };
            ready_tx.send(Ok(())).unwrap();
            match proto {
                Proto::Tcp => serve_tcp(TcpListener::from(fd), &stop),
                Proto::Udp => serve_udp(UdpSocket::from(fd), &stop),
            }
        });
        let host = &self.hosts[i].ns.name;
        match ready_rx.recv() {
            Ok(Ok(())) => self.servers.push(handle),
            Ok(Err(e)) => panic!("serve {proto:?} {port} in {host}: {e}"),
            Err(_) => panic!("server thread in {host} died: {:?}", handle.join().err()),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            if s.join().is_err() {
                eprintln!("a lab server thread panicked");
            }
        }
    }
}

fn parse<T: std::str::FromStr<Err = std::net::AddrParseError>>(s: &str, what: &str) -> T {
    s.parse().unwrap_or_else(|e| panic!("{what} {s:?}: {e}"))
}

fn split_cidr(cidr: &str) -> (&str, &str) {
    cidr.split_once('/')
        .unwrap_or_else(|| panic!("want ADDR/LEN, got {cidr:?}"))
}

/// An AF_INET6 socket with IPV6_V6ONLY explicitly off (not trusting the
/// namespace's bindv6only default), bound to `[::]:port`; listening if TCP.
fn dual_stack_socket(ty: libc::c_int, port: u16) -> io::Result<OwnedFd> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain socket syscalls on an fd we own; pointers are to locals.
    unsafe {
        let fd = OwnedFd::from_raw_fd(check(libc::socket(
            libc::AF_INET6,
            ty | libc::SOCK_CLOEXEC,
            0,
        ))?);
        let raw = fd.as_raw_fd();
        setsockopt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        if ty == libc::SOCK_DGRAM {
            // Ask for the destination address (IPv4-mapped for v4) per datagram.
            setsockopt(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        }
        let mut sa: libc::sockaddr_in6 = mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        let len = mem::size_of_val(&sa) as libc::socklen_t;
        check(libc::bind(raw, ptr::addr_of!(sa).cast(), len))?;
        if ty == libc::SOCK_STREAM {
            check(libc::listen(raw, 128))?;
        }
        Ok(fd)
    }
}

fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = mem::size_of_val(&value) as libc::socklen_t;
    // SAFETY: value outlives the call and len matches its size.
    match unsafe { libc::setsockopt(fd, level, name, ptr::addr_of!(value).cast(), len) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Waits up to 50 ms for `fd` to become readable, so servers notice `stop`.
fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 50) > 0 }
}

fn serve_tcp(listener: TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener.as_raw_fd()) {
            continue;
        }
        if let Ok((mut s, peer)) = listener.accept() {
            if let Ok(local) = s.local_addr() {
                let _ = writeln!(
                    s,
                    "{} {}",
                    local.ip().to_canonical(),
                    peer.ip().to_canonical()
                );
            }
        }
    }
}

fn serve_udp(sock: UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if !readable(sock.as_raw_fd()) {
            continue;
        }
        if let Ok((peer, Some(local))) = recv_with_dst(sock.as_raw_fd(), &mut buf) {
            let reply = format!("{} {}\n", local, peer.ip().to_canonical());
            let _ = sock.send_to(reply.as_bytes(), peer);
        }
    }
}

/// recvmsg returning the sender and the datagram's destination address (from
/// IPV6_PKTINFO): a wildcard-bound socket cannot learn it any other way.
fn recv_with_dst(fd: RawFd, buf: &mut [u8]) -> io::Result<(SocketAddr, Option<IpAddr>)> {
    // SAFETY: msghdr points at live locals sized as declared; cmsgs are walked
    // with the libc macros and read unaligned.
    unsafe {
        let mut peer: libc::sockaddr_in6 = mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = ptr::addr_of_mut!(peer).cast();
        msg.msg_namelen = mem::size_of_val(&peer) as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control) as _;
        if libc::recvmsg(fd, &mut msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut dst = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr).to_canonical());
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let from = SocketAddr::new(
            Ipv6Addr::from(peer.sin6_addr.s6_addr).into(),
            u16::from_be(peer.sin6_port),
        );
        Ok((from, dst))
    }
}

/// What a client saw. `Refused` is ECONNREFUSED: a TCP reset or an ICMP
/// port-unreachable; other ICMP errors (host unreachable, ...) are `Failed`.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Outcome {
    Answered { backend: IpAddr, peer: IpAddr },
    Refused,
    Timeout,
    Failed(String),
}

impl Outcome {
    fn from_err(e: io::Error) -> Outcome {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Outcome::Refused,
            // A socket read timeout surfaces as EAGAIN (WouldBlock) on Linux.
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
            _ => Outcome::Failed(e.to_string()),
        }
    }

    fn parse(answer: &str) -> Outcome {
        let mut words = answer.split_whitespace().map(str::parse::<IpAddr>);
        match (words.next(), words.next(), words.next()) {
            (Some(Ok(backend)), Some(Ok(peer)), None) => Outcome::Answered { backend, peer },
            _ => Outcome::Failed(format!("unexpected answer {answer:?}")),
        }
    }
}

/// From inside `ns`: TCP connect to `to` and read the server's one-line answer.
/// How long a probe that expects an answer waits for it: the backends are threads of the
/// test process, which a loaded machine may not run for a while. A probe that expects a drop
/// waits less, and says so.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);

pub fn tcp(ns: &Netns, to: SocketAddr, timeout: Duration) -> Outcome {
    ns.run(move || {
        let attempt = || -> io::Result<String> {
            let mut s = TcpStream::connect_timeout(&to, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        };
        attempt().map_or_else(Outcome::from_err, |a| Outcome::parse(&a))
    })
}

/// From inside `ns`: one datagram on a connected UDP socket, one reply awaited.
/// Connecting is what makes an ICMP port-unreachable show up as ECONNREFUSED.
pub fn udp(ns: &Netns, to: SocketAddr, timeout: Duration) -> Outcome {
    ns.run(move || {
        let attempt = || -> io::Result<String> {
            let any: SocketAddr = match to {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let s = UdpSocket::bind(any)?;
            s.connect(to)?;
            s.set_read_timeout(Some(timeout))?;
            s.send(b"ping\n")?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        attempt().map_or_else(Outcome::from_err, |a| Outcome::parse(&a))
    })
}
