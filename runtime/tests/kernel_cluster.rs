//! The agent in cluster mode: a fake API server (list + watch, 410 Gone, dropped connections,
//! an outage) drives the real `svc-nft run`, which programs a real kernel in the node
//! namespace; real packets follow, and health, metrics and health-check NodePorts answer.

mod fakeapi;
mod netns;

use fakeapi::FakeApi;
use netns::agent::{self, Log, PATIENCE};
use netns::cluster::{Cluster, CIDRS};
use netns::{eventually, tcp, Netns, Outcome, ANSWER_WAIT};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The agent, in the node namespace, watching `api`; killed on drop.
struct Agent {
    child: Child,
    log: Log,
    kubeconfig: std::path::PathBuf,
}

impl Agent {
    fn start(node: &Netns, api: &FakeApi) -> Agent {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let name = format!("svc-nft-kube-{}-{n}", std::process::id());
        let kubeconfig = std::env::temp_dir().join(name);
        let config = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n",
            api.url()
        );
        std::fs::write(&kubeconfig, config).unwrap();
        let mut command = node.command(env!("CARGO_BIN_EXE_svc-nft"));
        command
            .arg("run")
            .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
            .args(["--hostname-override", "node-a"])
            .args(["--min-sync-period", "100ms", "--sync-period", "2s"])
            .args(["--healthz-bind-address", "127.0.0.1:10256"])
            .args(["--metrics-bind-address", "127.0.0.1:10249"])
            .args(CIDRS)
            .stdout(Stdio::null());
        let mut child = agent::logging(&mut command)
            .spawn()
            .expect("start the agent");
        let log = Log::capture(&mut child);
        Agent {
            child,
            log,
            kubeconfig,
        }
    }
}

impl Agent {
    /// SIGTERM, and wait for a clean exit.
    fn terminate(&mut self) {
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            match self.child.try_wait().expect("wait") {
                Some(status) => {
                    assert!(status.success(), "exit after SIGTERM: {status}");
                    return;
                }
                None if start.elapsed() > PATIENCE => {
                    panic!("no exit on SIGTERM; the log ends:\n{}", self.log.tail(30))
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// `GET path` on `addr` from inside `ns`: (status, body), or None when nobody answers.
fn get(ns: &Netns, addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, request): (SocketAddr, String) = (
        addr.parse().unwrap(),
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(PATIENCE)).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    })
}

fn service(name: &str, ip: &str, extra: Value) -> Value {
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "t"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    });
    merge(&mut svc, extra);
    svc
}

fn slice(service: &str, backend: &str, node: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-x"), "namespace": "t",
                     "labels": {"kubernetes.io/service-name": service},
                     "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                                     "2026-01-01T00:00:00Z"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [backend], "nodeName": node,
                       "conditions": {"ready": true}}]
    })
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, value) => *slot = value,
    }
}

/// The lab, and a fake API server listening inside its node namespace.
fn cluster_with_api() -> (Cluster, FakeApi) {
    let k = Cluster::new("", CIDRS);
    let listener = k.lab.node.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let api = FakeApi::serve(listener);
    (k, api)
}

#[test]
fn the_agent_follows_the_api_server() {
    if !netns::require() {
        return;
    }
    let (k, api) = cluster_with_api();
    let node = &k.lab.node;
    api.apply(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.1"}]}
    }));
    let mut agent = Agent::start(node, &api);
    let c1 = k.ns(k.c1);
    let vip = "10.96.5.1:80".parse().unwrap();
    let connect = || tcp(c1, vip, ANSWER_WAIT);
    let answered_by = |b: &str| matches!(connect(), Outcome::Answered { backend, .. } if backend.to_string() == b);

    api.apply(service("web", "10.96.5.1", json!({})));
    eventually("a Service without endpoints refuses", || {
        connect() == Outcome::Refused
    });
    api.apply(slice("web", "10.244.1.2", "node-b"));
    eventually("b1 answers", || answered_by("10.244.1.2"));
    api.apply(slice("web", "10.244.2.2", "node-b"));
    eventually("the endpoint moves to b2", || answered_by("10.244.2.2"));

    // An invalid edit (the fake API server does not validate) keeps the last good version.
    let mark = agent.log.mark();
    let bad_port =
        json!({"spec": {"ports": [{"port": 70000, "targetPort": 8080, "protocol": "TCP"}]}});
    api.apply(service("web", "10.96.5.1", bad_port));
    let (seen, _) = agent.log.wait_for("the invalid edit rejected", mark, |l| {
        l.contains("rejected")
    });
    agent.log.wait_for_pass("a pass after the rejection", seen);
    assert!(
        answered_by("10.244.2.2"),
        "the invalid edit cost the Service its rules"
    );

    // Health and metrics, as kube-proxy serves them.
    let (status, body) = get(node, "127.0.0.1:10256", "/healthz").expect("healthz answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("lastUpdated"), "{body}");
    let (_, metrics) = get(node, "127.0.0.1:10249", "/metrics").expect("metrics answer");
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
        "kubeproxy_network_programming_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    // A Service another proxy owns is not ours.
    let other = json!({"metadata": {"labels": {"service.kubernetes.io/service-proxy-name": "x"}}});
    api.apply(service("web", "10.96.5.1", other));
    eventually("the Service owned elsewhere is dropped", || {
        connect() == Outcome::Timeout
    });
    api.apply(service(
        "web",
        "10.96.5.1",
        json!({"metadata": {"labels": {}}}),
    ));
    eventually("and comes back", || answered_by("10.244.2.2"));

    // The API server goes away: the rules stay. It comes back having forgotten history
    // (410 Gone on the re-watch): the agent relists and follows again.
    let turned_away = api.turned_away();
    api.set_down(true);
    eventually(
        "the agent tries the API server again and is turned away",
        || api.turned_away() > turned_away,
    );
    assert!(
        answered_by("10.244.2.2"),
        "traffic flows while the API is down"
    );
    api.delete("EndpointSlice", Some("t"), "web-x");
    api.compact();
    api.set_down(false);
    eventually("the slice deleted during the outage is noticed", || {
        connect() == Outcome::Refused
    });
    api.apply(slice("web", "10.244.3.2", "node-b"));
    eventually("b3 answers", || answered_by("10.244.3.2"));
    api.drop_watches();
    api.apply(slice("web", "10.244.1.2", "node-b"));
    eventually("after a dropped watch, b1 again", || {
        answered_by("10.244.1.2")
    });

    // SIGTERM: the agent stops and leaves the rules for the next one.
    agent.terminate();
    assert!(answered_by("10.244.1.2"), "the rules outlive the agent");

    // The next agent takes over, and follows changes again.
    let _next = Agent::start(node, &api);
    api.delete("Service", Some("t"), "web");
    eventually("a deleted Service is gone", || {
        connect() == Outcome::Timeout
    });
    every_request_is_granted(&api);
}

/// Each request the agent made is one `deploy/` grants (`API_CALLS`).
fn every_request_is_granted(api: &FakeApi) {
    for (method, path) in api.requests() {
        let (path, query) = path.split_once('?').unwrap_or((&path, ""));
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, resource) = match parts.as_slice() {
            ["api", "v1", resource, ..] => ("", *resource),
            ["apis", group, _, resource, ..] => (*group, *resource),
            _ => panic!("unexpected request {method} {path}"),
        };
        let verb = match (method.as_str(), query.contains("watch=true")) {
            ("GET", true) => "watch",
            ("GET", false) if parts.len() > 3 + usize::from(!group.is_empty()) => "get",
            ("GET", false) => "list",
            (other, _) => panic!("unexpected {other} {path}"),
        };
        let granted = svc_nft::cluster::API_CALLS
            .iter()
            .any(|c| c.group == group && c.resource == resource && c.verbs.contains(&verb));
        assert!(
            granted,
            "{verb} {group}/{resource} ({method} {path}) is not granted"
        );
    }
}

#[test]
fn health_check_node_ports_follow_local_endpoints() {
    if !netns::require() {
        return;
    }
    let (k, api) = cluster_with_api();
    let node = &k.lab.node;
    let _agent = Agent::start(node, &api);
    let lb = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                             "healthCheckNodePort": 30100,
                             "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080,
                                        "protocol": "TCP"}]}});
    api.apply(service("lb", "10.96.5.9", lb));
    api.apply(slice("lb", "10.244.1.2", "node-a"));
    let check = || get(node, "127.0.0.1:30100", "/");
    eventually("200 with a local endpoint", || {
        check().is_some_and(|(s, b)| s == 200 && b.contains("\"localEndpoints\":1"))
    });
    // Its only local endpoint terminating, still serving: kube-proxy drains the node.
    let mut draining = slice("lb", "10.244.1.2", "node-a");
    let conditions = json!({"ready": false, "serving": true, "terminating": true});
    merge(
        &mut draining["endpoints"][0],
        json!({"conditions": conditions}),
    );
    api.apply(draining);
    eventually("503 with only a terminating endpoint", || {
        check().is_some_and(|(s, b)| s == 503 && b.contains("\"localEndpoints\":0"))
    });
    api.apply(slice("lb", "10.244.1.2", "node-a"));
    eventually("200 again once it is ready", || {
        check().is_some_and(|(s, b)| s == 200 && b.contains("\"localEndpoints\":1"))
    });
    api.apply(slice("lb", "10.244.1.2", "node-b"));
    eventually("503 without one", || {
        check().is_some_and(|(s, b)| s == 503 && b.contains("\"localEndpoints\":0"))
    });
    api.delete("Service", Some("t"), "lb");
    eventually("the port closes with the Service", || check().is_none());
}

/// `/healthz` and `/livez` from inside the node namespace: status and JSON body.
fn probe(ns: &Netns, path: &str) -> Option<(u16, Value)> {
    let (status, body) = get(ns, "127.0.0.1:10256", path)?;
    let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    Some((status, body))
}

#[test]
fn healthz_fails_while_the_node_is_on_its_way_out() {
    if !netns::require() {
        return;
    }
    let (k, api) = cluster_with_api();
    let node = &k.lab.node;
    let node_object = |extra: Value| {
        let mut object = json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.1"}]}
        });
        merge(&mut object, extra);
        object
    };
    api.apply(node_object(json!({})));
    let _agent = Agent::start(node, &api);
    let eligible = |want: bool| {
        let (healthz, livez) = (probe(node, "/healthz"), probe(node, "/livez"));
        let (Some((healthz, h)), Some((livez, l))) = (healthz, livez) else {
            return false;
        };
        // The proxy itself stays healthy and alive (KEP-3836): only /healthz tells load
        // balancers to go, and only /healthz carries nodeEligible.
        let healthy = h["healthy"] == true && l["healthy"] == true && livez == 200;
        let families = ["IPv4", "IPv6"]
            .iter()
            .all(|f| h["status"][f]["healthy"] == true);
        let expected = if want { 200 } else { 503 };
        healthy
            && families
            && healthz == expected
            && h["nodeEligible"] == want
            && l.get("nodeEligible").is_none()
    };
    eventually("/healthz 200 for an eligible node", || eligible(true));

    let taint = json!({"key": "ToBeDeletedByClusterAutoscaler", "value": "1767225600",
                       "effect": "NoSchedule"});
    api.apply(node_object(json!({"spec": {"taints": [taint]}})));
    eventually("/healthz 503 once the autoscaler marks the node", || {
        eligible(false)
    });
    api.apply(node_object(json!({})));
    eventually("/healthz 200 again without the taint", || eligible(true));

    let deleted = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z",
                                      "finalizers": ["example.com/hold"]}});
    api.apply(node_object(deleted));
    eventually("/healthz 503 while the node is being deleted", || {
        eligible(false)
    });
}

/// `/metrics`, read by a Prometheus text-format parser, which must have understood every
/// line: each family documented and typed, each sample line a sample (a histogram's
/// buckets are one).
fn scrape(ns: &Netns) -> Option<prometheus_parse::Scrape> {
    let (status, text) = get(ns, "127.0.0.1:10249", "/metrics")?;
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
    let typed: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let histograms: Vec<&str> = typed
        .iter()
        .filter(|(_, kind)| *kind == "histogram")
        .map(|(name, _)| *name)
        .collect();
    let samples = text.lines().filter(|l| !l.starts_with('#')).count();
    let buckets = text.lines().filter(|l| l.contains("_bucket{")).count();
    // One histogram sample per label set: per `_count` line.
    let series = text.lines().filter(|l| {
        histograms
            .iter()
            .any(|h| l.strip_prefix(*h).is_some_and(|r| r.starts_with("_count")))
    });
    assert_eq!(
        scrape.samples.len(),
        samples - buckets + series.count(),
        "a sample line was not understood:\n{text}"
    );
    for (name, kind) in &typed {
        assert!(scrape.docs.contains_key(*name), "{name}: no HELP");
        let of_kind = |s: &&prometheus_parse::Sample| {
            use prometheus_parse::Value::{Counter, Gauge, Histogram};
            match (&s.value, *kind) {
                (Counter(_), "counter") | (Gauge(_), "gauge") => true,
                (Histogram(h), "histogram") => !h.is_empty(),
                _ => false,
            }
        };
        let found = scrape.samples.iter().filter(|s| s.metric == *name);
        assert!(found.clone().count() > 0, "{name}: no sample");
        assert!(
            found.into_iter().all(|s| of_kind(&s)),
            "{name}: not a {kind}"
        );
    }
    Some(scrape)
}

/// The value of `name`'s sample with `label` (`("", "")` for none).
fn value(scrape: &prometheus_parse::Scrape, name: &str, label: (&str, &str)) -> f64 {
    use prometheus_parse::Value::{Counter, Gauge, Untyped};
    let sample = scrape.samples.iter().find(|s| {
        s.metric == name && (label.0.is_empty() || s.labels.get(label.0) == Some(label.1))
    });
    match sample.map(|s| &s.value) {
        Some(Counter(v) | Gauge(v) | Untyped(v)) => *v,
        other => panic!("{name}{label:?}: {other:?}"),
    }
}

/// Set and map elements in the node's table, as the kernel lists them.
fn kernel_elements(ns: &Netns) -> usize {
    let listing: Value = serde_json::from_str(&ns.nft_list("-j list table inet svc-nft")).unwrap();
    let items = listing["nftables"].as_array().unwrap();
    let elems = items.iter().filter_map(|i| i.get("set").or(i.get("map")));
    elems
        .map(|s| s["elem"].as_array().map_or(0, Vec::len))
        .sum()
}

#[test]
fn metrics_parse_and_count_what_the_kernel_holds() {
    if !netns::require() {
        return;
    }
    let (k, api) = cluster_with_api();
    let node = &k.lab.node;
    api.apply(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.1"}]}
    }));
    let _agent = Agent::start(node, &api);
    // Two Local policies whose only endpoints are elsewhere, and a Service with none at
    // all (REJECTed, so not counted).
    let internal = json!({"spec": {"internalTrafficPolicy": "Local"}});
    api.apply(service("in", "10.96.5.3", internal));
    api.apply(slice("in", "10.244.1.2", "node-b"));
    let external = json!({"spec": {"type": "NodePort", "externalTrafficPolicy": "Local",
                                   "ports": [{"port": 80, "targetPort": 8080,
                                              "nodePort": 30081, "protocol": "TCP"}]}});
    api.apply(service("out", "10.96.5.4", external));
    api.apply(slice("out", "10.244.2.2", "node-b"));
    api.apply(service("none", "10.96.5.5", json!({})));

    let no_local = |s: &prometheus_parse::Scrape, policy| {
        value(
            s,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            ("traffic_policy", policy),
        )
    };
    eventually("one port each without local endpoints", || {
        scrape(node)
            .is_some_and(|s| no_local(&s, "internal") == 1.0 && no_local(&s, "external") == 1.0)
    });
    // The table's size counts what the kernel holds, the cluster and service CIDRs too.
    eventually("svcnft_table_elements as the kernel lists", || {
        let s = scrape(node).expect("metrics answer");
        value(&s, "svcnft_table_elements", ("", "")) == kernel_elements(node) as f64
    });

    let s = scrape(node).expect("metrics answer");
    for pending in ["service", "endpoint"] {
        let name = format!("kubeproxy_sync_proxy_rules_{pending}_changes_pending");
        assert_eq!(value(&s, &name, ("", "")), 0.0, "{name} after the sync");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value(&s, "process_start_time_seconds", ("", ""));
    assert!(
        start <= now && now - start < 3600.0,
        "started at {start}, now {now}"
    );
    assert!(value(&s, "process_resident_memory_bytes", ("", "")) > 1e6);
    assert!(value(&s, "process_cpu_seconds_total", ("", "")) > 0.0);
    // The agent's requests to the API server (lists and watches), as client-go counts them.
    assert!(value(&s, "rest_client_requests_total", ("code", "200")) >= 1.0);
    let get = s
        .samples
        .iter()
        .find(|x| x.metric == "rest_client_requests_total");
    let get = get.expect("rest_client_requests_total");
    assert_eq!(get.labels.get("method"), Some("GET"), "{:?}", get.labels);
    assert!(s
        .samples
        .iter()
        .any(|x| x.metric == "rest_client_request_duration_seconds"));
    let fds = value(&s, "process_open_fds", ("", ""));
    assert!(fds >= 3.0 && fds <= value(&s, "process_max_fds", ("", "")));
}

#[test]
fn service_cidr_objects_extend_the_dropped_range() {
    if !netns::require() {
        return;
    }
    let (k, api) = cluster_with_api();
    let agent = Agent::start(&k.lab.node, &api);
    agent
        .log
        .wait_for("the first sync", 0, |l| l.contains("first sync done"));
    let c1 = k.ns(k.c1);
    // x2's address stands for one of a new range: outside every service CIDR it is routed
    // on (x2 refuses port 80), inside one that no Service owns it is dropped.
    let unowned = "192.0.2.2:80".parse().unwrap();
    let dropped = || tcp(c1, unowned, Duration::from_millis(700)) == Outcome::Timeout;
    assert!(!dropped(), "192.0.2.2 is in no service CIDR yet");
    let cidr = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "extra"},
        "spec": {"cidrs": ["192.0.2.0/24", "fd00:97::/112"]}
    });
    api.apply(cidr);
    eventually("an unowned address of the ServiceCIDR is dropped", dropped);
    api.delete("ServiceCIDR", None, "extra");
    eventually("and routed again once it is deleted", || !dropped());
}
