//! The runtime against a real kernel: `apply`, `cleanup`, atomic failure, and the agent
//! following a manifest directory (changes, bad files, drift).

mod netns;

use netns::cluster::{answers, pairs, Cluster, CIDRS};
use netns::{eventually, tcp, Netns, Outcome};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn svc_nft(ns: &Netns, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_svc-nft");
    ns.exec(&[&[bin], args].concat())
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn examples() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../examples").to_string()
}

#[test]
fn cleanup_removes_only_svc_nft_tables() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("cleanup");
    stdout(&svc_nft(&ns, &["apply", "-f", &examples()]));
    ns.nft("table inet neighbour {\n}\n").unwrap();
    stdout(&svc_nft(&ns, &["cleanup"]));
    assert_eq!(ns.nft_list("list tables"), "table inet neighbour\n");
    // Nothing to remove is not an error.
    stdout(&svc_nft(&ns, &["cleanup"]));
}

#[test]
fn apply_reports_what_changed_and_is_idempotent() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("apply");
    let first = stdout(&svc_nft(&ns, &["apply", "-f", &examples()]));
    assert!(
        first.starts_with("applied table inet svc-nft: elements +"),
        "{first}"
    );
    assert!(!first.contains("elements +0 "), "{first}");
    let again = stdout(&svc_nft(&ns, &["apply", "-f", &examples()]));
    assert_eq!(
        again,
        "applied table inet svc-nft: elements +0 -0, chains +0 -0, rules +0 -0\n"
    );
}

#[test]
fn a_refused_transaction_changes_nothing() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("atomic");
    stdout(&svc_nft(&ns, &["apply", "-f", &examples()]));
    let before = ns.nft_list("-j list table inet svc-nft");
    // The first command is fine, the second refers to a chain that does not exist: the
    // kernel must take neither.
    let bad = "add element inet svc-nft cluster-ips-v4 { 10.96.99.99 }\n\
               add rule inet svc-nft no-such-chain accept\n";
    assert!(ns.nft(bad).is_err());
    assert_eq!(ns.nft_list("-j list table inet svc-nft"), before);
}

/// Poll the directory often: the kill test wants syncs to start right away.
const FAST: &[&str] = &["--min-sync-period", "10ms"];

/// The agent, running in the node namespace on a manifest directory; killed on drop.
struct AgentProcess {
    child: Child,
    dir: PathBuf,
}

impl AgentProcess {
    fn start(node: &Netns, tag: &str, extra: &[&str]) -> AgentProcess {
        let dir = AgentProcess::directory(tag);
        let mut args = vec!["--min-sync-period", "100ms"];
        args.extend(extra);
        let child = AgentProcess::spawn(node, &dir, &args, false);
        AgentProcess { child, dir }
    }

    /// A fresh, empty manifest directory for this test.
    fn directory(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("svc-nft-agent-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `svc-nft run` on `dir` in namespace `node`; in a process group of its own with
    /// `own_group`, so that a kill reaches the nft it runs too.
    fn spawn(node: &Netns, dir: &std::path::Path, extra: &[&str], own_group: bool) -> Child {
        use std::os::unix::process::CommandExt;
        let mut command = node.command(env!("CARGO_BIN_EXE_svc-nft"));
        command
            .arg("run")
            .args(["--manifests", dir.to_str().unwrap()])
            .args(CIDRS)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if own_group {
            command.process_group(0);
        }
        command.spawn().expect("start the agent")
    }

    /// An agent in its own process group, so that a kill reaches the nft it runs too.
    fn start_isolated(node: &Netns, tag: &str) -> AgentProcess {
        let dir = AgentProcess::directory(tag);
        let child = AgentProcess::spawn(node, &dir, FAST, true);
        AgentProcess { child, dir }
    }

    fn restart_isolated(&mut self, node: &Netns) {
        self.child = AgentProcess::spawn(node, &self.dir, FAST, true);
    }

    /// SIGKILL the agent and everything it started (nft, mid-transaction or not).
    fn kill_group(&mut self) {
        // SAFETY: kill(2) on a process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        // nft is the agent's child: give the kernel a moment to reap it.
        std::thread::sleep(Duration::from_millis(20));
    }

    /// Start a new agent on the same directory, once the caller has stopped this one.
    fn restart(&mut self, node: &Netns) {
        self.child = AgentProcess::spawn(node, &self.dir, &["--min-sync-period", "100ms"], false);
    }

    fn write(&self, file: &str, content: &str) {
        // Write then rename, as config management does: the agent never reads half a file.
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, self.dir.join(file)).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.join(file)).unwrap();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: t}\n\
                       spec: {clusterIP: 10.96.5.1, ports: [{port: 80, targetPort: 8080}]}\n";

fn slice(name: &str, backend: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, namespace: t, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [{backend}]}}]\n"
    )
}

#[test]
fn the_agent_follows_its_manifest_directory() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new("", CIDRS);
    let agent = AgentProcess::start(&k.lab.node, "follow", &["--sync-period", "1s"]);
    let c1 = k.ns(k.c1);
    let connect = || {
        tcp(
            c1,
            "10.96.5.1:80".parse().unwrap(),
            Duration::from_millis(500),
        )
    };
    let answered_by = |b: &str| matches!(connect(), Outcome::Answered { backend, .. } if backend.to_string() == b);

    agent.write("web.yaml", SERVICE);
    eventually("the Service without endpoints refuses", || {
        connect() == Outcome::Refused
    });
    agent.write("slice-a.yaml", &slice("web-a", "10.244.1.2"));
    eventually("b1 answers", || answered_by("10.244.1.2"));
    agent.write("slice-b.yaml", &slice("web-b", "10.244.2.2"));
    eventually("b2 answers too", || answered_by("10.244.2.2"));
    let both = pairs(&[("10.244.1.2", "10.244.9.2"), ("10.244.2.2", "10.244.9.2")]);
    assert_eq!(answers(20, connect), both);

    // A broken file is reported and skipped; the rest of the node keeps its rules.
    agent.write("broken.yaml", "kind: [");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(answers(20, connect), both);
    // An invalid object is skipped too, and fixing it heals it on the next sync.
    let extra = |port: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: extra, namespace: t}}\n\
             spec: {{clusterIP: 10.96.5.2, ports: [{{port: {port}}}]}}\n"
        )
    };
    agent.write("broken.yaml", &extra("70000"));
    std::thread::sleep(Duration::from_millis(400));
    let extra_vip = "10.96.5.2:80".parse().unwrap();
    assert_eq!(
        tcp(c1, extra_vip, Duration::from_millis(300)),
        Outcome::Timeout,
        "not programmed"
    );
    assert_eq!(answers(20, connect), both);
    agent.write("broken.yaml", &extra("80"));
    eventually(
        "the fixed Service is programmed (no endpoints: refused)",
        || tcp(c1, extra_vip, Duration::from_millis(300)) == Outcome::Refused,
    );

    // Drift: someone deletes the table; the periodic full sync puts it back.
    k.lab.node.nft("delete table inet svc-nft\n").unwrap();
    eventually("the table is repaired", || answered_by("10.244.1.2"));

    agent.remove("slice-a.yaml");
    agent.remove("slice-b.yaml");
    eventually("no endpoints: refused again", || {
        connect() == Outcome::Refused
    });
}

#[test]
fn restarting_the_agent_never_breaks_connections() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new("", CIDRS);
    let mut agent = AgentProcess::start(&k.lab.node, "restart", &[]);
    agent.write(
        "web.yaml",
        &[SERVICE, &slice("web-a", "10.244.1.2")].join("---\n"),
    );
    let c1 = k.ns(k.c1);
    let connect = || tcp(c1, "10.96.5.1:80".parse().unwrap(), Duration::from_secs(1));
    eventually("the Service answers", || {
        matches!(connect(), Outcome::Answered { .. })
    });
    let stop = AtomicBool::new(false);
    let (ok, failed) = std::thread::scope(|scope| {
        // A client opening one connection after another, all through the restarts.
        let client = scope.spawn(|| {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match connect() {
                    Outcome::Answered { .. } => ok += 1,
                    other => failed.push(other),
                }
            }
            (ok, failed)
        });
        for round in 0..20 {
            // Alternately SIGTERM and SIGKILL; each new agent starts with a full atomic
            // replace of the table the previous one left.
            let signal = if round % 2 == 0 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            // SAFETY: kill(2) on the pid of our own child process.
            unsafe { libc::kill(agent.child.id() as i32, signal) };
            let _ = agent.child.wait();
            agent.restart(&k.lab.node);
            std::thread::sleep(Duration::from_millis(150));
        }
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap()
    });
    assert!(ok > 20, "only {ok} connections made");
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
}

/// `n` Services with two endpoints each, numbered from `first`.
fn many_services(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n\
                 spec: {{clusterIP: 10.96.{hi}.{lo}, ports: [{{port: 80}}]}}\n---\n\
                 apiVersion: v1\nkind: Endpoints\nmetadata: {{name: s{i}}}\n\
                 subsets: [{{addresses: [{{ip: 10.244.{hi}.{lo}}}, {{ip: 10.245.{hi}.{lo}}}], ports: [{{port: 80}}]}}]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The kernel's copy of the table, without handles.
fn snapshot(ns: &Netns) -> String {
    let listing = ns.nft_list("-j list table inet svc-nft");
    let mut json: serde_json::Value = serde_json::from_str(&listing).unwrap();
    for item in json["nftables"].as_array_mut().unwrap() {
        for body in item.as_object_mut().unwrap().values_mut() {
            if let Some(body) = body.as_object_mut() {
                body.remove("handle");
            }
        }
    }
    json.to_string()
}

#[test]
fn killing_the_agent_mid_sync_leaves_the_old_or_the_new_ruleset() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("kill");
    // Two large rulesets that differ everywhere; each sync replaces one with the other.
    let sets = [many_services(0, 1500), many_services(700, 1500)];
    let mut agent = AgentProcess::start_isolated(&ns, "kill");
    let mut snapshots = Vec::new();
    for manifests in &sets {
        agent.write("all.yaml", manifests);
        let before = snapshot_or_empty(&ns);
        eventually("the agent applies it", || snapshot_or_empty(&ns) != before);
        std::thread::sleep(Duration::from_millis(300));
        snapshots.push(snapshot(&ns));
    }
    agent.kill_group();
    let mut seed = 0x2545_f491_u64;
    let mut landed = [0; 2];
    for round in 0..200 {
        agent.write("all.yaml", &sets[round % 2]);
        agent.restart_isolated(&ns);
        // xorshift: a kill point anywhere from before the compile to after the commit.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 600));
        agent.kill_group();
        let now = snapshot(&ns);
        let which = snapshots.iter().position(|s| *s == now);
        let which =
            which.unwrap_or_else(|| panic!("round {round}: the kernel holds neither ruleset"));
        landed[which] += 1;
    }
    // Both outcomes happened: the kill points really fell before and after commits.
    assert!(landed.iter().all(|n| *n > 0), "{landed:?}");
}

fn snapshot_or_empty(ns: &Netns) -> String {
    let out = ns.exec(&["nft", "-j", "list", "table", "inet", "svc-nft"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn udp_service(backend: &str) -> String {
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: t}\n\
                   spec: {clusterIP: 10.96.5.53, ports: [{port: 53, protocol: UDP, targetPort: 5353}]}\n";
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: dns-a, namespace: t, labels: {{kubernetes.io/service-name: dns}}}}\n\
         addressType: IPv4\nports: [{{port: 5353, protocol: UDP}}]\nendpoints: [{{addresses: [{backend}]}}]\n"
    );
    [service, &slice].join("---\n")
}

#[test]
fn a_udp_client_follows_its_endpoint_at_once() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new("", CIDRS);
    let agent = AgentProcess::start(&k.lab.node, "udp", &[]);
    agent.write("dns.yaml", &udp_service("10.244.1.2"));
    let vip: std::net::SocketAddr = "10.96.5.53:53".parse().unwrap();
    eventually("the UDP Service answers", || {
        matches!(
            netns::udp(k.ns(k.c1), vip, Duration::from_millis(300)),
            Outcome::Answered { .. }
        )
    });
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let client_stop = stop.clone();
    let answers = std::thread::scope(|scope| {
        // One socket, one source port: conntrack keeps its entry for as long as it sends.
        let client = scope.spawn(|| {
            k.ns(k.c1).run(move || {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.connect(vip).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut seen = Vec::new();
                let mut buf = [0u8; 256];
                while !client_stop.load(Ordering::Relaxed) {
                    socket.send(b"who?").unwrap();
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        seen.push((
                            Instant::now(),
                            text.split_whitespace().next().unwrap_or("").to_string(),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                seen
            })
        });
        std::thread::sleep(Duration::from_millis(500));
        let switched = Instant::now();
        agent.write("dns.yaml", &udp_service("10.244.2.2"));
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        (switched, client.join().unwrap())
    });
    let (switched, seen) = answers;
    assert!(seen.iter().any(|(_, b)| b == "10.244.1.2"), "{seen:?}");
    let first_new = seen.iter().find(|(_, b)| b == "10.244.2.2");
    let (when, _) = first_new.unwrap_or_else(|| panic!("never reached the new endpoint: {seen:?}"));
    assert!(
        *when < switched + Duration::from_secs(2),
        "the new endpoint answered only after {:?}",
        *when - switched
    );
    // And the old one never again after that.
    assert!(
        seen.iter().all(|(t, b)| t <= when || b == "10.244.2.2"),
        "{seen:?}"
    );
}

#[test]
fn session_affinity_survives_an_agent_restart() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new("", CIDRS);
    let mut agent = AgentProcess::start(&k.lab.node, "sticky", &[]);
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: t}\n\
                   spec: {clusterIP: 10.96.5.7, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 8080}]}\n";
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: sticky-a, namespace: t, labels: {kubernetes.io/service-name: sticky}}\n\
                 addressType: IPv4\nports: [{port: 8080}]\n\
                 endpoints: [{addresses: [10.244.1.2]}, {addresses: [10.244.2.2]}]\n";
    agent.write("sticky.yaml", &[service, slice].join("---\n"));
    let vip: std::net::SocketAddr = "10.96.5.7:80".parse().unwrap();
    let pinned = |client: usize| answers(6, || tcp(k.ns(client), vip, Duration::from_secs(1)));
    eventually("the Service answers", || {
        matches!(
            tcp(k.ns(k.c1), vip, Duration::from_millis(300)),
            Outcome::Answered { .. }
        )
    });
    let before = [pinned(k.c1), pinned(k.x1)];
    assert!(before.iter().all(|b| b.len() == 1), "pinned: {before:?}");
    let entries = || k.lab.node.nft_list("list map inet svc-nft affinity-v4");
    assert!(
        entries().contains("10.244.9.2 . 10.96.5.7 . tcp . 80"),
        "{}",
        entries()
    );

    // SAFETY: kill(2) on the pid of our own child process.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGKILL) };
    let _ = agent.child.wait();
    agent.restart(&k.lab.node);
    std::thread::sleep(Duration::from_millis(800)); // the new agent's first (full) sync
    assert!(
        entries().contains("10.244.9.2 . 10.96.5.7 . tcp . 80"),
        "lost: {}",
        entries()
    );
    assert_eq!([pinned(k.c1), pinned(k.x1)], before);
}
