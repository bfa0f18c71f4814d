//! Reading manifests: what `kubectl apply` accepts is accepted, what it would warn about is
//! warned about, and a broken document loses only itself.

use svc_nft_compiler::manifest::{parse, Object, Resource};
use svc_nft_compiler::Severity;

/// `namespace/name` of each object and `severity: diagnostic` of each diagnostic.
fn read(text: &str) -> (Vec<String>, Vec<String>) {
    let (objects, diagnostics) = parse("f.yaml", text);
    let names = objects.iter().map(name).collect();
    let messages = diagnostics
        .iter()
        .map(|d| format!("{}: {d}", d.severity))
        .collect();
    (names, messages)
}

fn name(obj: &Object) -> String {
    let meta = match &obj.resource {
        Resource::Service(s) => &s.metadata,
        Resource::EndpointSlice(s) => &s.metadata,
        Resource::Endpoints(e) => &e.metadata,
        Resource::ServiceCidr(c) => &c.metadata,
    };
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    format!("{namespace}/{}", meta.name.as_deref().unwrap_or_default())
}

fn service(name: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}]}}\n")
}

#[test]
fn misspelt_fields_are_warned_about_and_the_object_is_kept() {
    let text = "apiVersion: v1
kind: Service
metadta: {labels: {a: b}}
metadata: {name: typo}
spec:
  clusterIp: 10.96.0.1
  ports:
  - port: 80
  - port: 81
    protocl: UDP
";
    let (names, messages) = read(text);
    assert_eq!(names, ["default/typo"]);
    let prefix = "warning: f.yaml: document 1: Service default/typo";
    assert_eq!(
        messages,
        [
            format!("{prefix}: metadta: unknown field: ignored"),
            format!("{prefix}: spec.clusterIp: unknown field: ignored"),
            format!("{prefix}: spec.ports[1].protocl: unknown field: ignored"),
        ]
    );
    let (objects, diagnostics) = parse("f.yaml", text);
    assert!(diagnostics.iter().all(|d| d.severity == Severity::Warning));
    let Resource::Service(svc) = &objects[0].resource else {
        panic!("a Service")
    };
    // The misspelt protocol is not read: the port is TCP, as the API server would keep it.
    assert_eq!(
        svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[1].protocol,
        None
    );
}

#[test]
fn an_unknown_field_of_a_rejected_object_is_named_too() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {tpye: NodePort, ports: [{port: eighty}]}\n";
    let (names, messages) = read(text);
    assert!(names.is_empty());
    assert_eq!(
        messages,
        [
            "warning: f.yaml: document 1: Service default/x: spec.tpye: unknown field: ignored",
            "error: f.yaml: document 1: Service default/x: spec.ports[0].port: invalid type: \
             string \"eighty\", expected i32",
        ]
    );
}

/// What `kubectl get svc,endpointslices,endpoints -o yaml` prints: every field the API server
/// adds (status, managedFields, uid, ...) is known, so nothing is warned about.
const KUBECTL_GET: &str = include_str!("data/kubectl-get.yaml");

#[test]
fn a_kubectl_get_dump_reads_without_a_warning() {
    let (names, messages) = read(KUBECTL_GET);
    assert_eq!(messages, Vec::<String>::new());
    assert_eq!(
        names,
        [
            "default/redis",
            "default/lb",
            "default/redis-7x2kq",
            "default/redis"
        ]
    );
}

#[test]
fn a_kubectl_get_dump_as_json_reads_without_a_warning() {
    let value: serde_yaml::Value = serde_yaml::from_str(KUBECTL_GET).unwrap();
    let json = serde_json::to_string_pretty(&value).unwrap();
    let (names, messages) = read(&json);
    assert_eq!(messages, Vec::<String>::new());
    assert_eq!(names.len(), 4);
}

#[test]
fn a_syntax_error_loses_only_its_document_and_is_located_in_the_file() {
    let text = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: x\n  spec: [\n---\n{}",
        service("before"),
        service("after")
    );
    let (names, messages) = read(&text);
    assert_eq!(names, ["default/before", "default/after"]);
    assert_eq!(
        messages,
        [
            "error: f.yaml: document 2: not YAML/JSON: did not find expected ',' or '}' at line 9 \
          column 7, while parsing a flow mapping at line 8 column 11"
        ]
    );
}

#[test]
fn errors_at_a_document_start_and_reader_errors_are_located_in_the_file() {
    let text = format!(
        "{}---\n@x: 1\n---\nx: \u{1}\n---\n{}",
        service("a"),
        service("b")
    );
    let (names, messages) = read(&text);
    assert_eq!(names, ["default/a", "default/b"]);
    assert_eq!(
        messages,
        [
            "error: f.yaml: document 2: not YAML/JSON: found character that cannot start any \
             token at line 6 column 1, while scanning for the next token",
            "error: f.yaml: document 3: not YAML/JSON: control characters are not allowed at \
             line 8 column 4",
        ]
    );
}

#[test]
fn document_markers_are_found_as_yaml_defines_them() {
    let text = format!(
        "# a comment before the first marker\n%YAML 1.1\n---\n{}...\n# between\n---\n\
         --- |\n  a block scalar at the root\n  --- indented: no marker\n\
         ---  {{apiVersion: v1, kind: Service, metadata: {{name: flow}}}}\n---\n{}...\n",
        service("one"),
        service("three"),
    );
    let (names, messages) = read(&text);
    assert_eq!(names, ["default/one", "default/flow", "default/three"]);
    // The empty document is document 2, the scalar (no object) 3.
    assert_eq!(
        messages,
        ["warning: f.yaml: document 3: not a Kubernetes object: skipped"]
    );
    let (objects, _) = parse("f.yaml", &text);
    let documents: Vec<usize> = objects.iter().map(|o| o.origin.document).collect();
    assert_eq!(documents, [1, 4, 5]);
}

#[test]
fn document_numbers_match_serde_yaml_on_valid_streams() {
    let streams = [
        format!("{}---\n{}", service("a"), service("b")),
        format!("---\n{}---\n---\n{}---\n", service("a"), service("b")),
        format!(
            "# c\n\n---\n# c\n{}...\n---\n{}...\n",
            service("a"),
            service("b")
        ),
    ];
    for text in streams {
        let expected: Vec<usize> = serde_yaml::Deserializer::from_str(&text)
            .enumerate()
            .filter_map(|(i, d)| {
                let v = serde::Deserialize::deserialize(d).unwrap();
                matches!(v, serde_yaml::Value::Mapping(_)).then_some(i + 1)
            })
            .collect();
        let (objects, diagnostics) = parse("f.yaml", &text);
        assert!(diagnostics.is_empty(), "{text}: {diagnostics:?}");
        let documents: Vec<usize> = objects.iter().map(|o| o.origin.document).collect();
        assert_eq!(documents, expected, "{text}");
    }
    // libyaml wants a `---` after a `...`; YAML 1.2 does not.
    let bare = format!("{}...\n{}", service("a"), service("b"));
    assert_eq!(read(&bare).0, ["default/a", "default/b"]);
}

#[test]
fn a_bom_and_crlf_line_ends_are_accepted() {
    let text = format!(
        "\u{feff}{}---\nkind: Service\nmetadata: {{name: x\n---\n{}",
        service("first"),
        service("second")
    )
    .replace('\n', "\r\n");
    let (objects, diagnostics) = parse("f.yaml", &text);
    let names: Vec<String> = objects.iter().map(name).collect();
    assert_eq!(names, ["default/first", "default/second"]);
    assert_eq!(diagnostics.len(), 1);
    assert!(
        diagnostics[0].message.contains("at line 8 column 1"),
        "{}",
        diagnostics[0]
    );
}

#[test]
fn json_streams_and_arrays_are_read_and_resume_after_an_error() {
    let object = |name: &str| {
        format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}}}}"#)
    };
    // `jq -c '.items[]'`, its second line cut short.
    let stream = format!(
        "{}\n{{\"apiVersion\":\"v1\",\"ki\n{}\n",
        object("a"),
        object("c")
    );
    let (names, messages) = read(&stream);
    assert_eq!(names, ["default/a", "default/c"]);
    assert_eq!(
        messages,
        [
            "error: f.yaml: document 2: not YAML/JSON: control character (\\u0000-\\u001F) found \
          while parsing a string at line 2 column 23"
        ]
    );
    // `jq '.items[]'`: pretty-printed, one object after another; the error after the first
    // one is located in the file too.
    let pretty = format!(
        "{}\n{{\n  \"oops\"\n}}\n{}\n{{\n  \"kind\": \"Service\",\n  \"metadata\": {{\n",
        object("a"),
        object("c")
    );
    let (names, messages) = read(&pretty);
    assert_eq!(names, ["default/a", "default/c"]);
    assert_eq!(
        messages,
        [
            "error: f.yaml: document 2: not YAML/JSON: expected `:` at line 4 column 1",
            "error: f.yaml: document 4: not YAML/JSON: EOF while parsing an object at line 8 \
             column 16",
        ]
    );
    // An array of objects, as `jq '.items'` prints.
    let array = format!("\u{feff}[{}, {}]", object("a"), object("b")).replace('\n', "\r\n");
    assert_eq!(
        read(&array),
        (vec!["default/a".into(), "default/b".into()], vec![])
    );
}

#[test]
fn documents_that_are_not_kubernetes_objects_are_skipped_with_one_warning() {
    let chart = "apiVersion: v2\nname: shop\nversion: 1.0.0\n";
    let values = "replicaCount: 2\nimage: {repository: nginx}\n";
    let kustomization = "resources: [service.yaml]\n";
    let scalars = "- a\n- b\n";
    for text in [chart, values, kustomization, scalars, "just text\n"] {
        assert_eq!(
            read(text),
            (
                vec![],
                vec!["warning: f.yaml: document 1: not a Kubernetes object: skipped".into()]
            ),
            "{text}"
        );
    }
    // A kind svc-nft does not use is skipped without a word; empty lists too.
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
    assert_eq!(read(deployment), (vec![], vec![]));
    assert_eq!(read("[]"), (vec![], vec![]));
    assert_eq!(
        read("apiVersion: v1\nkind: List\nitems: []\n"),
        (vec![], vec![])
    );
}

#[test]
fn one_of_our_kinds_without_an_api_version_is_an_error() {
    let text = "kind: EndpointSlice\nmetadata: {name: s, namespace: n}\n";
    assert_eq!(
        read(text).1,
        [
            "error: f.yaml: document 1: EndpointSlice n/s: apiVersion: is required \
          (discovery.k8s.io/v1)"
        ]
    );
}

#[test]
fn v1beta1_endpoint_slices_are_not_used_and_say_so() {
    let text = "apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: old-abc, labels: {kubernetes.io/service-name: old}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.9], topology: {kubernetes.io/hostname: n}}]
";
    assert_eq!(
        read(text),
        (
            vec![],
            vec![
                "warning: f.yaml: document 1: EndpointSlice default/old-abc: apiVersion: \
                 discovery.k8s.io/v1beta1 is not served since Kubernetes 1.25: not used (write \
                 discovery.k8s.io/v1)"
                    .into()
            ]
        )
    );
}

#[test]
fn helm_templates_are_recognised() {
    const HINT: &str = "looks like a Helm template: render it first (helm template RELEASE CHART)";
    let syntax =
        "apiVersion: v1\nkind: Service\nmetadata:\n  labels:\n    {{- include \"x\" . }}\n";
    let typed = "apiVersion: v1\nkind: Service\nmetadata: {name: t}\nspec: {ports: [{port: {{ .Values.port }}}]}\n";
    for text in [syntax, typed] {
        let (names, messages) = read(&format!("{text}---\n{}", service("plain")));
        assert_eq!(names, ["default/plain"]);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].starts_with("error: f.yaml: document 1: "));
        assert!(messages[0].ends_with(HINT), "{}", messages[0]);
    }
    // The hint is for documents with `{{` only.
    let (_, messages) = read("apiVersion: v1\nkind: Service\nmetadata: {name: x\n");
    assert!(!messages[0].contains("Helm"));
}
