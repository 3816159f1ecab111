//! Bad input and broken upstreams get the statuses policies/README.md promises.

use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::Full;
use tollgate_tests::backends;
use tollgate_tests::clients::{expect_status, raw_exchange, request, HttpClient};
use tollgate_tests::scenario::Scenario;

const SERVER: &str = "
max_request_header_bytes: 4096
max_request_body_bytes: 1000
header_read_timeout: 1s
idle_timeout: 600ms
";

const SHOP: &str = "
name: shop
domains: [shop.test]
routes:
  - name: refused
    match: { path: { prefix: /refused } }
    forward: { cluster: refusing }
  - name: echo
    match: { path: { prefix: /echo } }
    forward: { cluster: echo }
";

/// The gateway of this file's tests; each adds what it needs and starts it.
fn scenario() -> Scenario {
    Scenario::new()
        .server(SERVER)
        .echo("echo")
        .cluster_at("refusing", backends::refusing_address())
        .virtual_host(SHOP)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_line_is_400() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let answer = raw_exchange(
        gateway.listener("public"),
        b"THIS IS NOT HTTP\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    expect_status(&answer, 400);
    assert_eq!(echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let answer = raw_exchange(
        gateway.listener("public"),
        &request_with_header_of(20_000),
        Duration::from_secs(5),
    )
    .await;
    expect_status(&answer, 431);
    assert_eq!(echo.request_count(), 0);
}

/// The configured limit is 4096 bytes: a head of about 6 KB is over it, even though it
/// would fit the 8 KiB buffers HTTP libraries commonly start with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_just_over_a_small_configured_limit_are_431() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let answer = raw_exchange(
        gateway.listener("public"),
        &request_with_header_of(6_000),
        Duration::from_secs(5),
    )
    .await;
    expect_status(&answer, 431);
    assert_eq!(echo.request_count(), 0);
}

fn request_with_header_of(bytes: usize) -> Vec<u8> {
    let value = "a".repeat(bytes);
    format!("GET /echo HTTP/1.1\r\nHost: shop.test\r\nX-Big: {value}\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");
    let too_big = request("POST", public, "shop.test", "/echo")
        .body(Full::from("x".repeat(5000)))
        .unwrap();
    let response = HttpClient::http1().send(too_big).await.unwrap();
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Announced by content-length alone: refused before any body arrives.
    let answer = raw_exchange(
        public,
        b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1000000\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    expect_status(&answer, 413);

    let fits = request("POST", public, "shop.test", "/echo")
        .body(Full::from("x".repeat(1000)))
        .unwrap();
    assert_eq!(
        HttpClient::http1().send(fits).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(
        echo.request_count(),
        1,
        "only the body within the limit was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_and_unknown_route_are_404() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    assert_eq!(
        client.get(public, "nobody.test", "/echo").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client
            .get(public, "shop.test", "/nothing-here")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502() {
    let gateway = scenario().start().await;
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "shop.test", "/refused")
        .await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_finishes_its_headers_is_disconnected() {
    let gateway = scenario().start().await;
    let started = Instant::now();
    // Headers never end: the 1s header_read_timeout must cut the connection.
    let answer = raw_exchange(
        gateway.listener("public"),
        b"GET /echo HTTP/1.1\r\nHost: shop.test\r\n",
        Duration::from_secs(8),
    )
    .await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the connection stayed open {waited:?}; answer so far: {:?}",
        answer.text
    );
    assert!(
        matches!(answer.status, None | Some(408)),
        "unexpected answer: {:?}",
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = scenario().start().await;
    let mut stream = tokio::net::TcpStream::connect(gateway.listener("public"))
        .await
        .unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 64 * 1024];
    let read = stream.read(&mut buffer).await.unwrap();
    assert!(
        buffer[..read].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buffer[..read])
    );
    // Keep-alive, then silence: the 600 ms idle_timeout closes the connection.
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the idle connection was still open after 5 s"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed too early: {waited:?}"
    );
}
