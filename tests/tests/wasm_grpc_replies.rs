//! Local answers to gRPC calls, as Envoy sends them: trailers-only (one HEADERS frame with
//! `:status 200`, `content-type: application/grpc`, `grpc-status`, a percent-encoded
//! `grpc-message`, no DATA), for a plugin's `send_grpc_response`, a plugin's
//! `send_http_response` (the gRPC status derived from the HTTP status) and the gateway's own
//! answers (404 for no route) and a plugin failure (503, UNAVAILABLE). A plain HTTP request
//! to the same plugin is answered as before.

use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::h2frames::{self, RawH2, Read};
use tollgate_tests::plugins::{PluginSpec, TP_LOCAL_REPLY, TP_MISBEHAVE};
use tollgate_tests::scenario::Scenario;

/// The gateway of this file's tests; each adds what it needs and starts it.
fn scenario() -> Scenario {
    Scenario::new()
        .echo("echo")
        .forward("svc", "/svc", "echo")
        .forward("crash", "/crash", "echo")
        .plugin(PluginSpec::new("replier", TP_LOCAL_REPLY).routes(&["svc"]))
        .plugin(
            PluginSpec::new("crasher", TP_MISBEHAVE)
                .config(serde_json::json!({ "mode": "panic" }))
                .routes(&["crash"]),
        )
}

/// A gRPC call over h2c with extra request headers.
async fn grpc_call(gateway: &Gateway, path: &str, headers: &[(&str, &[u8])]) -> HttpResponse {
    let mut builder = request("POST", gateway.listener("public"), "grpc.test", path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        builder = builder.header(*name, http::HeaderValue::from_bytes(value).unwrap());
    }
    // An empty message: the 5-byte gRPC frame header alone.
    let request = builder.body(Full::from(vec![0u8; 5])).unwrap();
    tokio::time::timeout(Duration::from_secs(10), HttpClient::h2c().send(request))
        .await
        .expect("answered within 10 s")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", gateway.log()))
}

/// Asserts the trailers-only form and returns (grpc-status, grpc-message).
fn trailers_only(response: &HttpResponse) -> (String, Option<String>) {
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/grpc"),
        "{response:?}"
    );
    assert!(response.body.is_empty(), "no body: {response:?}");
    assert!(
        response.trailers.is_none(),
        "status in the headers, no trailers: {response:?}"
    );
    (
        response
            .header("grpc-status")
            .unwrap_or_else(|| panic!("no grpc-status: {response:?}"))
            .to_string(),
        response.header("grpc-message").map(str::to_string),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_grpc_response_is_trailers_only_with_an_encoded_message() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let response = grpc_call(
        &gateway,
        "/svc.Echo/Call",
        &[
            ("x-grpc-reply", b"10"),
            (
                "x-grpc-reply-message",
                "Aborted by Proxy-Wasm! déjà 100%".as_bytes(),
            ),
        ],
    )
    .await;
    let (status, message) = trailers_only(&response);
    assert_eq!(status, "10", "ABORTED");
    assert_eq!(
        message.as_deref(),
        Some("Aborted by Proxy-Wasm! d%C3%A9j%C3%A0 100%25"),
        "spaces stay, non-ASCII bytes and % are percent-encoded"
    );
    assert_eq!(
        response.header("x-denied-by"),
        Some("tp-local-reply"),
        "the plugin's own headers are kept"
    );
    assert_eq!(echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_answer_to_a_grpc_call_maps_its_status() {
    let gateway = scenario().start().await;
    let response = grpc_call(&gateway, "/svc.Echo/Call", &[("x-deny-status", b"429")]).await;
    let (status, message) = trailers_only(&response);
    assert_eq!(status, "14", "429 is UNAVAILABLE");
    assert_eq!(
        message.as_deref(),
        Some("slow down"),
        "the body is the message"
    );

    let response = grpc_call(&gateway, "/svc.Echo/Call", &[("x-deny-status", b"403")]).await;
    assert_eq!(trailers_only(&response).0, "7", "403 is PERMISSION_DENIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_request_answered_by_the_gateway() {
    let gateway = scenario().start().await;
    let response = grpc_call(&gateway, "/nowhere.Service/Call", &[]).await;
    let (status, message) = trailers_only(&response);
    assert_eq!(status, "12", "no route (404) is UNIMPLEMENTED");
    assert_eq!(
        message.as_deref(),
        Some("no route for \"/nowhere.Service/Call\"")
    );

    // On the wire: one HEADERS frame that ends the stream, no DATA frame.
    let mut h2 = RawH2::connect(gateway.listener("public")).await.unwrap();
    let authority = gateway.listener("public").to_string();
    let headers = h2frames::header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", &authority),
        (":path", "/nowhere.Service/Call"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    h2.send(&h2frames::frame(
        h2frames::HEADERS,
        h2frames::END_HEADERS | h2frames::END_STREAM,
        1,
        &headers,
    ))
    .await
    .unwrap();
    let (frames, end) = h2
        .read_until(Duration::from_secs(5), |frame| {
            frame.stream == 1 && frame.flags & h2frames::END_STREAM != 0
        })
        .await;
    assert!(matches!(end, Read::Frame(_)), "the stream ended: {end:?}");
    let on_stream: Vec<_> = frames.iter().filter(|frame| frame.stream == 1).collect();
    assert_eq!(on_stream.len(), 1, "a single frame: {on_stream:?}");
    assert_eq!(
        on_stream[0].kind,
        h2frames::HEADERS,
        "trailers-only HEADERS"
    );
    assert!(
        frames.iter().all(|frame| frame.kind != h2frames::DATA),
        "no DATA frame: {frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_requests_keep_their_body_and_no_grpc_headers() {
    let gateway = scenario().start().await;
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let denied = request("GET", gateway.listener("public"), "grpc.test", "/svc/x")
            .header("x-deny-status", "429")
            .body(Full::default())
            .unwrap();
        let response = client.send(denied).await.unwrap();
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.text(), "slow down");
        assert_eq!(response.header("grpc-status"), None);
        assert_eq!(response.header("grpc-message"), None);

        let unrouted = request("GET", gateway.listener("public"), "grpc.test", "/nothing")
            .body(Full::default())
            .unwrap();
        let response = client.send(unrouted).await.unwrap();
        assert_eq!(response.status, StatusCode::NOT_FOUND);
        assert_eq!(response.text(), "no route for \"/nothing\"\n");
        assert_eq!(response.header("grpc-status"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failure_on_a_grpc_call_is_unavailable() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let response = grpc_call(&gateway, "/crash.Service/Call", &[]).await;
    let (status, message) = trailers_only(&response);
    assert_eq!(status, "14", "UNAVAILABLE");
    assert_eq!(
        message.as_deref(),
        Some("plugin \"crasher\" is unavailable")
    );
    assert_eq!(echo.request_count(), 0);

    // Over HTTP/2 without gRPC: the plain 503, with no gRPC headers.
    let request = request("GET", gateway.listener("public"), "grpc.test", "/crash")
        .body(Full::default())
        .unwrap();
    let response = HttpClient::h2c().send(request).await.unwrap();
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.header("grpc-status"), None);
}
