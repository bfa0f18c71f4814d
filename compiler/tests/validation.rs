//! What the API server refuses, svc-nft refuses, naming the field; what it accepts (before
//! its defaulting), svc-nft accepts.

use svc_nft_compiler::{compile, parse, NodeFacts};

/// The errors compiling `yaml` reports, as `field: message`.
fn errors(yaml: &str) -> Vec<String> {
    let (objects, mut diagnostics) = parse("test.yaml", yaml);
    diagnostics.extend(compile(&objects, &NodeFacts::default()).diagnostics);
    diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or("-"), d.message))
        .collect()
}

fn service(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec: {spec}\n"
    )
}

/// The one error of a Service with `spec`, which must name `field`.
fn refused(spec: &str, field: &str) {
    let found = errors(&service("web", spec));
    assert_eq!(found.len(), 1, "{spec}: {found:?}");
    assert!(
        found[0].starts_with(&format!("{field}: ")),
        "{spec}: {found:?}"
    );
}

#[test]
fn services_the_api_server_refuses() {
    let two_ports = "ports: [{port: 80, name: a}, {port: 80, name: b}]";
    refused(
        &format!("{{clusterIP: 10.96.0.1, {two_ports}}}"),
        "spec.ports[1]",
    );
    refused(
        "{type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, name: a, nodePort: 30080}, {port: 81, name: b, nodePort: 30080}]}",
        "spec.ports[1].nodePort",
    );
    refused(
        "{clusterIP: 10.96.0.1, ports: [{port: 80}, {port: 81}]}",
        "spec.ports[0].name",
    );
    refused(
        "{clusterIP: 10.96.0.1, ports: [{port: 80, name: HTTP}]}",
        "spec.ports[0].name",
    );
    refused(
        "{clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: my--port}]}",
        "spec.ports[0].targetPort",
    );
    refused(
        "{clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}",
        "spec.ports[0].nodePort",
    );
    refused(
        "{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2], ports: [{port: 80}]}",
        "spec.clusterIPs",
    );
    refused("{type: ExternalName}", "spec.externalName");
    refused(
        "{type: ExternalName, externalName: Bad_Name}",
        "spec.externalName",
    );
    refused(
        "{type: ExternalName, externalName: db.example.com, clusterIP: 10.96.0.1}",
        "spec.clusterIPs",
    );
    refused(
        "{clusterIP: 10.96.0.1, externalIPs: [127.0.0.1], ports: [{port: 80}]}",
        "spec.externalIPs[0]",
    );
    refused(
        "{clusterIP: 10.96.0.1, healthCheckNodePort: 30000, ports: [{port: 80}]}",
        "spec.healthCheckNodePort",
    );
    refused(
        "{clusterIP: 10.96.0.1, externalTrafficPolicy: Local, ports: [{port: 80}]}",
        "spec.externalTrafficPolicy",
    );
    refused(
        "{clusterIP: 10.96.0.1, loadBalancerSourceRanges: [10.0.0.0/8], ports: [{port: 80}]}",
        "spec.loadBalancerSourceRanges",
    );
    refused("{clusterIP: 10.96.0.1}", "spec.ports");
    refused(
        "{type: NodePort, clusterIP: None, ports: [{port: 80}]}",
        "spec.clusterIPs[0]",
    );
    let names = errors(&service(
        "1web",
        "{clusterIP: 10.96.0.1, ports: [{port: 80}]}",
    ));
    assert!(names[0].starts_with("metadata.name: "), "{names:?}");
}

#[test]
fn what_the_api_server_accepts_before_defaulting() {
    let accepted = [
        // No protocol, type, targetPort or traffic policy: the API server defaults them.
        "{clusterIP: 10.96.0.1, ports: [{port: 80}]}",
        // The same port number over TCP and UDP, as kube-dns has.
        "{clusterIP: 10.96.0.10, ports: [{port: 53, name: dns, protocol: UDP}, {port: 53, name: dns-tcp}]}",
        "{clusterIP: None}",
        "{type: ExternalName, externalName: db.example.com.}",
        "{type: LoadBalancer, clusterIP: 10.96.0.3, externalTrafficPolicy: Local, healthCheckNodePort: 30999, loadBalancerSourceRanges: [10.0.0.0/8], ports: [{port: 80, nodePort: 30080}]}",
        "{clusterIP: 10.96.0.1, externalIPs: [192.0.2.10], externalTrafficPolicy: Cluster, ports: [{port: 80, targetPort: http}]}",
    ];
    for spec in accepted {
        assert_eq!(
            errors(&service("web", spec)),
            Vec::<String>::new(),
            "{spec}"
        );
    }
}

#[test]
fn endpoint_objects_the_api_server_refuses() {
    let svc = service("web", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}");
    let slice = |endpoints: &str, ports: &str| {
        format!(
            "{svc}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-1, namespace: t, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nports: {ports}\nendpoints: {endpoints}\n"
        )
    };
    let one_port = "[{port: 80}]";
    let loopback = errors(&slice("[{addresses: [127.0.0.1]}]", one_port));
    assert!(
        loopback[0].starts_with("endpoints[0].addresses[0]: "),
        "{loopback:?}"
    );
    let unnamed_twice = errors(&slice(
        "[{addresses: [10.244.0.2]}]",
        "[{port: 80}, {port: 81}]",
    ));
    assert!(
        unnamed_twice[0].starts_with("ports[1].name: "),
        "{unnamed_twice:?}"
    );
    let endpoints = format!(
        "{svc}---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: web, namespace: t}}\n\
         subsets: [{{ports: [{{port: 80}}]}}]\n"
    );
    let empty = errors(&endpoints);
    assert!(empty[0].starts_with("subsets[0]: "), "{empty:?}");
}
