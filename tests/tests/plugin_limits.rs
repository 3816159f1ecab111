//! The `rate-limit` and `quota` plugins through the real gateway (2 workers), with
//! `key-auth` in front of them setting the consumer identity:
//! - rate-limit: allowed responses carry `RateLimit-Limit/Remaining/Reset`; the request
//!   after the burst is answered `429` with `Retry-After` and a JSON body, and never reaches
//!   the backend; plans per consumer (a client cannot pick a better plan by sending the
//!   identity header); route rules that switch the limit off; exactness under parallel
//!   load across both workers;
//! - quota: `x-quota-remaining` counts down per consumer, `429` once used up, exact under
//!   parallel clients;
//! - a bad configuration is rejected by `tollgate check`, naming the plugin and the field.

use futures_util::future::join_all;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};
use tollgate_tests::bundled::{KEY_AUTH, QUOTA, RATE_LIMIT};
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::{check_plugins, PluginSpec};
use tollgate_tests::scenario::Scenario;

/// Keys of the consumers `key-auth` knows.
const ALICE: &str = "k-alice";
const BOB: &str = "k-bob";

fn key_auth() -> PluginSpec {
    PluginSpec::new("auth", KEY_AUTH)
        .priority(100)
        .config(json!({
            "consumers": [
                { "name": "alice", "keys": [ALICE], "groups": ["gold"] },
                { "name": "bob", "keys": [BOB] }
            ]
        }))
}

/// The gateway of this file's tests; each adds what it needs and starts it.
fn scenario() -> Scenario {
    Scenario::new()
        .echo("echo")
        .forward("api", "/api", "echo")
        .forward("open", "/open", "echo")
}

async fn get(
    client: &HttpClient,
    gateway: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut builder = request("GET", gateway.listener("public"), "api.test", path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Full::default()).expect("valid request");
    client
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}; gateway log:\n{}", gateway.log()))
}

fn header_number(response: &HttpResponse, name: &str) -> u64 {
    response
        .header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?} ({})", response.headers, response.text()))
        .parse()
        .unwrap_or_else(|e| panic!("{name} is not a number: {e}"))
}

/// A plan that never refills during a test: `burst` requests, then 429.
fn fixed(burst: u64) -> Value {
    json!({ "requests_per_second": 0.0001, "burst": burst })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_then_429_with_retry_after() {
    let rate_limit = PluginSpec::new("limit", RATE_LIMIT).config(json!({
        "plans": { "small": fixed(3) },
        "key": "ip",
        "default_plan": "small",
        "routes": { "open": { "enabled": false } }
    }));
    let gateway = scenario().plugins(&[rate_limit]).start().await;
    let echo = gateway.backend("echo");
    let client = HttpClient::http1();
    for expected_remaining in [2, 1, 0] {
        let response = get(&client, &gateway, "/api/x", &[]).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(header_number(&response, "ratelimit-limit"), 3);
        assert_eq!(
            header_number(&response, "ratelimit-remaining"),
            expected_remaining
        );
        assert!(header_number(&response, "ratelimit-reset") >= 1);
    }
    let refused = get(&client, &gateway, "/api/x", &[]).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    assert!(header_number(&refused, "retry-after") >= 1);
    assert_eq!(header_number(&refused, "ratelimit-remaining"), 0);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let body = refused.json();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["plan"], "small");
    assert_eq!(
        echo.request_count(),
        3,
        "a refused request never reaches the backend"
    );

    // The route rule switches the limit off on `open`: no headers, no 429.
    for _ in 0..5 {
        let response = get(&client, &gateway, "/open/y", &[]).await;
        assert_eq!(response.status, StatusCode::OK);
        assert!(response.header("ratelimit-limit").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_follow_the_authenticated_consumer() {
    let rate_limit = PluginSpec::new("limit", RATE_LIMIT).config(json!({
        "plans": { "gold": fixed(5), "free": fixed(2) },
        "key": "consumer",
        "consumers": { "alice": "gold" },
        "default_plan": "free"
    }));
    let gateway = scenario().plugins(&[key_auth(), rate_limit]).start().await;
    let client = HttpClient::http1();
    let statuses = |key: &'static str, forged: Option<&'static str>| {
        let client = client.clone();
        let gateway = &gateway;
        async move {
            let mut headers = vec![("x-api-key", key)];
            if let Some(name) = forged {
                headers.push(("x-tollgate-consumer", name));
            }
            let mut codes = Vec::new();
            for _ in 0..7 {
                codes.push(
                    get(&client, gateway, "/api/p", &headers)
                        .await
                        .status
                        .as_u16(),
                );
            }
            codes
        }
    };
    let alice = statuses(ALICE, None).await;
    assert_eq!(
        alice,
        [200, 200, 200, 200, 200, 429, 429],
        "alice is on gold (5)"
    );
    // Bob claims to be alice with the identity header: the host strips it and key-auth
    // sets bob, so bob gets the free plan (2) and his own bucket.
    let bob = statuses(BOB, Some("alice")).await;
    assert_eq!(
        bob,
        [200, 200, 429, 429, 429, 429, 429],
        "bob is on free (2)"
    );
    let limit = get(&client, &gateway, "/api/p", &[("x-api-key", BOB)]).await;
    assert_eq!(header_number(&limit, "ratelimit-limit"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_exact_under_parallel_load() {
    const CAPACITY: usize = 40;
    const REQUESTS: usize = 200;
    let rate_limit = PluginSpec::new("limit", RATE_LIMIT).config(json!({
        "plans": { "shared": fixed(CAPACITY as u64) },
        "key": "route",
        "default_plan": "shared"
    }));
    let gateway = scenario().plugins(&[rate_limit]).start().await;
    let echo = gateway.backend("echo");
    let client = HttpClient::http1();
    let responses = join_all((0..REQUESTS).map(|i| {
        let client = client.clone();
        let gateway = &gateway;
        async move { get(&client, gateway, &format!("/api/load/{i}"), &[]).await }
    }))
    .await;
    let ok = responses
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let limited = responses
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        (ok, limited),
        (CAPACITY, REQUESTS - CAPACITY),
        "exactly the capacity passes"
    );
    assert_eq!(echo.request_count(), CAPACITY);
    // Every remaining count from CAPACITY-1 down to 0 was handed out exactly once.
    let mut remaining: Vec<u64> = responses
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .map(|r| header_number(r, "ratelimit-remaining"))
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..CAPACITY as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_down_and_refuses_when_used_up() {
    let quota = PluginSpec::new("quota", QUOTA).config(json!({
        "plans": { "basic": { "per_day": 3 }, "pro": { "per_day": 1000, "per_month": 5 } },
        "consumers": { "alice": "pro" },
        "default_plan": "basic"
    }));
    let gateway = scenario().plugins(&[key_auth(), quota]).start().await;
    let echo = gateway.backend("echo");
    let client = HttpClient::http1();
    for expected in [2, 1, 0] {
        let response = get(&client, &gateway, "/api/q", &[("x-api-key", BOB)]).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(header_number(&response, "x-quota-remaining"), expected);
        assert_eq!(header_number(&response, "x-quota-limit"), 3);
        let reset = header_number(&response, "x-quota-reset");
        assert!(
            (1..=86_400).contains(&reset),
            "seconds until UTC midnight: {reset}"
        );
    }
    let refused = get(&client, &gateway, "/api/q", &[("x-api-key", BOB)]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("x-quota-remaining"), Some("0"));
    assert!(header_number(&refused, "retry-after") >= 1);
    assert_eq!(refused.json()["error"], "quota_exceeded");
    assert_eq!(refused.json()["window"], "day");
    assert_eq!(echo.request_count(), 3);

    // Alice's plan binds on the month (5), independent of bob's counters.
    let remaining: Vec<u64> = {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let response = get(&client, &gateway, "/api/q", &[("x-api-key", ALICE)]).await;
            assert_eq!(response.status, StatusCode::OK);
            seen.push(header_number(&response, "x-quota-remaining"));
        }
        seen
    };
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let refused = get(&client, &gateway, "/api/q", &[("x-api-key", ALICE)]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["window"], "month");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_is_exact_under_parallel_clients() {
    const QUOTA_PER_DAY: usize = 30;
    let quota = PluginSpec::new("quota", QUOTA).config(json!({
        "plans": { "basic": { "per_day": QUOTA_PER_DAY } },
        "default_plan": "basic"
    }));
    let gateway = scenario().plugins(&[key_auth(), quota]).start().await;
    let echo = gateway.backend("echo");
    let client = HttpClient::http1();
    let responses = join_all((0..120).map(|i| {
        let client = client.clone();
        let gateway = &gateway;
        let key = if i % 2 == 0 { ALICE } else { BOB };
        async move {
            (
                key,
                get(&client, gateway, "/api/par", &[("x-api-key", key)]).await,
            )
        }
    }))
    .await;
    for key in [ALICE, BOB] {
        let ok = responses
            .iter()
            .filter(|(k, r)| *k == key && r.status == StatusCode::OK)
            .count();
        assert_eq!(ok, QUOTA_PER_DAY, "{key}: exactly the daily quota passes");
    }
    assert_eq!(echo.request_count(), 2 * QUOTA_PER_DAY);
}

#[test]
fn bad_configuration_names_plugin_and_field() {
    let check = |plugin: PluginSpec| check_plugins(&[plugin]);
    let outcome = check(PluginSpec::new("limit", RATE_LIMIT).config(json!({
        "plans": { "gold": { "requests_per_second": "fast" } }
    })));
    assert_ne!(outcome.code, Some(0), "{}", outcome.output);
    for fragment in ["limit", "plans.gold.requests_per_second", "invalid type"] {
        assert!(
            outcome.output.contains(fragment),
            "{fragment:?} in:\n{}",
            outcome.output
        );
    }
    let outcome = check(PluginSpec::new("quota", QUOTA).config(json!({
        "plans": { "basic": { "per_day": 5 } }, "consumers": { "alice": "gold" }
    })));
    assert_ne!(outcome.code, Some(0), "{}", outcome.output);
    for fragment in ["quota", "consumers.alice", "unknown plan \\\"gold\\\""] {
        let fragment = fragment.replace("\\\"", "\"");
        assert!(
            outcome.output.contains(&fragment)
                || outcome.output.contains(&fragment.replace('"', "\\\"")),
            "{fragment:?} in:\n{}",
            outcome.output
        );
    }
}
