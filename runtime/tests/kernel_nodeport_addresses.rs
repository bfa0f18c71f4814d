//! `--nodeport-addresses`: NodePorts answer on every local address the CIDRs cover (`fib daddr
//! type local`), a second address of the node included, and on the primary IPs only by default;
//! never on loopback. Real packets, IPv4 and IPv6 (fixture: `netns/cluster.rs`; the node's
//! primary IPs are 198.51.100.1 / 2001:db8:51::1).

mod netns;

use netns::cluster::{pairs, service, Cluster, B1, B1_V6, B2, B2_V6, CIDRS};
use netns::manifest_agent::AgentProcess;
use netns::{eventually, tcp, Outcome};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(1);
/// The second address, on the node's link to x2 (a secondary address, not a --node-ip).
const SECOND_V4: &str = "192.0.2.100";
const SECOND_V6: &str = "2001:db8:2::100";

fn manifests() -> String {
    service(
        "np",
        "{type: NodePort, clusterIPs: [10.96.1.1, \"fd00:96::101\"], ports: [{port: 80, targetPort: 8080, nodePort: 30001}]}",
        "",
        &[B1, B2],
        &[B1_V6, B2_V6],
    )
}

/// The cluster with `--nodeport-addresses VALUE` (none: the default), and the second address
/// added to the node after the rules were loaded: it needs no recompile.
fn cluster(nodeport_addresses: Option<&str>) -> Cluster {
    let mut flags: Vec<&str> = CIDRS.to_vec();
    flags.extend([
        "--node-name",
        "node-a",
        "--node-ip",
        "198.51.100.1,2001:db8:51::1",
    ]);
    if let Some(value) = nodeport_addresses {
        flags.extend(["--nodeport-addresses", value]);
    }
    let mut k = Cluster::new(&manifests(), &flags);
    let dev = format!("h{}", k.x2);
    k.lab.node.ip(&format!("addr add {SECOND_V4}/32 dev {dev}"));
    k.lab
        .node
        .ip(&format!("-6 addr add {SECOND_V6}/128 dev {dev} nodad"));
    k.explain_flags = vec![format!("--local-address={SECOND_V4},{SECOND_V6}")];
    k
}

/// Both endpoints, seen masqueraded (eTP Cluster): by the node's address towards each.
fn masqueraded(v6: bool) -> std::collections::BTreeSet<(std::net::IpAddr, std::net::IpAddr)> {
    match v6 {
        false => pairs(&[("10.244.1.2", "10.244.1.1"), ("10.244.2.2", "10.244.2.1")]),
        true => pairs(&[
            ("fd00:244:1::2", "fd00:244:1::1"),
            ("fd00:244:2::2", "fd00:244:2::1"),
        ]),
    }
}

fn refused(k: &Cluster, client: usize, to: &str) {
    let outcome = tcp(k.ns(client), to.parse().unwrap(), T);
    assert_eq!(outcome, Outcome::Refused, "{to} must not be a NodePort");
}

#[test]
fn all_opens_nodeports_on_a_second_address() {
    if !netns::require() {
        return;
    }
    for value in ["all", "0.0.0.0/0,::/0"] {
        let k = cluster(Some(value));
        let second = format!("{SECOND_V4}:30001");
        assert_eq!(
            k.agrees(Some(k.x2), &second, 20),
            masqueraded(false),
            "{value}"
        );
        let second = format!("[{SECOND_V6}]:30001");
        assert_eq!(
            k.agrees(Some(k.x2), &second, 20),
            masqueraded(true),
            "{value}"
        );
        let primary = k.agrees(Some(k.x1), "198.51.100.1:30001", 20);
        assert_eq!(primary, masqueraded(false), "{value}");
    }
}

#[test]
fn primary_is_the_default_and_leaves_the_second_address_alone() {
    if !netns::require() {
        return;
    }
    for value in [None, Some("primary")] {
        let k = cluster(value);
        assert_eq!(
            k.agrees(Some(k.x1), "198.51.100.1:30001", 20),
            masqueraded(false)
        );
        let v6 = k.agrees(Some(k.x1), "[2001:db8:51::1]:30001", 20);
        assert_eq!(v6, masqueraded(true));
        refused(&k, k.x2, &format!("{SECOND_V4}:30001"));
        refused(&k, k.x2, &format!("[{SECOND_V6}]:30001"));
    }
}

#[test]
fn a_cidr_of_the_second_address_opens_only_it() {
    if !netns::require() {
        return;
    }
    let k = cluster(Some("192.0.2.100/32,2001:db8:2::100/128"));
    assert_eq!(
        k.agrees(Some(k.x2), &format!("{SECOND_V4}:30001"), 20),
        masqueraded(false)
    );
    let v6 = format!("[{SECOND_V6}]:30001");
    assert_eq!(k.agrees(Some(k.x2), &v6, 20), masqueraded(true));
    refused(&k, k.x1, "198.51.100.1:30001");
    refused(&k, k.x1, "[2001:db8:51::1]:30001");
}

#[test]
fn loopback_is_refused_with_a_warning() {
    if !netns::require() {
        return;
    }
    let compile = Command::new(env!("CARGO_BIN_EXE_svc-nft"))
        .args([
            "compile",
            "-f",
            "/dev/null",
            "--nodeport-addresses",
            "127.0.0.0/8,::1/128",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&compile.stderr);
    for lo in ["127.0.0.0/8", "::1/128"] {
        let warning = format!("warning: --nodeport-addresses: {lo} is loopback");
        assert!(stderr.contains(&warning), "{stderr}");
    }
    let k = cluster(Some("127.0.0.0/8,::1/128"));
    for to in ["127.0.0.1:30001", "[::1]:30001"] {
        let outcome = tcp(&k.lab.node, to.parse().unwrap(), T);
        assert_eq!(outcome, Outcome::Refused, "{to}: no localhost NodePorts");
    }
    refused(&k, k.x1, "198.51.100.1:30001");
}

/// A NodePort UDP Service (port 30053) with b1 as its endpoint.
const UDP_NODEPORT: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: t}\n\
    spec: {type: NodePort, clusterIP: 10.96.5.53, ports: [{port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}]}\n\
    ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
    metadata: {name: dns-a, namespace: t, labels: {kubernetes.io/service-name: dns}}\n\
    addressType: IPv4\nports: [{port: 5353, protocol: UDP}]\nendpoints: [{addresses: [10.244.1.2]}]\n";

/// How long after the sync the client may still be refused: generous for a slow machine, yet
/// never reached without the conntrack cleanup (the client's entry, refreshed every 50 ms,
/// would live on un-NATed).
const STUCK: Duration = Duration::from_secs(15);

/// A UDP client that kept sending to a NodePort on a CIDR before the Service existed (its
/// conntrack entry recorded the refusal) reaches the endpoint as soon as the agent syncs it.
#[test]
fn a_udp_client_reaches_a_new_nodeport_on_a_cidr_at_once() {
    if !netns::require() {
        return;
    }
    let k = cluster(Some("all"));
    let agent = AgentProcess::start(&k.lab.node, "np-udp", &["--nodeport-addresses", "all"]);
    let to: std::net::SocketAddr = format!("{SECOND_V4}:30053").parse().unwrap();
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let answered: Arc<std::sync::Mutex<Option<(Instant, String)>>> = Arc::default();
    std::thread::scope(|scope| {
        let (client_stop, client_sent, heard) = (stop.clone(), sent.clone(), answered.clone());
        let client = scope.spawn(|| {
            k.ns(k.x2).run(move || {
                // One socket, one source port: one conntrack entry for as long as it sends.
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.connect(to).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut buf = [0u8; 256];
                while !client_stop.load(Ordering::Relaxed) {
                    // Refused (ICMP) before the Service exists: send and recv report it.
                    let _ = socket.send(b"who?");
                    client_sent.fetch_add(1, Ordering::Relaxed);
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        heard.lock().unwrap().get_or_insert((Instant::now(), text));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        });
        eventually("the client sending before the Service exists", || {
            sent.load(Ordering::Relaxed) > 5
        });
        assert!(
            answered.lock().unwrap().is_none(),
            "answered without a Service"
        );
        let mark = agent.log.mark();
        agent.write("dns.yaml", UDP_NODEPORT);
        let synced = agent
            .log
            .wait_for_sync("the sync that adds the NodePort", mark);
        while answered.lock().unwrap().is_none() && synced.elapsed() < STUCK {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap();
    });
    let answered = answered.lock().unwrap().clone();
    let (_, text) = answered.unwrap_or_else(|| panic!("the client never reached the NodePort"));
    assert!(text.starts_with("10.244.1.2 "), "{text}");
}
