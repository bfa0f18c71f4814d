//! The runtime against a real kernel: `apply`, `cleanup`, atomic failure, and the agent
//! following a manifest directory (changes, bad files, drift).

mod netns;

use netns::cluster::{answers, pairs, Cluster, CIDRS};
use netns::manifest_agent::AgentProcess;
use netns::{eventually, listing, tcp, Netns, Outcome, ANSWER_WAIT};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::time::Duration;

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
    let connect = || tcp(c1, "10.96.5.1:80".parse().unwrap(), ANSWER_WAIT);
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

    // A broken file is reported and skipped; the rest of the node keeps its rules. Each
    // check runs once the agent has said it read the file.
    let rejected = |what: &str, since| agent.log.wait_for(what, since, |l| l.contains("rejected"));
    let mark = agent.log.mark();
    agent.write("broken.yaml", "kind: [");
    rejected("the unparsable file rejected", mark);
    assert_eq!(answers(20, connect), both);
    // An invalid object is skipped too, and fixing it heals it on the next sync.
    let extra = |port: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: extra, namespace: t}}\n\
             spec: {{clusterIP: 10.96.5.2, ports: [{{port: {port}}}]}}\n"
        )
    };
    let mark = agent.log.mark();
    agent.write("broken.yaml", &extra("70000"));
    rejected("the Service with port 70000 rejected", mark);
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
    let ok = AtomicUsize::new(0);
    let failed = std::thread::scope(|scope| {
        // A pod client opening one connection after another, all through the restarts: each
        // answered, and with its own address (a packet caught in a replace once came out
        // masqueraded, when the old chain's cluster-CIDR set was already gone).
        let pod: std::net::IpAddr = "10.244.9.2".parse().unwrap();
        let (stop, ok) = (&stop, &ok);
        let client = scope.spawn(move || {
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match connect() {
                    Outcome::Answered { peer, .. } if peer == pod => {
                        _ = ok.fetch_add(1, Ordering::Relaxed)
                    }
                    other => failed.push(other),
                }
            }
            failed
        });
        for round in 0..20 {
            // Alternately SIGTERM and SIGKILL; each new agent starts with a full atomic
            // replace of the table the previous one left.
            let signal = if round % 2 == 0 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            agent.signal(signal);
            agent.restart(&k.lab.node);
            // The next restart waits for this agent's replace and a connection after it, so
            // that every round replaces the table under traffic, however slow the machine.
            agent.log.wait_for_sync("the new agent's first sync", 0);
            let made = ok.load(Ordering::Relaxed);
            eventually("a connection after the new agent's sync", || {
                ok.load(Ordering::Relaxed) > made
            });
        }
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap()
    });
    let ok = ok.into_inner();
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

/// Rounds of the kill test: a third kill right after the commit, the rest at random points.
const KILL_ROUNDS: usize = 90;

#[test]
fn killing_the_agent_mid_sync_leaves_the_old_or_the_new_ruleset() {
    if !netns::require() {
        return;
    }
    let ns = Netns::new("kill");
    // Two large rulesets that differ everywhere; each round a fresh agent starts on the one
    // the kernel does not hold, and replaces the table in one transaction, or is killed first.
    let sets = [many_services(0, 1500), many_services(700, 1500)];
    let mut agent = AgentProcess::start_isolated(&ns, "kill");
    agent.kill_group();
    let table = || listing::table(&ns, "svc-nft");
    // The rulesets as the kernel holds them, each after an agent's first sync; and how long
    // that sync took from the agent's start, which bounds the random kill points below.
    let mut snapshots = Vec::new();
    let mut took = Duration::ZERO;
    for manifests in &sets {
        let started = agent.restart_on(&ns, manifests);
        took = agent.log.wait_for_sync("the agent's first sync", 0) - started;
        agent.kill_group();
        snapshots.push(table());
    }
    let mut holding = 1;
    let mut seed = 0x2545_f491_u64;
    // Kills at a random point that found the old ruleset, and that found the new one.
    let (mut kept, mut replaced) = (0, 0);
    for round in 0..KILL_ROUNDS {
        let next = 1 - holding;
        let started = agent.restart_on(&ns, &sets[next]);
        let after_commit = round % 3 == 0;
        if after_commit {
            // Killed once it logged the commit: the kernel must hold the new ruleset. The
            // time it took bounds the next random kill points, on this machine, now.
            took = agent.log.wait_for_sync("the agent's first sync", 0) - started;
        } else {
            // xorshift: a kill point anywhere from the start to the commit.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(took.mul_f64((seed % 1000) as f64 / 1000.0));
        }
        agent.kill_group();
        let now = table();
        let which = snapshots.iter().position(|s| *s == now);
        let which =
            which.unwrap_or_else(|| panic!("round {round}: the kernel holds neither ruleset"));
        if after_commit {
            assert_eq!(which, next, "round {round}: killed after its commit");
        } else if which == next {
            replaced += 1;
        } else {
            kept += 1;
        }
        holding = which;
    }
    // The random kills fell before commits (and, as it happens, some after).
    eprintln!("random kills: {kept} kept the old ruleset, {replaced} found the new one");
    assert!(kept > 0, "no random kill fell before a commit");
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
    let entries = || k.lab.node.nft_list("list set inet svc-nft affinity-v4");
    assert!(
        entries().contains("10.244.9.2 . 10.96.5.7 . tcp . 80"),
        "{}",
        entries()
    );

    agent.signal(libc::SIGKILL);
    agent.restart(&k.lab.node);
    agent
        .log
        .wait_for_sync("the new agent's first (full) sync", 0);
    assert!(
        entries().contains("10.244.9.2 . 10.96.5.7 . tcp . 80"),
        "lost: {}",
        entries()
    );
    assert_eq!([pinned(k.c1), pinned(k.x1)], before);
}
