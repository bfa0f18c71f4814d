//! What someone else changes in the agent's table (`svc-nft run` on a manifest directory) is
//! put back at once, from the kernel's change notifications — not at the next `--sync-period`
//! (an hour by default) — while changes to other tables, and the agent's own syncs, are left
//! alone. Each case: the Service answers before, the change breaks it or alters the table, the
//! agent logs the repair naming the change and the process, and the Service answers again.

mod netns;

use netns::cluster::{Cluster, CIDRS};
use netns::manifest_agent::AgentProcess;
use netns::{eventually, tcp, Outcome, ANSWER_WAIT};
use std::net::SocketAddr;

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: t}\n\
                   spec: {clusterIP: 10.96.7.1, ports: [{port: 80, targetPort: 8080}]}\n---\n\
                   apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                   metadata: {name: web-a, namespace: t, labels: {kubernetes.io/service-name: web}}\n\
                   addressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.244.1.2]}]\n";

const REPAIRED: &str = "repaired a change by another process";

struct Node {
    k: Cluster,
    agent: AgentProcess,
}

impl Node {
    fn start(tag: &str) -> Node {
        let k = Cluster::new("", CIDRS);
        let agent = AgentProcess::start(&k.lab.node, tag, &[]);
        agent.write("web.yaml", WEB);
        let node = Node { k, agent };
        eventually("the Service answers", || node.answers());
        node
    }

    fn answers(&self) -> bool {
        let vip: SocketAddr = "10.96.7.1:80".parse().unwrap();
        matches!(
            tcp(self.k.ns(self.k.c1), vip, ANSWER_WAIT),
            Outcome::Answered { .. }
        )
    }

    fn nft(&self, script: &str) {
        self.k
            .lab
            .node
            .nft(script)
            .unwrap_or_else(|e| panic!("{script}: {e}"));
    }

    /// Run `script` as someone else would, wait for the repair it causes, and return the
    /// repair's log line.
    fn repaired_after(&self, script: &str) -> String {
        let mark = self.agent.log.mark();
        self.nft(script);
        let (i, _) = self
            .agent
            .log
            .wait_for(script, mark, |l| l.contains(REPAIRED));
        self.agent.log.line(i)
    }

    fn repairs(&self) -> usize {
        let tail = self.agent.log.tail(usize::MAX);
        tail.lines().filter(|l| l.contains(REPAIRED)).count()
    }
}

fn repaired(tag: &str, script: &str, announced: &str) {
    if !netns::require() {
        return;
    }
    let node = Node::start(tag);
    let line = node.repaired_after(script);
    assert!(line.contains(announced), "{script}: {line}");
    assert!(line.contains("by nft (pid "), "{script}: {line}");
    assert!(node.answers(), "{script}: not answering after the repair");
}

#[test]
fn a_flushed_ruleset_is_put_back() {
    repaired("flush", "flush ruleset", "DELTABLE");
}

#[test]
fn a_deleted_table_is_put_back() {
    repaired("deltable", "delete table inet svc-nft", "DELTABLE");
}

#[test]
fn a_flushed_chain_is_refilled() {
    repaired("flushchain", "flush chain inet svc-nft services", "DELRULE");
}

#[test]
fn a_deleted_element_is_put_back() {
    let script = "delete element inet svc-nft service-ports-v4 { 10.96.7.1 . tcp . 80 }";
    repaired("delelem", script, "DELSETELEM");
}

#[test]
fn a_rule_added_to_a_base_chain_is_removed() {
    if !netns::require() {
        return;
    }
    let node = Node::start("addrule");
    let script = "insert rule inet svc-nft nat-prerouting ip daddr 10.96.7.1 drop";
    let line = node.repaired_after(script);
    assert!(line.contains("NEWRULE"), "{line}");
    let chain = node
        .k
        .lab
        .node
        .nft_list("list chain inet svc-nft nat-prerouting");
    assert!(
        !chain.contains("drop"),
        "the foreign rule is still there: {chain}"
    );
    assert!(node.answers());
}

/// Other tables, and the agent's own syncs, cause no repair: after both, one foreign change
/// to the table causes exactly one.
#[test]
fn only_foreign_changes_to_its_table_are_repaired() {
    if !netns::require() {
        return;
    }
    let node = Node::start("others");
    node.nft(
        "add table inet other\nadd chain inet other input { type filter hook input priority 0; }\n",
    );
    let mark = node.agent.log.mark();
    node.agent
        .write("web.yaml", &WEB.replace("port: 80,", "port: 81,"));
    node.agent.log.wait_for_sync("the agent's own sync", mark);
    node.nft("delete table inet other");
    let line = node.repaired_after("delete element inet svc-nft cluster-ips-v4 { 10.96.7.1 }");
    assert!(
        line.contains("DELSETELEM") && !line.contains("DELTABLE"),
        "{line}"
    );
    // The repair's own commit is the agent's: another sync later, still one repair.
    let mark = node.agent.log.mark();
    node.agent.write("web.yaml", WEB);
    node.agent.log.wait_for_sync("the agent's next sync", mark);
    assert_eq!(node.repairs(), 1, "{}", node.agent.log.tail(30));
    assert!(node.answers());
}
