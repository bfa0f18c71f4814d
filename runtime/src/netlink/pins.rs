//! The session-affinity entries in the kernel, read from a dump of each family's affinity set
//! and decoded far enough to name the Service port and the endpoint: to delete those a change
//! left stale (see `svc_nft_compiler::StalePins`), in one batch of DESTROYSETELEM — an entry
//! that expired between the dump and the batch is no error — and to carry the others over a
//! full replace.

use super::elements::Missing;
use super::{Batch, Socket};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use svc_nft_compiler::{PinnedPort, StalePins};
use svc_nft_ir::{Key, L4Proto, Value};

/// An affinity entry's key as the kernel holds it: `client . cluster IP . proto . port .
/// endpoint`, each field padded to 32 bits.
fn decode(key: &[u8], v6: bool) -> Option<(PinnedPort, IpAddr, Key)> {
    let len = if v6 { 16 } else { 4 };
    if key.len() != 3 * len + 8 {
        return None;
    }
    let addr = |at: usize| -> IpAddr {
        let bytes = &key[at..at + len];
        match v6 {
            false => Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap()).into(),
            true => Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap()).into(),
        }
    };
    let proto = match key[2 * len] {
        6 => L4Proto::Tcp,
        17 => L4Proto::Udp,
        132 => L4Proto::Sctp,
        _ => return None,
    };
    let port = u16::from_be_bytes([key[2 * len + 4], key[2 * len + 5]]);
    let (client, cluster_ip, endpoint) = (addr(0), addr(len), addr(2 * len + 8));
    let value = |ip: IpAddr| match ip {
        IpAddr::V4(a) => Value::Ipv4(a),
        IpAddr::V6(a) => Value::Ipv6(a),
    };
    let ir = vec![
        value(client),
        value(cluster_ip),
        Value::Proto(proto),
        Value::Port(port),
        value(endpoint),
    ];
    let pinned = PinnedPort {
        cluster_ip,
        proto,
        port,
    };
    Some((pinned, endpoint, ir))
}

/// The affinity set of each family.
const SETS: [(&str, bool); 2] = [("affinity-v4", false), ("affinity-v6", true)];

/// One affinity entry in the kernel.
pub struct Pin {
    pub port: PinnedPort,
    pub endpoint: IpAddr,
    /// The whole key, client first.
    pub key: Key,
    /// Its timeout, and how much of it is left (ms).
    pub timeout_ms: u64,
    pub expires_ms: u64,
}

impl Socket {
    /// The entries of `table`'s affinity set of family `v6`.
    pub fn pins(&mut self, table: &str, v6: bool) -> io::Result<Vec<Pin>> {
        let set = SETS[usize::from(v6)].0;
        let entries = self.timed_elements(table, set)?;
        let pins = entries
            .into_iter()
            .filter_map(|(key, timeout_ms, expires_ms)| {
                let (port, endpoint, key) = decode(&key, v6)?;
                Some(Pin {
                    port,
                    endpoint,
                    key,
                    timeout_ms,
                    expires_ms,
                })
            });
        Ok(pins.collect())
    }

    /// Delete the entries of `table`'s affinity sets that `stale` names; how many.
    pub fn clear_stale_pins(&mut self, table: &str, stale: &StalePins) -> io::Result<usize> {
        let mut doomed = Vec::new();
        for (set, v6) in SETS {
            if !stale.ports.keys().any(|p| p.cluster_ip.is_ipv6() == v6) {
                continue;
            }
            let pins = self.pins(table, v6)?;
            let gone = pins
                .into_iter()
                .filter(|p| stale.is_stale(&p.port, &p.endpoint));
            let gone: Vec<Key> = gone.map(|p| p.key).collect();
            if !gone.is_empty() {
                doomed.push((set, gone));
            }
        }
        let count = doomed.iter().map(|(_, keys)| keys.len()).sum();
        if count > 0 {
            let mut batch = Batch::new(self);
            for (set, keys) in &doomed {
                batch.delete_elements(self, (table, set), keys.iter(), Missing::Ignored);
            }
            batch.commit(self)?;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_key_names_its_port_and_endpoint() {
        let mut key = vec![10, 244, 9, 2, 10, 96, 1, 14, 6, 0, 0, 0, 0, 80, 0, 0];
        key.extend([10, 244, 1, 2]);
        let (port, endpoint, ir) = decode(&key, false).expect("decoded");
        assert_eq!(port.cluster_ip, "10.96.1.14".parse::<IpAddr>().unwrap());
        assert_eq!((port.proto, port.port), (L4Proto::Tcp, 80));
        assert_eq!(endpoint, "10.244.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(ir.len(), 5);
        assert!(decode(&key[1..], false).is_none());
        assert!(decode(&key, true).is_none());
    }
}
