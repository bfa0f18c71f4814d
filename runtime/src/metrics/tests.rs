//! The registry's exposition, family by family.
use super::*;

/// The lines of `text` that belong to metric family `name` (its samples and comments).
fn family<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| {
            let line = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            line.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with(' ')
                    || rest.starts_with('{')
                    || rest.starts_with("_bucket{")
                    || rest.starts_with("_sum ")
                    || rest.starts_with("_count ")
            })
        })
        .collect()
}

#[test]
fn kube_proxy_buckets() {
    let sync = sync_duration_buckets();
    assert_eq!(sync.len(), 15);
    assert_eq!(sync[0], 0.001);
    assert_eq!(sync[14], 16.384);
    let np = network_programming_buckets();
    assert_eq!(np.len(), 1 + 2 + 59 + 12 + 7);
    assert_eq!(&np[..5], &[0.0, 0.25, 0.5, 1.0, 2.0]);
    assert_eq!(np[61], 59.0);
    assert_eq!(np[62], 60.0);
    assert_eq!(np[73], 115.0);
    assert_eq!(np[74], 120.0);
    assert_eq!(*np.last().unwrap(), 300.0);
    assert!(np.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn histogram_renders_cumulative_buckets() {
    let m = Metrics::new();
    m.sync_done(false, 0.0015, 100.0); // le=0.002
    m.sync_done(true, 0.002, 200.0); // le=0.002 (bounds are inclusive)
    m.sync_done(true, 0.5, 300.0); // le=0.512
    m.sync_done(false, 100.0, 400.0); // +Inf only
    let text = m.render();
    let lines = family(&text, "kubeproxy_sync_proxy_rules_duration_seconds");
    let expected = [
        "# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds",
        "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 0",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.002\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.008\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.016\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.032\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.064\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.128\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.256\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.512\"} 3",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"1.024\"} 3",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"2.048\"} 3",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"4.096\"} 3",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"8.192\"} 3",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"16.384\"} 3",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"} 4",
        "kubeproxy_sync_proxy_rules_duration_seconds_sum 100.5035",
        "kubeproxy_sync_proxy_rules_duration_seconds_count 4",
    ];
    assert_eq!(lines, expected);

    // Full and partial syncs each go to their own histogram as well.
    let full = family(&text, "kubeproxy_sync_full_proxy_rules_duration_seconds");
    assert!(
        full.contains(&"kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{le=\"0.002\"} 1")
    );
    assert!(full.contains(&"kubeproxy_sync_full_proxy_rules_duration_seconds_count 2"));
    let partial = family(&text, "kubeproxy_sync_partial_proxy_rules_duration_seconds");
    assert!(partial
        .contains(&"kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket{le=\"+Inf\"} 2"));
    assert!(partial.contains(&"kubeproxy_sync_partial_proxy_rules_duration_seconds_sum 0.502"));

    // The last timestamp is the last sync's.
    assert_eq!(
        family(&text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")[2],
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds 400"
    );
}

#[test]
fn every_histogram_bucket_line_is_cumulative_and_ends_with_count() {
    let m = Metrics::new();
    for latency in [0.1, 0.3, 0.3, 7.0, 64.0, 299.0, 301.0, f64::NAN] {
        m.network_programming(latency);
    }
    let text = m.render();
    let lines = family(&text, "kubeproxy_network_programming_duration_seconds");
    let buckets: Vec<u64> = lines
        .iter()
        .filter(|l| l.contains("_bucket{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), network_programming_buckets().len() + 1);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
    assert!(lines.contains(&"kubeproxy_network_programming_duration_seconds_bucket{le=\"0\"} 0"));
    assert!(lines.contains(&"kubeproxy_network_programming_duration_seconds_bucket{le=\"0.25\"} 1"));
    assert!(lines.contains(&"kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\"} 3"));
    assert!(lines.contains(&"kubeproxy_network_programming_duration_seconds_bucket{le=\"65\"} 5"));
    assert!(lines.contains(&"kubeproxy_network_programming_duration_seconds_bucket{le=\"300\"} 6"));
    // NaN is dropped, so +Inf is 7.
    assert!(lines.contains(&"kubeproxy_network_programming_duration_seconds_bucket{le=\"+Inf\"} 7"));
    assert!(lines.contains(&"kubeproxy_network_programming_duration_seconds_count 7"));
}

#[test]
fn health_answers_are_counted_by_code() {
    let m = Metrics::new();
    m.health_answered(HealthPath::Healthz, 200);
    m.health_answered(HealthPath::Healthz, 503);
    m.health_answered(HealthPath::Healthz, 200);
    m.health_answered(HealthPath::Livez, 200);
    let text = m.render();
    assert_eq!(
        family(&text, "kubeproxy_proxy_healthz_total")[2..],
        [
            "kubeproxy_proxy_healthz_total{code=\"200\"} 2",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
        ]
    );
    assert_eq!(
        family(&text, "kubeproxy_proxy_livez_total")[2..],
        ["kubeproxy_proxy_livez_total{code=\"200\"} 1"]
    );
}

#[test]
fn api_requests_are_counted_as_client_go_does() {
    let m = Metrics::new();
    assert!(
        !m.render().contains("rest_client"),
        "none outside cluster mode"
    );
    m.rest_request("200", "GET", "10.0.0.1:6443", 0.02);
    m.rest_request("200", "GET", "10.0.0.1:6443", 0.3);
    m.rest_request("<error>", "GET", "10.0.0.1:6443", 1.0);
    let text = m.render();
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "rest_client_requests_total{code=\"200\",host=\"10.0.0.1:6443\",method=\"GET\"} 2",
        "rest_client_requests_total{code=\"<error>\",host=\"10.0.0.1:6443\",method=\"GET\"} 1",
        "rest_client_request_duration_seconds_bucket{host=\"10.0.0.1:6443\",verb=\"GET\",le=\"0.025\"} 1",
        "rest_client_request_duration_seconds_count{host=\"10.0.0.1:6443\",verb=\"GET\"} 3",
    ] {
        assert!(lines.contains(&expected), "{expected}:\n{text}");
    }
}

#[test]
fn foreign_repairs_are_counted() {
    let m = Metrics::new();
    m.foreign_repair();
    assert_eq!(
        family(&m.render(), "svcnft_foreign_changes_repaired_total")[2],
        "svcnft_foreign_changes_repaired_total 1"
    );
}

#[test]
fn counters_and_gauges() {
    let m = Metrics::new();
    let text = m.render();
    assert_eq!(
        family(&text, "svcnft_sync_failures_total"),
        [
            "# HELP svcnft_sync_failures_total Cumulative proxy rules sync failures",
            "# TYPE svcnft_sync_failures_total counter",
            "svcnft_sync_failures_total 0",
        ]
    );

    m.sync_failed();
    m.sync_failed();
    m.service_changes(3);
    m.service_changes(2);
    m.endpoint_changes(7);
    m.conntrack_pass(false, 0.002, 3);
    m.conntrack_pass(true, 0.004, 1);
    m.rejected_object();
    m.rejected_now(2);
    m.table_size(120, 30, 250);
    m.table_size(100, 20, 200); // gauges are replaced, not added
    m.services(12);
    m.queued(1_700_000_000.25);
    m.no_local_endpoints([3, 0], [1, 0]);
    m.changes_pending(2, 5);
    let text = m.render();

    assert_eq!(
        family(&text, "kubeproxy_sync_proxy_rules_no_local_endpoints_total"),
        [
            "# HELP kubeproxy_sync_proxy_rules_no_local_endpoints_total Number of services \
             with a Local traffic policy and no endpoints",
            "# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total gauge",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"} 3",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"} 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv6\",traffic_policy=\"internal\"} 0",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv6\",traffic_policy=\"external\"} 0",
        ]
    );

    let sample = |name: &str| -> String {
        let lines = family(&text, name);
        assert_eq!(lines.len(), 3, "{name}: {lines:?}");
        assert!(lines[0].starts_with(&format!("# HELP {name} ")));
        lines[2].to_string()
    };
    assert_eq!(
        family(&text, "svcnft_table_rules")[1],
        "# TYPE svcnft_table_rules gauge"
    );
    assert_eq!(
        sample("svcnft_sync_failures_total"),
        "svcnft_sync_failures_total 2"
    );
    assert_eq!(
        sample("kubeproxy_sync_proxy_rules_service_changes_total"),
        "kubeproxy_sync_proxy_rules_service_changes_total 5"
    );
    assert_eq!(
        sample("kubeproxy_sync_proxy_rules_endpoint_changes_total"),
        "kubeproxy_sync_proxy_rules_endpoint_changes_total 7"
    );
    assert_eq!(
        sample("svcnft_rejected_objects"),
        "svcnft_rejected_objects 2"
    );
    assert_eq!(
        sample("svcnft_conntrack_entries_deleted_total"),
        "svcnft_conntrack_entries_deleted_total 4"
    );
    let lines: Vec<&str> = text.lines().collect();
    for per_family in [
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 3",
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv6\"} 1",
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.002\"} 1",
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket{ip_family=\"IPv6\",le=\"0.002\"} 0",
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv6\"} 1",
    ] {
        assert!(lines.contains(&per_family), "{per_family}");
    }
    assert_eq!(
        sample("svcnft_rejected_objects_total"),
        "svcnft_rejected_objects_total 1"
    );
    assert_eq!(sample("svcnft_table_elements"), "svcnft_table_elements 100");
    assert_eq!(sample("svcnft_table_chains"), "svcnft_table_chains 20");
    assert_eq!(sample("svcnft_table_rules"), "svcnft_table_rules 200");
    assert_eq!(sample("svcnft_services"), "svcnft_services 12");
    assert_eq!(
        sample("kubeproxy_sync_proxy_rules_service_changes_pending"),
        "kubeproxy_sync_proxy_rules_service_changes_pending 2"
    );
    assert_eq!(
        sample("kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending 5"
    );
    assert_eq!(
        sample("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"),
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 1700000000.25"
    );
    assert_eq!(
        sample("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds 0"
    );
}

#[test]
fn every_family_has_help_and_type_once_and_text_ends_with_newline() {
    let text = Metrics::new().render();
    assert!(text.ends_with('\n'));
    let helps: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let types: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(helps, types);
    // Ours and kube-proxy's, and the six process metrics.
    // (Without the API client's and the health answers' families: none happened.)
    assert_eq!(helps.len(), 22 + 6);
    let mut unique = helps.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), helps.len());
}
