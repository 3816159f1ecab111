//! `proxy_close_stream` resets the stream as Envoy does: no response at all. HTTP/1.1 gets
//! its connection closed with no bytes; HTTP/2 gets RST_STREAM on that stream alone, and
//! the connection's other streams go on. A reset after the response head ends the body in a
//! reset. The access log writes the exchange with status 0 and detail `plugin_reset`, and
//! every plugin still gets its log phase.

use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tollgate_tests::clients::{raw_exchange, request, HttpClient};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::h2frames::{self, RawH2, Read};
use tollgate_tests::plugins::{PluginSpec, TP_MISC, TP_PROPERTIES};
use tollgate_tests::scenario::Scenario;

/// The gateway of this file's tests; each adds what it needs and starts it.
fn scenario() -> Scenario {
    // The logger runs first in the request phase; it logs what it sees in `on_log`.
    let logger = PluginSpec::new("logger", TP_PROPERTIES)
        .priority(10)
        .config(json!({ "log_properties": [["response", "code_details"], ["response", "flags"]] }));
    Scenario::new()
        .echo("echo")
        .route("{ name: all, forward: { cluster: echo } }")
        .plugin(logger)
        .plugin(PluginSpec::new("misc", TP_MISC))
}

fn http1_request(mode: &str) -> Vec<u8> {
    format!("GET /reset HTTP/1.1\r\nHost: reset.test\r\nx-misc: {mode}\r\n\r\n").into_bytes()
}

fn h2_get(stream: u32, authority: &str, mode: Option<&str>) -> Vec<u8> {
    let mut headers = h2frames::get_headers(authority, "/reset");
    if let Some(mode) = mode {
        headers.push(("x-misc", mode));
    }
    h2frames::frame(
        h2frames::HEADERS,
        h2frames::END_HEADERS | h2frames::END_STREAM,
        stream,
        &h2frames::header_block(&headers),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn wait_for_log(gateway: &Gateway, needle: &str, count: usize) {
    for _ in 0..100 {
        if gateway.log().matches(needle).count() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "expected {count} × {needle:?} in the gateway log:\n{}",
        gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_close_with_no_answer() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");
    for mode in ["reset", "reset-response"] {
        let answer = raw_exchange(public, &http1_request(mode), Duration::from_secs(5)).await;
        assert_eq!(answer.status, None, "{mode}: no answer");
        assert!(
            answer.text.is_empty(),
            "{mode}: no bytes: {:?}",
            answer.text
        );
    }
    assert_eq!(
        echo.requests()
            .iter()
            .filter(|r| r.header("x-misc") == Some("reset"))
            .count(),
        0,
        "a request reset in its request phase never reaches the upstream"
    );

    // The access log has both exchanges, with no status; every plugin got its log phase.
    wait_for_log(&gateway, "plugin_reset", 2).await;
    let log = gateway.log();
    let resets: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("detail") && line.contains("plugin_reset"))
        .collect();
    assert!(
        resets.iter().all(|line| line.contains("status=0")),
        "a reset is logged with status 0: {resets:?}"
    );
    let details = format!(
        "tp-properties on_log response.code_details={}",
        hex(b"plugin_reset")
    );
    wait_for_log(&gateway, &details, 2).await;
    let flags = format!(
        "tp-properties on_log response.flags={}",
        hex(&0x8i64.to_le_bytes())
    );
    wait_for_log(&gateway, &flags, 2).await;

    // The gateway keeps serving.
    let response = HttpClient::http1().get(public, "reset.test", "/ok").await;
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_resets_the_stream_alone() {
    let gateway = scenario().start().await;
    let public = gateway.listener("public");
    let authority = public.to_string();
    let mut h2 = RawH2::connect(public).await.unwrap();
    h2.send(&h2frames::settings_ack()).await.unwrap();
    for (stream, mode) in [
        (1, Some("reset")),
        (3, None),
        (5, Some("reset-response")),
        (7, None),
    ] {
        h2.send(&h2_get(stream, &authority, mode)).await.unwrap();
        let (frames, end) = h2
            .read_until(Duration::from_secs(5), |frame| {
                frame.stream == stream
                    && (frame.kind == h2frames::RST_STREAM
                        || frame.flags & h2frames::END_STREAM != 0)
            })
            .await;
        let Read::Frame(last) = end else {
            panic!("stream {stream}: no end: {end:?} after {frames:?}");
        };
        let on_stream: Vec<_> = frames.iter().filter(|f| f.stream == stream).collect();
        match mode {
            Some(mode) => {
                assert_eq!(last.kind, h2frames::RST_STREAM, "{mode}: {frames:?}");
                assert_eq!(
                    on_stream.len(),
                    1,
                    "{mode}: nothing but the reset: {on_stream:?}"
                );
            }
            None => {
                assert!(
                    on_stream.iter().any(|f| f.kind == h2frames::HEADERS),
                    "stream {stream} is answered on the same connection: {frames:?}"
                );
                assert_ne!(last.kind, h2frames::RST_STREAM);
            }
        }
        assert!(
            frames.iter().all(|f| f.kind != h2frames::GOAWAY),
            "the connection stays up: {frames:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_head_ends_the_body_in_a_reset() {
    let gateway = scenario().start().await;
    let public = gateway.listener("public");
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let request = request("GET", public, "reset.test", "/reset")
            .header("x-misc", "reset-body")
            .body(Full::default())
            .unwrap();
        // HTTP/1.1 may still hold the head in its write buffer when the body fails (then the
        // connection closes with nothing); HTTP/2 sent it. Either way no complete response.
        match client.send_streaming(request).await {
            Err(_) => {}
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::OK);
                let body = http_body_util::BodyExt::collect(response.into_body()).await;
                assert!(body.is_err(), "the body ends in a reset, not a clean end");
            }
        }
    }
    wait_for_log(&gateway, "plugin_reset", 2).await;
}
