//! The manifests in `deploy/`: every one parses into its Kubernetes type with no field left
//! over, the ClusterRole grants exactly `svc_nft::cluster::API_CALLS`, and the DaemonSet has
//! what a kube-proxy replacement needs. No cluster, no kernel.

use clap::Parser;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Probe, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::serde::{Deserialize, Serialize};
use k8s_openapi::Resource;
use serde_json::Value;
use svc_nft::cluster::API_CALLS;

const KUSTOMIZATION: &str = "kustomization.yaml";
const HEALTHZ_PORT: i32 = 10256;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// File names of the YAML files in `deploy/`, sorted.
fn yaml_files() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(deploy_dir())
        .expect("read deploy/")
        .map(|entry| entry.expect("deploy/ entry").file_name())
        .map(|name| name.into_string().expect("UTF-8 file name"))
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

/// The non-empty documents of one YAML file, as JSON values.
fn documents(file: &str) -> Vec<Value> {
    let text = fs::read_to_string(deploy_dir().join(file)).expect("read manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: not YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Where two JSON values first differ, as a path (`None`: they are equal).
fn first_difference(parsed: &Value, written: &Value, path: &str) -> Option<String> {
    match (parsed, written) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .find_map(|key| match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, &format!("{path}.{key}")),
                    _ => Some(format!("{path}.{key}")),
                })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        _ => (parsed != written).then(|| path.to_string()),
    }
}

/// Parses `doc` as a `T` and requires that nothing was lost: k8s-openapi ignores unknown
/// fields, so a misspelled one shows up as a difference after serializing back.
fn parse_exactly<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse: {e}"));
    let back = serde_json::to_value(&object).expect("serialize");
    if let Some(path) = first_difference(&back, doc, "") {
        panic!("{what}: field {path} is unknown or does not parse as written");
    }
    object
}

fn check<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) {
    parse_exactly::<T>(doc, what);
}

/// Every Kubernetes object in `deploy/` (all YAML files but the kustomization), checked
/// to parse exactly into the type its `kind` names.
fn objects() -> Vec<Value> {
    let mut objects = Vec::new();
    for file in yaml_files().into_iter().filter(|f| f != KUSTOMIZATION) {
        for doc in documents(&file) {
            let kind = doc["kind"].as_str().unwrap_or("(none)").to_string();
            let what = format!("{file}: {kind}");
            match kind.as_str() {
                "ServiceAccount" => check::<ServiceAccount>(&doc, &what),
                "ClusterRole" => check::<ClusterRole>(&doc, &what),
                "ClusterRoleBinding" => check::<ClusterRoleBinding>(&doc, &what),
                "ConfigMap" => check::<ConfigMap>(&doc, &what),
                "DaemonSet" => check::<DaemonSet>(&doc, &what),
                _ => panic!("{what}: unexpected kind"),
            }
            objects.push(doc);
        }
    }
    objects
}

/// The one object of type `T` in `deploy/`.
fn the<T: Resource + DeserializeOwned + Serialize>() -> T {
    let mut found = objects().into_iter().filter(|doc| doc["kind"] == T::KIND);
    let doc = found
        .next()
        .unwrap_or_else(|| panic!("no {} in deploy/", T::KIND));
    assert!(
        found.next().is_none(),
        "more than one {} in deploy/",
        T::KIND
    );
    parse_exactly(&doc, T::KIND)
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().expect("metadata.name")
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().expect("metadata.namespace")
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    let template = &ds.spec.template;
    template.spec.as_ref().expect("pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    match pod_spec(ds).containers.as_slice() {
        [container] => container,
        other => panic!("expected one container, found {}", other.len()),
    }
}

/// A (group, resource, verb) triple: one permission.
type Grant = (String, String, String);

fn expected_grants() -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for call in API_CALLS {
        for verb in call.verbs {
            grants.insert((call.group.into(), call.resource.into(), verb.to_string()));
        }
    }
    grants
}

/// The permissions a ClusterRole grants; panics on anything that is not a plain
/// group/resource/verb grant (wildcards, resourceNames, nonResourceURLs, aggregation).
fn granted(role: &ClusterRole) -> BTreeSet<Grant> {
    assert!(role.aggregation_rule.is_none(), "aggregationRule");
    let mut grants = BTreeSet::new();
    for (i, rule) in role.rules.iter().flatten().enumerate() {
        assert!(rule.resource_names.is_none(), "rule {i}: resourceNames");
        assert!(
            rule.non_resource_urls.is_none(),
            "rule {i}: nonResourceURLs"
        );
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        let lists = [groups, resources, rule.verbs.as_slice()];
        assert!(
            lists.iter().all(|l| !l.is_empty()),
            "rule {i}: an empty list grants nothing"
        );
        assert!(
            lists
                .iter()
                .flat_map(|l| l.iter())
                .all(|s| !s.contains('*')),
            "rule {i}: wildcard"
        );
        for group in groups {
            for resource in resources {
                for verb in &rule.verbs {
                    grants.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    grants
}

#[test]
fn every_manifest_parses_as_its_kind() {
    assert!(!objects().is_empty(), "no manifests in deploy/");
}

#[test]
fn kustomization_lists_every_manifest() {
    let docs = documents(KUSTOMIZATION);
    let [kustomization] = docs.as_slice() else {
        panic!("{KUSTOMIZATION}: expected one document");
    };
    assert_eq!(kustomization["kind"], "Kustomization");
    assert_eq!(kustomization["namespace"], "kube-system");
    assert!(kustomization.get("configMapGenerator").is_none());
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource is a file name"))
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), listed.len(), "a resource listed twice");
    let others: Vec<String> = yaml_files()
        .into_iter()
        .filter(|f| f != KUSTOMIZATION)
        .collect();
    assert_eq!(sorted, others);
}

#[test]
fn cluster_role_grants_exactly_the_api_calls() {
    let granted = granted(&the::<ClusterRole>());
    let expected = expected_grants();
    let missing: Vec<_> = expected.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&expected).collect();
    assert!(missing.is_empty(), "ClusterRole lacks {missing:?}");
    assert!(extra.is_empty(), "ClusterRole grants more: {extra:?}");
}

#[test]
fn binding_gives_the_role_to_the_daemon_sets_service_account() {
    let (role, binding) = (the::<ClusterRole>(), the::<ClusterRoleBinding>());
    let (account, ds) = (the::<ServiceAccount>(), the::<DaemonSet>());
    let namespace = namespace_of(&ds.metadata);

    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some(ClusterRole::GROUP)
    );
    assert_eq!(binding.role_ref.kind, ClusterRole::KIND);
    assert_eq!(binding.role_ref.name, name_of(&role.metadata));

    let subjects = binding.subjects.as_deref().unwrap_or_default();
    let [subject] = subjects else {
        panic!("expected one subject, found {}", subjects.len());
    };
    assert_eq!(subject.kind, ServiceAccount::KIND);
    assert_eq!(subject.name, name_of(&account.metadata));
    assert_eq!(subject.namespace.as_deref(), Some(namespace));
    assert_eq!(namespace_of(&account.metadata), namespace);

    let used = pod_spec(&ds).service_account_name.as_deref();
    assert_eq!(used, Some(name_of(&account.metadata)));
}

#[test]
fn daemon_set_runs_on_every_node_in_the_host_network() {
    let ds = the::<DaemonSet>();
    let pod = pod_spec(&ds);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerates_all =
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        });
    assert!(
        tolerates_all,
        "no toleration `operator: Exists` for every taint"
    );

    let strategy = ds.spec.update_strategy.as_ref();
    let strategy = strategy.expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn agent_container_has_node_name_capabilities_and_health_checks() {
    let ds = the::<DaemonSet>();
    let container = agent_container(&ds);

    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME");
    let field = node_name
        .and_then(|e| e.value_from.as_ref())
        .and_then(|from| from.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(
        field,
        Some("spec.nodeName"),
        "NODE_NAME from the downward API"
    );

    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_ne!(security.privileged, Some(true), "privileged");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let added = security
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_deref());
    assert!(
        added.unwrap_or_default().iter().any(|c| c == "NET_ADMIN"),
        "no NET_ADMIN capability"
    );

    assert_healthz("livenessProbe", container.liveness_probe.as_ref());
    assert_healthz("readinessProbe", container.readiness_probe.as_ref());
}

fn assert_healthz(which: &str, probe: Option<&Probe>) {
    let get = probe.and_then(|p| p.http_get.as_ref());
    let get = get.unwrap_or_else(|| panic!("{which}: no httpGet"));
    assert_eq!(get.path.as_deref(), Some("/healthz"), "{which}");
    assert_eq!(get.port, IntOrString::Int(HEALTHZ_PORT), "{which}");
}

#[test]
fn config_map_holds_the_agents_config_file() {
    let config_map = the::<ConfigMap>();
    let ds = the::<DaemonSet>();
    assert_eq!(
        namespace_of(&config_map.metadata),
        namespace_of(&ds.metadata)
    );
    let data = config_map.data.as_ref().expect("ConfigMap data");
    let text = data
        .get("config.yaml")
        .expect("config.yaml in the ConfigMap");
    // The agent's own parser reads it (unknown keys, bad CIDRs or durations are errors).
    let (agent, _) = with_config("deploy", text, &[], |run| run.agent());
    let agent = agent.unwrap_or_else(|e| panic!("config.yaml: {e}"));
    let port = |addr: Option<std::net::SocketAddr>| addr.map(|a| a.port());
    assert_eq!(port(agent.healthz), Some(HEALTHZ_PORT as u16));
    assert_eq!(port(agent.metrics), Some(10249));
    assert!(!agent.node.cluster_cidrs.is_empty(), "clusterCIDR");
    assert!(!agent.node.service_cidrs.is_empty(), "serviceCIDR");

    // The agent's --config names config.yaml in the directory the ConfigMap is mounted at.
    let volume = pod_spec(&ds).volumes.iter().flatten().find(|v| {
        v.config_map.as_ref().map(|c| c.name.as_str()) == Some(name_of(&config_map.metadata))
    });
    let volume = volume.expect("the DaemonSet does not mount the ConfigMap");
    let container = agent_container(&ds);
    let mut mounts = container.volume_mounts.iter().flatten();
    let mount = mounts.find(|m| m.name == volume.name);
    let dir = Path::new(&mount.expect("ConfigMap volume not mounted").mount_path);
    assert_eq!(config_flag(container), dir.join("config.yaml"));
}

/// What `f` makes of `svc-nft run --config FILE flags...`, FILE holding `text`, and what
/// was logged on the way.
fn with_config<T>(
    tag: &str,
    text: &str,
    flags: &[&str],
    f: impl FnOnce(&svc_nft::config::RunArgs) -> T,
) -> (T, String) {
    let path = std::env::temp_dir().join(format!("svc-nft-{tag}-{}.yaml", std::process::id()));
    fs::write(&path, text).unwrap();
    let argv = [
        &["svc-nft", "run", "--config", path.to_str().unwrap()][..],
        flags,
    ]
    .concat();
    let parsed = svc_nft::cli::Cli::try_parse_from(argv).expect("run --config parses");
    let svc_nft::cli::Command::Run(run) = parsed.command else {
        unreachable!("run")
    };
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, || f(&run));
    fs::remove_file(&path).unwrap();
    (result, logs.text())
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// A kubeadm cluster moving to svc-nft has kube-proxy's settings in the kube-proxy
/// ConfigMap: its config.conf, as it is, configures the agent.
#[test]
fn kubeadms_kube_proxy_config_map_configures_the_agent() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/testdata/kubeadm-kube-proxy.yaml");
    let config_map: ConfigMap = serde_yaml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let data = config_map.data.expect("ConfigMap data");
    let flags = ["--node-name", "n1"];
    let (agent, logs) = with_config("kubeadm", &data["config.conf"], &flags, |run| run.agent());
    let agent = agent.unwrap_or_else(|e| panic!("config.conf: {e}"));
    assert_eq!(agent.node.cluster_cidrs, ["10.244.0.0/16".parse().unwrap()]);
    assert_eq!(agent.node.node_name.as_deref(), Some("n1"));
    assert!(!agent.node.masquerade_all);
    // kubeadm's zero values mean kube-proxy's defaults.
    assert_eq!(agent.healthz, Some("0.0.0.0:10256".parse().unwrap()));
    assert_eq!(agent.metrics, Some("127.0.0.1:10249".parse().unwrap()));
    assert_eq!(agent.min_sync_period, std::time::Duration::from_secs(1));
    // One warning names what svc-nft does not use.
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(
        warnings[0].contains("ignored=clientConnection.kubeconfig"),
        "{logs}"
    );
}

/// The path given to `--config` (as `--config PATH` or `--config=PATH`).
fn config_flag(container: &Container) -> PathBuf {
    let argv: Vec<&String> = container
        .command
        .iter()
        .chain(&container.args)
        .flatten()
        .collect();
    let path = argv
        .iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.strip_prefix("--config") {
            Some("") => argv.get(i + 1).map(|p| p.as_str()),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        });
    PathBuf::from(path.expect("no --config flag"))
}
