//! Health-check NodePorts (`spec.healthCheckNodePort`) of `externalTrafficPolicy: Local`
//! Services: they tell load balancers whether this node has a local endpoint, so that
//! traffic only goes to nodes that can serve it without a second hop.

use super::http::{serve, Response, JSON};
use super::ProxyHealth;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::net::TcpListener;

/// A health-check port's Service and its endpoints on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealthEntry {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints on this node by distinct IP, as kube-proxy's `LocalReadyEndpoints`:
    /// terminating ones do not count, so that load balancers drain the node.
    pub local_endpoints: usize,
}

/// kube-proxy's `hcHandler` answer (its body, compact): 200 only with a local endpoint and a
/// healthy proxy.
pub fn service_health_status(entry: &ServiceHealthEntry, proxy_healthy: bool) -> (u16, String) {
    let code = if entry.local_endpoints > 0 && proxy_healthy {
        200
    } else {
        503
    };
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        "{{\"service\":{{\"namespace\":{},\"name\":{}}},\"localEndpoints\":{},\"serviceProxyHealthy\":{}}}",
        quote(&entry.namespace),
        quote(&entry.name),
        entry.local_endpoints,
        proxy_healthy
    );
    (code, body)
}

/// Opens a listening socket; replaceable so that tests bind nothing.
pub type Binder = Arc<dyn Fn(SocketAddr) -> io::Result<std::net::TcpListener> + Send + Sync>;

/// What [`ServiceHealth::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceHealthSync {
    pub opened: Vec<u16>,
    pub closed: Vec<u16>,
    /// Logged, and tried again on the next sync.
    pub failed: Vec<u16>,
}

/// Going from the current ports to the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Plan {
    close: Vec<u16>,
    open: Vec<u16>,
    keep: Vec<u16>,
}

fn plan<A, B>(current: &BTreeMap<u16, A>, desired: &BTreeMap<u16, B>) -> Plan {
    let mut plan = Plan::default();
    for port in current.keys() {
        if !desired.contains_key(port) {
            plan.close.push(*port);
        }
    }
    for port in desired.keys() {
        if current.contains_key(port) {
            plan.keep.push(*port);
        } else {
            plan.open.push(*port);
        }
    }
    plan
}

/// One open health-check port.
struct Instance {
    /// Shared with the accept loops, so that a sync updates the answers in place.
    entry: Arc<RwLock<ServiceHealthEntry>>,
    /// One accept loop per bind address; aborting them closes the sockets.
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The open health-check ports, one listener per port and bind address answering any path
/// with [`service_health_status`]. Dropping it closes them all.
pub struct ServiceHealth {
    bind_addrs: Vec<IpAddr>,
    binder: Binder,
    proxy: Arc<ProxyHealth>,
    open: Mutex<BTreeMap<u16, Instance>>,
}

impl std::fmt::Debug for ServiceHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHealth")
            .field("bind_addrs", &self.bind_addrs)
            .field("ports", &self.ports())
            .finish_non_exhaustive()
    }
}

impl ServiceHealth {
    /// Listens on each of `bind_addrs` (kube-proxy: the node IPs matching
    /// `--nodeport-addresses`), or `0.0.0.0` if empty; `::` takes both families on a
    /// dual-stack node (unless `net.ipv6.bindv6only`). `proxy` fills `serviceProxyHealthy`.
    pub fn new(bind_addrs: Vec<IpAddr>, proxy: Arc<ProxyHealth>) -> Self {
        // std sets SO_REUSEADDR, so a port closed and reopened does not hit TIME_WAIT.
        let binder: Binder = Arc::new(std::net::TcpListener::bind::<SocketAddr>);
        Self::with_binder(bind_addrs, proxy, binder)
    }

    pub fn with_binder(bind_addrs: Vec<IpAddr>, proxy: Arc<ProxyHealth>, binder: Binder) -> Self {
        let bind_addrs = if bind_addrs.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        } else {
            bind_addrs
        };
        ServiceHealth {
            bind_addrs,
            binder,
            proxy,
            open: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u16, Instance>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ports(&self) -> Vec<u16> {
        self.lock().keys().copied().collect()
    }

    /// Listens on exactly the ports of `desired`, and makes the kept ones answer for their
    /// new entry. A port that cannot be opened is left out until the next sync. New ports
    /// need a Tokio runtime to be served; outside one they fail.
    pub fn sync(&self, desired: BTreeMap<u16, ServiceHealthEntry>) -> ServiceHealthSync {
        let mut open = self.lock();
        let plan = plan(&open, &desired);
        let mut outcome = ServiceHealthSync::default();

        for port in plan.close {
            if let Some(instance) = open.remove(&port) {
                let entry = read(&instance.entry);
                tracing::info!(
                    namespace = %entry.namespace,
                    name = %entry.name,
                    port,
                    "closing Service health check"
                );
                outcome.closed.push(port);
            }
        }
        for port in plan.keep {
            if let (Some(instance), Some(entry)) = (open.get(&port), desired.get(&port)) {
                let mut current = instance.entry.write().unwrap_or_else(|e| e.into_inner());
                if *current != *entry {
                    tracing::debug!(
                        namespace = %entry.namespace,
                        name = %entry.name,
                        port,
                        local_endpoints = entry.local_endpoints,
                        "updating Service health check"
                    );
                    *current = entry.clone();
                }
            }
        }
        for port in plan.open {
            let Some(entry) = desired.get(&port) else {
                continue;
            };
            match self.open_port(port, entry) {
                Ok(instance) => {
                    tracing::info!(
                        namespace = %entry.namespace,
                        name = %entry.name,
                        port,
                        "opened Service health check"
                    );
                    open.insert(port, instance);
                    outcome.opened.push(port);
                }
                Err((addr, e)) => {
                    tracing::error!(
                        namespace = %entry.namespace,
                        name = %entry.name,
                        port,
                        address = %addr,
                        error = %e,
                        "failed to start Service health check"
                    );
                    outcome.failed.push(port);
                }
            }
        }
        outcome
    }

    /// Listens on `port` on every bind address, or on none.
    fn open_port(
        &self,
        port: u16,
        entry: &ServiceHealthEntry,
    ) -> Result<Instance, (SocketAddr, io::Error)> {
        // Without a runtime there is nothing to serve with: bind nothing.
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            (
                SocketAddr::new(self.bind_addrs[0], port),
                io::Error::other(e),
            )
        })?;
        // Nothing is spawned before every socket is bound, so a failure leaks nothing:
        // dropping `listeners` closes those bound already.
        let mut listeners = Vec::with_capacity(self.bind_addrs.len());
        for ip in &self.bind_addrs {
            let addr = SocketAddr::new(*ip, port);
            let listener = (self.binder)(addr)
                .and_then(|listener| {
                    listener.set_nonblocking(true)?;
                    TcpListener::from_std(listener)
                })
                .map_err(|e| (addr, e))?;
            listeners.push(listener);
        }

        let entry = Arc::new(RwLock::new(entry.clone()));
        let tasks = listeners
            .into_iter()
            .map(|listener| {
                let entry = Arc::clone(&entry);
                let proxy = Arc::clone(&self.proxy);
                let route = move |_path: &str| {
                    let current = read(&entry);
                    let (status, body) = service_health_status(&current, proxy.is_healthy());
                    Response::new(status, JSON, body)
                };
                runtime
                    .spawn(serve(listener, "Service health check", route))
                    .abort_handle()
            })
            .collect();
        Ok(Instance { entry, tasks })
    }
}

fn read(entry: &RwLock<ServiceHealthEntry>) -> ServiceHealthEntry {
    entry.read().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn entry(name: &str, local_endpoints: usize) -> ServiceHealthEntry {
        ServiceHealthEntry {
            namespace: "default".to_string(),
            name: name.to_string(),
            local_endpoints,
        }
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn service_health_answers() {
        let (code, body) = service_health_status(&entry("web", 2), true);
        assert_eq!(code, 200);
        assert_eq!(
            body,
            "{\"service\":{\"namespace\":\"default\",\"name\":\"web\"},\"localEndpoints\":2,\
             \"serviceProxyHealthy\":true}"
        );
        // No local endpoint: 503.
        let (code, body) = service_health_status(&entry("web", 0), true);
        assert_eq!(code, 503);
        assert!(body.contains("\"localEndpoints\":0"));
        // Proxy unhealthy: 503 even with endpoints, and said so.
        let (code, body) = service_health_status(&entry("web", 3), false);
        assert_eq!(code, 503);
        let v = json(&body);
        assert_eq!(v["serviceProxyHealthy"], false);
        assert_eq!(v["localEndpoints"], 3);
        assert_eq!(v["service"]["namespace"], "default");
        assert_eq!(v["service"]["name"], "web");
        // Names are JSON-escaped.
        let (_, body) = service_health_status(&entry("we\"b", 1), true);
        assert_eq!(json(&body)["service"]["name"], "we\"b");
    }

    #[test]
    fn plans() {
        let current: BTreeMap<u16, ()> = [(30001, ()), (30002, ()), (30003, ())].into();
        let desired: BTreeMap<u16, ()> = [(30002, ()), (30004, ()), (30000, ())].into();
        assert_eq!(
            plan(&current, &desired),
            Plan {
                close: vec![30001, 30003],
                open: vec![30000, 30004],
                keep: vec![30002],
            }
        );
        assert_eq!(
            plan(&current, &BTreeMap::<u16, ()>::new()),
            Plan {
                close: vec![30001, 30002, 30003],
                ..Plan::default()
            }
        );
    }

    /// A ServiceHealth on `addrs` whose binder always fails (no socket is ever made), and
    /// the count of binder calls.
    fn failing(addrs: Vec<IpAddr>) -> (ServiceHealth, impl Fn() -> usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let binder: Binder = Arc::new(move |addr: SocketAddr| {
            counter.fetch_add(1, Ordering::SeqCst);
            Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} in use"),
            ))
        });
        let proxy = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
        let sh = ServiceHealth::with_binder(addrs, proxy, binder);
        (sh, move || calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn bind_failures_are_reported_and_retried() {
        let (sh, calls) = failing(vec![]);
        assert_eq!(sh.bind_addrs, vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
        let desired: BTreeMap<u16, ServiceHealthEntry> =
            [(30001, entry("a", 1)), (30002, entry("b", 0))].into();
        let outcome = sh.sync(desired.clone());
        assert_eq!(
            outcome,
            ServiceHealthSync {
                failed: vec![30001, 30002],
                ..ServiceHealthSync::default()
            }
        );
        assert!(sh.ports().is_empty());
        assert_eq!(calls(), 2);
        // The next sync tries again.
        assert_eq!(sh.sync(desired).failed, vec![30001, 30002]);
        assert_eq!(calls(), 4);
        // Nothing wanted: nothing to do.
        assert_eq!(sh.sync(BTreeMap::new()), ServiceHealthSync::default());
    }

    #[tokio::test]
    async fn a_port_fails_at_its_first_failing_address() {
        let (sh, calls) = failing(vec![
            "10.0.0.1".parse().unwrap(),
            "fd00::1".parse().unwrap(),
        ]);
        let outcome = sh.sync([(30001, entry("a", 1)), (30002, entry("b", 1))].into());
        assert_eq!(outcome.failed, vec![30001, 30002]);
        assert_eq!(calls(), 2);
        assert!(format!("{sh:?}").contains("ports: []"));
    }

    #[test]
    fn outside_a_runtime_nothing_is_bound_and_nothing_panics() {
        let (sh, calls) = failing(vec![]);
        let outcome = sh.sync([(30001, entry("a", 1))].into());
        assert_eq!(outcome.failed, vec![30001]);
        assert_eq!(calls(), 0);
        assert!(sh.ports().is_empty());
    }
}
