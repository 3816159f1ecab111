//! Plugins driven by hostile traffic into `server.plugin_limits`, through the real gateway
//! (2 workers), with an honest client on another connection served throughout:
//! - `tp-limits` keying shared data by a client header: a flood of 5 000 distinct values
//!   leaves the `vm_id` at its key limit (on `/metrics` and `/plugins`), evicting the flood's
//!   own entries while an honest counter touched between bursts is never reset; a value
//!   larger than the whole byte limit is refused with BAD_ARGUMENT;
//! - a shared queue nobody drains accepts `shared_queue_length` items, then refuses with
//!   INTERNAL_FAILURE; after a reload that raises the length, the same queue takes the new
//!   length's worth;
//! - metrics defined past the plugin's limit are refused with INTERNAL_FAILURE and never
//!   reach `/metrics`, while names already defined are still found;
//! - `tp-callout`: a callout answered with a body larger than `callout_response_bytes` is
//!   delivered as a failed call (no headers, no body), whether streamed or announced by its
//!   content-length, a small one as usual; `tp-grpc`: a
//!   unary answer or a stream message larger than the limit closes the call with
//!   RESOURCE_EXHAUSTED (8).
//!
//! Every refusal counts in `tollgate_plugin_limit_refusals_total{plugin,limit}`.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tokio::sync::watch;
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::{PluginSpec, TP_CALLOUT, TP_GRPC, TP_LIMITS};
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario, GENERATED_FILE};

const PLUGIN_LIMITS: &str = "
plugin_limits:
  shared_data_keys: 500
  shared_data_bytes: 65536
  shared_queue_length: 20
  metrics: 10
  callout_response_bytes: ${CALLOUT_LIMIT}
";

const KEY_LIMIT: u64 = 500;
const FLOOD_BURSTS: usize = 50;
const BURST: usize = 100;

/// The gateway with `callout_response_bytes: callout_limit` and the other limits above.
async fn start_with_callout_limit(callout_limit: u64) -> Running {
    let plugins = [
        PluginSpec::new("limits", TP_LIMITS)
            .field("vm_id", json!("limits"))
            .routes(&["limits"]),
        PluginSpec::new("callout-small", TP_CALLOUT)
            .config(json!({ "cluster": "callee", "path": "/small", "timeout_ms": 5000 }))
            .routes(&["callout-small"]),
        // About 33 KB, streamed without a content-length.
        PluginSpec::new("callout-big", TP_CALLOUT)
            .config(json!({ "cluster": "callee", "path": "/big?stream_chunks=3000", "timeout_ms": 5000 }))
            .routes(&["callout-big"]),
        // The echo's JSON repeats the 9 000-byte query: a content-length above the limit.
        PluginSpec::new("callout-announced", TP_CALLOUT)
            .config(json!({ "cluster": "callee", "path": format!("/big?pad={}", "x".repeat(9000)), "timeout_ms": 5000 }))
            .routes(&["callout-announced"]),
        PluginSpec::new("grpc-callout", TP_GRPC)
            .config(json!({ "cluster": "grpc-service", "service": "tollgate.test.Greeter", "method": "SayHello" }))
            .routes(&["grpc"]),
        PluginSpec::new("grpc-stream-callout", TP_GRPC)
            .config(json!({ "cluster": "grpc-stream-service", "service": "tollgate.test.Echo", "method": "Chat", "stream": true }))
            .routes(&["grpc-stream"]),
    ];
    Scenario::new()
        .server(PLUGIN_LIMITS)
        .set("CALLOUT_LIMIT", callout_limit)
        .echo("echo")
        .echo("callee")
        .grpc("grpc-service")
        .grpc_stream_echo("grpc-stream-service")
        .forward("limits", "/limits", "echo")
        .forward("callout-small", "/callout-small", "echo")
        .forward("callout-big", "/callout-big", "echo")
        .forward("callout-announced", "/callout-announced", "echo")
        .forward("grpc-stream", "/grpc-stream", "echo")
        .forward("grpc", "/grpc", "echo")
        .forward("plain", "/", "echo")
        .plugins(&plugins)
        .start()
        .await
}

async fn start() -> Running {
    start_with_callout_limit(8192).await
}

async fn send(
    client: &HttpClient,
    gateway: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut builder = request("GET", gateway.listener("public"), "limits.test", path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Full::default()).expect("valid request");
    match tokio::time::timeout(Duration::from_secs(10), client.send(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => panic!("GET {path}: {e:#}; gateway log:\n{}", gateway.log()),
        Err(_) => panic!(
            "GET {path}: no answer in 10 s; gateway log:\n{}",
            gateway.log()
        ),
    }
}

fn header<'a>(response: &'a HttpResponse, name: &str) -> &'a str {
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    response
        .header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers))
}

/// An honest client on its own connection pool, sending plain requests until told to stop
/// (at most 2 000); returns how many it sent, every one of which must have been answered 200.
fn honest_client(gateway: &Gateway, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<usize> {
    let addr = gateway.listener("public");
    tokio::spawn(async move {
        let client = HttpClient::http1();
        let mut served = 0;
        while !*stop.borrow() && served < 2_000 {
            let req = request("GET", addr, "honest.test", "/plain")
                .body(Full::default())
                .expect("valid request");
            let response = tokio::time::timeout(Duration::from_secs(10), client.send(req))
                .await
                .expect("the honest client is answered within 10 s")
                .expect("the honest client's request completes");
            assert_eq!(response.status, StatusCode::OK, "{}", response.text());
            served += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        served
    })
}

async fn refusals(gateway: &Gateway, plugin: &str, limit: &str) -> f64 {
    let metrics = gateway.metrics().await;
    sample_sum(
        &metrics,
        "tollgate_plugin_limit_refusals_total",
        &[("plugin", plugin), ("limit", limit)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_minting_flood_stays_within_the_shared_data_limit() {
    let gateway = &start().await;
    let (stop, stopped) = watch::channel(false);
    let honest = honest_client(gateway, stopped);
    let flood = HttpClient::http1();
    let counter = HttpClient::http1();
    for burst in 0..FLOOD_BURSTS {
        let responses = join_all((0..BURST).map(|i| {
            let flood = &flood;
            let key = format!("minted-{}", burst * BURST + i);
            async move { send(flood, gateway, "/limits", &[("x-tp-key", &key)]).await }
        }))
        .await;
        for response in &responses {
            assert_eq!(
                header(response, "x-tp-count"),
                "1",
                "each minted key is new"
            );
        }
        // An honest rate-limit counter, used between bursts: never evicted, never reset.
        let response = send(&counter, gateway, "/limits", &[("x-tp-key", "honest")]).await;
        assert_eq!(
            header(&response, "x-tp-count"),
            (burst + 1).to_string(),
            "the honest counter was reset after burst {burst}"
        );
    }
    let _ = stop.send(true);
    let served = honest.await.expect("the honest client did not panic");
    assert!(served > 0, "the honest client was served meanwhile");

    let metrics = gateway.metrics().await;
    let sample = |name: &str| {
        sample_sum(&metrics, name, &[("vm_id", "limits")])
            .unwrap_or_else(|| panic!("no {name}{{vm_id=\"limits\"}} on /metrics:\n{metrics}"))
    };
    let inserted = (FLOOD_BURSTS * BURST + 1) as f64;
    assert_eq!(sample("tollgate_plugin_shared_data_keys"), KEY_LIMIT as f64);
    assert_eq!(
        sample("tollgate_plugin_shared_data_evictions_total"),
        inserted - KEY_LIMIT as f64
    );
    assert!(sample("tollgate_plugin_shared_data_bytes") <= 65536.0);

    let plugins = gateway.admin_get("/plugins").await.json();
    let entry = plugins["plugins"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["name"] == "limits"))
        .unwrap_or_else(|| panic!("no plugin `limits` on /plugins: {plugins}"));
    assert_eq!(entry["shared_data"]["vm_id"], "limits", "{entry}");
    assert_eq!(entry["shared_data"]["keys"], KEY_LIMIT, "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_larger_than_the_byte_limit_is_refused() {
    let gateway = &start().await;
    let client = HttpClient::http1();
    let fits = send(&client, gateway, "/limits", &[("x-tp-set-bytes", "60000")]).await;
    assert_eq!(header(&fits, "x-tp-set-status"), "0");
    // "blob" (4 bytes) + 65 533 bytes is one byte more than the whole limit.
    let too_big = send(&client, gateway, "/limits", &[("x-tp-set-bytes", "65533")]).await;
    assert_eq!(header(&too_big, "x-tp-set-status"), "2", "BAD_ARGUMENT");
    let exact = send(&client, gateway, "/limits", &[("x-tp-set-bytes", "65532")]).await;
    assert_eq!(header(&exact, "x-tp-set-status"), "0");
    assert_eq!(refusals(gateway, "limits", "shared_data_bytes").await, 1.0);
    let plain = send(&client, gateway, "/plain", &[]).await;
    assert_eq!(plain.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shared_queue_refuses_more_items() {
    let gateway = &start().await;
    let (stop, stopped) = watch::channel(false);
    let honest = honest_client(gateway, stopped);
    let client = HttpClient::http1();
    let first = send(&client, gateway, "/limits", &[("x-tp-enqueue", "25")]).await;
    assert_eq!(header(&first, "x-tp-enqueued"), "20");
    assert_eq!(
        header(&first, "x-tp-enqueue-status"),
        "10",
        "INTERNAL_FAILURE"
    );
    let again = send(&client, gateway, "/limits", &[("x-tp-enqueue", "1")]).await;
    assert_eq!(header(&again, "x-tp-enqueued"), "0");
    assert_eq!(header(&again, "x-tp-enqueue-status"), "10");
    assert_eq!(
        refusals(gateway, "limits", "shared_queue_length").await,
        2.0
    );
    let _ = stop.send(true);
    assert!(honest.await.expect("the honest client did not panic") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_past_the_limit_are_refused() {
    let gateway = &start().await;
    let client = HttpClient::http1();
    let first = define(&client, gateway, "x-tp-define", "tp_minted:15").await;
    assert_eq!(first, (10, 10), "INTERNAL_FAILURE");
    // Names already defined are found again; a new one is still refused.
    let again = define(&client, gateway, "x-tp-define", "tp_minted:5").await;
    assert_eq!(again, (5, 0));
    let other = define(&client, gateway, "x-tp-define", "tp_other:1").await;
    assert_eq!(other, (0, 10));

    let metrics = gateway.metrics().await;
    assert!(
        sample_sum(&metrics, "tp_minted_9_total", &[("plugin", "limits")]).is_some(),
        "{metrics}"
    );
    assert!(
        sample_sum(&metrics, "tp_minted_10_total", &[("plugin", "limits")]).is_none(),
        "{metrics}"
    );
    assert!(
        sample_sum(&metrics, "tp_other_0_total", &[]).is_none(),
        "{metrics}"
    );
    assert_eq!(refusals(gateway, "limits", "metrics").await, 2.0);
    assert_eq!(series_refused(gateway, "limits").await, 2.0);
    let plain = send(&client, gateway, "/plain", &[]).await;
    assert_eq!(plain.status, StatusCode::OK);
}

/// The cap counts series: one metric name with ten label sets is ten series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_cap_counts_series_not_names() {
    let gateway = &start().await;
    let client = HttpClient::http1();
    let first = define(&client, gateway, "x-tp-define-tagged", "tp_series:12").await;
    assert_eq!(first, (10, 10), "INTERNAL_FAILURE");
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.matches("# TYPE tp_series_total counter\n").count(),
        1,
        "one family: {metrics}"
    );
    let series = |labels: &[(&str, &str)]| sample_sum(&metrics, "tp_series_total", labels);
    assert!(
        series(&[("plugin", "limits"), ("n", "9")]).is_some(),
        "{metrics}"
    );
    assert!(series(&[("n", "10")]).is_none(), "{metrics}");
    assert_eq!(series_refused(gateway, "limits").await, 1.0);
    // Every new series beyond the cap is refused and counted; known ones are found.
    let again = define(&client, gateway, "x-tp-define-tagged", "tp_series:11").await;
    assert_eq!(again, (10, 10));
    assert_eq!(series_refused(gateway, "limits").await, 2.0);
}

/// Asks tp-limits to define metrics (`header` is `x-tp-define` or `x-tp-define-tagged`,
/// `spec` its `NAME:N`); returns how many it defined and the status that stopped it.
async fn define(
    client: &HttpClient,
    gateway: &Gateway,
    header_name: &str,
    spec: &str,
) -> (u32, u32) {
    let response = send(client, gateway, "/limits", &[(header_name, spec)]).await;
    let number = |name| header(&response, name).parse().expect("a number");
    (number("x-tp-defined"), number("x-tp-define-status"))
}

/// `tollgate_plugin_metric_series_refused_total` of `plugin`, 0 when absent.
async fn series_refused(gateway: &Gateway, plugin: &str) -> f64 {
    let metrics = gateway.metrics().await;
    sample_sum(
        &metrics,
        "tollgate_plugin_metric_series_refused_total",
        &[("plugin", plugin)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_response_larger_than_the_limit_fails_the_call() {
    let gateway = &start().await;
    let (stop, stopped) = watch::channel(false);
    let honest = honest_client(gateway, stopped);
    let client = HttpClient::http1();

    let small = send(&client, gateway, "/callout-small", &[]).await;
    let small = small.json()["headers"].clone();
    assert_eq!(small["x-callout-status"], "200", "{small}");
    let small_len: u64 = small["x-callout-body-len"]
        .as_str()
        .and_then(|len| len.parse().ok())
        .unwrap_or_else(|| panic!("no body length in {small}"));
    assert!(small_len > 0 && small_len <= 8192, "{small}");

    let big = send(&client, gateway, "/callout-big", &[]).await;
    assert_eq!(big.status, StatusCode::OK, "{}", big.text());
    let big = big.json()["headers"].clone();
    assert_eq!(big["x-callout-status"], "failed", "{big}");
    assert_eq!(big["x-callout-body-len"], "0", "{big}");
    assert_eq!(
        refusals(gateway, "callout-big", "callout_response_bytes").await,
        1.0
    );
    let announced = send(&client, gateway, "/callout-announced", &[]).await;
    assert_eq!(announced.status, StatusCode::OK, "{}", announced.text());
    let announced = announced.json()["headers"].clone();
    assert_eq!(announced["x-callout-status"], "failed", "{announced}");
    assert_eq!(
        refusals(gateway, "callout-announced", "callout_response_bytes").await,
        1.0
    );
    assert_eq!(
        refusals(gateway, "callout-small", "callout_response_bytes").await,
        0.0
    );
    let _ = stop.send(true);
    assert!(honest.await.expect("the honest client did not panic") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_answer_larger_than_the_limit_closes_the_call() {
    // 7 bytes: smaller than any framed message the gRPC backends answer (`hello` is 12
    // bytes with its prefix, the echoed `one` 8).
    let gateway = &start_with_callout_limit(7).await;
    let client = HttpClient::http1();

    let unary = send(&client, gateway, "/grpc", &[]).await;
    assert_eq!(unary.status, StatusCode::OK, "{}", unary.text());
    let unary = unary.json()["headers"].clone();
    assert_eq!(unary["x-grpc-status"], "8", "RESOURCE_EXHAUSTED: {unary}");
    assert!(unary.get("x-grpc-body").is_none(), "{unary}");

    let stream = send(&client, gateway, "/grpc-stream", &[]).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.text());
    let stream = stream.json()["headers"].clone();
    assert_eq!(stream["x-grpc-stream-status"], "8", "{stream}");
    assert_eq!(stream["x-grpc-stream-messages"], "0", "{stream}");

    assert_eq!(
        refusals(gateway, "grpc-callout", "callout_response_bytes").await,
        1.0
    );
    assert_eq!(
        refusals(gateway, "grpc-stream-callout", "callout_response_bytes").await,
        1.0
    );
    let plain = send(&client, gateway, "/plain", &[]).await;
    assert_eq!(plain.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_limits() {
    let gateway = &start().await;
    let client = HttpClient::http1();
    let full = send(&client, gateway, "/limits", &[("x-tp-enqueue", "25")]).await;
    assert_eq!(header(&full, "x-tp-enqueued"), "20");

    let generation = |plugins: &serde_json::Value| plugins["generation"].as_u64().unwrap_or(0);
    let before = generation(&gateway.admin_get("/plugins").await.json());
    let policies = gateway.policy_file(GENERATED_FILE);
    let text = std::fs::read_to_string(&policies)
        .expect("read the policies")
        .replace("shared_queue_length: 20", "shared_queue_length: 30");
    std::fs::write(&policies, text).expect("write the policies");
    // A reload builds every plugin's VMs again: on a loaded 2-core machine that takes seconds.
    let started = Instant::now();
    loop {
        let plugins = gateway.admin_get("/plugins").await.json();
        if generation(&plugins) > before {
            assert!(plugins["last_reload"]["error"].is_null(), "{plugins}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the edit was never loaded: {plugins}\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The queue outlived the reload with its 20 items; 10 more now fit.
    let more = send(&client, gateway, "/limits", &[("x-tp-enqueue", "15")]).await;
    assert_eq!(header(&more, "x-tp-enqueued"), "10");
    assert_eq!(header(&more, "x-tp-enqueue-status"), "10");
}
