//! Session affinity through the agent's own incremental syncs (`svc-nft run`), with real
//! connections: one client keeps one endpoint whichever frontend of the port it uses, and
//! loses it in the sync that removes the endpoint, makes it not ready, or drops affinity —
//! whose entries that sync deletes.

mod netns;

use netns::cluster::{answers, ip, Cluster, CIDRS};
use netns::manifest_agent::AgentProcess;
use netns::{eventually, tcp, Outcome};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One address family of the fixture: the Service's cluster IP, the node's IP, two backends.
struct Family {
    cluster_ip: &'static str,
    node_ip: &'static str,
    backends: [&'static str; 2],
    name: &'static str,
}

const V4: Family = Family {
    cluster_ip: "10.96.6.1",
    node_ip: "198.51.100.1",
    backends: ["10.244.1.2", "10.244.2.2"],
    name: "IPv4",
};

const V6: Family = Family {
    cluster_ip: "fd00:96::601",
    node_ip: "2001:db8:51::1",
    backends: ["fd00:244:1::2", "fd00:244:2::2"],
    name: "IPv6",
};

impl Family {
    fn socket(&self, addr: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip(addr), port)
    }

    /// The backend that is not `b`.
    fn other(&self, b: IpAddr) -> &'static str {
        let [b1, b2] = self.backends;
        if b == ip(b1) {
            b2
        } else {
            b1
        }
    }

    /// The NodePort Service, with or without affinity, and its slice: `endpoints` as
    /// (address, ready).
    fn manifests(&self, affinity: bool, endpoints: &[(&str, bool)]) -> String {
        let affinity = if affinity {
            "sessionAffinity: ClientIP, "
        } else {
            ""
        };
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|(a, ready)| format!("{{addresses: [\"{a}\"], conditions: {{ready: {ready}}}}}"))
            .collect();
        let (cluster_ip, family) = (self.cluster_ip, self.name);
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: sticky, namespace: t}}\n\
             spec: {{type: NodePort, clusterIP: \"{cluster_ip}\", ipFamilies: [{family}], \
             {affinity}ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: sticky-a, namespace: t, labels: {{kubernetes.io/service-name: sticky}}}}\n\
             addressType: {family}\nports: [{{port: 8080}}]\nendpoints: [{}]\n",
            endpoints.join(", ")
        )
    }
}

struct Sticky {
    k: Cluster,
    agent: AgentProcess,
    f: Family,
}

impl Sticky {
    fn start(f: Family) -> Sticky {
        let k = Cluster::new("", CIDRS);
        let node = ["--node-ip", "198.51.100.1,2001:db8:51::1"];
        let tag = format!("affinity-{}", f.name);
        let agent = AgentProcess::start(&k.lab.node, &tag, &node);
        Sticky { k, agent, f }
    }

    /// Write the manifests and wait for the incremental sync that applies them.
    fn edit(&self, what: &str, text: &str) {
        let mark = self.agent.log.mark();
        self.agent.write("sticky.yaml", text);
        let synced = |l: &str| l.contains("synced:");
        let (i, _) = self.agent.log.wait_for(what, mark, synced);
        let line = self.agent.log.line(i);
        assert!(!line.contains("Full"), "{what}: not incremental: {line}");
    }

    /// The backends c1 reached in `n` connections, alternating NodePort and cluster IP.
    fn backends(&self, n: usize) -> BTreeSet<IpAddr> {
        let f = &self.f;
        let to = [f.socket(f.node_ip, 30080), f.socket(f.cluster_ip, 80)];
        let next = std::cell::Cell::new(0);
        let connect = || {
            let fe = to[next.get() % 2];
            next.set(next.get() + 1);
            tcp(self.k.ns(self.k.c1), fe, Duration::from_secs(2))
        };
        answers(n, connect).into_iter().map(|(b, _)| b).collect()
    }

    /// The one backend c1 is pinned to, by 12 connections of which half via the NodePort.
    fn pinned(&self) -> IpAddr {
        let seen = self.backends(12);
        assert_eq!(seen.len(), 1, "c1 not pinned across frontends: {seen:?}");
        *seen.first().unwrap()
    }

    /// The node's affinity entries of this family, as nft lists them.
    fn entries(&self) -> String {
        let v = if self.f.name == "IPv6" { "v6" } else { "v4" };
        let list = format!("list set inet svc-nft affinity-{v}");
        self.k.lab.node.nft_list(&list)
    }

    /// Whether an entry pins a client to `endpoint`.
    fn pinned_in_kernel(&self, endpoint: &str) -> bool {
        self.entries().contains(&format!(". {endpoint} "))
    }

    fn wait_answering(&self) {
        let vip = self.f.socket(self.f.cluster_ip, 80);
        eventually("the Service answers", || {
            let c1 = self.k.ns(self.k.c1);
            matches!(
                tcp(c1, vip, Duration::from_millis(300)),
                Outcome::Answered { .. }
            )
        });
    }
}

/// Pinned across frontends; moved by the sync that removes the pinned endpoint, and by the
/// one that makes it not ready; spread by the one that drops affinity.
fn affinity_follows_the_endpoints_and_the_service(f: Family) {
    if !netns::require() {
        return;
    }
    let s = Sticky::start(f);
    let f = &s.f;
    let sticky = |endpoints: &[(&str, bool)]| f.manifests(true, endpoints);
    let both = f.backends.map(|b| (b, true));
    s.agent.write("sticky.yaml", &sticky(&both));
    s.wait_answering();

    // Removed: the next sync moves the client to the endpoint left, and deletes its entry.
    let first = s.pinned();
    let (kept, gone) = (f.other(first), first.to_string());
    assert!(s.pinned_in_kernel(&gone), "no entry: {}", s.entries());
    s.edit("the pinned endpoint removed", &sticky(&[(kept, true)]));
    assert!(!s.pinned_in_kernel(&gone), "stale entry: {}", s.entries());
    assert_eq!(s.backends(6), BTreeSet::from([ip(kept)]), "after removal");

    // Not ready: the same.
    s.edit("both endpoints back", &sticky(&both));
    let second = s.pinned();
    let ready = f.other(second);
    let second = second.to_string();
    s.edit(
        "the pinned endpoint not ready",
        &sticky(&[(second.as_str(), false), (ready, true)]),
    );
    let after = s.backends(6);
    assert_eq!(after, BTreeSet::from([ip(ready)]), "after not ready");

    // Affinity dropped: the client is spread at once (40 connections all to one of two
    // endpoints: one chance in 2^39).
    s.edit("both endpoints ready", &sticky(&both));
    s.pinned();
    s.edit("affinity dropped", &f.manifests(false, &both));
    let port = format!(". {} . tcp . 80 .", f.cluster_ip);
    assert!(
        !s.entries().contains(&port),
        "entries left: {}",
        s.entries()
    );
    assert_eq!(s.backends(40).len(), 2, "still pinned without affinity");
}

#[test]
fn ipv4_affinity_follows_the_endpoints_and_the_service_in_the_same_sync() {
    affinity_follows_the_endpoints_and_the_service(V4);
}

#[test]
fn ipv6_affinity_follows_the_endpoints_and_the_service_in_the_same_sync() {
    affinity_follows_the_endpoints_and_the_service(V6);
}
