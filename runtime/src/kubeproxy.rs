//! kube-proxy's own config file, as kubeadm puts it in the `kube-proxy` ConfigMap
//! (`config.conf`: `apiVersion: kubeproxy.config.k8s.io/v1alpha1`, `kind:
//! KubeProxyConfiguration`). The settings svc-nft has are read where kube-proxy reads them,
//! with kube-proxy's defaults for its zero values; every other v1alpha1 field is accepted
//! and, when set, named in [`Settings::ignored`]; any other key is an error naming it.
//!
//! Field list: `staging/src/k8s.io/kube-proxy/config/v1alpha1/types.go`; which proxier
//! section counts in which mode: `pkg/proxy/apis/config/v1alpha1/conversion.go`;
//! defaults: `pkg/proxy/apis/config/v1alpha1/defaults.go`.

use crate::config::{cidrs, duration, nodeport_cidrs, LogFormat, Problem, Settings};
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";

/// Top-level fields svc-nft reads.
const READ: &[&str] = &[
    "apiVersion",
    "kind",
    "mode",
    "clusterCIDR",
    "nodePortAddresses",
    "hostnameOverride",
    "bindAddress",
    "healthzBindAddress",
    "metricsBindAddress",
    "featureGates",
    "iptables",
    "ipvs",
    "nftables",
    "logging",
];

/// Top-level fields svc-nft has no use for.
const IGNORED: &[&str] = &[
    "clientConnection",
    "bindAddressHardFail",
    "enableProfiling",
    "showHiddenMetricsForVersion",
    "winkernel",
    "detectLocalMode",
    "detectLocal",
    "oomScoreAdj",
    "conntrack",
    "configSyncPeriod",
    "portRange",
    "windowsRunAsService",
];

/// The fields of each section svc-nft reads from: (section, read, ignored).
const SECTIONS: &[(&str, &[&str], &[&str])] = &[
    (
        "iptables",
        &["masqueradeAll", "syncPeriod", "minSyncPeriod"],
        &["masqueradeBit", "localhostNodePorts", "snatNodeInternalIP"],
    ),
    (
        "nftables",
        &["masqueradeAll", "syncPeriod", "minSyncPeriod"],
        &["masqueradeBit"],
    ),
    (
        "ipvs",
        &["syncPeriod", "minSyncPeriod"],
        &[
            "scheduler",
            "excludeCIDRs",
            "strictARP",
            "tcpTimeout",
            "tcpFinTimeout",
            "udpTimeout",
        ],
    ),
    (
        "logging",
        &["format"],
        &["flushFrequency", "verbosity", "vmodule", "options"],
    ),
];

/// kube-proxy's ports for its servers (pkg/cluster/ports).
const HEALTHZ_PORT: u16 = 10256;
const METRICS_PORT: u16 = 10249;

/// Read a KubeProxyConfiguration (already known to be one).
pub fn settings(text: &str) -> Result<Settings, Problem> {
    let mut top: Mapping = serde_yaml::from_str(text)?;
    let mut ignored = Vec::new();
    check_keys(&top, "", READ, IGNORED, &mut ignored)?;
    let mut sections = Sections::new();
    for (name, read, skip) in SECTIONS {
        let section = take_mapping(&mut top, name)?;
        check_keys(&section, name, read, skip, &mut ignored)?;
        sections.insert(name, section);
    }
    let mode = string(&top, "mode")?.unwrap_or_default();
    let proxier = Proxier::for_mode(&sections, &mode, &mut ignored);
    let bind = bind_address(&top)?;
    let cluster_cidr = string(&top, "clusterCIDR")?.unwrap_or_default();
    let nodeport_addresses = strings(&top, "nodePortAddresses")?;
    let mut settings = Settings {
        cluster_cidrs: cidrs([cluster_cidr.as_str()], "clusterCIDR")?,
        service_cidrs: vec![],
        nodeport_addresses: nodeport_cidrs(
            nodeport_addresses.iter().map(String::as_str),
            "nodePortAddresses",
        )?,
        node_ips: bind
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect(),
        masquerade_all: proxier.masquerade_all()?,
        hostname_override: string(&top, "hostnameOverride")?.filter(|h| !h.is_empty()),
        healthz_bind_address: Some(server(&top, "healthzBindAddress", bind, HEALTHZ_PORT)?),
        metrics_bind_address: Some(server(&top, "metricsBindAddress", bind, METRICS_PORT)?),
        sync_period: proxier.period("syncPeriod")?,
        min_sync_period: proxier.period("minSyncPeriod")?,
        log_format: log_format(&sections["logging"])?,
        feature_gates: feature_gates(&top)?,
        ignored: vec![],
    };
    ignored.sort();
    settings.ignored = ignored;
    Ok(settings)
}

/// Every key of `map` is known; the ignored ones set to anything but their zero value are
/// added to `ignored` as dotted paths (`clientConnection.kubeconfig`).
fn check_keys(
    map: &Mapping,
    section: &str,
    read: &[&str],
    skip: &[&str],
    ignored: &mut Vec<String>,
) -> Result<(), Problem> {
    for (key, value) in map {
        let name = key.as_str().unwrap_or_default();
        let path = dotted(section, name);
        if skip.contains(&name) {
            set_leaves(value, &path, ignored);
        } else if !read.contains(&name) {
            return Err(unknown(&path, read.iter().chain(skip)));
        }
    }
    Ok(())
}

fn dotted(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// An unknown key, with the known one it most likely meant (same letters, other case).
fn unknown<'a>(path: &str, mut known: impl Iterator<Item = &'a &'a str>) -> Problem {
    let key = path.rsplit('.').next().unwrap_or(path);
    let hint = known
        .find(|k| k.eq_ignore_ascii_case(key))
        .map(|k| format!(" (did you mean {k}?)"))
        .unwrap_or_default();
    Problem::UnknownField(format!("{path}{hint}"))
}

/// The dotted paths of the leaves under `value` that are set.
fn set_leaves(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let key = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"));
                set_leaves(v, &dotted(path, &key), out);
            }
        }
        v if !is_zero(v) => out.push(path.to_string()),
        _ => {}
    }
}

/// What kubeadm writes for a setting left alone.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => matches!(s.as_str(), "" | "0" | "0s"),
        Value::Sequence(items) => items.is_empty(),
        Value::Mapping(map) => map.values().all(is_zero),
        Value::Tagged(t) => is_zero(&t.value),
    }
}

fn take_mapping(top: &mut Mapping, key: &str) -> Result<Mapping, Problem> {
    match top.remove(key) {
        None | Some(Value::Null) => Ok(Mapping::new()),
        Some(Value::Mapping(map)) => Ok(map),
        Some(_) => Err(Problem::invalid(key, "not a mapping")),
    }
}

/// The sections read from, by name.
type Sections = BTreeMap<&'static str, Mapping>;

/// Where the mode says the proxier settings are: (section name, its fields).
struct Proxier<'a> {
    masquerade: (&'a str, &'a Mapping),
    periods: (&'a str, &'a Mapping),
}

impl Proxier<'_> {
    /// kube-proxy's conversion: masqueradeAll from nftables in mode nftables, else from
    /// iptables; the sync periods from the mode's section (ipvs, nftables, else iptables).
    /// What the other sections set is ignored.
    fn for_mode<'a>(sections: &'a Sections, mode: &str, ignored: &mut Vec<String>) -> Proxier<'a> {
        let section = |name: &'static str| (name, &sections[name]);
        let (masquerade, periods) = match mode {
            "nftables" => (section("nftables"), section("nftables")),
            "ipvs" => (section("iptables"), section("ipvs")),
            _ => (section("iptables"), section("iptables")),
        };
        for name in ["iptables", "nftables", "ipvs"] {
            for key in ["masqueradeAll", "syncPeriod", "minSyncPeriod"] {
                let from = if key == "masqueradeAll" {
                    masquerade.0
                } else {
                    periods.0
                };
                if let Some(value) = sections[name].get(key).filter(|_| from != name) {
                    set_leaves(value, &dotted(name, key), ignored);
                }
            }
        }
        Proxier {
            masquerade,
            periods,
        }
    }

    fn masquerade_all(&self) -> Result<bool, Problem> {
        let (name, map) = self.masquerade;
        match map.get("masqueradeAll") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Problem::invalid(
                &dotted(name, "masqueradeAll"),
                "not true or false",
            )),
        }
    }

    /// A period; zero (kubeadm's `0s`) means svc-nft's default, as it means kube-proxy's.
    fn period(&self, key: &str) -> Result<Option<std::time::Duration>, Problem> {
        let (name, map) = self.periods;
        let path = dotted(name, key);
        let text = string(map, key).map_err(|_| Problem::invalid(&path, "not a duration"))?;
        match text.as_deref().map(str::trim) {
            None | Some("" | "0" | "0s") => Ok(None),
            Some(text) => duration(text, &path).map(Some),
        }
    }
}

fn string(map: &Mapping, key: &str) -> Result<Option<String>, Problem> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Problem::invalid(key, "not a string")),
    }
}

/// `featureGates`: a map of gate names to booleans.
fn feature_gates(top: &Mapping) -> Result<Vec<crate::feature_gates::Gate>, Problem> {
    let gates = match top.get("featureGates") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Mapping(gates)) => gates,
        Some(_) => return Err(Problem::invalid("featureGates", "not a mapping")),
    };
    gates
        .iter()
        .map(|(name, on)| match (name.as_str(), on.as_bool()) {
            (Some(name), Some(on)) => Ok((name.to_string(), on)),
            _ => Err(Problem::invalid(
                "featureGates",
                "not a map of names to true|false",
            )),
        })
        .collect()
}

fn strings(map: &Mapping, key: &str) -> Result<Vec<String>, Problem> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| Problem::invalid(key, "not a list of strings")),
        Some(_) => Err(Problem::invalid(key, "not a list of strings")),
    }
}

/// bindAddress: kube-proxy's idea of the node's primary IP when it is not 0.0.0.0 or ::;
/// its family picks the servers' default addresses.
fn bind_address(top: &Mapping) -> Result<Option<IpAddr>, Problem> {
    match string(top, "bindAddress")?.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            Problem::invalid("bindAddress", &format!("{text:?} is not an IP address"))
        }),
    }
}

/// A server's address as kube-proxy's defaulting leaves it: empty is the default for the
/// bind address's family, an address alone gets the default port.
fn server(top: &Mapping, key: &str, bind: Option<IpAddr>, port: u16) -> Result<String, Problem> {
    let ipv6 = bind.is_some_and(|ip| ip.is_ipv6());
    let default_ip = match (port, ipv6) {
        (HEALTHZ_PORT, false) => "0.0.0.0",
        (HEALTHZ_PORT, true) => "[::]",
        (_, false) => "127.0.0.1",
        (_, true) => "[::1]",
    };
    let text = string(top, key)?.unwrap_or_default();
    Ok(match text.trim() {
        "" => format!("{default_ip}:{port}"),
        t => match t.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => format!("{ip}:{port}"),
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            Err(_) => t.to_string(),
        },
    })
}

fn log_format(logging: &Mapping) -> Result<Option<LogFormat>, Problem> {
    match string(logging, "format")
        .map_err(|_| Problem::invalid("logging.format", "not a string"))?
        .as_deref()
    {
        None | Some("") => Ok(None),
        Some("text") => Ok(Some(LogFormat::Text)),
        Some("json") => Ok(Some(LogFormat::Json)),
        Some(other) => Err(Problem::invalid(
            "logging.format",
            &format!("{other:?}: svc-nft logs text or json"),
        )),
    }
}
