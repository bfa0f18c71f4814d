//! The runtime against a real kernel: `apply`, `cleanup`, atomic failure, and the agent
//! following a manifest directory (changes, bad files, drift).

mod netns;

use netns::cluster::{answers, pairs, Cluster, CIDRS};
use netns::{tcp, Netns, Outcome};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
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

/// The agent, running in the node namespace on a manifest directory; killed on drop.
struct AgentProcess {
    child: Child,
    dir: PathBuf,
}

impl AgentProcess {
    fn start(node: &Netns, tag: &str, extra: &[&str]) -> AgentProcess {
        let dir = std::env::temp_dir().join(format!("svc-nft-agent-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.name,
                env!("CARGO_BIN_EXE_svc-nft"),
                "run",
            ])
            .args([
                "--manifests",
                dir.to_str().unwrap(),
                "--min-sync-period",
                "100ms",
            ])
            .args(CIDRS)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        AgentProcess { child, dir }
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

/// Poll until `check` holds (at most 10 s).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
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

    // Drift: someone deletes the table; the periodic full sync puts it back.
    k.lab.node.nft("delete table inet svc-nft\n").unwrap();
    eventually("the table is repaired", || answered_by("10.244.1.2"));

    agent.remove("slice-a.yaml");
    agent.remove("slice-b.yaml");
    eventually("no endpoints: refused again", || {
        connect() == Outcome::Refused
    });
}
