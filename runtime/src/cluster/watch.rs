//! Watchers: Services, EndpointSlices, ServiceCIDRs and this node's Node from the API server,
//! turned into [`Update`]s for the sync thread.
//!
//! No reflector store of whole objects: the compiler's per-Service state is the store, and
//! a watcher only remembers the keys it has seen so that a relist (after `410 Gone`, or a
//! reconnect) can report what disappeared meanwhile. At 100k Services a store of full objects
//! would hold several hundred MB the agent never reads.

use crate::health::{node_is_eligible, ProxyHealth};
use crate::syncer::Update;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::SystemTime;
use svc_nft_compiler::{NodeFacts, Object, Origin};

/// Services and EndpointSlices another proxy owns, and the endpoints of headless Services,
/// are none of ours (kube-proxy's selector).
const NOT_OURS: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Run the four watchers until `tx` is closed. Errors (API server unreachable, 410 Gone)
/// are logged and retried with kube-rs's default backoff; the rules stay as they are.
pub async fn run(client: Client, base: NodeFacts, health: Arc<ProxyHealth>, tx: Sender<Update>) {
    let node_name = base.node_name.clone().unwrap_or_default();
    let services = watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(NOT_OURS),
        "Service",
        tx.clone(),
        |svc| Update::Upsert {
            object: object(svc_nft_compiler::Resource::Service(Box::new(svc))),
            trigger: None,
        },
    );
    let slices = watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(NOT_OURS),
        "EndpointSlice",
        tx.clone(),
        |slice| Update::Upsert {
            trigger: trigger_time(&slice),
            object: object(svc_nft_compiler::Resource::EndpointSlice(Box::new(slice))),
        },
    );
    // Not among the lists the first sync waits for: an API server older than 1.33 serves
    // no ServiceCIDRs, and without them only the drop of unowned addresses waits.
    let service_cidrs = watch(
        Api::<ServiceCIDR>::all(client.clone()),
        watcher::Config::default(),
        "ServiceCIDR",
        tx.clone(),
        |cidr| Update::Upsert {
            object: object(svc_nft_compiler::Resource::ServiceCidr(Box::new(cidr))),
            trigger: None,
        },
    );
    let node = watch(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        "Node",
        tx,
        |node| {
            health.set_node_eligible(node_is_eligible(&node));
            Update::Node(Box::new(node_facts(&base, &node)))
        },
    );
    futures::join!(services, slices, service_cidrs, node);
}

/// The node's facts: flags first, then what its Node object says (InternalIP addresses,
/// `topology.kubernetes.io/zone`).
pub fn node_facts(base: &NodeFacts, node: &Node) -> NodeFacts {
    let mut facts = base.clone();
    if facts.node_ips.is_empty() {
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        facts.node_ips = addresses
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .collect();
    }
    if facts.zone.is_none() {
        facts.zone = node.labels().get("topology.kubernetes.io/zone").cloned();
    }
    facts
}

fn object(resource: svc_nft_compiler::Resource) -> Object {
    Object {
        origin: Origin::document("api-server", 0),
        resource,
    }
}

fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice.annotations().get(TRIGGER_TIME)?;
    let at = unix_seconds(text)?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(at))
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.frac]Z` (the annotation's format).
fn unix_seconds(text: &str) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Follow one watcher, forwarding what changed. Keys seen are remembered so that a relist
/// reports the objects that vanished while the watch was down.
async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    tx: Sender<Update>,
    upsert: impl Fn(K) -> Update,
) where
    K: Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + Debug + Send + 'static,
{
    let stream = watcher::watcher(api, config).default_backoff();
    let mut stream: std::pin::Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(stream);
    let mut known: BTreeSet<(String, String)> = BTreeSet::new();
    let mut relisted: Option<BTreeSet<(String, String)>> = None;
    let mut listed_once = false;
    // One WARN when the watch breaks, quiet retries, one INFO when it works again.
    let mut down = false;
    let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    while let Some(event) = stream.next().await {
        if event.is_ok() && std::mem::take(&mut down) {
            tracing::info!(kind, "{kind} watch resumed");
        }
        let updates = match event {
            Ok(Event::Apply(mut o)) | Ok(Event::InitApply(mut o)) => {
                o.meta_mut().managed_fields = None;
                let k = key(&o);
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(k.clone());
                }
                known.insert(k);
                vec![upsert(o)]
            }
            Ok(Event::Delete(o)) => {
                let (namespace, name) = key(&o);
                known.remove(&(namespace.clone(), name.clone()));
                vec![Update::Remove {
                    kind,
                    namespace,
                    name,
                }]
            }
            Ok(Event::Init) => {
                relisted = Some(BTreeSet::new());
                vec![]
            }
            Ok(Event::InitDone) => {
                let seen = relisted.take().unwrap_or_default();
                let gone: Vec<_> = known.difference(&seen).cloned().collect();
                known = seen;
                let mut updates: Vec<Update> = gone
                    .into_iter()
                    .map(|(namespace, name)| Update::Remove {
                        kind,
                        namespace,
                        name,
                    })
                    .collect();
                if !listed_once {
                    listed_once = true;
                    updates.push(Update::Listed(kind));
                }
                updates
            }
            Err(e) if down => {
                tracing::debug!(kind, "{kind} watch still failing: {e}");
                vec![]
            }
            Err(e) => {
                down = true;
                tracing::warn!(
                    kind,
                    "{kind} watch lost (retrying with backoff; rules unchanged): {e}"
                );
                vec![]
            }
        };
        for update in updates {
            if tx.send(update).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unix_seconds;

    #[test]
    fn trigger_times_read_as_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2026-11-27T17:01:11Z"), Some(1_795_798_871));
        assert_eq!(unix_seconds("2024-02-29T12:00:00.5Z"), Some(1_709_208_000));
        assert_eq!(unix_seconds("yesterday"), None);
    }
}
