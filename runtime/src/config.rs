//! `svc-nft run` settings: command-line flags over a `--config` file over kube-proxy's
//! defaults. The file uses kube-proxy's KubeProxyConfiguration names where one exists.

use crate::agent::{parse_duration, Agent, Input};
use crate::cidr;
use crate::cli::NodeArgs;
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Settings file (YAML, kube-proxy's KubeProxyConfiguration names); flags win over it.
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

/// The settings file.
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
}

/// Comma-separated CIDRs, as kube-proxy's clusterCIDR, merged.
fn cidrs(text: &str, key: &str) -> Result<Vec<IpNet>, String> {
    cidr::parse_list([text]).map_err(|e| format!("{key}: {e}"))
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

fn duration(
    flag: Option<Duration>,
    file: &Option<String>,
    key: &str,
    default: u64,
) -> Result<Duration, String> {
    match (flag, file) {
        (Some(d), _) => Ok(d),
        (None, Some(text)) => parse_duration(text).map_err(|e| format!("{key}: {e}")),
        (None, None) => Ok(Duration::from_secs(default)),
    }
}

impl RunArgs {
    fn file(&self) -> Result<File, String> {
        let Some(path) = &self.config else {
            return Ok(File::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The log format: the flag, else the file's, else text.
    pub fn log_format(&self) -> LogFormat {
        let file = self.file().ok().and_then(|f| f.log_format);
        self.log_format.or(file).unwrap_or(LogFormat::Text)
    }

    /// The agent these settings describe.
    pub fn agent(&self) -> Result<Agent, String> {
        let file = self.file()?;
        let mut node = self.node.facts();
        if node.cluster_cidrs.is_empty() {
            node.cluster_cidrs = cidrs(file.cluster_cidr.as_deref().unwrap_or(""), "clusterCIDR")?;
        }
        if node.service_cidrs.is_empty() {
            node.service_cidrs = cidrs(file.service_cidr.as_deref().unwrap_or(""), "serviceCIDR")?;
        }
        if node.nodeport_addresses.is_empty() {
            let joined = file.node_port_addresses.join(",");
            node.nodeport_addresses = cidrs(&joined, "nodePortAddresses")?;
        }
        node.masquerade_all |= file.masquerade_all;
        // kube-proxy's order: the flag, the file, the NODE_NAME the DaemonSet sets, the host name.
        node.node_name = node
            .node_name
            .or(file.hostname_override.filter(|h| !h.is_empty()))
            .or(std::env::var("NODE_NAME").ok().filter(|h| !h.is_empty()))
            .or_else(hostname);
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
            min_sync_period: duration(
                self.min_sync_period,
                &file.min_sync_period,
                "minSyncPeriod",
                1,
            )?,
            sync_period: duration(self.sync_period, &file.sync_period, "syncPeriod", 3600)?,
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
