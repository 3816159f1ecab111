//! Faults, timeouts, retries, load balancing, outlier ejection, limits and upstream TLS.

use std::time::{Duration, Instant};

use http::StatusCode;
use tollgate_tests::backends::{self, Failure};
use tollgate_tests::certs::CertAuthority;
use tollgate_tests::clients::{get_request, HttpClient};
use tollgate_tests::scenario::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay_holds_the_request_and_abort_answers_the_status() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: echo
    endpoints: [{ address: ${ECHO} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: slowed
        match: { path: { prefix: /slow } }
        forward: { cluster: echo }
        fault: { delay: { percent: 100, fixed: 600ms } }
      - name: aborted
        match: { path: { prefix: /abort } }
        forward: { cluster: echo }
        fault: { abort: { percent: 100, status: 418 } }
",
        )
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");

    let started = Instant::now();
    let delayed = client.get(public, "shop.test", "/slow").await;
    assert_eq!(delayed.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "delayed only {:?}",
        started.elapsed()
    );

    let aborted = client.get(public, "shop.test", "/abort").await;
    assert_eq!(aborted.status.as_u16(), 418);
    assert_eq!(
        echo.request_count(),
        1,
        "the aborted request never reaches the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_times_out_with_504() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: echo
    endpoints: [{ address: ${ECHO} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: impatient
        match: { path: { prefix: / } }
        forward: { cluster: echo, timeout: 300ms }
",
        )
        .start()
        .await;
    let started = Instant::now();
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "shop.test", "/?delay_ms=3000")
        .await;
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(2000),
        "answered after {waited:?}, expected shortly after the 300ms timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_failures_and_their_absence_shows_them() {
    let retried = backends::flaky("retried", 2, Failure::Status503).await;
    let unretried = backends::flaky("unretried", 2, Failure::Status503).await;
    let hung_up = backends::flaky("hung-up", 1, Failure::CloseConnection).await;
    let gateway = Scenario::new()
        .set("RETRIED", retried.addr())
        .set("UNRETRIED", unretried.addr())
        .set("HUNG_UP", hung_up.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: retried
    endpoints: [{ address: ${RETRIED} }]
  - name: unretried
    endpoints: [{ address: ${UNRETRIED} }]
  - name: hung-up
    endpoints: [{ address: ${HUNG_UP} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: with-retries
        match: { path: { prefix: /retried } }
        forward:
          cluster: retried
          retries: { attempts: 2, per_try_timeout: 2s, on: [5xx] }
      - name: without-retries
        match: { path: { prefix: /unretried } }
        forward: { cluster: unretried }
      - name: retry-on-reset
        match: { path: { prefix: /hung-up } }
        forward:
          cluster: hung-up
          retries: { attempts: 1, on: [reset, connect-failure] }
",
        )
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");

    let response = client.get(public, "shop.test", "/retried").await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "two retries outlast two failures"
    );
    assert_eq!(retried.request_count(), 3);

    let response = client.get(public, "shop.test", "/unretried").await;
    assert_eq!(
        response.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the backend's 503 reaches the client"
    );
    assert_eq!(unretried.request_count(), 1);

    let response = client.get(public, "shop.test", "/hung-up").await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "a connection closed unanswered is retried"
    );
    assert_eq!(hung_up.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let (a, b, c) = (
        backends::echo("a").await,
        backends::echo("b").await,
        backends::echo("c").await,
    );
    let gateway = Scenario::new()
        .set("A", a.addr())
        .set("B", b.addr())
        .set("C", c.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: trio
    load_balancing: round_robin
    endpoints: [{ address: ${A} }, { address: ${B} }, { address: ${C} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: all
        match: { path: { prefix: / } }
        forward: { cluster: trio }
",
        )
        .start()
        .await;
    let counts = tollgate_tests::clients::tally_by_header(
        &HttpClient::http1(),
        gateway.listener("public"),
        "shop.test",
        "/",
        30,
        1,
        "x-backend",
    )
    .await;
    for name in ["a", "b", "c"] {
        let count = counts.get(name).copied().unwrap_or(0);
        assert!(
            (8..=12).contains(&count),
            "round robin over three gives each about 10 of 30: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_busy_endpoint() {
    let a = backends::echo("a").await;
    let b = backends::echo("b").await;
    let gateway = Scenario::new()
        .set("A", a.addr())
        .set("B", b.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: pair
    load_balancing: least_request
    endpoints: [{ address: ${A} }, { address: ${B} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: all
        match: { path: { prefix: / } }
        forward: { cluster: pair }
",
        )
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get(public, "shop.test", "/slow?delay_ms=3000").await }
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while a.request_count() + b.request_count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = if a.request_count() == 1 { "a" } else { "b" };
    assert_eq!(
        a.request_count() + b.request_count(),
        1,
        "the slow request arrived"
    );

    // Power of two choices over two endpoints, drawing with replacement as Envoy does,
    // picks the busy one only when both draws land on it: 25%, mean 15 of 60 (standard
    // deviation 3.4). Round robin or random choice send it about 30.
    let counts = tollgate_tests::clients::tally_by_header(
        &client,
        public,
        "shop.test",
        "/fast",
        FAST_REQUESTS,
        1,
        "x-backend",
    )
    .await;
    let to_busy = counts.get(busy).copied().unwrap_or(0);
    assert!(
        to_busy <= 25,
        "while {busy} is busy, least_request should send most fast requests elsewhere: {counts:?}"
    );
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
}

const FAST_REQUESTS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_max_requests_answers_503_beyond_the_limit() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: narrow
    endpoints: [{ address: ${ECHO} }]
    limits: { max_requests: 1 }
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: all
        match: { path: { prefix: / } }
        forward: { cluster: narrow }
",
        )
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.get(public, "shop.test", "/?delay_ms=1000").await }
    });
    echo.wait_for_requests(1, Duration::from_secs(3)).await;
    let second = client.get(public, "shop.test", "/").await;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a second concurrent request is over the limit"
    );
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejected_endpoints_answer_503() {
    let gateway = Scenario::new()
        .set("GONE", backends::refusing_address())
        .policy_file("policies.yaml", "
clusters:
  - name: gone
    endpoints: [{ address: ${GONE} }]
    connect_timeout: 500ms
    health: { consecutive_failures: 1, ejection_time: 30s, max_ejection_percent: 100, panic_threshold: 0 }
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: all
        match: { path: { prefix: / } }
        forward: { cluster: gone }
")
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    let first = client.get(public, "shop.test", "/").await;
    assert_eq!(
        first.status,
        StatusCode::BAD_GATEWAY,
        "a refused connection is a 502"
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(client.get(public, "shop.test", "/").await.status.as_u16());
    }
    assert_eq!(
        statuses,
        vec![503, 503, 503],
        "the only endpoint is ejected after one failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_with_the_ca_file() {
    let upstream_ca = CertAuthority::new("upstream CA");
    let stranger_ca = CertAuthority::new("some other CA");
    let secure = backends::tls_echo("secure", &upstream_ca.server_cert(&["backend.test"])).await;
    let gateway = Scenario::new()
        .ca_cert("upstream-ca.crt", &upstream_ca)
        .ca_cert("stranger-ca.crt", &stranger_ca)
        .set("SECURE", secure.addr())
        .policy_file(
            "policies.yaml",
            "
clusters:
  - name: trusted
    endpoints: [{ address: ${SECURE} }]
    tls: { ca: certs/upstream-ca.crt, server_name: backend.test }
  - name: untrusted
    endpoints: [{ address: ${SECURE} }]
    tls: { ca: certs/stranger-ca.crt, server_name: backend.test }
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: trusted
        match: { path: { prefix: /trusted } }
        forward: { cluster: trusted }
      - name: untrusted
        match: { path: { prefix: /untrusted } }
        forward: { cluster: untrusted }
",
        )
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");

    let trusted = client
        .send(get_request(public, "shop.test", "/trusted"))
        .await
        .unwrap();
    assert_eq!(trusted.status, StatusCode::OK, "body: {}", trusted.text());
    assert_eq!(trusted.header("x-backend"), Some("secure"));

    let untrusted = client.get(public, "shop.test", "/untrusted").await;
    assert_eq!(
        untrusted.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a certificate the CA file does not vouch for is refused, as Envoy refuses it"
    );
    assert!(
        untrusted
            .text()
            .starts_with("upstream_tls_error: invalid upstream certificate"),
        "{}",
        untrusted.text()
    );
    assert_eq!(
        secure.request_count(),
        1,
        "no request went over the unverified connection"
    );
}
