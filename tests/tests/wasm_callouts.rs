//! Callouts from plugins to clusters of the policies, with the request paused meanwhile:
//! - `tp-callout`: an HTTP call answered (status, body, token), many concurrent calls, a call
//!   cut by its timeout and a call to a refused endpoint (both delivered as an empty response:
//!   "failed", and an empty header list to a plugin that asks for it), and a call without `:path` refused with BAD_ARGUMENT at dispatch, and a
//!   request body that waits, as in Envoy, until the paused request headers resume; a
//!   callout answered after its request went upstream still reads the request's headers;
//! - `tp-grpc`: a unary gRPC call over HTTP/2 to a gRPC backend (framing, path, status and
//!   response message), and a gRPC stream to a streaming echo backend (metadata, every
//!   message back in order, close status).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tollgate_tests::backends;
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::plugins::{late_callout_wat, PluginSpec, TP_CALLOUT, TP_GRPC};
use tollgate_tests::scenario::{Running, Scenario};

async fn start() -> Running {
    let plugins = [
        PluginSpec::new("callout-ok", TP_CALLOUT)
            .config(json!({ "cluster": "callee", "path": "/check?x=1", "timeout_ms": 5000 }))
            .routes(&["ok"]),
        PluginSpec::new("callout-body", TP_CALLOUT)
            .config(json!({ "cluster": "callee", "path": "/check?delay_ms=300", "timeout_ms": 5000 }))
            .routes(&["body"]),
        PluginSpec::new("late-callout", late_callout_wat()).routes(&["late"]),
        PluginSpec::new("callout-slow", TP_CALLOUT)
            .config(json!({ "cluster": "callee", "path": "/slow-check?delay_ms=3000", "timeout_ms": 200 }))
            .routes(&["slow"]),
        PluginSpec::new("callout-refused", TP_CALLOUT)
            .config(json!({ "cluster": "refusing", "path": "/x", "timeout_ms": 2000 }))
            .routes(&["refused"]),
        PluginSpec::new("grpc-callout", TP_GRPC)
            .config(json!({ "cluster": "grpc-service", "service": "tollgate.test.Greeter", "method": "SayHello" }))
            .routes(&["grpc"]),
        PluginSpec::new("grpc-stream-callout", TP_GRPC)
            .config(json!({ "cluster": "grpc-stream-service", "service": "tollgate.test.Echo", "method": "Chat", "stream": true }))
            .routes(&["grpc-stream"]),
    ];
    Scenario::new()
        .echo("echo")
        .echo("callee")
        .grpc("grpc-service")
        .grpc_stream_echo("grpc-stream-service")
        .cluster_at("refusing", backends::refusing_address())
        .forward("ok", "/ok", "echo")
        .forward("slow", "/slow", "echo")
        .forward("body", "/body", "echo")
        .forward("late", "/late", "echo")
        .forward("refused", "/refused", "echo")
        .forward("grpc-stream", "/grpc-stream", "echo")
        .forward("grpc", "/grpc", "echo")
        .plugins(&plugins)
        .start()
        .await
}

async fn get(setup: &Running, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut builder = request("GET", setup.listener("public"), "callouts.test", path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Full::default()).expect("valid request");
    match tokio::time::timeout(Duration::from_secs(10), HttpClient::http1().send(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => panic!("GET {path}: {e:#}; gateway log:\n{}", setup.log()),
        Err(_) => panic!(
            "GET {path}: no answer within 10 s; gateway log:\n{}",
            setup.log()
        ),
    }
}

/// The request headers the echo backend received, as JSON.
fn upstream_headers(response: &HttpResponse) -> serde_json::Value {
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    response.json()["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_callout_answer_reaches_the_paused_request() {
    let setup = start().await;
    let headers = upstream_headers(&get(&setup, "/ok/one", &[]).await);
    assert_eq!(
        headers["x-callout-status"],
        "200",
        "{headers}\n{}",
        setup.log()
    );
    assert_eq!(headers["x-callout-token-ok"], "true", "{headers}");
    let body_len: usize = headers["x-callout-body-len"]
        .as_str()
        .expect("body len")
        .parse()
        .unwrap();
    assert!(
        body_len > 20,
        "the callee's JSON answer was readable in the callback: {headers}"
    );

    let calls = setup.backend("callee").requests();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, "GET");
    assert_eq!(calls[0].path, "/check?x=1");
    assert_eq!(calls[0].host, "callee", ":authority is the cluster name");
    assert_eq!(
        setup.backend("echo").request_count(),
        1,
        "the request went on after the callout"
    );
}

/// Envoy turns a plugin's pause of the request headers into a pause of the whole request
/// (`StopAllIterationAndWatermark`): the body callbacks of that plugin run only once it
/// resumes, and the body then reaches the upstream whole, behind the headers it set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_waits_while_its_headers_are_paused() {
    let setup = start().await;
    let body = vec![b'b'; 64 * 1024];
    let req = request("POST", setup.listener("public"), "callouts.test", "/body")
        .body(Full::from(body.clone()))
        .expect("valid request");
    let response = tokio::time::timeout(Duration::from_secs(10), HttpClient::http1().send(req))
        .await
        .expect("an answer within 10 s")
        .expect("the request goes through");
    let json = response.json();
    assert_eq!(response.status, StatusCode::OK, "{json}\n{}", setup.log());
    assert_eq!(json["headers"]["x-callout-status"], "200", "{json}");
    assert_ne!(json["headers"]["x-callout-header-count"], "0", "{json}");
    assert_eq!(
        json["body_len"],
        body.len(),
        "the upstream got the whole body: {json}"
    );
    assert_eq!(
        response.header("x-callout-body-early"),
        Some("0"),
        "no body callback ran while the headers waited for the callout ({:?})",
        response.headers
    );
    assert_eq!(
        response.header("x-callout-body-bytes"),
        Some(body.len().to_string().as_str()),
        "after the resume the plugin saw the whole body ({:?})",
        response.headers
    );
}

/// A plugin that only looks at the request headers costs the request no copy of them, unless
/// a callout of its is still to answer: that answer's callback reads the headers the request
/// went upstream with (Envoy keeps them for the whole stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_answered_after_the_request_went_on_reads_its_headers() {
    let setup = start().await;
    // The echo answers after 300 ms; the callee at once.
    let path = "/late/read-me?delay_ms=300";
    let response = get(&setup, path, &[]).await;
    assert_eq!(response.status, StatusCode::OK, "{}", setup.log());
    let logged = format!("late-path={path}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !setup.log().contains(&logged) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = setup.log();
    assert!(
        log.contains(&logged),
        "the answer's callback read the request's :path: {log}"
    );
    assert!(!log.contains("late-path-missing"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callouts_each_resume_their_own_request() {
    let setup = start().await;
    let responses = join_all((0..20).map(|i| {
        let setup = &setup;
        async move { (i, get(setup, &format!("/ok/{i}"), &[]).await) }
    }))
    .await;
    for (i, response) in responses {
        let json = response.json();
        assert_eq!(
            json["path"],
            format!("/ok/{i}"),
            "request {i} resumed with another request's state"
        );
        assert_eq!(
            json["headers"]["x-callout-status"], "200",
            "request {i}: {json}"
        );
        assert_eq!(
            json["headers"]["x-callout-token-ok"], "true",
            "request {i}: {json}"
        );
    }
    assert_eq!(setup.backend("callee").request_count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callout_timeout_delivers_an_empty_response() {
    let setup = start().await;
    let started = Instant::now();
    let headers = upstream_headers(&get(&setup, "/slow", &[]).await);
    let elapsed = started.elapsed();
    assert_eq!(
        headers["x-callout-status"],
        "failed",
        "{headers}\n{}",
        setup.log()
    );
    assert_eq!(headers["x-callout-body-len"], "0", "{headers}");
    // Asked for the failed call's headers, the plugin got an empty list, not a refusal
    // (which the proxy-wasm Rust SDK answers with a panic, trapping the plugin).
    assert_eq!(headers["x-callout-header-count"], "0", "{headers}");
    assert!(
        elapsed < Duration::from_millis(2000),
        "the 200 ms callout timeout should end the wait, not the callee's 3 s delay (took {elapsed:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callout_to_a_refusing_endpoint_delivers_an_empty_response() {
    let setup = start().await;
    let headers = upstream_headers(&get(&setup, "/refused", &[]).await);
    assert_eq!(
        headers["x-callout-status"],
        "failed",
        "{headers}\n{}",
        setup.log()
    );
    assert_eq!(headers["x-callout-body-len"], "0", "{headers}");
    assert_eq!(headers["x-callout-header-count"], "0", "{headers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callout_without_path_is_a_bad_argument() {
    let setup = start().await;
    let headers =
        upstream_headers(&get(&setup, "/ok/missing", &[("x-callout-missing-path", "1")]).await);
    assert_eq!(
        headers["x-callout-error"],
        "BadArgument",
        "proxy_http_call without :path must return BAD_ARGUMENT (2): {headers}\n{}",
        setup.log()
    );
    assert!(headers.get("x-callout-status").is_none(), "{headers}");
    assert_eq!(
        setup.backend("callee").request_count(),
        0,
        "nothing may be sent for a rejected call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_callout_over_http2() {
    let setup = start().await;
    let headers = upstream_headers(&get(&setup, "/grpc", &[]).await);
    assert_eq!(headers["x-grpc-status"], "0", "{headers}\n{}", setup.log());
    assert_eq!(
        headers["x-grpc-len"], "5",
        "the response message `hello` without its frame prefix: {headers}"
    );
    assert_eq!(headers["x-grpc-body"], "hello", "{headers}");

    let calls = setup.backend("grpc-service").requests();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/tollgate.test.Greeter/SayHello");
    assert_eq!(call.protocol, "HTTP/2.0");
    assert_eq!(
        call.header("content-type"),
        Some("application/grpc"),
        "{call:?}"
    );
    assert_eq!(
        call.header("x-tp-grpc"),
        Some("1"),
        "initial metadata is sent: {call:?}"
    );
    assert_eq!(
        call.body_len,
        5 + 7,
        "one framed message: 5-byte prefix + 7-byte message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_stream_callout_sends_and_receives_every_message() {
    let setup = start().await;
    let headers = upstream_headers(&get(&setup, "/grpc-stream", &[]).await);
    assert_eq!(
        headers["x-grpc-stream-status"],
        "0",
        "{headers}\n{}",
        setup.log()
    );
    assert_eq!(
        headers["x-grpc-stream-messages"], "2",
        "both messages came back: {headers}"
    );
    assert_eq!(
        headers["x-grpc-stream-body"], "one,two",
        "in order, without frame prefixes: {headers}"
    );
    assert_ne!(
        headers["x-grpc-stream-metadata"], "0",
        "initial metadata was delivered: {headers}"
    );
    let calls = setup.backend("grpc-stream-service").requests();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, "/tollgate.test.Echo/Chat");
    assert_eq!(calls[0].protocol, "HTTP/2.0");
}
