//! One node's sync loop, shared by both agents (manifest directory and API server): objects
//! come in one at a time, [`Syncer::sync`] recompiles the Services they touch and applies the
//! difference; health, metrics and the health-check NodePorts follow each sync.

use crate::engine::{Engine, Route};
use crate::health::{ProxyHealth, ServiceHealth, ServiceHealthEntry};
use crate::metrics::Metrics;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use svc_nft_compiler::{Incremental, NodeFacts, Object};

/// A change for the sync thread, from the manifest directory or the API server.
pub enum Update {
    Upsert {
        object: Object,
        /// When the change was triggered (EndpointSlice
        /// `endpoints.kubernetes.io/last-change-trigger-time`), for network programming latency.
        trigger: Option<SystemTime>,
    },
    Remove {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    /// The node's facts changed (its Node object, in a cluster).
    Node(Box<NodeFacts>),
    /// Someone else changed the table (see `crate::foreign`): what, and by whom.
    Repair(String),
    /// A source's first complete list arrived. Until every source's has, the node keeps the
    /// rules it has: syncing half a cluster would REJECT the other half.
    Listed(&'static str),
}

/// What the agents report to: shared with the health and metrics servers.
pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub health: Arc<ProxyHealth>,
    /// The health-check NodePorts of `externalTrafficPolicy: Local` Services.
    pub service_health: Arc<ServiceHealth>,
}

pub struct Syncer {
    state: Incremental,
    engine: Engine,
    observers: Observers,
    sync_period: Duration,
    last_full: Instant,
    /// Changes since the last successful sync.
    services_changed: u64,
    endpoints_changed: u64,
    /// The objects those changes were to (hashes of their ids), for the `_pending` gauges:
    /// kube-proxy counts what waits, not how often it changed.
    pending_services: HashSet<u64>,
    pending_endpoints: HashSet<u64>,
    /// When changes to endpoints were triggered (EndpointSlice
    /// `endpoints.kubernetes.io/last-change-trigger-time`), for network programming latency.
    triggers: Vec<SystemTime>,
    /// Objects rejected now (`Kind namespace/name`), with the message logged for them: each
    /// rejection is logged once per change, not at every rewrite or relist.
    rejected: HashMap<String, String>,
    /// When the agent started, until its first sync is done.
    starting: Option<Instant>,
}

/// A full replace churns through memory the size of the table (built, rendered, listed);
/// hand it back rather than keep the peak resident.
fn give_back_memory() {
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
}

/// A duration in milliseconds, rounded to 10 µs: what a log line needs.
fn milliseconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Syncer {
    pub fn new(node: &NodeFacts, sync_period: Duration, observers: Observers) -> Syncer {
        observers.health.updated();
        Syncer {
            state: Incremental::new(node),
            engine: Engine::new(),
            observers,
            sync_period,
            last_full: Instant::now(),
            services_changed: 0,
            endpoints_changed: 0,
            pending_services: HashSet::new(),
            pending_endpoints: HashSet::new(),
            triggers: Vec::new(),
            rejected: HashMap::new(),
            starting: Some(Instant::now()),
        }
    }

    /// A change queued for the next sync, to the object `id` (none for the node's facts).
    fn queued(&mut self, service: bool, id: Option<&str>) {
        let (count, pending) = if service {
            (&mut self.services_changed, &mut self.pending_services)
        } else {
            (&mut self.endpoints_changed, &mut self.pending_endpoints)
        };
        *count += 1;
        pending.extend(id.map(hash));
        self.observers.health.queued();
        self.observers.metrics.queued(unix(SystemTime::now()));
        self.report_pending();
    }

    fn report_pending(&self) {
        let (services, endpoints) = (self.pending_services.len(), self.pending_endpoints.len());
        self.observers.metrics.changes_pending(services, endpoints);
    }

    /// Take in an added or changed object. A rejected one is logged (naming it and the
    /// field) once per change, and its last accepted version stays in force; an object
    /// rewritten as it was changes nothing and counts as no change.
    pub fn upsert(&mut self, obj: &Object, trigger: Option<SystemTime>) {
        let id = svc_nft_compiler::object_id(obj).to_string();
        match self.state.upsert(obj) {
            Ok(changed) => {
                if self.rejected.remove(&id).is_some() {
                    tracing::info!("accepted again: {id}");
                }
                if !changed {
                    return;
                }
            }
            Err(rejected) => {
                let message = rejected.to_string();
                if self.rejected.get(&id) != Some(&message) {
                    self.observers.metrics.rejected_object();
                    tracing::warn!(
                        object = id,
                        field = rejected.field,
                        "rejected: {message}; its last accepted version, if any, stays in force"
                    );
                    self.rejected.insert(id, message);
                }
                self.observers.metrics.rejected_now(self.rejected.len());
                return;
            }
        }
        self.observers.metrics.rejected_now(self.rejected.len());
        self.triggers.extend(trigger);
        let service = matches!(obj.resource, svc_nft_compiler::Resource::Service(_));
        self.queued(service, Some(&id));
    }

    /// Forget an object (`kind`: Service, EndpointSlice or Endpoints).
    pub fn remove(&mut self, kind: &str, namespace: &str, name: &str) {
        let id = svc_nft_compiler::ObjectId {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let id = id.to_string();
        if self.rejected.remove(&id).is_some() {
            self.observers.metrics.rejected_now(self.rejected.len());
        }
        if self.state.remove(kind, namespace, name) {
            self.queued(kind == "Service", Some(&id));
        }
    }

    pub fn set_node(&mut self, node: &NodeFacts) {
        self.state.set_node(node);
        self.queued(true, None);
    }

    /// Whether changes wait for a sync.
    pub fn pending(&self) -> bool {
        self.services_changed + self.endpoints_changed > 0
    }

    /// Recompile what changed and apply it. A failure is logged and counted; the engine's next
    /// sync replaces the table whole.
    pub fn sync(&mut self) {
        let delta = self.state.flush();
        for d in &delta.diagnostics {
            if d.is_error() {
                self.observers.metrics.rejected_object();
                tracing::warn!("rejected: {d}");
            } else {
                tracing::warn!("{d}");
            }
        }
        let state = &self.state;
        let metrics = &self.observers.metrics;
        match self
            .engine
            .sync_delta(state.shape(), &delta, || state.table())
        {
            Ok(s) => {
                let partial = s.route != Route::Full;
                let took_ms = milliseconds(s.took);
                if s.changes.is_empty() {
                    tracing::debug!(route = ?s.route, services = delta.recompiled, took_ms, "synced: no change");
                } else {
                    tracing::info!(
                        route = ?s.route,
                        services = delta.recompiled,
                        bytes = s.bytes,
                        took_ms,
                        "synced: {}",
                        s.changes
                    );
                }
                if let Some(started) = self.starting.take() {
                    tracing::info!(
                        services = state.services(),
                        elements = state.elements(),
                        since_start_ms = milliseconds(started.elapsed()),
                        "first sync done: the kernel serves {} Services",
                        state.services()
                    );
                }
                let now = SystemTime::now();
                metrics.sync_done(partial, s.took.as_secs_f64(), unix(now));
                for (v6, pass) in [false, true].into_iter().zip(s.conntrack.iter().flatten()) {
                    metrics.conntrack_pass(v6, pass.took.as_secs_f64(), pass.deleted as u64);
                }
                metrics.service_changes(std::mem::take(&mut self.services_changed));
                metrics.endpoint_changes(std::mem::take(&mut self.endpoints_changed));
                self.pending_services.clear();
                self.pending_endpoints.clear();
                self.report_pending();
                for t in self.triggers.drain(..) {
                    let latency = now.duration_since(t).unwrap_or_default();
                    metrics.network_programming(latency.as_secs_f64());
                }
                self.observers.health.updated();
                if !partial {
                    self.last_full = Instant::now();
                }
            }
            Err(e) => {
                metrics.sync_failed();
                tracing::error!(failures = self.engine.failures, "sync failed: {e}");
            }
        }
        if delta.transaction.is_none() {
            give_back_memory();
        }
        let shape = self.state.shape();
        let rules = shape.chains.values().map(|c| c.rules.len()).sum();
        // The shape holds elements of its own (the cluster and service CIDRs): count what
        // the kernel holds.
        let fixed: usize = shape.sets.values().map(|s| s.elements.len()).sum();
        let elements = self.state.elements() + fixed;
        metrics.table_size(elements, shape.chains.len(), rules);
        metrics.services(self.state.services());
        let no_local = self.state.no_local_endpoints();
        metrics.no_local_endpoints(no_local.internal, no_local.external);
        self.serve_health_checks();
    }

    /// Every `--sync-period`: replace the table whole, logging any drift it repaired.
    pub fn repair_if_due(&mut self) {
        if self.last_full.elapsed() < self.sync_period {
            return;
        }
        match self.engine.reconcile(&self.state.table()) {
            Ok(drift) if drift.is_empty() => tracing::debug!("verified: no drift"),
            Ok(drift) => tracing::warn!("repaired drift: {drift}"),
            Err(e) => {
                self.observers.metrics.sync_failed();
                tracing::error!("repair failed: {e}")
            }
        }
        give_back_memory();
        self.last_full = Instant::now();
    }

    /// Put back what someone else changed in the table, at once: a full replace (a cold load
    /// when the table is gone).
    pub fn repair_now(&mut self, why: &str) {
        let start = Instant::now();
        self.observers.metrics.foreign_repair();
        match self.engine.replace_now(&self.state.table()) {
            Ok(s) => {
                let took = milliseconds(start.elapsed());
                tracing::warn!(
                    "repaired a change by another process: {why} (took_ms={took}, {})",
                    s.changes
                );
            }
            Err(e) => {
                self.observers.metrics.sync_failed();
                tracing::error!("repair of a change by another process ({why}) failed: {e}")
            }
        }
        give_back_memory();
        self.last_full = Instant::now();
    }

    fn serve_health_checks(&self) {
        let desired = self.state.health_checks().into_iter().map(|h| {
            let entry = ServiceHealthEntry {
                namespace: h.namespace,
                name: h.name,
                local_endpoints: h.local_endpoints,
            };
            (h.port, entry)
        });
        self.observers.service_health.sync(desired.collect());
    }
}

/// Where updates come from, and which first lists must be complete before the first sync.
pub struct Source {
    pub updates: Receiver<Update>,
    pub lists: &'static [&'static str],
}

/// The sync thread: take updates as they come, sync at most once per `min_sync_period` (a
/// burst of changes is applied together), repair every `sync_period`. Returns when every
/// sender is gone.
pub fn run_loop(mut syncer: Syncer, source: Source, min_sync_period: Duration) {
    let mut waiting: BTreeSet<&str> = source.lists.iter().copied().collect();
    let mut last_sync: Option<Instant> = None;
    loop {
        // Sleep until the next change, or until a held-back sync or a repair is due.
        let due = if !waiting.is_empty() {
            // Nothing may be applied before every first list: wait for updates.
            syncer.sync_period
        } else if syncer.pending() {
            last_sync.map_or(Duration::ZERO, |at| {
                min_sync_period.saturating_sub(at.elapsed())
            })
        } else {
            syncer
                .sync_period
                .saturating_sub(syncer.last_full.elapsed())
        };
        let first = match source.updates.recv_timeout(due) {
            Ok(update) => Some(update),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut repair: Option<String> = None;
        for update in first.into_iter().chain(source.updates.try_iter()) {
            match update {
                Update::Repair(why) => match &mut repair {
                    Some(all) => *all += &format!("; {why}"),
                    none => *none = Some(why),
                },
                Update::Upsert { object, trigger } => syncer.upsert(&object, trigger),
                Update::Remove {
                    kind,
                    namespace,
                    name,
                } => syncer.remove(kind, &namespace, &name),
                Update::Node(facts) => syncer.set_node(&facts),
                Update::Listed(kind) => {
                    waiting.remove(kind);
                }
            }
        }
        if !waiting.is_empty() {
            continue;
        }
        let held_back = last_sync.is_some_and(|at| at.elapsed() < min_sync_period);
        // The first sync runs once the lists are complete, even when they hold nothing: an
        // empty cluster still gets its table (the drop of unowned service-CIDR addresses).
        if (syncer.pending() || last_sync.is_none()) && !held_back {
            syncer.sync();
            last_sync = Some(Instant::now());
        }
        match repair {
            // Before the first sync there is nothing of ours to repair: it loads the table.
            Some(why) if last_sync.is_some() => syncer.repair_now(&why),
            _ => syncer.repair_if_due(),
        }
    }
}
