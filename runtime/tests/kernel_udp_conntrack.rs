//! UDP flows and conntrack, through the agent: a client that keeps sending from one port
//! keeps its conntrack entry, and with it its DNAT, for as long as it sends. The agent deletes
//! the entries of flows whose endpoint no longer serves their Service (kube-proxy's rule,
//! 1.31+), and no others.

mod netns;

use netns::cluster::{Cluster, CIDRS};
use netns::manifest_agent::AgentProcess;
use netns::{eventually, Netns, Outcome};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const B1: &str = "10.244.1.2";
const B2: &str = "10.244.2.2";

/// How long after the sync a UDP client may still reach the old endpoint: generous for a
/// slow machine, yet never reached without the conntrack cleanup, whose entry would live on.
const STUCK: Duration = Duration::from_secs(15);

/// A UDP Service `name` on `vip`:53 and its slice, one endpoint per `(address, state)`;
/// state "ready" or "terminating" (serving, not ready).
fn udp_service(name: &str, vip: &str, endpoints: &[(&str, &str)]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(ip, state)| {
            let conditions = match *state {
                "ready" => "{ready: true}",
                _ => "{ready: false, serving: true, terminating: true}",
            };
            format!("{{addresses: [{ip}], conditions: {conditions}}}")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\n\
         spec: {{clusterIP: {vip}, ports: [{{port: 53, protocol: UDP, targetPort: 5353}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-a, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{port: 5353, protocol: UDP}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// A client sending to `vip` from one socket, one source port, every 50 ms; what it heard,
/// when and from which backend.
struct Client {
    heard: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    fn start(ns: &Netns, vip: SocketAddr) -> Client {
        let (heard, stop) = (
            Arc::<Mutex<Vec<_>>>::default(),
            Arc::new(AtomicBool::new(false)),
        );
        let (into, stopped) = (heard.clone(), stop.clone());
        let thread = ns.spawn(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.connect(vip).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 256];
            while !stopped.load(Ordering::Relaxed) {
                socket.send(b"who?").unwrap();
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let backend = text.split_whitespace().next().unwrap_or("").to_string();
                    into.lock().unwrap().push((Instant::now(), backend));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Client {
            heard,
            stop,
            thread: Some(thread),
        }
    }

    /// The backend of the first answer, once there is one.
    fn first_backend(&self) -> String {
        eventually("the client's first answer", || {
            !self.heard.lock().unwrap().is_empty()
        });
        self.heard.lock().unwrap()[0].1.clone()
    }

    /// When `backend` first answered after `since`, waiting up to `STUCK` after it.
    fn first_from(&self, backend: &str, since: Instant) -> Option<Instant> {
        let found = || {
            let heard = self.heard.lock().unwrap();
            heard
                .iter()
                .find(|(t, b)| *t >= since && b == backend)
                .map(|(t, _)| *t)
        };
        while found().is_none() && since.elapsed() < STUCK {
            std::thread::sleep(Duration::from_millis(50));
        }
        found()
    }

    /// The next `n` answers after `since`, in order.
    fn next_answers(&self, since: Instant, n: usize) -> Vec<String> {
        let after = || -> Vec<String> {
            let heard = self.heard.lock().unwrap();
            heard
                .iter()
                .filter(|(t, _)| *t > since)
                .map(|(_, b)| b.clone())
                .collect()
        };
        eventually(&format!("{n} answers after the sync"), || {
            after().len() >= n
        });
        after().into_iter().take(n).collect()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The lab, the agent, and Services written to its directory once each answers.
fn start(tag: &str) -> (Cluster, AgentProcess) {
    let k = Cluster::new("", CIDRS);
    let agent = AgentProcess::start(&k.lab.node, tag, &[]);
    (k, agent)
}

fn answers(k: &Cluster, vip: SocketAddr) -> bool {
    matches!(
        netns::udp(k.ns(k.c1), vip, Duration::from_secs(1)),
        Outcome::Answered { .. }
    )
}

/// Write `file` and return when the sync that applied it was logged.
fn apply(agent: &AgentProcess, file: &str, text: &str) -> Instant {
    let mark = agent.log.mark();
    agent.write(file, text);
    agent
        .log
        .wait_for_sync(&format!("the sync of {file}"), mark)
}

/// A client of the UDP Service "dns" on b1 (with `others` written to the directory first),
/// and when the sync that moves "dns" to b2 was logged.
fn moved_to_b2(tag: &str, others: &[(&str, String)]) -> (Cluster, AgentProcess, Client, Instant) {
    let (k, agent) = start(tag);
    let vip = "10.96.5.53:53".parse().unwrap();
    for (file, text) in others {
        agent.write(file, text);
    }
    agent.write(
        "dns.yaml",
        &udp_service("dns", "10.96.5.53", &[(B1, "ready")]),
    );
    eventually("the UDP Service answers", || answers(&k, vip));
    let client = Client::start(k.ns(k.c1), vip);
    assert_eq!(client.first_backend(), B1);
    let moved = udp_service("dns", "10.96.5.53", &[(B2, "ready")]);
    let synced = apply(&agent, "dns.yaml", &moved);
    (k, agent, client, synced)
}

#[test]
fn a_udp_client_follows_its_endpoint_at_once() {
    if !netns::require() {
        return;
    }
    let (_k, _agent, client, synced) = moved_to_b2("udp-moves", &[]);
    // Without the cleanup the client's entry never expires (it sends every 50 ms).
    let moved = client.first_from(B2, synced);
    assert!(
        moved.is_some(),
        "still on the old endpoint {STUCK:?} after the sync"
    );
    let after: Vec<String> = client.next_answers(moved.unwrap(), 10);
    assert!(
        after.iter().all(|b| b == B2),
        "the old endpoint again: {after:?}"
    );
}

#[test]
fn a_client_leaves_an_endpoint_its_service_dropped_though_another_service_keeps_it() {
    if !netns::require() {
        return;
    }
    // b1 backs both Services; moving "dns" away from it leaves it in use by "other".
    let other = udp_service("other", "10.96.5.54", &[(B1, "ready")]);
    let (_k, _agent, client, synced) = moved_to_b2("udp-shared", &[("other.yaml", other)]);
    assert!(
        client.first_from(B2, synced).is_some(),
        "still on b1 {STUCK:?} after the sync: its entry was kept because b1 backs another Service"
    );
}

#[test]
fn flows_to_an_endpoint_that_still_serves_stay() {
    if !netns::require() {
        return;
    }
    let (k, agent) = start("udp-serving");
    let vip = "10.96.5.53:53".parse().unwrap();
    let both = [(B1, "ready"), (B2, "ready")];
    agent.write("dns.yaml", &udp_service("dns", "10.96.5.53", &both));
    eventually("the UDP Service answers", || answers(&k, vip));
    let client = Client::start(k.ns(k.c1), vip);
    let pinned = client.first_backend();
    let other = if pinned == B1 { B2 } else { B1 };
    // The client's endpoint starts terminating: new flows go to the other, this one stays.
    let states = [(pinned.as_str(), "terminating"), (other, "ready")];
    let synced = apply(
        &agent,
        "dns.yaml",
        &udp_service("dns", "10.96.5.53", &states),
    );
    let after = client.next_answers(synced, 20);
    assert!(
        after.iter().all(|b| *b == pinned),
        "the flow was cut: {after:?}"
    );
    assert!(
        matches!(netns::udp(k.ns(k.c1), vip, Duration::from_secs(1)), Outcome::Answered { backend, .. } if backend.to_string() == other),
        "a new flow goes to the ready endpoint"
    );
}
