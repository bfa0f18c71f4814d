//! `svc-nft run`: the agent. Updates come from a manifest directory (`--manifests`) or from
//! the API server; one sync thread applies them (see [`crate::syncer`]); the health and
//! metrics servers and the health-check NodePorts run on a small tokio runtime. SIGTERM stops
//! it and leaves the rules in place, for the next agent to take over without a gap.

use crate::cluster::RequestMetrics;
use crate::health::{serve_health, serve_metrics, ProxyHealth, ServiceHealth};
use crate::metrics::Metrics;
use crate::syncer::{run_loop, Observers, Source, Syncer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use svc_nft_compiler::NodeFacts;

/// Where the agent reads Services and endpoints.
#[derive(Debug, Clone)]
pub enum Input {
    Manifests(PathBuf),
    /// The API server: a kubeconfig file, or in-cluster config / `$KUBECONFIG` when `None`.
    ApiServer(Option<PathBuf>),
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub input: Input,
    pub node: NodeFacts,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    pub healthz: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

impl Agent {
    /// Run until SIGTERM or SIGINT.
    pub fn run(self) -> Result<(), String> {
        // One malloc arena for the few threads there are: with one per thread, the memory the
        // watcher thread frees after a large list stays resident in its arena (measured at
        // 100k Services: 645 MB at rest with the default, 440 MB with one).
        // SAFETY: mallopt only tunes the allocator; called before any other thread starts.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        // kube-proxy's health timeout: twice the sync period.
        let health = Arc::new(ProxyHealth::new(self.sync_period * 2));
        let observers = Observers {
            metrics: Arc::new(Metrics::new()),
            service_health: Arc::new(ServiceHealth::new(vec![], health.clone())),
            health,
        };
        runtime.block_on(self.serve(&observers))?;
        let (tx, updates) = mpsc::channel();
        let (table, repairs) = (self.node.table.clone(), tx.clone());
        std::thread::spawn(move || crate::foreign::watch(table, repairs));
        let lists: &'static [&'static str] = match &self.input {
            Input::Manifests(dir) => {
                // A typo must not run a node with no Services: refuse to start (a DaemonSet
                // then shows the error in its restarts). A directory that goes away later
                // keeps the rules it gave (see `manifests::watch`).
                if !dir.is_dir() {
                    let why = std::fs::metadata(dir)
                        .err()
                        .map_or("not a directory".to_string(), |e| e.to_string());
                    return Err(format!("--manifests {}: {why}", dir.display()));
                }
                self.log_start(&format!("manifest directory {}", dir.display()));
                let (dir, every) = (dir.clone(), self.min_sync_period);
                std::thread::spawn(move || crate::manifests::watch(dir, every, tx));
                &["manifests"]
            }
            Input::ApiServer(kubeconfig) => {
                let config = runtime.block_on(config(kubeconfig.as_ref()))?;
                self.log_start(&format!("API server {}", config.cluster_url));
                // The client spawns its request buffer on the runtime it is built in.
                let client = {
                    let _runtime = runtime.enter();
                    let builder = kube::client::ClientBuilder::try_from(config)
                        .map_err(|e| format!("API client: {e}"))?;
                    let measured = RequestMetrics(observers.metrics.clone());
                    builder.with_layer(&measured).build()
                };
                let watch = crate::cluster::watch::run(
                    client,
                    self.node.clone(),
                    observers.health.clone(),
                    tx,
                );
                runtime.spawn(watch);
                &["Service", "EndpointSlice", "Node"]
            }
        };
        let syncer = Syncer::new(&self.node, self.sync_period, observers);
        let handle = runtime.handle().clone();
        let min_sync_period = self.min_sync_period;
        std::thread::spawn(move || {
            // The health-check NodePorts are served by tasks on the runtime.
            let _runtime = handle.enter();
            run_loop(syncer, Source { updates, lists }, min_sync_period)
        });
        runtime.block_on(stopped());
        tracing::info!("stopping; the rules stay in place for the next agent");
        Ok(())
    }

    /// The start-up line: what this agent is, reads, and serves.
    fn log_start(&self, source: &str) {
        let addr = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        let ips: Vec<String> = self.node.node_ips.iter().map(ToString::to_string).collect();
        // Only an API server has a Node object to take them from.
        let unset = match self.input {
            Input::ApiServer(_) => "(from the Node object)",
            Input::Manifests(_) => "(none given: --node-ip)",
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            node = self.node.node_name.as_deref().unwrap_or("(none)"),
            node_ips = if ips.is_empty() {
                unset.to_string()
            } else {
                ips.join(",")
            },
            table = format!("inet {}", self.node.table),
            healthz = addr(self.healthz),
            metrics = addr(self.metrics),
            "svc-nft starting: reading {source}"
        );
    }

    /// Start the health and metrics servers (an address that cannot be bound is an error).
    async fn serve(&self, observers: &Observers) -> Result<(), String> {
        let bind = |addr: SocketAddr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))
        };
        if let Some(addr) = self.healthz {
            let listener = bind(addr).await?;
            tokio::spawn(serve_health(
                listener,
                observers.health.clone(),
                observers.metrics.clone(),
            ));
        }
        if let Some(addr) = self.metrics {
            let listener = bind(addr).await?;
            tokio::spawn(serve_metrics(listener, observers.metrics.clone()));
        }
        Ok(())
    }
}

async fn config(kubeconfig: Option<&PathBuf>) -> Result<kube::Config, String> {
    match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let options = kube::config::KubeConfigOptions::default();
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no API server configuration: {e}")),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A duration written as kube-proxy writes them: `500ms`, `2s`, `1m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: not a duration"))?;
        let seconds = match unit {
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
        };
        total += Duration::from_secs_f64(seconds);
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kube_proxy_flags() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
    }
}
