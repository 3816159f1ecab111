//! Bundled plugins whose host calls are refused for reasons a request brings about, through
//! the real gateway (2 workers). The `proxy-wasm` crate's metric and shared-data calls panic
//! on a refusal, which traps the plugin's VM (a 503 for every request with a context in it,
//! the metering backlog lost, one step toward the plugin's circuit opening); the SDK's own
//! calls return the refusal, and the plugins go on:
//! - a consumer named with the metric tag separator's pieces (`eve;.`, `a;.;.;b`, `x;`),
//!   which anyone who picks their own token subject can be: metering bills every request
//!   under the exact name and counts each consumer in a series of its own;
//! - metering past `plugin_limits.metrics`: the metrics stop growing, the billing records
//!   do not, and the refusals are counted;
//! - an answer larger than `plugin_limits.shared_data_bytes`: token-introspection uses it
//!   without caching it, jwt-auth refuses tokens as it does when no key set could be had.
//!
//! Every case: no request answered 5xx, `tollgate_plugin_traps_total` 0.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tollgate_tests::backends::{self, document_server};
use tollgate_tests::billing::BillingCollector;
use tollgate_tests::bundled::{JWT_AUTH, METERING, TOKEN_INTROSPECTION};
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::credentials::{self, unix_now};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::PluginSpec;
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario};

const HS_SECRET: &[u8] = b"an-hs256-secret-of-32-bytes-ok!!";

/// Token subjects, each a valid consumer name (visible ASCII, no comma), most made of the
/// pieces of the tag separator `;.;` and the escape the SDK writes for `;` (`%3B`).
const SUBJECTS: [&str; 8] = ["eve;.", "a;.;.;b", "x;", ";", ";.;", "%3B", "p%;q", "alice"];

fn jwt_auth() -> PluginSpec {
    PluginSpec::new("tokens", JWT_AUTH)
        .priority(100)
        .config(json!({
            "keys": [{ "kid": "hs-1", "kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(HS_SECRET) }]
        }))
}

fn metering() -> PluginSpec {
    PluginSpec::new("metering", METERING).config(json!({
        "billing_cluster": "billing",
        "path": "/v1/usage",
        "flush_interval_ms": 100,
        "max_batch": 20,
        "timeout_ms": 1000
    }))
}

fn token(subject: &str) -> String {
    credentials::hs256(
        HS_SECRET,
        &json!({ "alg": "HS256", "kid": "hs-1", "typ": "JWT" }),
        &json!({ "sub": subject, "exp": unix_now() + 3600 }),
    )
}

/// A GET of `path` with `token` as the bearer token, on a connection of its own (so that
/// requests spread over the workers).
async fn get(gateway: &Gateway, path: &str, token: &str) -> HttpResponse {
    let req = request("GET", gateway.listener("public"), "api.test", path)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .expect("valid request");
    HttpClient::http1()
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}; gateway log:\n{}", gateway.log()))
}

async fn assert_no_traps(gateway: &Gateway) {
    let metrics = gateway.metrics().await;
    let traps = sample_sum(&metrics, "tollgate_plugin_traps_total", &[]).unwrap_or(0.0);
    assert_eq!(
        traps,
        0.0,
        "plugins trapped; gateway log:\n{}\n/metrics:\n{metrics}",
        gateway.log()
    );
}

/// The gateway with jwt-auth → metering on `/api`, and `server` settings when given.
async fn start_metered(collector: &BillingCollector, server: Option<&str>) -> Running {
    let mut scenario = Scenario::new();
    if let Some(fields) = server {
        scenario = scenario.server(fields);
    }
    scenario
        .echo("echo")
        .workers(2)
        .cluster_at("billing", collector.addr())
        .forward("api", "/api", "echo")
        .plugins(&[jwt_auth(), metering()])
        .start()
        .await
}

/// Waits (bounded) for the records of the requests `expected` counts per consumer, and
/// checks that they are exactly those, each consumer under its exact name.
async fn assert_billed(
    collector: &BillingCollector,
    gateway: &Gateway,
    expected: BTreeMap<String, u64>,
) {
    let count = expected.values().sum::<u64>() as usize;
    let records = collector
        .wait_for_records(count, Duration::from_secs(10))
        .await;
    let mut billed = BTreeMap::new();
    for record in &records {
        let consumer = record["consumer"].as_str().unwrap_or_default().to_owned();
        *billed.entry(consumer).or_insert(0) += record["requests"].as_u64().expect("a number");
    }
    assert_eq!(billed, expected, "gateway log:\n{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_named_with_the_tag_separator_are_billed_and_counted_apart() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let gateway = start_metered(&collector, None).await;
    for subject in SUBJECTS {
        for _ in 0..2 {
            let response = get(&gateway, "/api/orders", &token(subject)).await;
            assert_eq!(
                response.status,
                StatusCode::OK,
                "sub {subject:?}: {}\ngateway log:\n{}",
                response.text(),
                gateway.log()
            );
        }
    }
    let expected = SUBJECTS.iter().map(|s| (s.to_string(), 2)).collect();
    assert_billed(&collector, &gateway, expected).await;

    // Each consumer in a series of its own, under its name with `;` and `%` escaped.
    let metrics = gateway.metrics().await;
    for subject in SUBJECTS {
        let label = subject.replace('%', "%25").replace(';', "%3B");
        let requests = sample_sum(
            &metrics,
            "usage_requests_total",
            &[
                ("plugin", "metering"),
                ("consumer", &label),
                ("route", "api"),
            ],
        );
        assert_eq!(
            requests,
            Some(2.0),
            "consumer {subject:?} as {label:?}:\n{metrics}"
        );
    }
    let all = sample_sum(&metrics, "usage_requests_total", &[("plugin", "metering")]);
    assert_eq!(all, Some(2.0 * SUBJECTS.len() as f64), "{metrics}");
    assert_no_traps(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_past_the_metric_limit_bills_every_request() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let gateway = start_metered(&collector, Some("plugin_limits:\n  metrics: 12\n")).await;
    // About four metrics per consumer: past the limit by the fourth.
    let consumers: Vec<String> = (0..8).map(|i| format!("consumer-{i}")).collect();
    for consumer in &consumers {
        let response = get(&gateway, "/api/x", &token(consumer)).await;
        assert_eq!(response.status, StatusCode::OK, "{}", gateway.log());
    }
    let expected = consumers.iter().map(|c| (c.clone(), 1)).collect();
    assert_billed(&collector, &gateway, expected).await;
    let metrics = gateway.metrics().await;
    let refused = sample_sum(
        &metrics,
        "tollgate_plugin_limit_refusals_total",
        &[("plugin", "metering"), ("limit", "metrics")],
    )
    .unwrap_or(0.0);
    assert!(refused > 0.0, "the limit was reached:\n{metrics}");
    assert_no_traps(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_larger_than_the_shared_data_are_used_uncached_or_refused() {
    // An introspection server whose answers carry 8 KB of claims the plugin does not read.
    let padding = "x".repeat(8192);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    let idp = backends::answering(move |_head, _body| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let body = json!({
            "active": true, "sub": "alice", "scope": "orders:read",
            "exp": unix_now() + 3600, "padding": padding
        });
        async move {
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Full::from(body.to_string()).boxed())
                .expect("valid answer")
        }
    })
    .await;
    // A key set that verifies, with 8 KB of padding.
    let jwks = json!({
        "keys": [{ "kid": "hs-2", "kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(HS_SECRET) }],
        "padding": "y".repeat(8192)
    });
    let (keys, _document) = document_server(StatusCode::OK, &jwks.to_string()).await;
    let gateway = Scenario::new()
        .server("plugin_limits:\n  shared_data_bytes: 4096\n")
        .echo("echo")
        .workers(2)
        .cluster_at("idp", idp.addr())
        .backend("keys", keys)
        .forward("introspected", "/introspected", "echo")
        .forward("jwt", "/jwt", "echo")
        .plugin(
            PluginSpec::new("introspect", TOKEN_INTROSPECTION)
                .config(json!({
                    "cluster": "idp",
                    "path": "/oauth2/introspect",
                    "client_id": "gateway",
                    "client_secret": "gateway-s3cret",
                    "timeout": "2s"
                }))
                .routes(&["introspected"]),
        )
        .plugin(
            PluginSpec::new("fetched-keys", JWT_AUTH)
                .config(json!({
                    "jwks": { "cluster": "keys", "path": "/jwks.json", "refresh_interval": "60s", "timeout": "2s" }
                }))
                .routes(&["jwt"]),
        )
        .start()
        .await;

    for round in 1..=3 {
        let response = get(&gateway, "/introspected/a", "opaque-token").await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "round {round}: {}\ngateway log:\n{}",
            response.text(),
            gateway.log()
        );
    }
    // Not cached: the server was asked for every request.
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);

    let signed = credentials::hs256(
        HS_SECRET,
        &json!({ "alg": "HS256", "kid": "hs-2", "typ": "JWT" }),
        &json!({ "sub": "bob", "exp": unix_now() + 3600 }),
    );
    for round in 1..=3 {
        let response = get(&gateway, "/jwt/a", &signed).await;
        assert_eq!(
            response.status,
            StatusCode::UNAUTHORIZED,
            "round {round}: a key set that cannot be stored is no key set: {}\ngateway log:\n{}",
            response.text(),
            gateway.log()
        );
    }
    assert_no_traps(&gateway).await;
}
