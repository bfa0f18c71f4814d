//! Session-affinity entries a change leaves stale. The ruleset already stops using them in
//! the change's own transaction (a Service port's sticky chains list only the endpoints it
//! may use); these say which entries the runtime may delete from the kernel's affinity sets.

use crate::layout::ServicePort;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use svc_nft_ir::L4Proto;

/// A Service port with session affinity, as its entries name it: its cluster IP, protocol and
/// port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PinnedPort {
    pub cluster_ip: IpAddr,
    pub proto: L4Proto,
    pub port: u16,
}

/// The Service ports with session affinity, each with its timeout and the endpoint addresses
/// its clients may be pinned to.
pub type Pinnable = BTreeMap<PinnedPort, (u32, BTreeSet<IpAddr>)>;

/// What `ports` let clients be pinned to.
pub fn pinnable(ports: &[ServicePort]) -> Pinnable {
    let mut out = Pinnable::new();
    for sp in ports {
        let Some(timeout) = sp.affinity_timeout else {
            continue;
        };
        let port = PinnedPort {
            cluster_ip: sp.cluster_ip.addr,
            proto: sp.proto,
            port: sp.cluster_ip.port,
        };
        let chosen = &sp.endpoints;
        let endpoints = chosen
            .cluster
            .iter()
            .chain(&chosen.local)
            .map(|(ip, _)| *ip);
        let entry = out.entry(port).or_insert((timeout, BTreeSet::new()));
        entry.1.extend(endpoints);
    }
    out
}

/// The affinity entries a change leaves stale: per Service port, the endpoint addresses whose
/// entries may stay; an entry of the port on any other endpoint is stale. None may stay when
/// the port stopped using affinity, changed its timeout or is gone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StalePins {
    pub ports: BTreeMap<PinnedPort, BTreeSet<IpAddr>>,
}

impl StalePins {
    /// The entries that `old` allowed and `new` does not.
    pub fn between(old: &Pinnable, new: &Pinnable) -> StalePins {
        let ports = old.iter().filter_map(|(port, (timeout, before))| {
            let keep = match new.get(port) {
                Some((t, now)) if t == timeout => now,
                _ => return Some((*port, BTreeSet::new())),
            };
            (!before.is_subset(keep)).then(|| (*port, keep.clone()))
        });
        StalePins {
            ports: ports.collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Whether an entry of `port` on `endpoint` is stale.
    pub fn is_stale(&self, port: &PinnedPort, endpoint: &IpAddr) -> bool {
        self.ports
            .get(port)
            .is_some_and(|keep| !keep.contains(endpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(n: u16) -> PinnedPort {
        PinnedPort {
            cluster_ip: "10.96.0.1".parse().unwrap(),
            proto: L4Proto::Tcp,
            port: n,
        }
    }

    fn pinnable(entries: &[(u16, u32, &[&str])]) -> Pinnable {
        let ips = |a: &[&str]| a.iter().map(|s| s.parse().unwrap()).collect();
        entries
            .iter()
            .map(|(p, t, a)| (port(*p), (*t, ips(a))))
            .collect()
    }

    #[test]
    fn only_what_the_port_no_longer_allows_is_stale() {
        let old = pinnable(&[
            (80, 600, &["10.0.0.1", "10.0.0.2"]),
            (81, 600, &["10.0.0.1"]),
        ]);
        // Scaled up, or unchanged: nothing stale.
        let up = pinnable(&[
            (80, 600, &["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
            (81, 600, &["10.0.0.1"]),
        ]);
        assert!(StalePins::between(&old, &up).is_empty());
        // One endpoint gone from 80; 81 dropped affinity.
        let new = pinnable(&[(80, 600, &["10.0.0.2"])]);
        let stale = StalePins::between(&old, &new);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(stale.is_stale(&port(80), &a) && !stale.is_stale(&port(80), &b));
        assert!(stale.is_stale(&port(81), &a));
        // A new timeout: every entry of the port.
        let retimed = pinnable(&[
            (80, 60, &["10.0.0.1", "10.0.0.2"]),
            (81, 600, &["10.0.0.1"]),
        ]);
        let stale = StalePins::between(&old, &retimed);
        assert!(stale.is_stale(&port(80), &b) && !stale.is_stale(&port(81), &a));
    }
}
