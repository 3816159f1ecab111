//! Clients that try to turn passive health checking and retries against the gateway: URLs
//! that answer errors must not take endpoints out of service for everyone, and requests
//! that are not idempotent must not be replayed to an upstream that may have acted on them.

use std::collections::HashMap;

use http::StatusCode;
use http_body_util::Full;
use tollgate_tests::backends::{self, Backend, Failure};
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::Scenario;

async fn get(gateway: &Gateway, path: &str) -> HttpResponse {
    HttpClient::http1()
        .get(gateway.listener("public"), "shop.test", path)
        .await
}

async fn send(gateway: &Gateway, method: &str, path: &str) -> HttpResponse {
    let request = request(method, gateway.listener("public"), "shop.test", path)
        .body(Full::from("order=42"))
        .expect("valid request");
    HttpClient::http1()
        .send(request)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

/// Which backend answered each of `count` GETs of `path` (`status NNN` when none did).
async fn tally(gateway: &Gateway, path: &str, count: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..count {
        let response = get(gateway, path).await;
        let key = match response.header("x-backend") {
            Some(backend) => backend.to_string(),
            None => format!("status {}", response.status.as_u16()),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

async fn counter(gateway: &Gateway, name: &str, cluster: &str) -> f64 {
    sample_sum(&gateway.metrics().await, name, &[("cluster", cluster)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_one_url_do_not_eject_the_only_endpoint() {
    let echo = backends::echo("echo").await;
    // Default health settings: what the issue saw.
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: only
    endpoints: [{ address: ${ECHO} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: all
        match: { path: { prefix: / } }
        forward: { cluster: only }
",
        )
        .start()
        .await;

    for _ in 0..6 {
        assert_eq!(
            get(&gateway, "/broken?status=500").await.status.as_u16(),
            500
        );
    }
    // Gateway errors count as failures, but 50 % of one endpoint is less than one.
    for _ in 0..6 {
        assert_eq!(
            get(&gateway, "/broken?status=503").await.status.as_u16(),
            503
        );
    }
    let honest = get(&gateway, "/orders").await;
    assert_eq!(
        honest.status,
        StatusCode::OK,
        "another client is still served: {}",
        honest.text()
    );
    assert_eq!(echo.request_count(), 13);
    assert_eq!(
        counter(&gateway, "tollgate_upstream_ejections_total", "only").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_are_ejected_up_to_max_ejection_percent() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("GONE_1", backends::refusing_address())
        .set("GONE_2", backends::refusing_address())
        .set("GONE_3", backends::refusing_address())
        .set("ECHO", echo.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: four
    load_balancing: round_robin
    endpoints:
      - { address: ${GONE_1} }
      - { address: ${GONE_2} }
      - { address: ${GONE_3} }
      - { address: ${ECHO} }
    health: { consecutive_failures: 1, ejection_time: 30s, max_ejection_percent: 50 }
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: all
        match: { path: { prefix: / } }
        forward: { cluster: four }
",
        )
        .start()
        .await;

    // Enough rounds for every refusing endpoint to fail at least once.
    for _ in 0..8 {
        get(&gateway, "/").await;
    }
    assert_eq!(
        counter(&gateway, "tollgate_upstream_ejections_total", "four").await,
        2.0,
        "two of four endpoints is the 50 % limit"
    );
    // The third refusing endpoint stays in rotation with the healthy one.
    let counts = tally(&gateway, "/", 8).await;
    assert_eq!(
        counts.get("echo").copied().unwrap_or(0),
        4,
        "round robin over the two endpoints left: {counts:?}"
    );
    assert_eq!(
        counts.get("status 502").copied().unwrap_or(0),
        4,
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_panic_threshold_every_endpoint_is_used() {
    let a = backends::echo("a").await;
    let b = backends::echo("b").await;
    let gateway = Scenario::new()
        .set("A", a.addr())
        .set("B", b.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: panicky
    load_balancing: round_robin
    endpoints: [{ address: ${A} }, { address: ${B} }]
    health: { consecutive_failures: 1, ejection_time: 30s, max_ejection_percent: 100 }
  - name: strict
    load_balancing: round_robin
    endpoints: [{ address: ${A} }, { address: ${B} }]
    health:
      consecutive_failures: 1
      ejection_time: 30s
      max_ejection_percent: 100
      panic_threshold: 0
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: panicky
        match: { path: { prefix: /panicky } }
        forward: { cluster: panicky }
      - name: strict
        match: { path: { prefix: /strict } }
        forward: { cluster: strict }
",
        )
        .start()
        .await;

    for cluster in ["panicky", "strict"] {
        // One 503 each: the first ejects one endpoint, the second (50 % healthy is not
        // below the default threshold) the other.
        for _ in 0..2 {
            let response = get(&gateway, &format!("/{cluster}?status=503")).await;
            assert_eq!(response.status.as_u16(), 503, "{}", response.text());
        }
        assert_eq!(
            counter(&gateway, "tollgate_upstream_ejections_total", cluster).await,
            2.0,
            "{cluster}"
        );
    }

    // Nothing healthy is below 50 %: both endpoints get traffic again.
    let counts = tally(&gateway, "/panicky/orders", 10).await;
    assert_eq!(counts.get("a"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&5), "{counts:?}");
    assert_eq!(
        counter(&gateway, "tollgate_upstream_panic_picks_total", "panicky").await,
        10.0
    );

    // With the threshold at 0 there is no panic mode: every client gets 503.
    let refused = get(&gateway, "/strict/orders").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        refused.text().contains("no_healthy_upstream"),
        "{}",
        refused.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eject_on_5xx_counts_500_and_gateway_errors_does_not() {
    let a = backends::echo("a").await;
    let b = backends::echo("b").await;
    let gateway = Scenario::new()
        .set("A", a.addr())
        .set("B", b.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: any5xx
    load_balancing: round_robin
    endpoints: [{ address: ${A} }, { address: ${B} }]
    health: { consecutive_failures: 2, ejection_time: 30s, eject_on: 5xx }
  - name: gateway
    load_balancing: round_robin
    endpoints: [{ address: ${A} }, { address: ${B} }]
    health: { consecutive_failures: 2, ejection_time: 30s }
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: any5xx
        match: { path: { prefix: /any5xx } }
        forward: { cluster: any5xx }
      - name: gateway
        match: { path: { prefix: /gateway } }
        forward: { cluster: gateway }
",
        )
        .start()
        .await;

    for cluster in ["any5xx", "gateway"] {
        for _ in 0..4 {
            let response = get(&gateway, &format!("/{cluster}?status=500")).await;
            assert_eq!(response.status.as_u16(), 500);
        }
    }
    assert_eq!(
        counter(&gateway, "tollgate_upstream_ejections_total", "any5xx").await,
        1.0,
        "two 500s in a row eject one endpoint; the default 50 % keeps the other"
    );
    assert_eq!(
        counter(&gateway, "tollgate_upstream_ejections_total", "gateway").await,
        0.0,
        "a 500 is an answer, not a gateway error"
    );
    let counts = tally(&gateway, "/any5xx/orders", 6).await;
    assert_eq!(counts.len(), 1, "one endpoint is out: {counts:?}");
    let counts = tally(&gateway, "/gateway/orders", 6).await;
    assert_eq!(counts.get("a"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&3), "{counts:?}");
}

const RETRY_POLICIES: &str = "
clusters:
  - name: echo
    endpoints: [{ address: ${ECHO} }]
  - name: hung-up
    endpoints: [{ address: ${HUNG_UP} }]
  - name: half-refusing
    load_balancing: round_robin
    endpoints: [{ address: ${GONE} }, { address: ${HEALTHY} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: safe
        match: { path: { prefix: /safe } }
        forward:
          cluster: echo
          retries: { attempts: 2, on: [gateway-error] }
      - name: opted-in
        match: { path: { prefix: /opted-in } }
        forward:
          cluster: echo
          retries: { attempts: 2, on: [gateway-error], non_idempotent: true }
      - name: hung-up
        match: { path: { prefix: /hung-up } }
        forward:
          cluster: hung-up
          retries: { attempts: 1, on: [reset, connect-failure] }
      - name: half-refusing
        match: { path: { prefix: /half-refusing } }
        forward:
          cluster: half-refusing
          retries: { attempts: 1, on: [connect-failure] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_requests_are_retried_only_when_unsent_or_opted_in() {
    let echo = backends::echo("echo").await;
    let hung_up = backends::flaky("hung-up", 1, Failure::CloseConnection).await;
    let healthy = backends::echo("healthy").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .set("HUNG_UP", hung_up.addr())
        .set("GONE", backends::refusing_address())
        .set("HEALTHY", healthy.addr())
        .policy_file("policies.yaml", RETRY_POLICIES)
        .start()
        .await;
    let methods_seen = |backend: &Backend, method: &str| {
        backend
            .requests()
            .iter()
            .filter(|r| r.method == method)
            .count()
    };

    // The issue: a POST that met a 502 was sent three times.
    let response = send(&gateway, "POST", "/safe/orders?status=502").await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        methods_seen(&echo, "POST"),
        1,
        "the POST reached the upstream once"
    );
    let response = send(&gateway, "PATCH", "/safe/orders?status=503").await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(methods_seen(&echo, "PATCH"), 1);

    // Idempotent methods are retried as before.
    let response = get(&gateway, "/safe/orders?status=502").await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert_eq!(methods_seen(&echo, "GET"), 3, "a GET is tried three times");
    let response = send(&gateway, "PUT", "/safe/orders?status=504").await;
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(methods_seen(&echo, "PUT"), 3, "a PUT is idempotent");

    // The route may declare its POSTs safe to repeat.
    let response = send(&gateway, "POST", "/opted-in/orders?status=502").await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert_eq!(methods_seen(&echo, "POST"), 1 + 3);

    // A connection that closed after taking the POST may have acted on it.
    let response = send(&gateway, "POST", "/hung-up/orders").await;
    assert_eq!(
        response.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        response.text()
    );
    assert_eq!(hung_up.request_count(), 1, "the reset POST is not replayed");

    // A refused connection proves the POST was never sent: it goes to the healthy endpoint.
    for _ in 0..4 {
        let response = send(&gateway, "POST", "/half-refusing/orders").await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    }
    assert_eq!(
        methods_seen(&healthy, "POST"),
        4,
        "each POST arrived exactly once"
    );
    let log = gateway.log();
    assert!(
        log.lines()
            .any(|line| line.contains("/half-refusing/orders") && line.contains("attempts=2")),
        "some POSTs met the refusing endpoint first and were retried:\n{log}"
    );
}
