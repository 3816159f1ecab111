//! A plugin failure costs one request, through the real gateway (2 workers), with
//! `tp-misbehave` panicking on a body that is not UTF-8 (`String::from_utf8(..).unwrap()`):
//! - a trap storm (1 request in 20 of 500 traps): exactly those 25 fail — 503 under
//!   `fail_closed`, the plugin skipped (the body forwarded as sent) under `fail_open` — the
//!   other 475 succeed, traps happen on both workers, and the circuit stays closed;
//! - more than `max_traps_per_minute` traps open the circuit: requests get 503 under
//!   `fail_closed`, and are forwarded without the plugin under `fail_open`, without the
//!   plugin running (`GET /plugins` and `/metrics` show it open); after `circuit_open_time`
//!   a probe on a fresh VM closes it again;
//! - a trap in the response body while the plugin holds part of it back resets the
//!   response: HTTP/1.1 closes the connection before the chunked body's end, HTTP/2 resets
//!   the stream, and the unredacted tail never reaches the client; the access log says
//!   `plugin_failure` in phase `response_body`;
//! - a trap in the response headers, before anything was sent, answers 503.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tollgate_tests::clients::{raw_exchange, request, HttpClient};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::h2frames::{self, RawH2, Read};
use tollgate_tests::plugins::{PluginSpec, TP_MISBEHAVE};
use tollgate_tests::scenario::Scenario;

const GOOD_BODY: &[u8] = b"hello";
const BAD_BODY: &[u8] = b"bad \xff\xfe utf-8";

/// The first chunk the trickle backend sends: complete lines, released redacted.
const FIRST_CHUNK: &str = "public line, secret\n";

fn misbehave(name: &str, mode: &str, route: &str, policy: &str) -> PluginSpec {
    PluginSpec::new(name, TP_MISBEHAVE)
        .config(json!({ "mode": mode }))
        .routes(&[route])
        .failure_policy(policy)
}

/// The gateway of this file's tests; each adds what it needs and starts it.
async fn scenario() -> Scenario {
    Scenario::new()
        .echo("echo")
        .cluster_at("trickle", trickle_backend().await)
        .forward("storm-closed", "/storm-closed", "echo")
        .forward("storm-open", "/storm-open", "echo")
        .forward("circuit", "/circuit", "echo")
        .forward("skip-circuit", "/skip-circuit", "echo")
        .forward("redact", "/redact", "trickle")
        .forward("response-headers", "/response-headers", "echo")
        .forward("plain", "/", "echo")
}

/// An HTTP/1.1 backend answering every request with a chunked body in two chunks, 200 ms
/// apart: [`FIRST_CHUNK`], then for `/redact-valid` a valid UTF-8 line with a secret, for
/// anything else a line with a secret and bytes that are not UTF-8.
async fn trickle_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match tcp.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                let valid = String::from_utf8_lossy(&head).contains("/redact-valid");
                let tail: &[u8] = if valid {
                    b"secret tail\n"
                } else {
                    b"secret tail \xff\xfe\n"
                };
                let chunk = |data: &[u8]| {
                    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                    out
                };
                let mut first = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                first.extend(chunk(FIRST_CHUNK.as_bytes()));
                if tcp.write_all(&first).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut rest = chunk(tail);
                rest.extend_from_slice(b"0\r\n\r\n");
                let _ = tcp.write_all(&rest).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// POSTs `body` to `path` over HTTP/1.1 within 10 s; returns status and body.
async fn post(
    client: &HttpClient,
    gateway: &Gateway,
    path: &str,
    body: &'static [u8],
) -> (StatusCode, String) {
    let request = request("POST", gateway.listener("public"), "fail.test", path)
        .body(Full::new(Bytes::from_static(body)))
        .expect("valid request");
    match tokio::time::timeout(Duration::from_secs(10), client.send(request)).await {
        Ok(Ok(response)) => (response.status, response.text()),
        Ok(Err(e)) => panic!("POST {path}: {e:#}; gateway log:\n{}", gateway.log()),
        Err(_) => panic!("POST {path}: no answer within 10 s"),
    }
}

fn plugin_view(plugins: &serde_json::Value, name: &str) -> serde_json::Value {
    plugins["plugins"]
        .as_array()
        .expect("plugins array")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no plugin {name} in {plugins}"))
        .clone()
}

/// Waits (bounded) until the gateway log contains every fragment.
async fn assert_log_mentions(gateway: &Gateway, fragments: &[&str]) {
    for _ in 0..40 {
        if fragments.iter().all(|f| gateway.log().contains(f)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gateway.log();
    let missing: Vec<_> = fragments.iter().filter(|f| !log.contains(**f)).collect();
    panic!("the gateway log does not mention {missing:?}:\n{log}");
}

/// 500 POSTs to `path`, 10 at a time over pooled connections (spread over both workers);
/// request `i` carries the bad body when `i % 20 == 7`. Returns (index, status) per request.
async fn storm(gateway: &Gateway, path: &str) -> Vec<(usize, StatusCode)> {
    let client = HttpClient::http1();
    let mut results = Vec::new();
    for batch in 0..50 {
        let requests = (0..10).map(|j| {
            let i = batch * 10 + j;
            let body = if i % 20 == 7 { BAD_BODY } else { GOOD_BODY };
            let client = client.clone();
            async move { (i, post(&client, gateway, path, body).await.0) }
        });
        results.extend(futures_util::future::join_all(requests).await);
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_storm_fails_exactly_the_trapping_requests() {
    let setup = scenario()
        .await
        .plugins(&[
            misbehave(
                "storm-closed",
                "utf8-request-body",
                "storm-closed",
                "fail_closed",
            )
            .field("max_traps_per_minute", json!(1000)),
            misbehave("storm-open", "utf8-request-body", "storm-open", "fail_open")
                .field("max_traps_per_minute", json!(1000)),
        ])
        .start()
        .await;
    let gateway = &setup;

    let closed = storm(gateway, "/storm-closed").await;
    let failed: Vec<usize> = closed
        .iter()
        .filter(|(_, status)| *status != StatusCode::OK)
        .map(|(i, _)| *i)
        .collect();
    let expected: Vec<usize> = (0..500).filter(|i| i % 20 == 7).collect();
    assert_eq!(
        failed, expected,
        "fail_closed: exactly the trapping requests fail"
    );
    assert!(
        closed
            .iter()
            .filter(|(i, _)| i % 20 == 7)
            .all(|(_, status)| *status == StatusCode::SERVICE_UNAVAILABLE),
        "fail_closed answers a trap 503"
    );

    let open = storm(gateway, "/storm-open").await;
    assert!(
        open.iter().all(|(_, status)| *status == StatusCode::OK),
        "fail_open: every request succeeds, the trapping ones without the plugin: {:?}",
        open.iter()
            .filter(|(_, s)| *s != StatusCode::OK)
            .collect::<Vec<_>>()
    );

    let received = setup.backend("echo").requests();
    let forwarded = |prefix: &str| {
        received
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        forwarded("/storm-closed").len(),
        475,
        "fail_closed forwards only the good ones"
    );
    let open_forwarded = forwarded("/storm-open");
    assert_eq!(open_forwarded.len(), 500);
    assert_eq!(
        open_forwarded
            .iter()
            .filter(|r| r.body_len == BAD_BODY.len())
            .count(),
        25,
        "fail_open forwards the body the trapped plugin was handed, not an empty one"
    );

    let plugins = gateway.admin_get("/plugins").await.json();
    for name in ["storm-closed", "storm-open"] {
        let view = plugin_view(&plugins, name);
        assert_eq!(view["traps"], 25, "{name}: {view}");
        assert_eq!(view["circuit"]["state"], "closed", "{name}: {view}");
        assert_eq!(view["circuit"]["traps_in_window"], 25, "{name}: {view}");
    }
    // Each worker trapped and went on serving with a fresh VM.
    assert_log_mentions(
        gateway,
        &[
            "tollgate-worker-0",
            "tollgate-worker-1",
            "request body is not UTF-8",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_traps_open_the_circuit_until_a_probe_succeeds() {
    let circuit = |name: &str, route: &str, policy: &str| {
        misbehave(name, "utf8-request-body", route, policy)
            .field("max_traps_per_minute", json!(3))
            .field("circuit_open_time", json!("2s"))
    };
    let setup = scenario()
        .await
        .plugins(&[
            circuit("circuit", "circuit", "fail_closed"),
            circuit("skip", "skip-circuit", "fail_open"),
        ])
        .start()
        .await;
    let gateway = &setup;
    let client = HttpClient::http1();

    let (status, _) = post(&client, gateway, "/circuit", GOOD_BODY).await;
    assert_eq!(status, StatusCode::OK);
    for attempt in 0..4 {
        let (status, _) = post(&client, gateway, "/circuit", BAD_BODY).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "trap {attempt}");
        let (status, _) = post(&client, gateway, "/skip-circuit", BAD_BODY).await;
        assert_eq!(status, StatusCode::OK, "trap {attempt} skips the plugin");
    }
    let opened = Instant::now();
    let plugins = gateway.admin_get("/plugins").await.json();
    for name in ["circuit", "skip"] {
        let view = plugin_view(&plugins, name);
        assert_eq!(view["circuit"]["state"], "open", "{view}");
        assert_eq!(view["circuit"]["traps_in_window"], 4, "{view}");
        assert!(view["circuit"]["opened_at"].is_number(), "{view}");
    }
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("tollgate_plugin_circuit_open{plugin=\"circuit\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_plugin_circuit_opens_total{plugin=\"circuit\"} 1"),
        "{metrics}"
    );

    // Open: the failure policy answers without running the plugin (a bad body does not trap
    // again): 503 and nothing forwarded under fail_closed, forwarded under fail_open.
    let forwarded = |prefix: &str| {
        setup
            .backend("echo")
            .requests()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    };
    let (closed_before, open_before) = (forwarded("/circuit"), forwarded("/skip-circuit"));
    for body in [BAD_BODY, GOOD_BODY] {
        let (status, _) = post(&client, gateway, "/circuit", body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = post(&client, gateway, "/skip-circuit", body).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "the test outran the open time"
    );
    let plugins = gateway.admin_get("/plugins").await.json();
    for name in ["circuit", "skip"] {
        let view = plugin_view(&plugins, name);
        assert_eq!(
            view["traps"], 4,
            "the open circuit does not run the plugin: {view}"
        );
    }
    assert_eq!(forwarded("/circuit"), closed_before);
    assert_eq!(forwarded("/skip-circuit"), open_before + 2);

    // After the open time a probe runs on a fresh VM and closes the circuit.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, _) = post(&client, gateway, "/circuit", GOOD_BODY).await;
    assert_eq!(status, StatusCode::OK, "the half-open probe succeeds");
    let view = plugin_view(&gateway.admin_get("/plugins").await.json(), "circuit");
    assert_eq!(view["circuit"]["state"], "closed", "{view}");
    assert_eq!(view["circuit"]["traps_in_window"], 0, "{view}");
    assert!(gateway
        .metrics()
        .await
        .contains("tollgate_plugin_circuit_open{plugin=\"circuit\"} 0"));
    for _ in 0..5 {
        let (status, _) = post(&client, gateway, "/circuit", GOOD_BODY).await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// Splits a raw HTTP/1.1 answer into its head (lower-case) and body bytes.
fn split_answer(text: &str) -> (String, &str) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    (head.to_ascii_lowercase(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_trap_resets_the_response() {
    let setup = scenario()
        .await
        .plugins(&[misbehave(
            "redactor",
            "utf8-redact-response",
            "redact",
            "fail_open",
        )])
        .start()
        .await;
    let gateway = &setup;
    let listener = gateway.listener("public");

    // The control: a valid body arrives whole, redacted.
    let raw = raw_exchange(
        listener,
        b"GET /redact-valid HTTP/1.1\r\nHost: fail.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (head, body) = split_answer(&raw.text);
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert!(
        body.contains("XXXXXX tail") && !body.contains("secret"),
        "{}",
        raw.text
    );
    assert!(
        head.contains("chunked") && body.ends_with("0\r\n\r\n"),
        "a complete chunked body: {}",
        raw.text
    );

    // HTTP/1.1: the trap in the second chunk closes the connection before the last chunk.
    let started = Instant::now();
    let raw = raw_exchange(
        listener,
        b"GET /redact HTTP/1.1\r\nHost: fail.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the gateway closed the connection (not a read timeout)"
    );
    let (head, body) = split_answer(&raw.text);
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    assert!(
        !body.contains("secret"),
        "the unredacted tail leaked: {}",
        raw.text
    );
    assert!(
        body.contains("public line"),
        "the part released before the trap: {}",
        raw.text
    );
    match head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
    {
        Some(length) => assert!(
            body.len() < length.trim().parse::<usize>().expect("length"),
            "a short body: {}",
            raw.text
        ),
        None => assert!(
            head.contains("chunked") && !body.ends_with("0\r\n\r\n"),
            "a chunked body without its last chunk: {}",
            raw.text
        ),
    }

    // HTTP/2: the stream is reset, never ended normally.
    let mut h2 = RawH2::connect(listener).await.expect("h2c connect");
    h2.send(&h2frames::get(1, "fail.test", "/redact"))
        .await
        .expect("send");
    let (frames, how) = h2
        .read_until(Duration::from_secs(5), |frame| {
            frame.stream == 1
                && (frame.kind == h2frames::RST_STREAM
                    || (frame.kind == h2frames::DATA && frame.flags & h2frames::END_STREAM != 0))
        })
        .await;
    let Read::Frame(last) = how else {
        panic!("no reset of stream 1: {how:?} after {frames:?}");
    };
    assert_eq!(
        last.kind,
        h2frames::RST_STREAM,
        "stream 1 was reset: {frames:?}"
    );
    let data: Vec<u8> = frames
        .iter()
        .filter(|f| f.stream == 1 && f.kind == h2frames::DATA)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert!(
        !String::from_utf8_lossy(&data).contains("secret"),
        "the unredacted tail leaked over h2"
    );

    assert_log_mentions(
        gateway,
        &[
            "detail=\"plugin_failure\"",
            "plugin_phase=\"response_body\"",
        ],
    )
    .await;
    // The gateway goes on serving the route's good responses.
    let raw = raw_exchange(
        listener,
        b"GET /redact-valid HTTP/1.1\r\nHost: fail.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(raw.text.contains("XXXXXX tail"), "{}", raw.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_headers_trap_answers_503() {
    let setup = scenario()
        .await
        .plugins(&[misbehave(
            "header-panic",
            "panic-response-headers",
            "response-headers",
            "fail_closed",
        )])
        .start()
        .await;
    let gateway = &setup;
    let client = HttpClient::http1();
    for attempt in 0..3 {
        let response = client
            .get(gateway.listener("public"), "fail.test", "/response-headers")
            .await;
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {}",
            response.text()
        );
        let plain = client
            .get(gateway.listener("public"), "fail.test", "/plain")
            .await;
        assert_eq!(plain.status, StatusCode::OK);
    }
    assert_log_mentions(
        gateway,
        &[
            "detail=\"plugin_failure\"",
            "plugin_phase=\"response_headers\"",
        ],
    )
    .await;
}
