//! The `metering` plugin through the real gateway (2 workers), delivering usage records to
//! the demo billing collector (`demo-backend billing`, run as a process):
//! - every request becomes exactly one record (per consumer and route: requests, status
//!   class, bytes, latency), and the per-consumer-and-route metrics agree;
//! - while the collector answers `503` (its `FILE.down` marker exists) records are kept and
//!   retried; after the outage all of them arrive, none twice, none dropped;
//! - with a backlog too small for the outage, the oldest records are dropped and counted in
//!   `metering_records_dropped_total`: delivered + dropped = sent.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};
use tollgate_tests::billing::BillingCollector;
use tollgate_tests::bundled::{KEY_AUTH, METERING};
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::PluginSpec;
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario};

fn key_auth() -> PluginSpec {
    PluginSpec::new("auth", KEY_AUTH)
        .priority(100)
        .config(json!({
            "consumers": [
                { "name": "alice", "keys": ["k-alice"] },
                { "name": "bob", "keys": ["k-bob"] }
            ]
        }))
}

fn metering(extra: Value) -> PluginSpec {
    let mut config = json!({
        "billing_cluster": "billing",
        "path": "/v1/usage",
        "flush_interval_ms": 100,
        "max_batch": 20,
        "timeout_ms": 1000
    });
    for (key, value) in extra.as_object().expect("an object") {
        config[key] = value.clone();
    }
    PluginSpec::new("metering", METERING).config(config)
}

async fn start(collector: &BillingCollector, plugins: &[PluginSpec]) -> Running {
    Scenario::new()
        .echo("echo")
        .cluster_at("billing", collector.addr())
        .forward("api", "/api", "echo")
        .forward("other", "/other", "echo")
        .plugins(plugins)
        .start()
        .await
}

async fn send(
    client: &HttpClient,
    gateway: &Gateway,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> HttpResponse {
    let req = request(method, gateway.listener("public"), "api.test", path)
        .header("x-api-key", key)
        .body(Full::from(body.to_owned()))
        .expect("valid request");
    client
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}; gateway log:\n{}", gateway.log()))
}

/// Sums of `field` per (consumer, route, status_class).
fn totals(records: &[Value], field: &str) -> BTreeMap<(String, String, String), u64> {
    let mut totals = BTreeMap::new();
    for record in records {
        let key = (
            record["consumer"].as_str().unwrap_or_default().to_owned(),
            record["route"].as_str().unwrap_or_default().to_owned(),
            record["status_class"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        *totals.entry(key).or_insert(0) += record[field].as_u64().expect("a number");
    }
    totals
}

fn key(consumer: &str, route: &str, class: &str) -> (String, String, String) {
    (consumer.into(), route.into(), class.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_billed_once_per_consumer_and_route() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let gateway = start(&collector, &[key_auth(), metering(json!({}))]).await;
    let client = HttpClient::http1();
    for i in 0..12 {
        let response = send(
            &client,
            &gateway,
            "POST",
            &format!("/api/{i}"),
            "k-alice",
            "0123456789",
        )
        .await;
        assert_eq!(response.status, StatusCode::OK);
    }
    for _ in 0..5 {
        let response = send(&client, &gateway, "GET", "/api/x?status=404", "k-alice", "").await;
        assert_eq!(response.status, StatusCode::NOT_FOUND);
    }
    for _ in 0..7 {
        let response = send(&client, &gateway, "GET", "/other/y", "k-bob", "").await;
        assert_eq!(response.status, StatusCode::OK);
    }
    let records = collector
        .wait_for_records(24, Duration::from_secs(10))
        .await;
    // A little longer: nothing beyond the 24 may arrive (no duplicates).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let records_after = collector.records();
    assert_eq!(
        records.len(),
        24,
        "records: {records:#?}\ngateway log:\n{}",
        gateway.log()
    );
    assert_eq!(records_after.len(), 24, "no record is sent twice");

    let requests = totals(&records, "requests");
    assert_eq!(
        requests,
        BTreeMap::from([
            (key("alice", "api", "2xx"), 12),
            (key("alice", "api", "4xx"), 5),
            (key("bob", "other", "2xx"), 7),
        ])
    );
    let request_bytes = totals(&records, "request_bytes");
    assert_eq!(
        request_bytes[&key("alice", "api", "2xx")],
        120,
        "12 bodies of 10 bytes"
    );
    assert_eq!(request_bytes[&key("bob", "other", "2xx")], 0);
    let response_bytes = totals(&records, "response_bytes");
    assert!(
        response_bytes[&key("bob", "other", "2xx")] > 7 * 50,
        "echo JSON bodies were counted"
    );
    for record in &records {
        assert!(record["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(record["latency_ms"].as_u64().unwrap() < 10_000);
        let method = record["method"].as_str().unwrap();
        assert!(method == "GET" || method == "POST");
    }

    // The same totals as plugin metrics (both workers' VMs add to one value).
    let metrics = gateway.metrics().await;
    // Consumer and route are labels of one family per measure, not parts of its name.
    let series = |name: &str, labels: &[(&str, &str)]| {
        let mut labels = labels.to_vec();
        labels.push(("plugin", "metering"));
        sample_sum(&metrics, name, &labels).unwrap_or(0.0) as u64
    };
    let alice = [("consumer", "alice"), ("route", "api")];
    let bob = [("consumer", "bob"), ("route", "other")];
    assert_eq!(series("usage_requests_total", &alice), 17, "{metrics}");
    assert_eq!(
        series(
            "usage_responses_total",
            &[alice[0], alice[1], ("status_class", "4xx")]
        ),
        5
    );
    assert_eq!(series("usage_request_bytes_total", &alice), 120);
    assert_eq!(series("usage_requests_total", &bob), 7);
    assert_eq!(series("usage_latency_ms_count", &bob), 7);
    assert_eq!(series("usage_requests_total", &[]), 24);
    for family in ["usage_requests_total counter", "usage_latency_ms histogram"] {
        assert_eq!(
            metrics.matches(&format!("# TYPE {family}\n")).count(),
            1,
            "{metrics}"
        );
    }
    assert!(!metrics.contains("usage_alice"), "{metrics}");
    assert_eq!(series("metering_records_sent_total", &[]), 24);
    assert_eq!(series("metering_records_dropped_total", &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_outage_loses_no_records() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let gateway = start(&collector, &[key_auth(), metering(json!({}))]).await;
    let client = HttpClient::http1();
    fs::write(collector.down_marker(), "").expect("create the outage marker");
    for i in 0..30 {
        let response = send(
            &client,
            &gateway,
            "GET",
            &format!("/api/{i}"),
            "k-alice",
            "",
        )
        .await;
        assert_eq!(response.status, StatusCode::OK);
    }
    // About ten flush intervals of refused batches.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        collector.records().is_empty(),
        "nothing is accepted during the outage"
    );
    let metrics = gateway.metrics().await;
    let failed = sample_sum(
        &metrics,
        "metering_batches_failed_total",
        &[("plugin", "metering")],
    )
    .unwrap_or(0.0);
    assert!(
        failed >= 2.0,
        "batches were refused and retried: {failed}\n{metrics}"
    );
    fs::remove_file(collector.down_marker()).expect("end the outage");

    let records = collector
        .wait_for_records(30, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(records.len(), 30, "every record arrives after the outage");
    assert_eq!(collector.records().len(), 30, "and none twice");
    assert_eq!(
        totals(&records, "requests"),
        BTreeMap::from([(key("alice", "api", "2xx"), 30)])
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        sample_sum(
            &metrics,
            "metering_records_dropped_total",
            &[("plugin", "metering")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample_sum(
            &metrics,
            "metering_records_sent_total",
            &[("plugin", "metering")]
        ),
        Some(30.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_only_past_the_backlog_bound_and_counted() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let plugins = [
        key_auth(),
        metering(json!({ "max_batch": 5, "max_backlog": 5 })),
    ];
    let gateway = start(&collector, &plugins).await;
    let client = HttpClient::http1();
    fs::write(collector.down_marker(), "").expect("create the outage marker");
    const SENT: u64 = 16;
    for i in 0..SENT {
        let response = send(&client, &gateway, "GET", &format!("/api/{i}"), "k-bob", "").await;
        assert_eq!(response.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    fs::remove_file(collector.down_marker()).expect("end the outage");
    // Two workers keep at most 5 each: at least 6 of 16 had to go.
    let mut delivered = 0;
    let mut dropped = 0;
    for _ in 0..100 {
        delivered = collector.records().len() as u64;
        let metrics = gateway.metrics().await;
        dropped = sample_sum(
            &metrics,
            "metering_records_dropped_total",
            &[("plugin", "metering")],
        )
        .unwrap_or(0.0) as u64;
        if delivered + dropped >= SENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        delivered + dropped,
        SENT,
        "delivered {delivered}, dropped {dropped}"
    );
    assert!(
        dropped >= SENT - 10,
        "at most two backlogs of 5 survive: dropped {dropped}"
    );
    assert!(
        delivered >= 5,
        "the newest records survive: delivered {delivered}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_an_earlier_plugin_are_billed_with_their_details() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let gateway = start(&collector, &[key_auth(), metering(json!({}))]).await;
    let client = HttpClient::http1();
    for _ in 0..3 {
        let response = send(&client, &gateway, "DELETE", "/api/secret", "wrong-key", "").await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    }
    let records = collector.wait_for_records(3, Duration::from_secs(10)).await;
    assert_eq!(
        records.len(),
        3,
        "records: {records:#?}\ngateway log:\n{}",
        gateway.log()
    );
    for record in &records {
        // key-auth answered before metering ran its request phase; metering still gets the
        // request-wide facts in on_log, as every filter does in Envoy.
        assert_eq!(record["method"], "DELETE", "{record}");
        assert_eq!(record["status_class"], "4xx", "{record}");
        assert!(
            record["response_bytes"].as_u64().is_some_and(|n| n > 0),
            "{record}"
        );
    }
}
