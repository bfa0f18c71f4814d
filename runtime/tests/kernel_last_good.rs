//! Last known good, against the kernel: a Service the agent has programmed keeps answering
//! through an invalid edit and a half-written file, and follows the next valid edit.

mod netns;

use netns::cluster::{Cluster, CIDRS};
use netns::manifest_agent::AgentProcess;
use netns::{eventually, tcp, Outcome, ANSWER_WAIT};

fn service(port: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: t}}\n\
         spec: {{clusterIP: 10.96.5.1, ports: [{{port: {port}, targetPort: 8080}}]}}\n"
    )
}

const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
    metadata: {name: web-a, namespace: t, labels: {kubernetes.io/service-name: web}}\n\
    addressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.244.1.2]}]\n";

#[test]
fn a_service_keeps_answering_through_an_invalid_edit_and_a_half_written_file() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new("", CIDRS);
    let agent = AgentProcess::start(&k.lab.node, "last-good", &["--sync-period", "1s"]);
    let c1 = k.ns(k.c1);
    let reach = |port: u16| {
        let vip = format!("10.96.5.1:{port}").parse().unwrap();
        tcp(c1, vip, ANSWER_WAIT)
    };
    let b1_answers = |port| matches!(reach(port), Outcome::Answered { backend, .. } if backend.to_string() == "10.244.1.2");

    agent.write("slice.yaml", SLICE);
    agent.write("web.yaml", &service("80"));
    eventually("b1 answers on port 80", || b1_answers(80));

    // Each bad version is rejected, and two periodic full syncs (one a second: they check
    // the kernel against what it should hold) pass before the Service is checked: it must
    // still answer as before.
    let whole = service("80");
    let cut = |at: &str| whole[..whole.find(at).unwrap()].to_string();
    let bad_versions = [
        ("an invalid port", service("70000"), false),
        ("a file cut mid-document", cut("ports"), true),
        ("a file cut after its metadata", cut("spec"), true),
    ];
    for (what, text, in_place) in bad_versions {
        let mark = agent.log.mark();
        if in_place {
            agent.write_in_place("web.yaml", &text);
        } else {
            agent.write("web.yaml", &text);
        }
        let (seen, _) = agent.log.wait_for(what, mark, |l| l.contains("rejected"));
        let next = agent
            .log
            .wait_for_pass(&format!("a pass after {what}"), seen);
        agent
            .log
            .wait_for_pass(&format!("a second pass after {what}"), next);
        assert!(
            b1_answers(80),
            "{what} took the Service off the node:\n{text}"
        );
    }

    // The next valid edit is followed at once.
    agent.write("web.yaml", &service("81"));
    eventually("b1 answers on port 81", || b1_answers(81));
    // A cluster IP refuses a port no Service has, as kube-proxy does.
    assert_eq!(reach(80), Outcome::Refused, "port 80 is gone with the edit");
}
