//! The agent's HTTP endpoints, with kube-proxy's semantics (kubernetes
//! `pkg/proxy/healthcheck/proxy_health.go` and `service_health.go`), so that load balancers
//! and probes written for kube-proxy work unchanged:
//! - the proxy's own health on `/healthz` and `/livez` ([`ProxyHealth`], [`serve_health`]);
//! - Prometheus metrics on `/metrics` ([`serve_metrics`]);
//! - one health-check NodePort per `externalTrafficPolicy: Local` Service ([`ServiceHealth`]).

mod http;
mod service;

pub use http::{serve_health, serve_metrics};
pub use service::{
    service_health_status, Binder, ServiceHealth, ServiceHealthEntry, ServiceHealthSync,
};

use k8s_openapi::api::core::v1::Node;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point in time on both clocks: the monotonic one decides health (a wall-clock step must
/// not make the proxy look hung), the wall one is what the bodies report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Timestamp {
    pub fn now() -> Self {
        Timestamp {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Go's zero `time.Time`: what kube-proxy prints for "never updated".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// RFC 3339 UTC with whole seconds, e.g. `2023-11-14T22:13:20Z`, as kube-proxy's bodies.
pub fn rfc3339(t: SystemTime) -> String {
    let secs: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            // Round towards the past: 0.5 s before the epoch is 23:59:59.
            let d = before.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(d.subsec_nanos() > 0)
        }
    };
    let days = secs.div_euclid(86_400);
    let in_day = secs.rem_euclid(86_400);
    let (year, month, day) = date_of_day(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

/// The proleptic Gregorian date of the `days`-th day after 1970-01-01 (negative: before).
fn date_of_day(days: i64) -> (i64, u32, u32) {
    // Count from 0000-03-01, so that the leap day ends each 4/100/400-year cycle, and work
    // in 400-year cycles of 146 097 days, which repeat exactly.
    let from_march_0 = days + 719_468;
    let cycle = from_march_0.div_euclid(146_097);
    let day_of_cycle = from_march_0.rem_euclid(146_097); // 0..=146_096
    let year_of_cycle = (day_of_cycle - day_of_cycle / 1_460 + day_of_cycle / 36_524
        - day_of_cycle / 146_096)
        / 365; // 0..=399
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = cycle * 400 + year_of_cycle + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

fn rfc3339_or_zero(t: Option<SystemTime>) -> String {
    t.map_or_else(|| ZERO_TIME.to_string(), rfc3339)
}

/// The taint the Cluster Autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether `node` should still get load-balancer traffic, as kube-proxy decides it: not
/// once it is being deleted or the Cluster Autoscaler marked it for deletion. Feed it to
/// [`ProxyHealth::set_node_eligible`].
pub fn node_is_eligible(node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let taints = node.spec.as_ref().and_then(|spec| spec.taints.as_deref());
    !taints
        .unwrap_or_default()
        .iter()
        .any(|taint| taint.key == TO_BE_DELETED_TAINT)
}

#[derive(Debug)]
struct ProxyState {
    /// The end of the last successful sync.
    last_updated: Option<Timestamp>,
    /// The first change queued since the last successful sync.
    oldest_pending_queued: Option<Timestamp>,
    node_eligible: bool,
}

/// The proxy's health, as kube-proxy's `ProxyHealthServer`: healthy unless a queued change
/// has waited `health_timeout` without a successful sync (kube-proxy uses twice its sync
/// period).
///
/// The agent calls [`queued`](Self::queued) on each change to program,
/// [`updated`](Self::updated) after each successful sync and once at start (as kube-proxy's
/// `SyncLoop`), and [`set_node_eligible`](Self::set_node_eligible) when its Node changes.
/// The `_at` twins take the time, for tests.
#[derive(Debug)]
pub struct ProxyHealth {
    health_timeout: Duration,
    state: Mutex<ProxyState>,
}

impl ProxyHealth {
    pub fn new(health_timeout: Duration) -> Self {
        ProxyHealth {
            health_timeout,
            state: Mutex::new(ProxyState {
                last_updated: None,
                oldest_pending_queued: None,
                // Healthy while starting, until the Node says otherwise.
                node_eligible: true,
            }),
        }
    }

    pub fn health_timeout(&self) -> Duration {
        self.health_timeout
    }

    fn lock(&self) -> MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn queued(&self) {
        self.queued_at(Timestamp::now());
    }

    /// Only the oldest pending change counts: later ones must not push the deadline back.
    pub fn queued_at(&self, now: Timestamp) {
        self.lock().oldest_pending_queued.get_or_insert(now);
    }

    pub fn updated(&self) {
        self.updated_at(Timestamp::now());
    }

    /// Everything queued before `now` is programmed.
    pub fn updated_at(&self, now: Timestamp) {
        let mut state = self.lock();
        state.oldest_pending_queued = None;
        state.last_updated = Some(now);
    }

    /// Only `/healthz` looks at it: a node being drained is still alive.
    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    pub fn node_eligible(&self) -> bool {
        self.lock().node_eligible
    }

    /// Ignores the node's eligibility, as kube-proxy's `IsHealthy` (and Service health
    /// checks, which use it).
    pub fn is_healthy(&self) -> bool {
        self.is_healthy_at(Timestamp::now())
    }

    pub fn is_healthy_at(&self, now: Timestamp) -> bool {
        self.health(now).0
    }

    /// (healthy, last update) at `now`.
    fn health(&self, now: Timestamp) -> (bool, Option<SystemTime>) {
        let state = self.lock();
        let healthy = match state.oldest_pending_queued {
            None => true,
            Some(queued) => now.mono.saturating_duration_since(queued.mono) < self.health_timeout,
        };
        (healthy, state.last_updated.map(|t| t.wall))
    }

    /// The `/healthz` answer: 200 when healthy and the node eligible, else 503, with
    /// kube-proxy's body (see [`Body`]).
    pub fn status(&self, now: Timestamp) -> (u16, String) {
        let node_eligible = self.node_eligible();
        self.answer(now, Some(node_eligible))
    }

    /// The `/livez` answer: [`status`](Self::status) without the node's eligibility, as
    /// KEP-3836 has it: a node being drained is still alive.
    pub fn livez_status(&self, now: Timestamp) -> (u16, String) {
        self.answer(now, None)
    }

    fn answer(&self, now: Timestamp, node_eligible: Option<bool>) -> (u16, String) {
        let (healthy, last_updated) = self.health(now);
        let ok = healthy && node_eligible != Some(false);
        // As in kube-proxy, a healthy answer reports now as the top-level `lastUpdated`
        // (older releases updated it on every loop, even without changes); the per-family
        // entries keep the real time.
        let top = if ok { Some(now.wall) } else { last_updated };
        let status = last_updated.map(|at| FamilyHealth {
            last_updated: rfc3339(at),
            healthy,
        });
        let body = Body {
            last_updated: rfc3339_or_zero(top),
            current_time: rfc3339(now.wall),
            node_eligible,
            healthy,
            status: status
                .map(|s| IP_FAMILIES.map(|f| (f, s.clone())).into())
                .unwrap_or_default(),
        };
        let body = serde_json::to_string(&body).expect("plain strings and booleans");
        (if ok { 200 } else { 503 }, body)
    }
}

/// The families kube-proxy reports in `status` (kubernetes PR #129271): it runs one proxier
/// per family; svc-nft's one `inet` table and one sync serve both, so both always read alike.
const IP_FAMILIES: [&str; 2] = ["IPv4", "IPv6"];

/// kube-proxy's `ProxyHealth` JSON, field for field and in its order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    last_updated: String,
    current_time: String,
    /// Only on `/healthz`.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    /// The proxy's own health: the node's eligibility is not part of it.
    healthy: bool,
    /// Empty (left out) until the first sync.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, FamilyHealth>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyHealth {
    last_updated: String,
    healthy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy with a 60 s timeout, and `at(secs)`: `secs` after an origin whose wall time
    /// is 2023-11-14T22:13:20Z.
    fn proxy() -> (ProxyHealth, impl Fn(u64) -> Timestamp) {
        let origin = Instant::now();
        let at = move |secs| Timestamp {
            mono: origin + Duration::from_secs(secs),
            wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs),
        };
        (ProxyHealth::new(Duration::from_secs(60)), at)
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn rfc3339_formatting() {
        let t = |secs: i64| {
            if secs >= 0 {
                rfc3339(UNIX_EPOCH + Duration::from_secs(secs as u64))
            } else {
                rfc3339(UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()))
            }
        };
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z"); // leap day of a 400-year
        assert_eq!(t(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(t(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(t(4_107_542_400), "2100-03-01T00:00:00Z"); // 2100 is no leap year
        assert_eq!(t(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(t(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(t(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(t(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(t(-1), "1969-12-31T23:59:59Z");
        assert_eq!(t(-62_135_596_800), ZERO_TIME);
        // Sub-second parts are dropped (rounding towards the past).
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_700_000_000_999)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59Z"
        );
    }

    #[test]
    fn date_of_every_day_follows_the_previous_one() {
        // Walk 1600-01-01 .. 2401-01-01 day by day against a naive calendar.
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_len = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let start = -135_140; // 1600-01-01
        assert_eq!(date_of_day(start), (1600, 1, 1));
        let (mut y, mut m, mut d) = (1600, 1, 1);
        for day in start + 1..start + 292_560 {
            d += 1;
            if d > month_len(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
            assert_eq!(date_of_day(day), (y, m, d), "day {day}");
        }
        assert_eq!((y, m, d), (2400, 12, 31));
    }

    #[test]
    fn healthy_until_a_queued_change_waits_the_timeout() {
        let (h, at) = proxy();
        assert_eq!(h.health_timeout(), Duration::from_secs(60));
        // Starting up: healthy, nothing queued.
        assert!(h.is_healthy_at(at(0)));
        assert!(h.is_healthy_at(at(1_000)));

        h.updated_at(at(10));
        h.queued_at(at(20));
        assert!(h.is_healthy_at(at(20)));
        assert!(h.is_healthy_at(at(79)));
        // More changes do not push the deadline back.
        h.queued_at(at(70));
        assert!(!h.is_healthy_at(at(80)));
        assert!(!h.is_healthy_at(at(500)));

        // A successful sync clears it.
        h.updated_at(at(501));
        assert!(h.is_healthy_at(at(501)));
        assert!(h.is_healthy_at(at(10_000)));

        // A new queued change starts a new deadline.
        h.queued_at(at(10_000));
        assert!(h.is_healthy_at(at(10_059)));
        assert!(!h.is_healthy_at(at(10_060)));
    }

    #[test]
    fn never_synced_proxy_turns_unhealthy_too() {
        let (h, at) = proxy();
        h.queued_at(at(0));
        assert!(h.is_healthy_at(at(59)));
        let (code, body) = h.status(at(60));
        assert_eq!(code, 503);
        assert_eq!(
            body,
            "{\"lastUpdated\":\"0001-01-01T00:00:00Z\",\"currentTime\":\
             \"2023-11-14T22:14:20Z\",\"nodeEligible\":true,\"healthy\":false}"
        );
    }

    #[test]
    fn healthz_and_livez_bodies() {
        let (h, at) = proxy();
        h.updated_at(at(0));

        // Healthy: the top-level lastUpdated reads as now, each family's is the real one.
        let (code, body) = h.status(at(30));
        assert_eq!(code, 200);
        let family = "{\"lastUpdated\":\"2023-11-14T22:13:20Z\",\"healthy\":true}";
        assert_eq!(
            body,
            format!(
                "{{\"lastUpdated\":\"2023-11-14T22:13:50Z\",\"currentTime\":\
                 \"2023-11-14T22:13:50Z\",\"nodeEligible\":true,\"healthy\":true,\
                 \"status\":{{\"IPv4\":{family},\"IPv6\":{family}}}}}"
            )
        );
        let (code, body) = h.livez_status(at(30));
        assert_eq!(code, 200);
        assert_eq!(
            body,
            format!(
                "{{\"lastUpdated\":\"2023-11-14T22:13:50Z\",\"currentTime\":\
                 \"2023-11-14T22:13:50Z\",\"healthy\":true,\
                 \"status\":{{\"IPv4\":{family},\"IPv6\":{family}}}}}"
            )
        );

        // Hung: the real last update shows, and every family is unhealthy.
        h.queued_at(at(40));
        let (code, body) = h.status(at(100));
        assert_eq!(code, 503);
        let v = json(&body);
        assert_eq!(v["lastUpdated"], "2023-11-14T22:13:20Z");
        assert_eq!(v["currentTime"], "2023-11-14T22:15:00Z");
        assert_eq!(v["nodeEligible"], true);
        assert_eq!(v["healthy"], false);
        for family in ["IPv4", "IPv6"] {
            assert_eq!(v["status"][family]["healthy"], false);
            assert_eq!(v["status"][family]["lastUpdated"], "2023-11-14T22:13:20Z");
        }
        assert_eq!(h.livez_status(at(100)).0, 503);
    }

    #[test]
    fn node_eligibility_only_affects_healthz() {
        let (h, at) = proxy();
        assert!(h.node_eligible());
        h.set_node_eligible(false);
        assert!(!h.node_eligible());
        let (code, body) = h.status(at(5));
        assert_eq!(code, 503);
        let v = json(&body);
        assert_eq!(v["nodeEligible"], false);
        // The proxy itself is healthy: only the node is on its way out.
        assert_eq!(v["healthy"], true);
        // Never updated and not healthy-by-eligibility: the zero time shows.
        assert_eq!(v["lastUpdated"], ZERO_TIME);
        // /livez and the proxy's own health ignore it.
        let (code, body) = h.livez_status(at(5));
        assert_eq!(code, 200);
        assert_eq!(json(&body).get("nodeEligible"), None);
        assert!(h.is_healthy_at(at(5)));
        h.set_node_eligible(true);
        assert_eq!(h.status(at(5)).0, 200);
    }

    #[test]
    fn node_eligibility_from_the_node() {
        use k8s_openapi::api::core::v1::{NodeSpec, Taint};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

        let with_taints = |keys: &[&str]| Node {
            spec: Some(NodeSpec {
                taints: Some(
                    keys.iter()
                        .map(|key| Taint {
                            key: key.to_string(),
                            effect: "NoSchedule".to_string(),
                            ..Taint::default()
                        })
                        .collect(),
                ),
                ..NodeSpec::default()
            }),
            ..Node::default()
        };
        assert!(node_is_eligible(&Node::default()));
        let unschedulable = "node.kubernetes.io/unschedulable";
        assert!(node_is_eligible(&with_taints(&[unschedulable])));
        assert!(!node_is_eligible(&with_taints(&[
            unschedulable,
            TO_BE_DELETED_TAINT
        ])));

        let mut deleted = Node::default();
        let json = serde_json::json!("2024-01-01T00:00:00Z");
        deleted.metadata.deletion_timestamp = Some(serde_json::from_value::<Time>(json).unwrap());
        assert!(!node_is_eligible(&deleted));
    }
}
