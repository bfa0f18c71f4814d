//! `svc-nft explain` on the golden cases: a fast oracle for every Service semantic, without
//! a kernel. The kernel tests check the same interpreter against real packets.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `svc-nft explain -o json` for golden case `case` (its input and flags).
fn explain(case: &str, from: &str, to: &str, extra: &[&str]) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../golden/cases")
        .join(case);
    let flags = std::fs::read_to_string(dir.join("flags")).unwrap_or_default();
    let input = dir.join("input");
    let out = Command::new(env!("CARGO_BIN_EXE_svc-nft"))
        .args(["explain", "-o", "json", "-f", input.to_str().unwrap()])
        .args(["--from", from, "--to", to])
        .args(extra)
        .args(flags.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The verdict and, for DNAT, the candidates as "addr:port share masquerade".
fn summary(v: &Value) -> (String, Vec<String>) {
    let candidates = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let masq = if c["masquerade"].as_bool().unwrap() {
                " masq"
            } else {
                ""
            };
            format!(
                "{}:{} {}{masq}",
                c["address"].as_str().unwrap(),
                c["port"],
                c["share"]
            )
        })
        .collect();
    (v["verdict"].as_str().unwrap().to_string(), candidates)
}

fn check(case: &str, from: &str, to: &str, verdict: &str, candidates: &[&str]) {
    check_with(case, from, to, &[], verdict, candidates)
}

fn check_with(
    case: &str,
    from: &str,
    to: &str,
    extra: &[&str],
    verdict: &str,
    candidates: &[&str],
) {
    let got = summary(&explain(case, from, to, extra));
    let want = (
        verdict.to_string(),
        candidates.iter().map(|c| c.to_string()).collect(),
    );
    assert_eq!(got, want, "{case}: {from} -> {to}");
}

#[test]
fn cluster_ip() {
    let both = ["10.244.1.5:6379 0.5", "10.244.2.7:6379 0.5"];
    check(
        "redis-clusterip",
        "10.244.9.2",
        "10.97.97.97:6379",
        "dnat",
        &both,
    );
    let masq = ["10.244.1.5:6379 0.5 masq", "10.244.2.7:6379 0.5 masq"];
    check(
        "redis-clusterip",
        "198.51.100.2",
        "10.97.97.97:6379",
        "dnat",
        &masq,
    );
    check(
        "masquerade-all",
        "10.244.9.2",
        "10.97.97.97:6379",
        "dnat",
        &masq,
    );
    // --masquerade-all is for cluster IPs: a pod short-circuited from an
    // externalTrafficPolicy: Local frontend keeps its address; external clients of it too.
    let all = ["10.244.1.2:8080 0.5 masq", "10.244.2.2:8080 0.5 masq"];
    check("masquerade-all", "10.244.9.2", "10.96.1.2:80", "dnat", &all);
    let short = ["10.244.1.2:8080 0.5", "10.244.2.2:8080 0.5"];
    for to in ["203.0.113.2:80", "198.51.100.1:30002"] {
        check("masquerade-all", "10.244.9.2", to, "dnat", &short);
    }
    let local = ["10.244.1.2:8080 1.0"];
    check(
        "masquerade-all",
        "192.0.2.2",
        "203.0.113.2:80",
        "dnat",
        &local,
    );
    check(
        "redis-clusterip",
        "10.244.9.2",
        "10.97.97.97:80",
        "reject",
        &[],
    );
    check(
        "redis-clusterip",
        "10.244.9.2",
        "10.96.0.99:80",
        "drop",
        &[],
    );
    check(
        "no-endpoints",
        "10.244.9.2",
        "10.96.40.2:443",
        "reject",
        &[],
    );
    check(
        "headless",
        "10.244.9.2",
        "10.244.1.5:80",
        "not-handled",
        &[],
    );
    // Hairpin: the endpoint reaching itself is masqueraded, the other is not.
    let hairpin = ["10.244.1.5:6379 0.5 masq", "10.244.2.7:6379 0.5"];
    check(
        "redis-clusterip",
        "10.244.1.5",
        "10.97.97.97:6379",
        "dnat",
        &hairpin,
    );
}

#[test]
fn named_ports_dual_stack_and_mirrored_endpoints() {
    let web = ["10.244.1.10:8080", "10.244.2.10:8080", "10.244.3.10:8081"];
    let third = 1.0 / 3.0;
    let web: Vec<String> = web.iter().map(|w| format!("{w} {third}")).collect();
    let web: Vec<&str> = web.iter().map(String::as_str).collect();
    check(
        "multiport-named-targetport",
        "10.244.9.2",
        "10.96.40.1:80",
        "dnat",
        &web,
    );
    let dns = ["fd00:244:1::3:53 0.5", "fd00:244:2::3:53 0.5"];
    check_with(
        "dual-stack",
        "fd00:244::9",
        "[fd00:96::a]:53",
        &["--proto", "udp"],
        "dnat",
        &dns,
    );
    check(
        "selectorless-endpoints",
        "10.244.9.2",
        "10.96.181.102:3306",
        "dnat",
        &["10.15.9.211:3306 1.0"],
    );
}

#[test]
fn nodeports_load_balancers_external_ips() {
    let both = ["10.244.1.2:8080 0.5 masq", "10.244.2.2:8080 0.5 masq"];
    check("nodeport", "192.0.2.2", "198.51.100.1:30001", "dnat", &both);
    check(
        "nodeport",
        "2001:db8:2::2",
        "[2001:db8:51::1]:30001",
        "dnat",
        &["fd00:244:1::2:8080 1.0 masq"],
    );
    check(
        "external-ips",
        "192.0.2.2",
        "203.0.113.6:80",
        "dnat",
        &["10.244.1.2:8080 1.0 masq"],
    );
    // With the AllowServiceExternalIPs gate off (KEP-5707), external IPs get no rules.
    let gate_off = ["--feature-gates", "AllowServiceExternalIPs=false"];
    let external_ip = explain("external-ips", "192.0.2.2", "203.0.113.6:80", &gate_off);
    assert_eq!(summary(&external_ip).0, "not-handled");
    // Source ranges: admitted, refused, and NodePorts bypass them.
    let api = ["10.244.1.2:8443 1.0 masq"];
    check(
        "load-balancer",
        "198.51.100.7",
        "203.0.113.4:443",
        "dnat",
        &api,
    );
    check("load-balancer", "192.0.2.2", "203.0.113.4:443", "drop", &[]);
    check(
        "load-balancer",
        "192.0.2.2",
        "198.51.100.1:30443",
        "dnat",
        &api,
    );
    // The LB IP itself is admitted (a range holds a node IP); ipMode Proxy is not ours.
    check(
        "load-balancer",
        "203.0.113.4",
        "203.0.113.4:443",
        "dnat",
        &api,
    );
    check(
        "load-balancer",
        "198.51.100.7",
        "203.0.113.5:443",
        "not-handled",
        &[],
    );
}

/// NodePorts on the local addresses `--nodeport-addresses` covers: `fib daddr type local` is
/// true of the node IPs, loopback and `--local-address`.
#[test]
fn nodeports_on_every_covered_local_address() {
    let web = ["10.244.1.2:8080 0.5 masq", "10.244.2.2:8080 0.5 masq"];
    let second = ["--local-address", "203.0.113.9,2001:db8:9::9"];
    let case = "nodeport-addresses-cidrs";
    check(case, "192.0.2.2", "198.51.100.1:30001", "dnat", &web);
    check_with(
        case,
        "192.0.2.2",
        "203.0.113.9:30001",
        &second,
        "dnat",
        &web,
    );
    // Covered but not local: not this node's; local but not covered: not a NodePort.
    check(case, "192.0.2.2", "203.0.113.9:30001", "not-handled", &[]);
    check_with(
        case,
        "192.0.2.2",
        "192.0.2.1:30001",
        &["--local-address", "192.0.2.1"],
        "not-handled",
        &[],
    );
    // No IPv6 CIDR: every local IPv6 address; never loopback.
    let v6 = ["fd00:244:1::2:8080 1.0 masq"];
    check_with(
        case,
        "2001:db8:2::2",
        "[2001:db8:9::9]:30001",
        &second,
        "dnat",
        &v6,
    );
    check(case, "::1", "[::1]:30001", "not-handled", &[]);
    check(case, "127.0.0.1", "127.0.0.1:30001", "not-handled", &[]);
    // Without endpoints the same addresses refuse; eTP Local keeps the client's address.
    check(case, "192.0.2.2", "198.51.100.1:30080", "reject", &[]);
    check_with(
        case,
        "192.0.2.2",
        "203.0.113.9:30080",
        &second,
        "reject",
        &[],
    );
    let api = explain(case, "192.0.2.2", "198.51.100.1:30443", &["--proto", "udp"]);
    assert_eq!(summary(&api).1, ["10.244.1.3:8443 1.0"]);
    // `all`: both families, any local address.
    let all = "nodeport-addresses-all";
    check_with(all, "192.0.2.2", "203.0.113.9:30001", &second, "dnat", &web);
    check(all, "127.0.0.1", "127.0.0.1:30001", "not-handled", &[]);
}

#[test]
fn traffic_policies() {
    let local = ["10.244.1.2:8080 1.0"];
    check(
        "external-traffic-policy-local",
        "192.0.2.2",
        "203.0.113.2:80",
        "dnat",
        &local,
    );
    check(
        "external-traffic-policy-local",
        "192.0.2.2",
        "198.51.100.1:30002",
        "dnat",
        &local,
    );
    let short = ["10.244.1.2:8080 0.5", "10.244.2.2:8080 0.5"];
    check(
        "external-traffic-policy-local",
        "10.244.9.2",
        "203.0.113.2:80",
        "dnat",
        &short,
    );
    let node = ["10.244.1.2:8080 0.5 masq", "10.244.2.2:8080 0.5 masq"];
    check(
        "external-traffic-policy-local",
        "198.51.100.1",
        "203.0.113.2:80",
        "dnat",
        &node,
    );
    check(
        "external-traffic-policy-local",
        "192.0.2.2",
        "198.51.100.1:30003",
        "drop",
        &[],
    );
    check(
        "external-traffic-policy-local",
        "10.244.9.2",
        "198.51.100.1:30003",
        "dnat",
        &["10.244.2.2:8080 1.0"],
    );
    check(
        "internal-traffic-policy-local",
        "10.244.9.2",
        "10.96.1.7:80",
        "dnat",
        &local,
    );
    check(
        "internal-traffic-policy-local",
        "10.244.9.2",
        "10.96.1.8:80",
        "drop",
        &[],
    );
}

#[test]
fn endpoint_conditions_topology_affinity() {
    check(
        "endpoint-conditions",
        "10.244.9.2",
        "10.96.1.9:80",
        "dnat",
        &["10.244.3.2:8080 1.0"],
    );
    check(
        "endpoint-conditions",
        "10.244.9.2",
        "10.96.1.11:80",
        "dnat",
        &["10.244.1.2:8080 1.0"],
    );
    check(
        "endpoint-conditions",
        "10.244.9.2",
        "10.96.1.10:80",
        "reject",
        &[],
    );
    check(
        "topology",
        "10.244.9.2",
        "10.96.1.12:80",
        "dnat",
        &["10.244.1.2:8080 1.0"],
    );
    let partial = ["10.244.1.2:8080 0.5", "10.244.2.2:8080 0.5"];
    check("topology", "10.244.9.2", "10.96.1.13:80", "dnat", &partial);
    // Node hints before zone hints; zone hints when no ready endpoint is for this node or
    // one has no node hints; none when nothing is ready.
    let pod = "10.244.9.2";
    let same_node = ["10.244.1.2:8080 1.0"];
    check("topology", pod, "10.96.1.14:80", "dnat", &same_node);
    let same_zone = ["10.244.3.2:8080 1.0"];
    check("topology", pod, "10.96.1.15:80", "dnat", &same_zone);
    let same_zone = ["10.244.1.2:8080 0.5", "10.244.3.2:8080 0.5"];
    check("topology", pod, "10.96.1.16:80", "dnat", &same_zone);
    check("topology", pod, "10.96.1.17:80", "dnat", &partial);
    // Hints are for this node's own choice, whoever the client.
    let node = ["10.244.1.2:8080 1.0 masq"];
    check("topology", "198.51.100.2", "10.96.1.14:80", "dnat", &node);
    // A first connection may go anywhere; affinity pins the ones after it.
    check(
        "session-affinity",
        "10.244.9.2",
        "10.96.1.14:80",
        "dnat",
        &partial,
    );
}

#[test]
fn text_output_names_the_service_and_the_path() {
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let out = Command::new(env!("CARGO_BIN_EXE_svc-nft"))
        .args([
            "explain",
            "-f",
            input.to_str().unwrap(),
            "--cluster-cidr",
            "10.244.0.0/16",
        ])
        .args(["--from", "10.244.9.2", "--to", "10.97.97.97:6379"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("tcp 10.244.9.2 -> 10.97.97.97:6379 (origin: pod)\n"),
        "{text}"
    );
    assert!(text.contains("service port: default/redis\n"), "{text}");
    assert!(
        text.contains("DNAT to 10.244.1.5:6379  50.0%  source kept\n"),
        "{text}"
    );
    assert!(
        text.contains("@service-ports-v4[10.97.97.97 . tcp . 6379] -> goto pick-v4-tcp-2"),
        "{text}"
    );
}
