//! Two Services claiming one external IP and port, in a running agent on a manifest directory:
//! the one created first gets the frontend, the other keeps its cluster IP; a newcomer that
//! sorts first (and claims to be older) does not take the frontend away; when the holder
//! goes, the frontend passes on.

mod netns;

use netns::cluster::{Cluster, CIDRS};
use netns::{eventually, tcp, Netns, Outcome, ANSWER_WAIT};
use std::path::PathBuf;
use std::process::{Child, Stdio};

/// `svc-nft run` on a directory of its own, in the node namespace; killed on drop.
struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Agent {
    fn start(node: &Netns) -> Agent {
        let dir = std::env::temp_dir().join(format!("svc-nft-clash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = node
            .command(env!("CARGO_BIN_EXE_svc-nft"))
            .args([
                "run",
                "--manifests",
                dir.join("manifests").to_str().unwrap(),
            ])
            .args(CIDRS)
            .args(["--min-sync-period", "100ms"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        Agent { child, dir }
    }

    fn write(&self, file: &str, content: &str) {
        // Write then rename: the agent never reads half a file.
        let dir = self.dir.join("manifests");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, dir.join(file)).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.join("manifests").join(file)).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const EXTERNAL: &str = "203.0.113.7:80";

/// A Service `ns/name` created at `created`, on `cluster_ip` and the external IP, port 80 to
/// 8080 on `backend`.
fn service(ns: &str, name: &str, created: &str, cluster_ip: &str, backend: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\n\
         metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '{created}'}}\n\
         spec: {{clusterIP: {cluster_ip}, externalIPs: [203.0.113.7], selector: {{app: {name}}}, \
         ports: [{{port: 80, targetPort: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [{backend}]}}]\n"
    )
}

#[test]
fn a_clash_costs_only_the_contested_frontend_and_the_holder_keeps_it() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new("", CIDRS);
    let (b1, b2, b3) = ("10.244.1.2", "10.244.2.2", "10.244.3.2");
    let answered_by = |ns: &Netns, to: &str, backend: &str| {
        let outcome = tcp(ns, to.parse().unwrap(), ANSWER_WAIT);
        matches!(outcome, Outcome::Answered { backend: b, .. } if b.to_string() == backend)
    };
    let (c1, x1) = (k.ns(k.c1), k.ns(k.x1));
    let agent = Agent::start(&k.lab.node);

    // demo/web-z was created first: the external IP is its, though demo/web-a sorts first.
    agent.write(
        "web-z.yaml",
        &service("demo", "web-z", "2024-01-01T00:00:00Z", "10.96.7.1", b1),
    );
    agent.write(
        "web-a.yaml",
        &service("demo", "web-a", "2024-02-01T00:00:00Z", "10.96.7.2", b2),
    );
    eventually("the holder answers on the external IP", || {
        answered_by(x1, EXTERNAL, b1)
    });
    eventually("the other keeps its cluster IP", || {
        answered_by(c1, "10.96.7.2:80", b2)
    });
    assert!(answered_by(c1, "10.96.7.1:80", b1));

    // aaa/x sorts first and says it is older still: the running holder keeps the address.
    agent.write(
        "x.yaml",
        &service("aaa", "x", "2023-01-01T00:00:00Z", "10.96.7.3", b3),
    );
    eventually("the newcomer's cluster IP is programmed", || {
        answered_by(c1, "10.96.7.3:80", b3)
    });
    for _ in 0..10 {
        assert!(answered_by(x1, EXTERNAL, b1), "the holder keeps it");
    }
    assert!(answered_by(c1, "10.96.7.2:80", b2));

    // The holder lets go: the frontend passes to the first in line, aaa/x (created first).
    agent.remove("web-z.yaml");
    eventually("the next in line answers on the external IP", || {
        answered_by(x1, EXTERNAL, b3)
    });
    assert!(answered_by(c1, "10.96.7.2:80", b2));

    let log = agent.log();
    for loser in ["demo/web-a", "aaa/x"] {
        let warning = format!(
            "Service {loser}: spec.externalIPs[0]: 203.0.113.7:80/TCP is held by Service demo/web-z"
        );
        assert_eq!(log.matches(&warning).count(), 1, "{warning}\n{log}");
    }
}
