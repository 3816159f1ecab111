//! Streaming, WebSocket upgrades and gRPC trailers pass through the gateway.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;
use tollgate_tests::backends::GRPC_HELLO_MESSAGE;
use tollgate_tests::clients::{get_request, websocket_connect, HttpClient};
use tollgate_tests::scenario::Scenario;

const SHOP: &str = "
name: shop
domains: [shop.test]
routes:
  - name: websocket
    match: { path: { prefix: /ws } }
    forward: { cluster: websocket }
  - name: grpc
    match: { path: { prefix: /pkg.Greeter/ } }
    forward: { cluster: grpc }
  - name: echo
    match: { path: { prefix: / } }
    forward: { cluster: echo }
";

/// The gateway of this file's tests; each adds what it needs and starts it.
fn scenario() -> Scenario {
    Scenario::new()
        .echo("echo")
        .websocket("websocket")
        .grpc("grpc")
        .virtual_host(SHOP)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_stream_without_buffering() {
    let fixture = scenario().start().await;
    let started = Instant::now();
    // Five chunks 400ms apart: the last leaves the backend 1.6s after the first.
    let response = HttpClient::http1()
        .send_streaming(get_request(
            fixture.listener("public"),
            "shop.test",
            "/stream?stream_chunks=5&chunk_delay_ms=400",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body
        .frame()
        .await
        .expect("a first frame")
        .unwrap()
        .into_data()
        .unwrap();
    let first_arrived = started.elapsed();
    assert!(first.starts_with(b"chunk 0"), "first chunk: {first:?}");
    assert!(
        first_arrived < Duration::from_millis(1000),
        "the first chunk took {first_arrived:?}: the gateway buffered the body"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.ends_with(b"chunk 4\n"), "all chunks arrive: {rest:?}");
    assert!(started.elapsed() >= Duration::from_millis(1600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_pass_both_ways_unchanged() {
    let fixture = scenario().start().await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let request = tollgate_tests::clients::request(
        "POST",
        fixture.listener("public"),
        "shop.test",
        "/echo-body",
    )
    .body(http_body_util::Full::from(body.clone()))
    .unwrap();
    let response = HttpClient::http1().send(request).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert!(
        response.body == body,
        "a 1 MB body came back changed ({} bytes)",
        response.body.len()
    );
    assert_eq!(fixture.backend("echo").requests()[0].body_len, body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_pass_through() {
    let fixture = scenario().start().await;
    let mut socket = websocket_connect(fixture.listener("public"), "shop.test", "/ws/chat")
        .await
        .expect("WebSocket handshake through the gateway");
    for text in ["hello", "second message"] {
        socket.send(Message::text(text)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("an echo within 5s")
            .expect("socket open")
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), text);
    }
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_data().as_ref(), &[0u8, 1, 2, 255]);
    socket.close(None).await.unwrap();
    assert_eq!(fixture.backend("websocket").requests()[0].path, "/ws/chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_reach_an_http2_client() {
    let fixture = scenario().start().await;
    let request = tollgate_tests::clients::request(
        "POST",
        fixture.listener("public"),
        "shop.test",
        "/pkg.Greeter/SayHello",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::Full::from(&b"\x00\x00\x00\x00\x02hi"[..]))
    .unwrap();
    let response = HttpClient::h2c().send(request).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("application/grpc"));
    assert_eq!(&response.body[..], GRPC_HELLO_MESSAGE);
    let trailers = response.trailers.expect("trailers arrive at the client");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"ok"[..])
    );
    let upstream = &fixture.backend("grpc").requests()[0];
    assert_eq!(
        upstream.protocol, "HTTP/2.0",
        "http2: true speaks HTTP/2 to the endpoint"
    );
    assert_eq!(upstream.body_len, 7);
}

/// A client may shut down its sending side once its request is out (HTTP/1.0-style clients,
/// `nc -N`, scripts that `shutdown(SHUT_WR)`), and still reads the answer. The request was
/// whole, so the gateway forwards it and answers; dropping it at the end-of-stream would lose
/// an answer the upstream may already have acted on. The connection closes after the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let fixture = scenario().start().await;
    let requests = [
        "POST /upload?delay_ms=300 HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nhello",
        "GET /read?delay_ms=300 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        "POST /chunked?delay_ms=300 HTTP/1.1\r\nHost: shop.test\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for request in requests {
        let answer = half_closed_exchange(fixture.listener("public"), request).await;
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{request:?} answered: {answer:?}"
        );
        assert!(answer.contains("x-backend: echo\r\n"), "{answer:?}");
    }
    assert_eq!(fixture.backend("echo").request_count(), requests.len());

    // A body cut short by the half-close is an incomplete request: a 400 at once, not a wait
    // for body_read_timeout.
    let cut = "POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10\r\n\r\nhello";
    let answer = half_closed_exchange(fixture.listener("public"), cut).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "a cut body answered: {answer:?}"
    );
}

/// Sends `request` on a new connection to `addr`, shuts down the sending side, and reads
/// the answer until the gateway closes the connection (within 5 s).
async fn half_closed_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the gateway answers and closes within 5 s")
        .expect("the answer is read to its end");
    String::from_utf8_lossy(&answer).into_owned()
}
