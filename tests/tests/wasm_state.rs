//! State plugins keep outside a single request, through the real gateway (2 workers):
//! - `tp-shared`: a shared-data counter incremented with compare-and-swap by 200 concurrent
//!   requests across both workers' VMs ends exact (the values handed out are a permutation of
//!   1..=200); a shared queue resolved with the plugin's own vm_id is drained by
//!   `on_queue_ready`; `on_tick` runs at the configured period; the counter outlives a
//!   reload that rebuilds the plugin (the store is the gateway's, handed from snapshot to
//!   snapshot);
//! - `tp-metrics`: a plugin-defined counter, gauge and histogram, read back with `get_metric`
//!   and exported on the admin `/metrics` with the plugin name as label;
//! - `tp-properties`: host properties with Envoy's names and encodings (strings raw, integers
//!   8-byte little-endian, bool 1 byte), and a value `set_property` stores for a later plugin;
//!   names that differ only in bytes that are not UTF-8 are different names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::{
    byte_property_names_wat, plugins_file, PluginSpec, TP_METRICS, TP_PROPERTIES, TP_SHARED,
};
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::Scenario;

/// The gateway every test here starts, with its plugins added.
fn scenario() -> Scenario {
    Scenario::new()
        .echo("echo")
        .forward("shared", "/shared", "echo")
        .forward("metrics", "/metrics-route", "echo")
        .forward("props", "/props", "echo")
}

async fn send(
    client: &HttpClient,
    gateway: &Gateway,
    method: &str,
    host: &str,
    path: &str,
    body: &str,
) -> HttpResponse {
    let req = request(method, gateway.listener("public"), host, path)
        .body(Full::from(body.to_owned()))
        .expect("valid request");
    client
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}; gateway log:\n{}", gateway.log()))
}

fn number(response: &HttpResponse, header: &str) -> u64 {
    response
        .header(header)
        .unwrap_or_else(|| panic!("no {header} in {:?}", response.headers))
        .parse()
        .unwrap_or_else(|e| panic!("{header} is not a number: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_counter_is_exact_under_concurrency() {
    let gateway = scenario()
        .plugin(PluginSpec::new("shared", TP_SHARED).routes(&["shared"]))
        .start()
        .await;
    let client = HttpClient::http1();
    let responses = join_all((0..200).map(|i| {
        let client = client.clone();
        let gateway = &gateway;
        async move {
            send(
                &client,
                gateway,
                "GET",
                "shared.test",
                &format!("/shared/{i}"),
                "",
            )
            .await
        }
    }))
    .await;
    let mut counters: Vec<u64> = responses
        .iter()
        .map(|response| {
            assert_eq!(response.status, StatusCode::OK, "{}", response.text());
            assert!(
                response.json()["headers"].get("x-tp-enqueue").is_none(),
                "resolve/enqueue failed: {}",
                response.text()
            );
            number(response, "x-tp-counter")
        })
        .collect();
    counters.sort_unstable();
    let expected: Vec<u64> = (1..=200).collect();
    assert_eq!(
        counters, expected,
        "every increment must be seen exactly once (CAS)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_drained_and_ticks_run() {
    let gateway = scenario()
        .plugin(PluginSpec::new("shared", TP_SHARED).routes(&["shared"]))
        .start()
        .await;
    let client = HttpClient::http1();
    for i in 0..10 {
        let response = send(
            &client,
            &gateway,
            "GET",
            "shared.test",
            &format!("/shared/q{i}"),
            "",
        )
        .await;
        assert_eq!(response.status, StatusCode::OK);
    }
    // on_queue_ready runs asynchronously: poll (bounded) until the 10 items were dequeued.
    let mut dequeued = 0;
    let mut first_ticks = None;
    for _ in 0..40 {
        let response = send(&client, &gateway, "GET", "shared.test", "/shared/probe", "").await;
        dequeued = number(&response, "x-tp-dequeued");
        first_ticks.get_or_insert(number(&response, "x-tp-ticks"));
        if dequeued >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dequeued >= 10,
        "on_queue_ready dequeued only {dequeued} of at least 10 items\n{}",
        gateway.log()
    );

    let first_ticks = first_ticks.expect("probed at least once");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let response = send(&client, &gateway, "GET", "shared.test", "/shared/ticks", "").await;
    let later_ticks = number(&response, "x-tp-ticks");
    assert!(
        later_ticks >= first_ticks + 3,
        "a 100 ms tick period gives several ticks in 600 ms: {first_ticks} → {later_ticks}"
    );
    assert!(
        later_ticks < first_ticks + 200,
        "ticks far too frequent: {first_ticks} → {later_ticks}"
    );
    let dequeued_later = number(&response, "x-tp-dequeued");
    assert!(
        dequeued_later >= dequeued,
        "tp-dequeued only grows: {dequeued} → {dequeued_later}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_metrics_are_counted_and_exported() {
    let gateway = scenario()
        .plugin(PluginSpec::new("metered", TP_METRICS).routes(&["metrics"]))
        .start()
        .await;
    let client = HttpClient::http1();
    let body = "x".repeat(100);
    for expected in 1..=5u64 {
        let response = send(
            &client,
            &gateway,
            "POST",
            "metrics.test",
            "/metrics-route",
            &body,
        )
        .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(
            number(&response, "x-tp-requests"),
            expected,
            "get_metric reads the counter shared by every worker's VM"
        );
    }
    // on_log (gauge decrement, histogram record) may run just after the response is sent.
    let labels = [("plugin", "metered")];
    let mut text = String::new();
    for _ in 0..40 {
        text = gateway.metrics().await;
        if sample_sum(&text, "tp_inflight", &labels) == Some(0.0)
            && sample_sum(&text, "tp_body_size_count", &labels) == Some(5.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sample_sum(&text, "tp_requests_total", &labels),
        Some(5.0),
        "counter; /metrics:\n{text}"
    );
    assert_eq!(
        sample_sum(&text, "tp_inflight", &labels),
        Some(0.0),
        "gauge; /metrics:\n{text}"
    );
    assert_eq!(
        sample_sum(&text, "tp_body_size_count", &labels),
        Some(5.0),
        "histogram count; /metrics:\n{text}"
    );
    assert_eq!(
        sample_sum(&text, "tp_body_size_sum", &labels),
        Some(500.0),
        "histogram sum; /metrics:\n{text}"
    );
    assert!(
        text.contains("tp_body_size_bucket{"),
        "histogram buckets; /metrics:\n{text}"
    );
    // The host's own per-plugin metrics.
    assert!(
        sample_sum(&text, "tollgate_plugin_callbacks_total", &labels).is_some_and(|n| n >= 10.0),
        "callbacks counted; /metrics:\n{text}"
    );
    assert!(
        sample_sum(&text, "tollgate_plugin_memory_bytes", &labels).is_some_and(|n| n >= 65536.0),
        "VM memory reported (at least one wasm page); /metrics:\n{text}"
    );
    assert!(
        text.contains("tollgate_plugin_callback_seconds_total{plugin=\"metered\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_have_envoy_names_and_encodings() {
    let properties = json!({ "properties": [
        { "path": ["request", "path"], "type": "string" },
        { "path": ["request", "url_path"], "type": "string" },
        { "path": ["request", "method"], "type": "string" },
        { "path": ["request", "host"], "type": "string" },
        { "path": ["request", "scheme"], "type": "string" },
        { "path": ["request", "time"], "type": "int" },
        { "path": ["source", "address"], "type": "string" },
        { "path": ["source", "port"], "type": "int" },
        { "path": ["destination", "address"], "type": "string" },
        { "path": ["destination", "port"], "type": "int" },
        { "path": ["connection", "mtls"], "type": "bool" },
        { "path": ["xds", "route_name"], "type": "string" },
        { "path": ["xds", "cluster_name"], "type": "string" },
        { "path": ["plugin_name"], "type": "string" },
        { "path": ["response", "code"], "type": "int" },
        { "path": ["no", "such", "property"], "type": "string" }
    ]});
    let plugins = [
        PluginSpec::new("marker-setter", TP_PROPERTIES)
            .routes(&["props"])
            .priority(10),
        PluginSpec::new("props", TP_PROPERTIES)
            .config(properties)
            .routes(&["props"])
            .priority(5),
        PluginSpec::new("marker-reader", TP_PROPERTIES)
            .config(json!({ "read_marker": true }))
            .routes(&["props"])
            .priority(0),
    ];
    let gateway = scenario().plugins(&plugins).start().await;
    let public = gateway.listener("public");
    let response = send(
        &HttpClient::http1(),
        &gateway,
        "GET",
        "props.test",
        "/props/a?b=1",
        "",
    )
    .await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{}\n{}",
        response.text(),
        gateway.log()
    );
    let header = |name: &str| -> String {
        response
            .header(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}\n{}", response.headers, gateway.log()))
            .to_owned()
    };
    assert_eq!(header("x-prop-request-path"), "/props/a?b=1");
    assert_eq!(header("x-prop-request-url-path"), "/props/a");
    assert_eq!(header("x-prop-request-method"), "GET");
    assert_eq!(header("x-prop-request-host"), "props.test");
    assert_eq!(header("x-prop-request-scheme"), "http");
    let source = header("x-prop-source-address");
    assert!(
        source.starts_with("127.0.0.1:"),
        "source.address is ip:port: {source}"
    );
    let source_port = header("x-prop-source-port");
    assert_eq!(
        source,
        format!("127.0.0.1:{source_port}"),
        "source.port is an 8-byte integer matching the address"
    );
    assert_eq!(header("x-prop-destination-address"), public.to_string());
    assert_eq!(
        header("x-prop-destination-port"),
        public.port().to_string(),
        "destination.port as 8-byte integer"
    );
    assert_eq!(
        header("x-prop-connection-mtls"),
        "false",
        "connection.mtls as 1-byte bool"
    );
    assert_eq!(header("x-prop-xds-route-name"), "props");
    assert_eq!(header("x-prop-xds-cluster-name"), "echo");
    assert_eq!(
        header("x-prop-plugin-name"),
        "props",
        "plugin_name is the instance's name"
    );
    assert_eq!(
        header("x-prop-response-code"),
        "200",
        "response.code as 8-byte integer"
    );
    assert_eq!(header("x-prop-no-such-property"), "<missing>");
    let request_time: i64 = header("x-prop-request-time")
        .parse()
        .expect("request.time is i64 nanoseconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (now - request_time).abs() < 600 * 1_000_000_000,
        "request.time is nanoseconds since the epoch: {request_time} vs now {now}"
    );
    assert_eq!(
        header("x-tp-marker"),
        "from-tp-properties",
        "set_property of an earlier plugin is readable by a later one"
    );
}

/// Properties a plugin sets are keyed by their names' bytes, as Envoy keys filter state:
/// two names that differ only in a byte that is not UTF-8 do not share a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_names_are_bytes() {
    let gateway = scenario()
        .plugin(PluginSpec::new("bytes", byte_property_names_wat()).routes(&["props"]))
        .start()
        .await;
    let response = send(
        &HttpClient::http1(),
        &gateway,
        "GET",
        "props.test",
        "/props",
        "",
    )
    .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let forwarded = gateway.backend("echo").requests();
    let request = forwarded.last().expect("the request reached the upstream");
    assert_eq!(request.header("x-first"), Some("first"));
    assert_eq!(request.header("x-second"), Some("second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_outlives_a_reload_that_rebuilds_the_plugin() {
    let gateway = scenario()
        .plugin(PluginSpec::new("shared", TP_SHARED).routes(&["shared"]))
        .start()
        .await;
    let client = HttpClient::http1();
    for expected in 1..=3 {
        let response = send(&client, &gateway, "GET", "shared.test", "/shared/a", "").await;
        assert_eq!(number(&response, "x-tp-counter"), expected);
    }
    // A changed configuration makes a new plugin instance with new VMs: a reused instance
    // would keep its VMs and prove nothing about the store.
    let rebuilt = PluginSpec::new("shared", TP_SHARED)
        .routes(&["shared"])
        .config(json!({ "edited": true }));
    std::fs::write(
        gateway.policy_file("plugins.json"),
        plugins_file(&[rebuilt]),
    )
    .expect("write plugins.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !gateway.log().contains("new configuration is live") {
        assert!(
            std::time::Instant::now() < deadline,
            "the edit was never loaded; log:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = send(&client, &gateway, "GET", "shared.test", "/shared/b", "").await;
    assert_eq!(
        number(&response, "x-tp-counter"),
        4,
        "the rebuilt plugin must see the counter its previous instance left"
    );
}
