//! The agent's Prometheus metrics: a small registry rendered in the text exposition format
//! 0.0.4, served on `/metrics` by [`crate::health::serve_metrics`].
//!
//! The `kubeproxy_*` metrics keep kube-proxy's names, help texts, types and buckets
//! (kubernetes `pkg/proxy/metrics/metrics.go`), so dashboards and alerts written for
//! kube-proxy keep working. The `svcnft_*` metrics are ours: they have no kube-proxy
//! counterpart, or kube-proxy's is specific to another backend (its
//! `sync_proxy_rules_iptables_restore_failures_total`, for instance, is not exported at all).
//!
//! The registry is cheap to share (`Arc<Metrics>`): every update takes one short lock.
//! The standard `process_*` metrics are read at each scrape ([`process`]).

mod exposition;
mod process;

use exposition::{counter, counters, gauge, gauges, histogram, histograms, Histogram};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Buckets of kube-proxy's sync-duration histograms: `ExponentialBuckets(0.001, 2, 15)`,
/// i.e. 1 ms, 2 ms, 4 ms, ... 16.384 s.
pub fn sync_duration_buckets() -> Vec<f64> {
    let mut buckets = Vec::with_capacity(15);
    let mut bound = 0.001;
    for _ in 0..15 {
        buckets.push(bound);
        bound *= 2.0;
    }
    buckets
}

/// Buckets of kube-proxy's network-programming histogram: `MergeBuckets` (which starts
/// with a 0 bucket) of 0.25 s and 0.5 s, 1 s to 59 s by 1 s, 60 s to 115 s by 5 s, and
/// 2 min to 5 min by 30 s.
pub fn network_programming_buckets() -> Vec<f64> {
    let mut buckets = vec![0.0, 0.25, 0.5];
    buckets.extend((1..=59).map(f64::from));
    buckets.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    buckets.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    buckets
}

/// Every value, behind the registry's lock.
#[derive(Debug, Clone)]
struct Values {
    sync_duration: Histogram,
    sync_full_duration: Histogram,
    sync_partial_duration: Histogram,
    network_programming: Histogram,
    last_sync_timestamp: f64,
    last_queued_timestamp: f64,
    table_elements: f64,
    table_chains: f64,
    table_rules: f64,
    services: f64,
    sync_failures: u64,
    endpoint_changes: u64,
    service_changes: u64,
    conntrack_deleted: u64,
    rejected_objects: u64,
    foreign_repairs: u64,
    /// Per family (IPv4, IPv6): passes of the UDP conntrack cleanup, and entries it deleted.
    conntrack_passes: [Histogram; 2],
    conntrack_deleted_by_family: [u64; 2],
    /// API requests (cluster mode): by (code, method, host), and their latency by (verb, host).
    rest_requests: BTreeMap<(String, String, String), u64>,
    rest_latency: BTreeMap<(String, String), Histogram>,
    /// Health answers served, by endpoint (`healthz`, `livez`) and HTTP status.
    health_answers: BTreeMap<(HealthPath, u16), u64>,
    rejected_now: f64,
    /// Local-policy Service ports without a local endpoint: internal, external.
    /// Internal, external; per family.
    no_local_endpoints: [[f64; 2]; 2],
    /// Objects changed and not yet synced: Services, endpoints.
    changes_pending: [f64; 2],
}

/// client-go's buckets for `rest_client_request_duration_seconds`.
const REST_LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
];

/// The two health endpoints whose answers are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HealthPath {
    Healthz,
    Livez,
}

/// The agent's metrics registry. Share it as `Arc<Metrics>`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    values: Mutex<Values>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero (histograms empty).
    pub fn new() -> Self {
        Metrics {
            values: Mutex::new(Values {
                sync_duration: Histogram::new(sync_duration_buckets()),
                sync_full_duration: Histogram::new(sync_duration_buckets()),
                sync_partial_duration: Histogram::new(sync_duration_buckets()),
                network_programming: Histogram::new(network_programming_buckets()),
                last_sync_timestamp: 0.0,
                last_queued_timestamp: 0.0,
                table_elements: 0.0,
                table_chains: 0.0,
                table_rules: 0.0,
                services: 0.0,
                sync_failures: 0,
                endpoint_changes: 0,
                service_changes: 0,
                conntrack_deleted: 0,
                rejected_objects: 0,
                foreign_repairs: 0,
                conntrack_passes: [0; 2].map(|_| Histogram::new(sync_duration_buckets())),
                conntrack_deleted_by_family: [0; 2],
                health_answers: BTreeMap::new(),
                rest_requests: BTreeMap::new(),
                rest_latency: BTreeMap::new(),
                rejected_now: 0.0,
                no_local_endpoints: [[0.0; 2]; 2],
                changes_pending: [0.0; 2],
            }),
        }
    }

    /// The values, even if a panicking thread poisoned the lock (they are plain numbers,
    /// always consistent between two statements).
    fn lock(&self) -> MutexGuard<'_, Values> {
        self.values.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A successful sync that took `seconds` and ended at `at_unix` (seconds since the Unix
    /// epoch): observes `kubeproxy_sync_proxy_rules_duration_seconds` and the full or partial
    /// histogram, and sets `kubeproxy_sync_proxy_rules_last_timestamp_seconds`.
    pub fn sync_done(&self, partial: bool, seconds: f64, at_unix: f64) {
        let mut v = self.lock();
        v.sync_duration.observe(seconds);
        if partial {
            v.sync_partial_duration.observe(seconds);
        } else {
            v.sync_full_duration.observe(seconds);
        }
        v.last_sync_timestamp = at_unix;
    }

    /// A sync that failed (`svcnft_sync_failures_total`).
    pub fn sync_failed(&self) {
        self.lock().sync_failures += 1;
    }

    /// One `/healthz` or `/livez` answer (`kubeproxy_proxy_healthz_total{code}`,
    /// `kubeproxy_proxy_livez_total{code}`).
    pub fn health_answered(&self, path: HealthPath, code: u16) {
        *self.lock().health_answers.entry((path, code)).or_default() += 1;
    }

    /// One API request: its status (`<error>` without a response), method and host, and how
    /// long until its response (`rest_client_requests_total{code,host,method}`,
    /// `rest_client_request_duration_seconds{host,verb}`, as client-go has them).
    pub fn rest_request(&self, code: &str, method: &str, host: &str, seconds: f64) {
        let mut v = self.lock();
        let key = (code.to_string(), method.to_string(), host.to_string());
        *v.rest_requests.entry(key).or_default() += 1;
        let latency = v.rest_latency.entry((method.to_string(), host.to_string()));
        latency
            .or_insert_with(|| Histogram::new(REST_LATENCY_BUCKETS.to_vec()))
            .observe(seconds);
    }

    /// A repair of what another process changed in the table
    /// (`svcnft_foreign_changes_repaired_total`).
    pub fn foreign_repair(&self) {
        self.lock().foreign_repairs += 1;
    }

    /// One network-programming latency: from an object's last change (the EndpointSlice's
    /// `endpoints.kubernetes.io/last-change-trigger-time`) to the end of the sync that
    /// programmed it (`kubeproxy_network_programming_duration_seconds`).
    pub fn network_programming(&self, seconds: f64) {
        self.lock().network_programming.observe(seconds);
    }

    /// The size of the programmed nftables table after a sync (`svcnft_table_elements`,
    /// `svcnft_table_chains`, `svcnft_table_rules`).
    pub fn table_size(&self, elements: usize, chains: usize, rules: usize) {
        let mut v = self.lock();
        v.table_elements = elements as f64;
        v.table_chains = chains as f64;
        v.table_rules = rules as f64;
    }

    /// The number of Services programmed (`svcnft_services`).
    pub fn services(&self, n: usize) {
        self.lock().services = n as f64;
    }

    /// `n` more Service changes seen (`kubeproxy_sync_proxy_rules_service_changes_total`).
    pub fn service_changes(&self, n: u64) {
        self.lock().service_changes += n;
    }

    /// `n` more EndpointSlice changes seen
    /// (`kubeproxy_sync_proxy_rules_endpoint_changes_total`).
    pub fn endpoint_changes(&self, n: u64) {
        self.lock().endpoint_changes += n;
    }

    /// A sync was queued at `at_unix` (seconds since the Unix epoch):
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`.
    pub fn queued(&self, at_unix: f64) {
        self.lock().last_queued_timestamp = at_unix;
    }

    /// One family's pass of the UDP conntrack cleanup: how long it took and how many entries
    /// it deleted (`kubeproxy_conntrack_reconciler_sync_duration_seconds{ip_family}`,
    /// `kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family}`, and their sum over
    /// the families, `svcnft_conntrack_entries_deleted_total`). kube-proxy runs a pass per
    /// family at every sync; svc-nft only after a sync that changed UDP endpoints.
    pub fn conntrack_pass(&self, v6: bool, seconds: f64, deleted: u64) {
        let mut v = self.lock();
        v.conntrack_passes[usize::from(v6)].observe(seconds);
        v.conntrack_deleted_by_family[usize::from(v6)] += deleted;
        v.conntrack_deleted += deleted;
    }

    /// One more API object rejected as invalid (`svcnft_rejected_objects_total`).
    pub fn rejected_object(&self) {
        self.lock().rejected_objects += 1;
    }

    /// The objects rejected now, whose last accepted version (if any) stays in force
    /// (`svcnft_rejected_objects`).
    pub fn rejected_now(&self, n: usize) {
        self.lock().rejected_now = n as f64;
    }

    /// Service ports whose Local traffic policy finds no local endpoint, after a sync
    /// (`kubeproxy_sync_proxy_rules_no_local_endpoints_total`, a gauge despite its name).
    /// Per family (IPv4, IPv6).
    pub fn no_local_endpoints(&self, internal: [usize; 2], external: [usize; 2]) {
        self.lock().no_local_endpoints = [internal, external].map(|n| n.map(|n| n as f64));
    }

    /// Services and endpoints objects changed and not yet programmed
    /// (`kubeproxy_sync_proxy_rules_service_changes_pending`, `..._endpoint_changes_pending`).
    pub fn changes_pending(&self, services: usize, endpoints: usize) {
        self.lock().changes_pending = [services as f64, endpoints as f64];
    }

    /// Every metric in the Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        // Copy out, so the lock is not held while formatting.
        let v = self.lock().clone();
        let mut out = String::with_capacity(8192);

        // kube-proxy labels these by ip_family, one proxier per family; svc-nft's one sync
        // programs both families at once, so they carry no ip_family (a series per family
        // would repeat the same observations).
        for (name, help, h) in [
            (
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                &v.sync_duration,
            ),
            (
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                &v.sync_full_duration,
            ),
            (
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                &v.sync_partial_duration,
            ),
            (
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                &v.network_programming,
            ),
        ] {
            histogram(&mut out, name, help, h);
        }
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            v.last_sync_timestamp,
        );
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            v.last_queued_timestamp,
        );
        gauge(
            &mut out,
            "svcnft_table_elements",
            "Set and map elements in the nftables table after the last sync",
            v.table_elements,
        );
        gauge(
            &mut out,
            "svcnft_table_chains",
            "Chains in the nftables table after the last sync",
            v.table_chains,
        );
        gauge(
            &mut out,
            "svcnft_table_rules",
            "Rules in the nftables table after the last sync",
            v.table_rules,
        );
        gauge(
            &mut out,
            "svcnft_services",
            "Services programmed by the last sync",
            v.services,
        );
        gauge(
            &mut out,
            "svcnft_rejected_objects",
            "Objects rejected as invalid now (their last accepted version stays in force)",
            v.rejected_now,
        );
        let [[internal_v4, internal_v6], [external_v4, external_v6]] = v.no_local_endpoints;
        let (v4, v6) = (("ip_family", "IPv4"), ("ip_family", "IPv6"));
        let (internal, external) = (
            ("traffic_policy", "internal"),
            ("traffic_policy", "external"),
        );
        gauges(
            &mut out,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            &[
                (&[v4, internal], internal_v4),
                (&[v4, external], external_v4),
                (&[v6, internal], internal_v6),
                (&[v6, external], external_v6),
            ],
        );
        let [services, endpoints] = v.changes_pending;
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            services,
        );
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            endpoints,
        );

        counter(
            &mut out,
            "svcnft_sync_failures_total",
            "Cumulative proxy rules sync failures",
            v.sync_failures as f64,
        );
        counter(
            &mut out,
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "Cumulative proxy rules Endpoint changes",
            v.endpoint_changes as f64,
        );
        counter(
            &mut out,
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Cumulative proxy rules Service changes",
            v.service_changes as f64,
        );
        let families = [[("ip_family", "IPv4")], [("ip_family", "IPv6")]];
        let passes: Vec<_> = families
            .iter()
            .zip(&v.conntrack_passes)
            .map(|(l, h)| (&l[..], h))
            .collect();
        histograms(
            &mut out,
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
            &passes,
        );
        let deleted: Vec<_> = families
            .iter()
            .zip(v.conntrack_deleted_by_family)
            .map(|(l, n)| (&l[..], n as f64))
            .collect();
        counters(
            &mut out,
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            &deleted,
        );
        counter(
            &mut out,
            "svcnft_conntrack_entries_deleted_total",
            "Cumulative stale conntrack entries deleted",
            v.conntrack_deleted as f64,
        );
        counter(
            &mut out,
            "svcnft_rejected_objects_total",
            "Cumulative API objects rejected as invalid",
            v.rejected_objects as f64,
        );
        for (path, name, help) in [
            (
                HealthPath::Healthz,
                "kubeproxy_proxy_healthz_total",
                "Cumulative proxy healthz HTTP status",
            ),
            (
                HealthPath::Livez,
                "kubeproxy_proxy_livez_total",
                "Cumulative proxy livez HTTP status",
            ),
        ] {
            let codes: Vec<(String, f64)> = v
                .health_answers
                .iter()
                .filter(|((p, _), _)| *p == path)
                .map(|((_, code), n)| (code.to_string(), *n as f64))
                .collect();
            if codes.is_empty() {
                continue; // no answer yet: a family without samples
            }
            let labels: Vec<[(&str, &str); 1]> =
                codes.iter().map(|(c, _)| [("code", c.as_str())]).collect();
            let samples: Vec<_> = labels
                .iter()
                .zip(&codes)
                .map(|(l, (_, n))| (&l[..], *n))
                .collect();
            counters(&mut out, name, help, &samples);
        }
        render_rest(&mut out, &v);
        counter(
            &mut out,
            "svcnft_foreign_changes_repaired_total",
            "Cumulative repairs of changes another process made to the table",
            v.foreign_repairs as f64,
        );
        // A scrape without them beats no scrape: /proc may be hidden (a sandbox).
        match process::Process::read() {
            Ok(p) => p.render(&mut out),
            Err(e) => tracing::debug!("process metrics: {e}"),
        }
        out
    }
}

/// The API client's families; none outside cluster mode (no request was made).
fn render_rest(out: &mut String, v: &Values) {
    if v.rest_requests.is_empty() {
        return;
    }
    let labels: Vec<[(&str, &str); 3]> = v
        .rest_requests
        .keys()
        .map(|(code, method, host)| [("code", code.as_str()), ("host", host), ("method", method)])
        .collect();
    let samples: Vec<_> = labels
        .iter()
        .zip(v.rest_requests.values())
        .map(|(l, n)| (&l[..], *n as f64))
        .collect();
    let help = "Number of HTTP requests, partitioned by status code, method, and host.";
    counters(out, "rest_client_requests_total", help, &samples);
    let labels: Vec<[(&str, &str); 2]> = v
        .rest_latency
        .keys()
        .map(|(verb, host)| [("host", host.as_str()), ("verb", verb.as_str())])
        .collect();
    let all: Vec<_> = labels
        .iter()
        .zip(v.rest_latency.values())
        .map(|(l, h)| (&l[..], h))
        .collect();
    let help = "Request latency in seconds. Broken down by verb, and host.";
    histograms(out, "rest_client_request_duration_seconds", help, &all);
}

#[cfg(test)]
mod tests;
