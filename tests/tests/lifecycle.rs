//! The process as an operator sees it: command line, admin endpoints, metrics, drain on
//! SIGTERM.

use std::time::{Duration, Instant};

use http::StatusCode;
use tollgate_tests::backends;
use tollgate_tests::certs::CertAuthority;
use tollgate_tests::clients::HttpClient;
use tollgate_tests::gateway::run_tollgate;
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario};

const SHOP: &str = "
name: shop
domains: [shop.test]
routes:
  - name: refused
    match: { path: { prefix: /refused } }
    forward: { cluster: refusing }
  - name: orders
    match: { path: { prefix: / } }
    forward: { cluster: echo }
";

/// The shop on a `public` HTTP and a `secure` HTTPS listener; also returns the HTTPS
/// listener's private key, which the admin API must never show.
async fn start() -> (Running, String) {
    let gateway_cert = CertAuthority::new("ca").server_cert(&["shop.test"]);
    let gateway = Scenario::new()
        .https_listener("secure", "gateway")
        .server_cert("gateway", &gateway_cert)
        .echo("echo")
        .cluster_at("refusing", backends::refusing_address())
        .virtual_host(SHOP)
        .start()
        .await;
    (gateway, gateway_cert.key_pem)
}

#[test]
fn help_and_version() {
    let help = run_tollgate(&["--help"]);
    assert_eq!(help.code, Some(0), "{}", help.output);
    for word in ["run", "check"] {
        assert!(
            help.output.contains(word),
            "--help mentions {word}: {}",
            help.output
        );
    }
    let version = run_tollgate(&["--version"]);
    assert_eq!(version.code, Some(0), "{}", version.output);
    assert!(
        version.output.contains(env!("CARGO_PKG_VERSION")),
        "--version: {}",
        version.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_health_and_config_without_secrets() {
    let (gateway, key_pem) = start().await;
    assert_eq!(gateway.admin_get("/healthz").await.status, StatusCode::OK);
    assert_eq!(gateway.admin_get("/readyz").await.status, StatusCode::OK);

    let config = gateway.admin_get("/config").await;
    assert_eq!(config.status, StatusCode::OK);
    let text = config.text();
    assert!(
        config.json().is_object(),
        "/config is a JSON object: {text}"
    );
    for name in ["public", "echo", "orders", "shop.test"] {
        assert!(text.contains(name), "/config shows {name}: {text}");
    }
    // The tail of the key: its head is the same for every key of the same type.
    let key_body: String = key_pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let key_tail = &key_body[key_body.len() - 40..];
    assert!(
        !text.contains("PRIVATE KEY"),
        "/config must not dump private keys"
    );
    assert!(
        !text.contains(key_tail),
        "/config must not dump private keys"
    );
    assert!(
        !gateway.log().contains(key_tail),
        "the log must not contain private keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_durations_errors_and_connections() {
    let (gateway, _) = start().await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    for _ in 0..3 {
        assert_eq!(
            client.get(public, "shop.test", "/orders").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        client.get(public, "shop.test", "/refused").await.status,
        StatusCode::BAD_GATEWAY
    );

    let metrics = gateway.metrics().await;
    let requests = sample_sum(
        &metrics,
        "tollgate_requests_total",
        &[("route", "orders"), ("cluster", "echo"), ("code", "200")],
    );
    assert_eq!(
        requests,
        Some(3.0),
        "tollgate_requests_total for the three requests:\n{metrics}"
    );
    let refused = sample_sum(
        &metrics,
        "tollgate_requests_total",
        &[("route", "refused"), ("code", "502")],
    );
    assert_eq!(refused, Some(1.0), "the 502 is counted:\n{metrics}");
    let in_all_buckets = sample_sum(
        &metrics,
        "tollgate_request_duration_seconds_bucket",
        &[("route", "orders"), ("le", "+Inf")],
    );
    assert_eq!(
        in_all_buckets,
        Some(3.0),
        "the duration histogram saw three requests:\n{metrics}"
    );
    let upstream_errors = sample_sum(
        &metrics,
        "tollgate_upstream_errors_total",
        &[("cluster", "refusing")],
    );
    assert!(
        upstream_errors.is_some_and(|n| n >= 1.0),
        "the refused connect is an upstream error:\n{metrics}"
    );
    assert!(
        sample_sum(
            &metrics,
            "tollgate_active_connections",
            &[("listener", "public")]
        )
        .is_some(),
        "active connections are reported per listener:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_and_exits_0() {
    let (mut gateway, _) = start().await;
    let public = gateway.listener("public");
    let in_flight = tokio::spawn(async move {
        HttpClient::http1()
            .get(public, "shop.test", "/slow?delay_ms=2000")
            .await
    });
    gateway
        .backend("echo")
        .wait_for_requests(1, Duration::from_secs(5))
        .await;
    let signalled = Instant::now();
    gateway.terminate();

    let response = in_flight.await.unwrap();
    assert_eq!(
        response.status,
        StatusCode::OK,
        "the request in flight completes"
    );
    assert_eq!(response.header("x-backend"), Some("echo"));
    let status = gateway
        .wait_for_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10s after SIGTERM; log:\n{}", gateway.log()));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        gateway.log()
    );
    assert!(
        signalled.elapsed() >= Duration::from_millis(1000),
        "exited before the in-flight request could finish"
    );
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "the listener is closed after exit"
    );
}
