//! A node with backends and clients, the compiled ruleset loaded into it: the fixture of the
//! Service-semantics kernel tests.
//!
//! - node: forwards between all hosts; its IPs are 198.51.100.1 / 2001:db8:51::1 (facing x1);
//! - b1, b2, b3: backends 10.244.N.2 / fd00:244:N::2, serving TCP 8080 and 8081, UDP 5353;
//! - c1: a pod client, 10.244.9.2 / fd00:244:9::2 (inside the cluster CIDR);
//! - x1: an off-cluster client, 198.51.100.2 / 2001:db8:51::2 (also the node's default route);
//! - x2: another off-cluster client, 192.0.2.2 / 2001:db8:2::2.

use super::{Lab, Netns, Outcome, Proto};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

pub struct Cluster {
    pub lab: Lab,
    manifests: String,
    flags: Vec<String>,
    /// Flags only `explain` takes (`--local-address`).
    pub explain_flags: Vec<String>,
    pub b1: usize,
    pub b2: usize,
    pub b3: usize,
    pub c1: usize,
    pub x1: usize,
    pub x2: usize,
}

/// How many more connections `agrees` makes, at most, to see every candidate answer.
const MORE_TRIES: usize = 60;

/// Node flags every test starts from.
pub const CIDRS: &[&str] = &[
    "--cluster-cidr",
    "10.244.0.0/16,fd00:244::/32",
    "--service-cidr",
    "10.96.0.0/16,fd00:96::/112",
];

impl Cluster {
    /// Build the topology, compile `manifests` with `flags` and load them into the node.
    pub fn new(manifests: &str, flags: &[&str]) -> Cluster {
        let mut lab = Lab::new();
        let mut backend = |n: u8| {
            let i = lab.add_host(
                &format!("b{n}"),
                &format!("10.244.{n}.2/24"),
                &format!("10.244.{n}.1"),
                &format!("fd00:244:{n}::2/64"),
                &format!("fd00:244:{n}::1"),
            );
            for port in [8080, 8081] {
                lab.serve(i, Proto::Tcp, port);
            }
            lab.serve(i, Proto::Udp, 5353);
            i
        };
        let (b1, b2, b3) = (backend(1), backend(2), backend(3));
        let c1 = lab.add_host(
            "c1",
            "10.244.9.2/24",
            "10.244.9.1",
            "fd00:244:9::2/64",
            "fd00:244:9::1",
        );
        let x1 = lab.add_host(
            "x1",
            "198.51.100.2/24",
            "198.51.100.1",
            "2001:db8:51::2/64",
            "2001:db8:51::1",
        );
        let x2 = lab.add_host(
            "x2",
            "192.0.2.2/24",
            "192.0.2.1",
            "2001:db8:2::2/64",
            "2001:db8:2::1",
        );
        // Locally generated packets are routed before the nat output hook sees them.
        lab.node.ip("route add default via 198.51.100.2");
        lab.node.ip("-6 route add default via 2001:db8:51::2");
        let cluster = Cluster {
            lab,
            manifests: manifests.to_string(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            explain_flags: vec![],
            b1,
            b2,
            b3,
            c1,
            x1,
            x2,
        };
        cluster.load();
        cluster
    }

    /// Compile the current manifests and load them, replacing the table in one transaction.
    /// `svc-nft apply` the current manifests in the node namespace: one transaction, plus
    /// what the runtime adds over netlink (the IPv6 affinity recorders).
    fn load(&self) {
        let mut args = vec![
            "netns",
            "exec",
            &self.lab.node.name,
            env!("CARGO_BIN_EXE_svc-nft"),
        ];
        args.extend(["apply", "-f", "-"]);
        args.extend(self.flags.iter().map(String::as_str));
        run_program("ip", &args, &self.manifests);
    }

    /// Change the manifests and load them again.
    pub fn reload(&mut self, manifests: &str) {
        self.manifests = manifests.to_string();
        self.load();
    }

    pub fn ns(&self, host: usize) -> &Netns {
        &self.lab.host(host).ns
    }

    /// Connect `n` times over TCP from `client` (a host, or `None` for the node itself, whose
    /// source address is `from`) to `to`, and require that the kernel does what
    /// `svc-nft explain` says: the same endpoints (all of them reached), the same masquerade,
    /// REJECT as refused, DROP as no answer. Returns the (backend, peer) pairs seen.
    pub fn agrees(&self, client: Option<usize>, to: &str, n: usize) -> BTreeSet<(IpAddr, IpAddr)> {
        let (ns, from) = match client {
            Some(h) => {
                let host = self.lab.host(h);
                let v6 = to.starts_with('[');
                let from = if v6 {
                    IpAddr::V6(host.v6)
                } else {
                    IpAddr::V4(host.v4)
                };
                (&host.ns, from)
            }
            None if to.starts_with('[') => (&self.lab.node, ip("2001:db8:51::1")),
            None => (&self.lab.node, ip("198.51.100.1")),
        };
        let mut args = vec!["explain", "-f", "-", "-o", "json"];
        let from_text = from.to_string();
        args.extend(["--from", &from_text, "--to", to]);
        if client.is_none() {
            args.extend(["--origin", "node"]);
        }
        args.extend(self.flags.iter().map(String::as_str));
        args.extend(self.explain_flags.iter().map(String::as_str));
        let json: serde_json::Value = serde_json::from_str(&run(&args, &self.manifests)).unwrap();
        let timeout =
            std::time::Duration::from_millis(if json["verdict"] == "drop" { 400 } else { 1000 });
        let connect = || super::tcp(ns, to.parse().unwrap(), timeout);
        let mut observed: Vec<Outcome> = (0..n).map(|_| connect()).collect();
        let seen = |observed: &[Outcome]| -> BTreeSet<(IpAddr, bool)> {
            observed
                .iter()
                .filter_map(|o| match o {
                    Outcome::Answered { backend, peer } => Some((*backend, *peer != from)),
                    _ => None,
                })
                .collect()
        };
        let verdict = json["verdict"].as_str().unwrap();
        if verdict == "dnat" {
            let predicted: BTreeSet<(IpAddr, bool)> = json["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let address = ip(c["address"].as_str().unwrap());
                    (address, c["masquerade"].as_bool().unwrap())
                })
                .collect();
            // Random choice: keep connecting (boundedly) until every candidate has answered.
            while seen(&observed) != predicted && observed.len() < n + MORE_TRIES {
                observed.push(connect());
            }
            let context = format!("{from} -> {to}: explain says {json:#}\nkernel did {observed:?}");
            assert!(
                observed
                    .iter()
                    .all(|o| matches!(o, Outcome::Answered { .. })),
                "{context}"
            );
            assert_eq!(seen(&observed), predicted, "{context}");
        }
        let context = format!("{from} -> {to}: explain says {json:#}\nkernel did {observed:?}");
        match verdict {
            "reject" => assert!(observed.iter().all(|o| *o == Outcome::Refused), "{context}"),
            "drop" => assert!(observed.iter().all(|o| *o == Outcome::Timeout), "{context}"),
            _ => {}
        }
        observed
            .into_iter()
            .filter_map(|o| match o {
                Outcome::Answered { backend, peer } => Some((backend, peer)),
                _ => None,
            })
            .collect()
    }
}

/// b1 and b2 as endpoints: b1 is on this node (`node-a`), b2 on another.
pub const B1: &str = "{addresses: [10.244.1.2], nodeName: node-a}";
pub const B2: &str = "{addresses: [10.244.2.2], nodeName: node-b}";
pub const B1_V6: &str = "{addresses: [\"fd00:244:1::2\"], nodeName: node-a}";
pub const B2_V6: &str = "{addresses: [\"fd00:244:2::2\"], nodeName: node-b}";

/// A Service `name` in namespace t and its EndpointSlice(s): `spec` is the Service's spec
/// (YAML flow), `extra` more Service fields (status), `endpoints` per family the list of
/// endpoint flow mappings on port 8080.
pub fn service(name: &str, spec: &str, extra: &str, v4: &[&str], v6: &[&str]) -> String {
    let slice = |family: &str, eps: &[&str]| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-{}, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: {family}\nports: [{{port: 8080}}]\nendpoints: [{}]\n",
            family.to_lowercase(),
            eps.join(", ")
        )
    };
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\n\
         spec: {spec}\n{extra}\n"
    );
    out += &slice("IPv4", v4);
    if !v6.is_empty() {
        out += &slice("IPv6", v6);
    }
    out
}

/// Run the real binary with `stdin`; it must succeed.
fn run(args: &[&str], stdin: &str) -> String {
    run_program(env!("CARGO_BIN_EXE_svc-nft"), args, stdin)
}

fn run_program(program: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run svc-nft");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "svc-nft {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Connect `n` times; return the set of (backend, peer) pairs that answered. Panics on any
/// other outcome.
pub fn answers(n: usize, connect: impl Fn() -> Outcome) -> BTreeSet<(IpAddr, IpAddr)> {
    (0..n)
        .map(|_| match connect() {
            Outcome::Answered { backend, peer } => (backend, peer),
            other => panic!("expected an answer, got {other:?}"),
        })
        .collect()
}

/// `answers` as a set of (backend, peer) given as strings.
pub fn pairs(list: &[(&str, &str)]) -> BTreeSet<(IpAddr, IpAddr)> {
    list.iter().map(|(b, p)| (ip(b), ip(p))).collect()
}
