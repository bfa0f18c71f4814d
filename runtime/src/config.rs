//! `svc-nft run` settings: command-line flags over a `--config` file over defaults. The file
//! is either svc-nft's own (KubeProxyConfiguration's names where one exists, no apiVersion)
//! or kube-proxy's KubeProxyConfiguration itself, as kubeadm's `kube-proxy` ConfigMap holds
//! it (see `kubeproxy.rs`).

use crate::agent::{parse_duration, Agent, Input};
use crate::cidr;
use crate::cli::NodeArgs;
use crate::kubeproxy::{self, API_VERSION, KIND};
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use svc_nft_compiler::NodePortAddresses;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The flags of `svc-nft run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Follow a manifest directory instead of the API server (no cluster needed).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// kubeconfig of the API server (default: in-cluster config, else $KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Settings file (YAML): kube-proxy's KubeProxyConfiguration as it is (e.g. kubeadm's
    /// kube-proxy ConfigMap's config.conf; what svc-nft does not use is named in a warning),
    /// or svc-nft's own keys without apiVersion/kind (deploy/configmap.yaml). Flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Shortest time between two syncs: changes within it are applied together (default 1s).
    #[arg(long, value_parser = parse_duration)]
    pub min_sync_period: Option<Duration>,
    /// How often to replace the table whole, repairing any drift (default 1h).
    #[arg(long, value_parser = parse_duration)]
    pub sync_period: Option<Duration>,
    /// Where /healthz and /livez answer (default 0.0.0.0:10256); "" for nowhere.
    #[arg(long)]
    pub healthz_bind_address: Option<String>,
    /// Where /metrics answers (default 127.0.0.1:10249); "" for nowhere.
    #[arg(long)]
    pub metrics_bind_address: Option<String>,
    /// Log lines as text (default) or JSON.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Why a --config file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub problem: Problem,
}

/// What is wrong with a --config file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Yaml(#[from] serde_yaml::Error),
    #[error(
        "apiVersion {0:?}, kind {1:?}: svc-nft reads {API_VERSION} {KIND}, or its own keys \
         without apiVersion and kind"
    )]
    Type(String, String),
    #[error("unknown field {0}")]
    UnknownField(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl Problem {
    pub(crate) fn invalid(key: &str, reason: &str) -> Problem {
        Problem::Invalid {
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// What a --config file sets, whichever format it is in; flags win over it.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Settings {
    pub cluster_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub nodeport_addresses: NodePortAddresses,
    pub node_ips: Vec<IpAddr>,
    pub masquerade_all: bool,
    pub hostname_override: Option<String>,
    /// "" turns the server off.
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub min_sync_period: Option<Duration>,
    pub sync_period: Option<Duration>,
    pub log_format: Option<LogFormat>,
    /// `featureGates`; `--feature-gates` wins over them.
    pub feature_gates: Vec<crate::feature_gates::Gate>,
    /// Set fields svc-nft has no use for (a KubeProxyConfiguration's), as dotted paths.
    pub ignored: Vec<String>,
}

/// svc-nft's own format: KubeProxyConfiguration's names where one exists, plus
/// serviceCIDR and logFormat; no apiVersion or kind.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    #[serde(rename = "serviceCIDR")]
    service_cidr: Option<String>,
    #[serde(default)]
    node_port_addresses: Vec<String>,
    #[serde(default)]
    masquerade_all: bool,
    hostname_override: Option<String>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    min_sync_period: Option<String>,
    sync_period: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    feature_gates: std::collections::BTreeMap<String, bool>,
}

impl File {
    fn settings(self) -> Result<Settings, Problem> {
        let period = |text: Option<String>, key| text.map(|t| duration(&t, key)).transpose();
        Ok(Settings {
            cluster_cidrs: cidrs(self.cluster_cidr.as_deref(), "clusterCIDR")?,
            service_cidrs: cidrs(self.service_cidr.as_deref(), "serviceCIDR")?,
            nodeport_addresses: nodeport_cidrs(
                self.node_port_addresses.iter().map(String::as_str),
                "nodePortAddresses",
            )?,
            node_ips: vec![],
            masquerade_all: self.masquerade_all,
            hostname_override: self.hostname_override.filter(|h| !h.is_empty()),
            healthz_bind_address: self.healthz_bind_address,
            metrics_bind_address: self.metrics_bind_address,
            min_sync_period: period(self.min_sync_period, "minSyncPeriod")?,
            sync_period: period(self.sync_period, "syncPeriod")?,
            log_format: self.log_format,
            feature_gates: self.feature_gates.into_iter().collect(),
            ignored: vec![],
        })
    }
}

/// Only what tells the two formats apart.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

/// A settings file's text in either format.
pub(crate) fn parse(text: &str) -> Result<Settings, Problem> {
    let meta: TypeMeta = serde_yaml::from_str(text).unwrap_or_default();
    match (meta.api_version, meta.kind) {
        (None, None) => serde_yaml::from_str::<File>(text)?.settings(),
        (Some(v), Some(k)) if v == API_VERSION && k == KIND => kubeproxy::settings(text),
        (v, k) => Err(Problem::Type(v.unwrap_or_default(), k.unwrap_or_default())),
    }
}

/// Comma-separated CIDRs (kube-proxy's clusterCIDR), or a list of them, merged.
pub(crate) fn cidrs<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    key: &str,
) -> Result<Vec<IpNet>, Problem> {
    cidr::parse_list(texts).map_err(|e| Problem::invalid(key, &e.to_string()))
}

pub(crate) fn nodeport_cidrs<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    key: &str,
) -> Result<NodePortAddresses, Problem> {
    cidr::parse_nodeport_list(texts).map_err(|e| Problem::invalid(key, &e.to_string()))
}

pub(crate) fn duration(text: &str, key: &str) -> Result<Duration, Problem> {
    parse_duration(text).map_err(|e| Problem::invalid(key, &e))
}

/// "" turns a server off.
fn address(text: &str, key: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "" => Ok(None),
        t => t
            .parse()
            .map(Some)
            .map_err(|_| format!("{key}: {t:?} is not an address:port")),
    }
}

impl RunArgs {
    fn file(&self) -> Result<Settings, ConfigError> {
        let Some(path) = &self.config else {
            return Ok(Settings::default());
        };
        let error = |problem| ConfigError {
            path: path.clone(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.into()))?;
        parse(&text).map_err(error)
    }

    /// The log format: the flag, else the file's, else text.
    pub fn log_format(&self) -> LogFormat {
        let file = self.file().ok().and_then(|f| f.log_format);
        self.log_format.or(file).unwrap_or(LogFormat::Text)
    }

    /// The agent these settings describe; the settings of the file svc-nft ignores are
    /// named in one warning.
    pub fn agent(&self) -> Result<Agent, String> {
        let file = self.file().map_err(|e| e.to_string())?;
        if !file.ignored.is_empty() {
            let config = self.config.as_deref().unwrap_or(Path::new("")).display();
            tracing::warn!(
                %config,
                ignored = %file.ignored.join(", "),
                "kube-proxy settings svc-nft does not use are ignored"
            );
        }
        self.merge(file)
    }

    fn merge(&self, file: Settings) -> Result<Agent, String> {
        let mut node = self.node.facts();
        // The file's gates, then the flag's: the flag has the last word.
        let gates = [file.feature_gates.as_slice(), &self.node.feature_gates].concat();
        for warning in crate::feature_gates::apply(&gates, &mut node) {
            tracing::warn!("{warning}");
        }
        let or_file = |flag: &mut Vec<IpNet>, file: Vec<IpNet>| {
            if flag.is_empty() {
                *flag = file;
            }
        };
        or_file(&mut node.cluster_cidrs, file.cluster_cidrs);
        or_file(&mut node.service_cidrs, file.service_cidrs);
        if node.nodeport_addresses == NodePortAddresses::Primary {
            node.nodeport_addresses = file.nodeport_addresses;
        }
        if node.node_ips.is_empty() {
            node.node_ips = file.node_ips;
        }
        node.masquerade_all |= file.masquerade_all;
        // kube-proxy's order: the flag, the file, the NODE_NAME the DaemonSet sets, the host name.
        node.node_name = node
            .node_name
            .or(file.hostname_override)
            .or(std::env::var("NODE_NAME").ok().filter(|h| !h.is_empty()))
            .or_else(hostname);
        for warning in node.warnings() {
            tracing::warn!("{warning}");
        }
        let healthz = self
            .healthz_bind_address
            .clone()
            .or(file.healthz_bind_address);
        let metrics = self
            .metrics_bind_address
            .clone()
            .or(file.metrics_bind_address);
        Ok(Agent {
            input: match &self.manifests {
                Some(dir) => Input::Manifests(dir.clone()),
                None => Input::ApiServer(self.kubeconfig.clone()),
            },
            node,
            min_sync_period: self
                .min_sync_period
                .or(file.min_sync_period)
                .unwrap_or(Duration::from_secs(1)),
            sync_period: self
                .sync_period
                .or(file.sync_period)
                .unwrap_or(Duration::from_secs(3600)),
            healthz: address(
                healthz.as_deref().unwrap_or("0.0.0.0:10256"),
                "healthzBindAddress",
            )?,
            metrics: address(
                metrics.as_deref().unwrap_or("127.0.0.1:10249"),
                "metricsBindAddress",
            )?,
        })
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    (rc == 0).then(|| String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(argv: &[&str]) -> RunArgs {
        Run::parse_from(std::iter::once("run").chain(argv.iter().copied())).run
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let path = std::env::temp_dir().join(format!("svc-nft-config-{}.yaml", std::process::id()));
        let text = "clusterCIDR: 10.244.0.0/16,fd00:244::/56\nsyncPeriod: 30s\n\
                    metricsBindAddress: \"\"\nhostnameOverride: from-file\nlogFormat: json\n";
        std::fs::write(&path, text).unwrap();
        let config = path.to_str().unwrap();
        let run = args(&[
            "--config",
            config,
            "--sync-period",
            "2m",
            "--node-name",
            "flagged",
        ]);
        let agent = run.agent().unwrap();
        let log_format = run.log_format();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(agent.node.cluster_cidrs.len(), 2);
        assert_eq!(agent.sync_period, Duration::from_secs(120));
        assert_eq!(agent.min_sync_period, Duration::from_secs(1));
        assert_eq!(agent.metrics, None);
        assert_eq!(agent.healthz, Some("0.0.0.0:10256".parse().unwrap()));
        assert_eq!(agent.node.node_name.as_deref(), Some("flagged"));
        assert_eq!(log_format, LogFormat::Json);
    }

    /// kubeadm's `config.conf` with `edit` applied to its text.
    fn kubeadm(edit: impl Fn(String) -> String) -> Result<Settings, Problem> {
        let map: serde_yaml::Value =
            serde_yaml::from_str(include_str!("testdata/kubeadm-kube-proxy.yaml")).unwrap();
        let conf = map["data"]["config.conf"].as_str().unwrap().to_string();
        parse(&edit(conf))
    }

    fn error(edit: impl Fn(String) -> String) -> String {
        kubeadm(edit).unwrap_err().to_string()
    }

    /// Replace the line `key: ...` (indented as it is) with `key: value`.
    fn set(text: String, section: &str, key: &str, value: &str) -> String {
        let mut in_section = section.is_empty();
        let lines = text.lines().map(|line| {
            if !line.starts_with(' ') {
                in_section = section.is_empty() || line == format!("{section}:");
            }
            let indent = if section.is_empty() { "" } else { "  " };
            if in_section && line.starts_with(&format!("{indent}{key}:")) {
                format!("{indent}{key}: {value}")
            } else {
                line.to_string()
            }
        });
        lines.collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn kubeadms_kube_proxy_config_is_taken_as_it_is() {
        let settings = kubeadm(|t| t).unwrap();
        assert_eq!(
            settings,
            Settings {
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                // kube-proxy's defaults for its empty servers' addresses.
                healthz_bind_address: Some("0.0.0.0:10256".into()),
                metrics_bind_address: Some("127.0.0.1:10249".into()),
                // The only setting of it svc-nft does not use (it asks the API server with
                // its own service account, or --kubeconfig).
                ignored: vec!["clientConnection.kubeconfig".into()],
                ..Settings::default()
            }
        );
    }

    #[test]
    fn kube_proxys_settings_are_read_where_kube_proxy_reads_them() {
        let nftables = kubeadm(|t| {
            let t = set(t, "", "mode", "nftables");
            let t = set(t, "nftables", "masqueradeAll", "true");
            let t = set(t, "nftables", "syncPeriod", "30s");
            let t = set(t, "nftables", "minSyncPeriod", "1m30s");
            let t = set(t, "iptables", "syncPeriod", "5s");
            let t = set(t, "", "clusterCIDR", "10.244.0.0/16,fd00:10:244::/56");
            let t = set(t, "", "nodePortAddresses", "[192.0.2.0/24]");
            let t = set(t, "", "hostnameOverride", "node-a");
            let t = set(t, "", "healthzBindAddress", "192.0.2.10");
            set(t, "", "metricsBindAddress", "0.0.0.0:10249")
        })
        .unwrap();
        assert!(nftables.masquerade_all);
        assert_eq!(nftables.sync_period, Some(Duration::from_secs(30)));
        assert_eq!(nftables.min_sync_period, Some(Duration::from_secs(90)));
        assert_eq!(nftables.cluster_cidrs.len(), 2);
        assert_eq!(
            nftables.nodeport_addresses,
            NodePortAddresses::Cidrs(vec!["192.0.2.0/24".parse().unwrap()])
        );
        assert_eq!(nftables.hostname_override.as_deref(), Some("node-a"));
        // An address alone gets kube-proxy's port.
        assert_eq!(
            nftables.healthz_bind_address.as_deref(),
            Some("192.0.2.10:10256")
        );
        assert_eq!(
            nftables.metrics_bind_address.as_deref(),
            Some("0.0.0.0:10249")
        );
        // Mode nftables: the iptables section is not read, so its setting is named.
        assert_eq!(
            nftables.ignored,
            ["clientConnection.kubeconfig", "iptables.syncPeriod"]
        );

        // Without mode nftables, kube-proxy reads the iptables section.
        let iptables = kubeadm(|t| {
            let t = set(t, "iptables", "masqueradeAll", "true");
            let t = set(t, "iptables", "syncPeriod", "5s");
            set(t, "nftables", "syncPeriod", "30s")
        })
        .unwrap();
        assert!(iptables.masquerade_all);
        assert_eq!(iptables.sync_period, Some(Duration::from_secs(5)));
        assert!(iptables
            .ignored
            .contains(&"nftables.syncPeriod".to_string()));
    }

    #[test]
    fn bind_address_is_the_node_ip_and_picks_the_servers_family() {
        let v4 = kubeadm(|t| set(t, "", "bindAddress", "192.0.2.10")).unwrap();
        assert_eq!(v4.node_ips, ["192.0.2.10".parse::<IpAddr>().unwrap()]);
        let v6 = kubeadm(|t| set(t, "", "bindAddress", "\"::\"")).unwrap();
        assert!(v6.node_ips.is_empty());
        assert_eq!(v6.healthz_bind_address.as_deref(), Some("[::]:10256"));
        assert_eq!(v6.metrics_bind_address.as_deref(), Some("[::1]:10249"));
    }

    #[test]
    fn settings_svc_nft_ignores_are_named() {
        let settings = kubeadm(|t| {
            let t = set(t, "", "oomScoreAdj", "-999");
            let t = set(t, "conntrack", "maxPerCore", "0");
            let t = set(t, "nftables", "masqueradeBit", "14");
            let t = set(t, "logging", "verbosity", "4");
            t + "\nfeatureGates: {KubeProxyNFTablesLocalhostNodePorts: true, AllowServiceExternalIPs: false}\n"
        })
        .unwrap();
        // Feature gates are read (and those svc-nft does not act on warned about at start).
        assert_eq!(
            settings.feature_gates,
            [
                ("KubeProxyNFTablesLocalhostNodePorts".to_string(), true),
                ("AllowServiceExternalIPs".to_string(), false)
            ]
        );
        assert_eq!(
            settings.ignored,
            [
                "clientConnection.kubeconfig",
                "logging.verbosity",
                "nftables.masqueradeBit",
                "oomScoreAdj",
            ]
        );
    }

    #[test]
    fn a_kube_proxy_config_must_say_what_it_is() {
        let wrong_version = error(|t| t.replace("/v1alpha1", "/v1beta1"));
        assert!(
            wrong_version.contains("\"kubeproxy.config.k8s.io/v1beta1\""),
            "{wrong_version}"
        );
        let wrong_kind = error(|t| t.replace("kind: KubeProxyConfiguration", "kind: Kubelet"));
        assert!(wrong_kind.contains("kind \"Kubelet\""), "{wrong_kind}");
        let no_kind = error(|t| t.replace("kind: KubeProxyConfiguration", ""));
        assert!(no_kind.contains("kind \"\""), "{no_kind}");
    }

    #[test]
    fn a_misspelt_kube_proxy_key_is_an_error_naming_it() {
        assert_eq!(
            error(|t| t.replace("clusterCIDR:", "clusterCidr:")),
            "unknown field clusterCidr (did you mean clusterCIDR?)"
        );
        assert_eq!(
            error(|t| t.replace(
                "  masqueradeBit: null\n  minSyncPeriod",
                "  masqBit: null\n  minSyncPeriod"
            )),
            "unknown field iptables.masqBit"
        );
        assert_eq!(
            error(|t| set(t, "", "clusterCIDR", "10.244.0.0/33")),
            "clusterCIDR: prefix length 33 is out of range (IPv4 allows 0–32)"
        );
        assert_eq!(
            error(|t| set(
                set(t, "", "mode", "nftables"),
                "nftables",
                "syncPeriod",
                "30 seconds"
            )),
            "nftables.syncPeriod: \"30 seconds\": unit must be ms, s, m or h"
        );
    }

    #[test]
    fn a_misspelt_key_is_an_error_naming_it() {
        let path = std::env::temp_dir().join(format!("svc-nft-bad-{}.yaml", std::process::id()));
        std::fs::write(&path, "clusterCidr: 10.0.0.0/8\n").unwrap();
        let err = args(&["--config", path.to_str().unwrap()])
            .agent()
            .unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("clusterCidr"), "{err}");
    }
}
