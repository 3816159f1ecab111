//! HTTP/2 abuse over h2c with prior knowledge on raw TCP: rapid reset, CONTINUATION flood,
//! SETTINGS and PING floods, and a header list over the configured limit. Each ends in a
//! GOAWAY, a close or a clean stream error within a bounded time; the gateway's memory stays
//! bounded; and an honest h2 client is served meanwhile.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use tollgate_tests::clients::HttpClient;
use tollgate_tests::gateway::Gateway;
use tollgate_tests::h2frames::{self, RawH2, Read};
use tollgate_tests::scenario::Scenario;

const SERVER: &str = "
max_request_header_bytes: 8192
header_read_timeout: 2s
body_read_timeout: 1s
idle_timeout: 2s
stream_idle_timeout: 4s
";

const SHOP: &str = "
name: shop
domains: [shop.test]
routes:
  - name: echo
    match: { path: { prefix: / } }
    forward: { cluster: echo }
";

/// How much the gateway's resident memory may grow during one attack. The attacks below
/// would each cost hundreds of megabytes if the gateway buffered what they send.
const RSS_GROWTH_LIMIT_KB: u64 = 64 * 1024;

/// The gateway of this file's tests; each adds what it needs and starts it.
fn scenario() -> Scenario {
    Scenario::new()
        .server(SERVER)
        .echo("echo")
        .virtual_host(SHOP)
}

/// The gateway's resident set size in KiB, from /proc/PID/status.
fn rss_kb(gateway: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid()))
        .expect("read the gateway's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

fn assert_memory_bounded(gateway: &Gateway, before_kb: u64, attack: &str) {
    let after_kb = rss_kb(gateway);
    eprintln!("{attack}: gateway RSS {before_kb} KiB before, {after_kb} KiB after");
    assert!(
        after_kb < before_kb + RSS_GROWTH_LIMIT_KB,
        "{attack}: gateway RSS grew from {before_kb} KiB to {after_kb} KiB"
    );
}

async fn assert_honest_h2_client_served(addr: SocketAddr) {
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        HttpClient::h2c().get(addr, "shop.test", "/honest"),
    )
    .await
    .expect("the honest h2 request was answered within 5 s");
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the honest h2 request took {:?}",
        started.elapsed()
    );
}

/// Reads until a GOAWAY or a close; panics if neither comes within `timeout`. Returns the
/// GOAWAY's error code, or `None` for a close without one.
async fn expect_goaway_or_close(
    connection: &mut RawH2,
    timeout: Duration,
    attack: &str,
) -> Option<u32> {
    let started = Instant::now();
    let (frames, end) = connection
        .read_until(timeout, |frame| frame.kind == h2frames::GOAWAY)
        .await;
    match end {
        Read::Frame(goaway) => {
            eprintln!(
                "{attack}: GOAWAY (code {:?}) after {:?} and {} other frames",
                goaway.error_code(),
                started.elapsed(),
                frames.len() - 1
            );
            goaway.error_code()
        }
        Read::Closed => {
            eprintln!("{attack}: closed after {:?}", started.elapsed());
            None
        }
        Read::TimedOut => panic!(
            "{attack}: neither GOAWAY nor close within {timeout:?}; read {} frames",
            frames.len()
        ),
    }
}

/// HEADERS then RST_STREAM at once, thousands of times (CVE-2023-44487): the server must
/// not keep doing work for streams the client already cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");
    let before = rss_kb(&gateway);
    let authority = public.to_string();

    let mut attacker = RawH2::connect(public).await.unwrap();
    let mut sent = 0u32;
    let started = Instant::now();
    let mut batch = Vec::new();
    for index in 0..10_000u32 {
        let stream = 1 + 2 * index;
        batch.extend_from_slice(&h2frames::get(stream, &authority, "/reset?delay_ms=2000"));
        batch.extend_from_slice(&h2frames::rst_stream(stream, h2frames::CANCEL));
        if batch.len() > 16 * 1024 {
            if attacker.send(&batch).await.is_err() {
                break;
            }
            batch.clear();
        }
        sent = index + 1;
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let _ = attacker.send(&batch).await;
    assert_honest_h2_client_served(public).await;
    let code = expect_goaway_or_close(&mut attacker, Duration::from_secs(10), "rapid reset").await;
    eprintln!(
        "rapid reset: {sent} streams sent, {} reached the backend",
        echo.request_count()
    );
    if let Some(code) = code {
        // ENHANCE_YOUR_CALM, or PROTOCOL_ERROR from a library that counts it as one.
        assert!(matches!(code, 0x1 | 0xb), "GOAWAY code {code:#x}");
    }
    assert!(
        echo.request_count() < 1_000,
        "{} cancelled streams still reached the backend",
        echo.request_count()
    );
    assert_memory_bounded(&gateway, before, "rapid reset");
    assert_honest_h2_client_served(public).await;
}

/// A HEADERS frame without END_HEADERS followed by CONTINUATION frames that never end: the
/// header list outgrows max_request_header_bytes long before memory does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");
    let before = rss_kb(&gateway);
    let authority = public.to_string();

    let mut attacker = RawH2::connect(public).await.unwrap();
    let first = h2frames::header_block(&h2frames::get_headers(&authority, "/continued"));
    attacker
        .send(&h2frames::frame(
            h2frames::HEADERS,
            h2frames::END_STREAM,
            1,
            &first,
        ))
        .await
        .unwrap();
    let filler = "v".repeat(1000);
    let block = h2frames::header_block(&[("x-filler", &filler)]);
    let continuation = h2frames::frame(h2frames::CONTINUATION, 0, 1, &block);
    let started = Instant::now();
    let mut frames = 0;
    // Up to 100 MB of header fragments, for at most 10 s.
    while frames < 100_000 && started.elapsed() < Duration::from_secs(10) {
        let burst: Vec<u8> = continuation.repeat(16);
        if attacker.send(&burst).await.is_err() {
            break;
        }
        frames += 16;
    }
    eprintln!("continuation flood: {frames} frames written before the gateway stopped reading");
    assert_honest_h2_client_served(public).await;
    expect_goaway_or_close(&mut attacker, Duration::from_secs(10), "continuation flood").await;
    assert_eq!(echo.request_count(), 1, "only the honest request arrives");
    assert_memory_bounded(&gateway, before, "continuation flood");
}

/// Floods of control frames the server must answer (SETTINGS needs an ACK, PING a PING
/// ACK) from a client that never reads the answers.
async fn control_flood(frame: Vec<u8>, attack: &str) {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");
    let before = rss_kb(&gateway);

    let mut attacker = RawH2::connect(public).await.unwrap();
    let burst = frame.repeat(1000);
    let started = Instant::now();
    let mut sent = 0usize;
    // Up to a million frames, for at most 10 s; a write that cannot proceed for a second
    // means the gateway stopped reading, which is one acceptable answer.
    while sent < 1_000_000 && started.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(1), attacker.send(&burst)).await {
            Ok(Ok(())) => sent += 1000,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    eprintln!("{attack}: {sent} frames written in {:?}", started.elapsed());
    assert_honest_h2_client_served(public).await;
    assert_memory_bounded(&gateway, before, attack);
    // Whether it stopped at a limit or went quiet with its answers unread, the connection
    // ends within idle_timeout (2 s) plus the same again for the goodbye.
    expect_goaway_or_close(&mut attacker, Duration::from_secs(15), attack).await;
    assert_eq!(echo.request_count(), 1, "only the honest request arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_is_cut_off() {
    control_flood(h2frames::settings(), "settings flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_is_cut_off() {
    control_flood(h2frames::ping(*b"pingpong"), "ping flood").await;
}

/// One request whose header list (about 12 KB) is over max_request_header_bytes (8 KiB):
/// refused on its stream (431 and/or RST_STREAM) or with a GOAWAY; never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_list_over_the_limit_is_refused() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");
    let authority = public.to_string();

    let mut attacker = RawH2::connect(public).await.unwrap();
    let big = "b".repeat(12_000);
    let mut headers = h2frames::get_headers(&authority, "/big-head");
    headers.push(("x-big", &big));
    attacker
        .send(&h2frames::frame(
            h2frames::HEADERS,
            h2frames::END_HEADERS | h2frames::END_STREAM,
            1,
            &h2frames::header_block(&headers),
        ))
        .await
        .unwrap();
    let (frames, end) = attacker
        .read_until(Duration::from_secs(5), |frame| {
            frame.kind == h2frames::GOAWAY
                || (frame.kind == h2frames::RST_STREAM && frame.stream == 1)
                || (frame.kind == h2frames::HEADERS && frame.stream == 1)
        })
        .await;
    // A response head on stream 1 is h2's 431 (followed by RST_STREAM); the backend count
    // below shows the request was not forwarded whichever refusal came.
    let refused = !matches!(end, Read::TimedOut);
    assert!(
        refused,
        "no refusal of the oversized head; frames {frames:?}"
    );
    assert_honest_h2_client_served(public).await;
    assert_eq!(echo.request_count(), 1, "only the honest request arrives");
}

/// An h2 request body that stops after 3 of 100 bytes: that stream is answered 408 after
/// body_read_timeout (1 s), while the connection stays usable for other streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_h2_request_body_is_answered_408_on_its_stream() {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");

    let tcp = tokio::net::TcpStream::connect(public).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let (body_tx, mut body_rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::poll_fn(move |cx| {
        body_rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok::<_, std::io::Error>(Frame::data(bytes))))
    });
    let request = http::Request::builder()
        .method("POST")
        // The virtual host is chosen by :authority, taken from the URI.
        .uri("http://shop.test/stalled")
        .header(http::header::CONTENT_LENGTH, "100")
        .body(StreamBody::new(frames))
        .unwrap();
    body_tx.send(Bytes::from_static(b"abc")).await.unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("the stalled stream was answered within 10 s")
        .expect("the stalled stream was answered, not reset");
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(6),
        "answered after {waited:?}"
    );
    drop(body_tx);
    assert_honest_h2_client_served(public).await;
    assert_eq!(
        echo.requests()
            .iter()
            .filter(|request| request.path == "/stalled")
            .map(|request| request.body_len)
            .collect::<Vec<_>>(),
        Vec::<usize>::new(),
        "the upstream never got a complete request"
    );
}

/// An upstream that sends one chunk and then stalls: after stream_idle_timeout (4 s) that
/// h2 stream is reset, and the connection goes on serving other streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stalled_mid_body_resets_only_its_stream() {
    use http_body_util::BodyExt;

    let gateway = scenario().start().await;
    let public = gateway.listener("public");

    let tcp = tokio::net::TcpStream::connect(public).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let get = |path: &str| {
        http::Request::builder()
            .uri(format!("http://shop.test{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let response = sender
        .send_request(get("/stall?stream_chunks=2&chunk_delay_ms=30000"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    let mut body = response.into_body();
    let first = body
        .frame()
        .await
        .expect("a first chunk")
        .expect("a data frame");
    assert_eq!(first.into_data().unwrap(), "chunk 0\n");
    let next = tokio::time::timeout(Duration::from_secs(15), body.frame())
        .await
        .expect("the stalled stream ended within 15 s");
    let waited = started.elapsed();
    assert!(
        matches!(next, Some(Err(_))),
        "the stalled stream ended with {next:?} rather than a reset"
    );
    assert!(
        waited >= Duration::from_millis(3500) && waited < Duration::from_secs(10),
        "reset after {waited:?}"
    );
    // The same connection still serves a new stream.
    sender.ready().await.expect("the connection is still open");
    let again = sender.send_request(get("/again")).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}
