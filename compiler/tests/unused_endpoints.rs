//! Endpoint objects `compile` does not use: those whose Service is not in the input (one note
//! counts them), slices without the `kubernetes.io/service-name` label (ignored, as kube-proxy
//! does), and those of a rejected Service (said once per object).

use svc_nft_compiler::{compile, parse, Incremental, NodeFacts, Object};

fn objects(text: &str) -> Vec<Object> {
    let (objects, errors) = parse("endpoints.yaml", text);
    assert!(errors.is_empty(), "{errors:?}");
    objects
}

/// A Service with one port 80 and its EndpointSlice.
fn service(ns: &str, name: &str, port: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{clusterIP: 10.96.0.1, selector: {{app: {name}}}, ports: [{{port: {port}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [10.244.0.1]}}]\n---\n"
    )
}

#[test]
fn endpoints_without_their_service_are_ignored_and_counted_once() {
    let text = service("shop", "web", 80)
        + "apiVersion: v1\nkind: Endpoints\nmetadata: {name: kube-scheduler, namespace: kube-system}\n---\n\
           apiVersion: v1\nkind: Endpoints\nmetadata: {name: glusterfs, namespace: shop}\n\
           subsets: [{addresses: [{ip: 192.168.1.1}], ports: [{port: 1}]}]\n---\n\
           apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
           metadata: {name: other-1, namespace: shop, labels: {kubernetes.io/service-name: other}}\n\
           addressType: IPv4\nendpoints: [{addresses: [10.244.0.7]}]\n---\n\
           apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: no-label, namespace: shop}\n\
           addressType: IPv4\nendpoints: [{addresses: [10.244.0.8]}]\n";
    let compiled = compile(&objects(&text), &NodeFacts::default());
    let shown: Vec<String> = compiled.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        shown,
        ["note: 3 endpoint objects name no Service in the input; ignored"]
    );
    assert!(compiled.diagnostics.iter().all(|d| !d.is_error()));
    let ports = &compiled.table.sets["service-ports-v4"].elements;
    assert_eq!(ports.len(), 1, "shop/web compiles");
}

#[test]
fn the_agent_ignores_a_slice_without_the_service_name_label() {
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                metadata: {name: no-label, namespace: shop}\naddressType: IPv4\n\
                endpoints: [{addresses: [10.244.0.8]}]\n";
    let mut state = Incremental::new(&NodeFacts::default());
    for obj in objects(text) {
        assert_eq!(state.upsert(&obj).ok(), Some(false));
    }
}

#[test]
fn each_endpoint_object_of_a_rejected_service_says_so_once() {
    let bad = service("default", "api", 70000);
    let second = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                  metadata: {name: api-2, namespace: default, labels: {kubernetes.io/service-name: api}}\n\
                  addressType: IPv4\nendpoints: [{addresses: [10.244.0.2]}]\n";
    let compiled = compile(&objects(&(bad + second)), &NodeFacts::default());
    let messages: Vec<&str> = compiled
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(
        messages,
        [
            "70000 is not a valid port number (1-65535)",
            "its Service default/api was rejected (see above)",
            "its Service default/api was rejected (see above)",
        ]
    );
}
