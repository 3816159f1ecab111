//! Hostile HTTP/1.x clients: request smuggling forms, slowloris on heads and bodies, more
//! connections than a listener allows, and exchanges that stop moving. Each attack ends in a
//! clear status or a close, and an honest client on another connection is served meanwhile.
//! Honest idle keep-alive clients, in contrast, keep their connection for idle_timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tollgate_tests::clients::{h2c_connect, HttpClient};
use tollgate_tests::plugins::{PluginSpec, TP_HEADERS};
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario};

const SERVER: &str = "
max_request_body_bytes: 67108864
header_read_timeout: 1s
body_read_timeout: 1s
idle_timeout: 3s
stream_idle_timeout: 2s
max_connections: ${MAX_CONNECTIONS}
";

const SHOP: &str = "
name: shop
domains: [shop.test]
routes:
  - name: direct
    match: { path: { prefix: /direct } }
    direct_response: { status: 200, body: \"direct\\n\" }
  - name: plugged
    match: { path: { prefix: /plugged } }
    forward: { cluster: echo }
  - name: buffered
    match: { path: { prefix: /buffered } }
    forward: { cluster: echo, retries: { attempts: 1, on: [connect-failure] } }
  - name: echo
    match: { path: { prefix: / } }
    forward: { cluster: echo }
";

async fn start(max_connections: usize) -> Running {
    Scenario::new()
        .server(SERVER)
        .set("MAX_CONNECTIONS", max_connections)
        .listener("{ name: other, address: \"${listen:other}\", protocol: http }")
        .echo("echo")
        .virtual_host(SHOP)
        .plugin(
            PluginSpec::new("headers", TP_HEADERS)
                .config(serde_json::json!({ "tag": "hostile" }))
                .routes(&["plugged"]),
        )
        .start()
        .await
}

/// An honest GET on a new connection, answered 200 within a couple of seconds.
async fn assert_honest_client_served(addr: SocketAddr) {
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        HttpClient::http1().get(addr, "shop.test", "/honest"),
    )
    .await
    .expect("the honest request was answered within 5 s");
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the honest request took {:?}",
        started.elapsed()
    );
}

/// How a connection ended while we read from it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed it (FIN or reset).
    Closed,
    /// Still open when we stopped waiting.
    Open,
}

/// Reads everything until the server closes the connection or `timeout` passes.
async fn read_to_end(stream: &mut TcpStream, timeout: Duration) -> (String, End) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let end = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => break End::Open,
            Ok(Ok(0)) | Ok(Err(_)) => break End::Closed,
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    };
    (String::from_utf8_lossy(&received).into_owned(), end)
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n";

/// What the gateway must do with a smuggling form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// `400` (or a close without an answer); nothing forwarded.
    Refused,
    /// Both `Content-Length` and `Transfer-Encoding`: the request is read by its chunked
    /// framing alone and the connection closes after the answer (RFC 9112 §6.1), so the
    /// bytes after the chunked body are never read as a request.
    ChunkedThenClosed,
}

/// Each form is followed by a well-formed request to `/smuggled`: a gateway that reads the
/// framing differently from the sender would forward it as a second request.
fn smuggling_forms() -> Vec<(&'static str, Expect, String)> {
    use Expect::*;
    let post = "POST /first HTTP/1.1\r\nHost: shop.test\r\n";
    vec![
        (
            "content-length with transfer-encoding",
            ChunkedThenClosed,
            format!("{post}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "transfer-encoding with content-length",
            ChunkedThenClosed,
            format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 45\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "duplicate equal content-length in one line",
            Refused,
            format!("{post}Content-Length: 5, 5\r\n\r\nhello{SMUGGLED}"),
        ),
        (
            "duplicate different content-length",
            Refused,
            format!("{post}Content-Length: 5\r\nContent-Length: 50\r\n\r\nhello{SMUGGLED}"),
        ),
        (
            "transfer-encoding chunked, identity",
            Refused,
            format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "transfer-encoding xchunked",
            Refused,
            format!("{post}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "transfer-encoding with a vertical tab",
            Refused,
            format!("{post}Content-Length: 5\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "transfer-encoding with a space before the colon",
            Refused,
            format!("{post}Content-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "transfer-encoding on HTTP/1.0",
            Refused,
            format!("POST /first HTTP/1.0\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "transfer-encoding chunked not last",
            Refused,
            format!("{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "transfer-encoding folded onto the next line",
            Refused,
            format!("{post}Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "obs-fold continuation line",
            Refused,
            format!("{post}Content-Length: 0\r\nX-Folded: a\r\n  b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bare LF inside a header line",
            ChunkedThenClosed,
            format!("{post}X-Note: a\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "NUL in a header value",
            Refused,
            format!("{post}X-Note: a\0b\r\nContent-Length: 0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bare CR in a header value",
            Refused,
            format!("{post}X-Note: a\rContent-Length: 0\r\nContent-Length: 0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "chunk size that is not hex",
            Refused,
            format!("{post}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "chunk size that overflows",
            Refused,
            format!("{post}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "negative chunk size",
            Refused,
            format!("{post}Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_forms_get_400_or_a_close_and_never_reach_the_backend() {
    let gateway = start(1000).await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");
    let mut failures = Vec::new();
    for (name, expect, bytes) in smuggling_forms() {
        let mut stream = TcpStream::connect(public).await.unwrap();
        let _ = stream.write_all(bytes.as_bytes()).await;
        let (answer, end) = read_to_end(&mut stream, Duration::from_secs(4)).await;
        let statuses: Vec<&str> = answer
            .match_indices("HTTP/1.")
            .filter(|(at, _)| {
                *at == 0 || answer[..*at].ends_with('\n') || answer[..*at].ends_with('}')
            })
            .filter_map(|(at, _)| answer.get(at + 9..at + 12))
            .collect();
        let refused = match (expect, statuses.as_slice()) {
            (_, []) | (_, ["400"]) => end == End::Closed,
            (Expect::ChunkedThenClosed, [_]) => {
                end == End::Closed && answer.to_ascii_lowercase().contains("connection: close")
            }
            _ => false,
        };
        if !refused {
            failures.push(format!(
                "{name}: statuses {statuses:?}, connection {end:?}, answer {:?}",
                answer.chars().take(300).collect::<String>()
            ));
        }
        assert_honest_client_served(public).await;
    }
    let forwarded: Vec<String> = echo
        .requests()
        .into_iter()
        .map(|request| request.path)
        .filter(|path| path != "/honest" && path != "/first")
        .collect();
    assert!(
        failures.is_empty(),
        "smuggling forms not refused:\n{}",
        failures.join("\n")
    );
    assert!(
        forwarded.is_empty(),
        "the backend saw smuggled requests: {forwarded:?}"
    );
    let first: Vec<usize> = echo
        .requests()
        .into_iter()
        .filter(|request| request.path == "/first")
        .map(|request| request.body_len)
        .collect();
    // Only the forms read by their chunked framing reach the backend, with the chunked
    // body (empty), never with bytes of the smuggled request.
    assert_eq!(first, vec![0, 0, 0], "requests to /first");
    let log = gateway.log();
    for detail in ["malformed_request", "downstream_body_error"] {
        assert!(
            log.contains(detail),
            "no access-log line with detail {detail}"
        );
    }
}

/// Repeated `Content-Length` lines with the same value are merged by the HTTP/1 parser
/// before the gateway sees the request, so they cannot be refused; every party reads the
/// same length, and what follows the body is an ordinary pipelined request of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_repeated_content_lengths_are_read_one_way_only() {
    let gateway = start(1000).await;
    let echo = gateway.backend("echo");
    let mut stream = TcpStream::connect(gateway.listener("public"))
        .await
        .unwrap();
    let bytes = format!(
        "POST /first HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}"
    );
    stream.write_all(bytes.as_bytes()).await.unwrap();
    let requests = echo.wait_for_requests(2, Duration::from_secs(5)).await;
    let seen: Vec<(String, usize)> = requests
        .into_iter()
        .map(|request| (request.path, request.body_len))
        .collect();
    assert_eq!(
        seen,
        vec![("/first".to_owned(), 5), ("/smuggled".to_owned(), 0)],
        "the body is exactly the 5 bytes both lines announce"
    );
}

/// Headers trickled a byte at a time never finish: every connection is closed by
/// header_read_timeout (1 s), however slowly it keeps sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_by_header_read_timeout() {
    let gateway = start(1000).await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");
    let started = Instant::now();
    let mut attackers = JoinSet::new();
    for _ in 0..100 {
        attackers.spawn(async move {
            let mut stream = TcpStream::connect(public).await.unwrap();
            stream
                .write_all(b"GET /slow HTTP/1.1\r\nHost: shop.test\r\n")
                .await
                .unwrap();
            // A header byte every 200 ms, for at most 10 s: far longer than the timeout.
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if stream.write_all(b"X").await.is_err() {
                    break;
                }
            }
            let (answer, end) = read_to_end(&mut stream, Duration::from_millis(500)).await;
            (started.elapsed(), answer, end)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_honest_client_served(public).await;
    while let Some(outcome) = attackers.join_next().await {
        let (elapsed, answer, end) = outcome.unwrap();
        assert_eq!(end, End::Closed, "a trickling connection stayed open");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "unexpected answer {answer:?}"
        );
        assert!(
            elapsed < Duration::from_secs(6),
            "a trickling connection lasted {elapsed:?}"
        );
    }
    assert_eq!(echo.request_count(), 1, "only the honest request arrives");
}

/// Reads one answer to `GET /direct` (whose body is `direct\n`) from a keep-alive
/// connection, within 2 s.
async fn read_direct_answer(stream: &mut TcpStream) -> String {
    read_until(stream, |answer| answer.ends_with("direct\n")).await
}

/// Reads one answer with a `content-length` from a keep-alive connection, within 2 s.
async fn read_sized_answer(stream: &mut TcpStream) -> String {
    read_until(stream, |answer| {
        let Some((head, body)) = answer.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        });
        length.is_some_and(|length| body.len() >= length)
    })
    .await
}

/// Reads from a keep-alive connection until `done` says the text read is complete, within
/// 2 s.
async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(2), async {
        while !done(&String::from_utf8_lossy(&answer)) {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(
                read > 0,
                "closed after {:?}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("the answer arrived within 2 s");
    String::from_utf8(answer).unwrap()
}

/// Asserts that a connection read with [`read_to_end`] was closed without an answer, `waited`
/// after the moment that should have started its timeout.
fn assert_closed_silently(
    what: &str,
    (answer, end): (String, End),
    waited: Duration,
    expected: std::ops::RangeInclusive<Duration>,
) {
    assert_eq!(end, End::Closed, "{what} stayed open");
    assert!(answer.is_empty(), "{what} was answered {answer:?}");
    assert!(
        expected.contains(&waited),
        "{what} was closed after {waited:?}, not within {expected:?}"
    );
}

const DIRECT: &[u8] = b"GET /direct HTTP/1.1\r\nHost: shop.test\r\n\r\n";

/// Between requests only idle_timeout (3 s) applies, not header_read_timeout (1 s): an idle
/// keep-alive connection serves a second request after 2 s, and is closed within a quarter
/// of idle_timeout past it. The same holds for an h2 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_last_idle_timeout_not_header_read_timeout() {
    let gateway = start(1000).await;
    let public = gateway.listener("public");
    let mut stream = TcpStream::connect(public).await.unwrap();
    stream.write_all(DIRECT).await.unwrap();
    let first = read_direct_answer(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");

    let h2 = tokio::spawn(async move {
        let mut sender = h2c_connect(public).await.unwrap();
        let get = || {
            http::Request::get("http://shop.test/direct")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        let first = sender.send_request(get()).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = sender.send_request(get()).await;
        assert_eq!(
            second
                .expect("the idle h2 connection served a second request")
                .status(),
            StatusCode::OK
        );
    });

    tokio::time::sleep(Duration::from_secs(2)).await;
    stream.write_all(DIRECT).await.unwrap();
    let second = read_direct_answer(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second:?}");
    let answered = Instant::now();
    let outcome = read_to_end(&mut stream, Duration::from_secs(6)).await;
    assert_closed_silently(
        "the idle connection",
        outcome,
        answered.elapsed(),
        Duration::from_millis(2900)..=Duration::from_millis(3750),
    );
    h2.await.unwrap();
    assert!(
        !gateway.log().contains("request_header_timeout"),
        "{}",
        gateway.log()
    );
}

/// An idle keep-alive HTTP/1 connection lets go of its HTTP state between requests
/// (hyper's read and write buffers, 16 KiB, and more once it has forwarded): 200
/// connections, each idle after one request, are all counted parked within a few connection
/// checks (a quarter of header_read_timeout apart), well before idle_timeout (3 s). Each
/// still serves its next requests on the same connection, two of them pipelined; a head
/// whose first bytes reach a parked connection and the rest later arrives whole; a parked
/// connection the client closes is counted out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_let_go_of_their_http_state() {
    const CONNECTIONS: usize = 200;
    let gateway = start(CONNECTIONS + 100).await;
    let public = gateway.listener("public");
    let forwarded = b"GET /parked HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    let mut streams = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(public).await.unwrap();
        // Half forwarded to the echo backend, half answered by the gateway.
        let answer = if i % 2 == 0 {
            stream.write_all(forwarded).await.unwrap();
            read_sized_answer(&mut stream).await
        } else {
            stream.write_all(DIRECT).await.unwrap();
            read_direct_answer(&mut stream).await
        };
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        streams.push(stream);
    }
    let parked = |metrics: &str| {
        sample_sum(
            metrics,
            "tollgate_parked_connections",
            &[("listener", "public")],
        )
        .unwrap_or(0.0)
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let metrics = gateway.metrics().await;
    assert_eq!(parked(&metrics), CONNECTIONS as f64, "{metrics}");

    for stream in streams.iter_mut().skip(1).step_by(2).take(20) {
        let mut pipelined = DIRECT.to_vec();
        pipelined.extend_from_slice(DIRECT);
        stream.write_all(&pipelined).await.unwrap();
        let mut answers = read_direct_answer(stream).await;
        while answers.matches("direct\n").count() < 2 {
            answers.push_str(&read_direct_answer(stream).await);
        }
        assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers:?}");
    }
    let stream = &mut streams[CONNECTIONS - 1];
    stream.write_all(&DIRECT[..7]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&DIRECT[7..]).await.unwrap();
    let answer = read_direct_answer(stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    streams.truncate(CONNECTIONS / 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let metrics = gateway.metrics().await;
    assert_eq!(parked(&metrics), (CONNECTIONS / 2) as f64, "{metrics}");
    assert!(
        !gateway.log().contains("request_header_timeout"),
        "{}",
        gateway.log()
    );
}

/// header_read_timeout (1 s) runs while a head arrives: from the first byte of the next
/// request on a keep-alive connection (the idle time before it does not count), and from
/// the start for a connection that never sends a byte. Both are closed without an answer
/// and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_runs_from_the_first_byte_of_the_next_head() {
    let gateway = start(1000).await;
    let public = gateway.listener("public");

    let silent = tokio::spawn(async move {
        let connected = Instant::now();
        let mut silent = TcpStream::connect(public).await.unwrap();
        let (answer, end) = read_to_end(&mut silent, Duration::from_secs(4)).await;
        (connected.elapsed(), answer, end)
    });

    let mut stream = TcpStream::connect(public).await.unwrap();
    stream.write_all(DIRECT).await.unwrap();
    let first = read_direct_answer(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    // Idle for longer than header_read_timeout, then half a head and nothing more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream
        .write_all(b"GET /direct HTTP/1.1\r\nHost: sh")
        .await
        .unwrap();
    let head_started = Instant::now();
    let outcome = read_to_end(&mut stream, Duration::from_secs(4)).await;
    let about_header_read_timeout = Duration::from_millis(950)..=Duration::from_millis(1600);
    assert_closed_silently(
        "the unfinished head",
        outcome,
        head_started.elapsed(),
        about_header_read_timeout.clone(),
    );
    let (waited, answer, end) = silent.await.unwrap();
    assert_closed_silently(
        "the silent connection",
        (answer, end),
        waited,
        about_header_read_timeout,
    );

    let timeouts = gateway
        .log()
        .lines()
        .filter(|line| line.contains("detail=\"request_header_timeout\""))
        .inspect(|line| assert!(line.contains("status=\"-\""), "{line}"))
        .count();
    assert_eq!(timeouts, 2, "{}", gateway.log());
}

/// The scenario: connections that send their head and 3 of 100 body bytes, then
/// nothing. Wherever the body is read — streamed upstream, buffered for a retry, collected
/// for a plugin, or not read at all by a direct response — each is answered 408 with
/// `connection: close` (or closed) after body_read_timeout (1 s) and then closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_get_408_and_are_closed() {
    let gateway = start(1000).await;
    let echo = gateway.backend("echo");
    let public = gateway.listener("public");
    let started = Instant::now();
    let mut attackers = JoinSet::new();
    let paths = ["/streamed", "/buffered", "/plugged", "/direct"];
    for index in 0..200 {
        let path = paths[index % paths.len()];
        attackers.spawn(async move {
            let mut stream = TcpStream::connect(public).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\nabc"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let (answer, end) = read_to_end(&mut stream, Duration::from_secs(10)).await;
            (path, started.elapsed(), answer, end)
        });
    }
    // An honest upload that moves slowly but steadily: 10 chunks 300 ms apart, three times
    // body_read_timeout in all, is served whole.
    let honest_upload = tokio::spawn(async move {
        let mut stream = TcpStream::connect(public).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stream.write_all(&[b'u'; 10]).await.unwrap();
        }
        let (answer, _) = read_to_end(&mut stream, Duration::from_secs(5)).await;
        answer
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_honest_client_served(public).await;

    let mut timed_out_by_path = std::collections::BTreeMap::new();
    while let Some(outcome) = attackers.join_next().await {
        let (path, elapsed, answer, end) = outcome.unwrap();
        assert_eq!(
            end,
            End::Closed,
            "{path}: a stalled body kept its connection open"
        );
        assert!(
            elapsed < Duration::from_secs(6),
            "{path}: a stalled body held its connection {elapsed:?}"
        );
        if path == "/direct" {
            // The direct response does not read the body: it answers at once and hyper
            // stops reading, so the connection closes after the answer.
            assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer:?}");
            continue;
        }
        let head = answer.to_ascii_lowercase();
        assert!(
            head.starts_with("http/1.1 408") && head.contains("connection: close"),
            "{path}: expected 408 with connection: close, got {answer:?}"
        );
        *timed_out_by_path.entry(path).or_insert(0) += 1;
    }
    assert_eq!(timed_out_by_path.len(), 3, "{timed_out_by_path:?}");

    let upload = honest_upload.await.unwrap();
    assert!(
        upload.starts_with("HTTP/1.1 200"),
        "honest upload: {upload:?}"
    );
    let received = echo
        .requests()
        .into_iter()
        .find(|request| request.path == "/upload")
        .expect("the honest upload reached the backend");
    assert_eq!(received.body_len, 100);
    assert!(
        gateway.log().contains("request_body_timeout"),
        "no access-log line with detail request_body_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_counted_and_service_resumes() {
    let gateway = start(5).await;
    let public = gateway.listener("public");

    // Five connections each holding an exchange open: the listener is full.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(public).await.unwrap();
        stream
            .write_all(b"GET /held HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 1024];
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    // Beyond the cap: accepted and closed without a byte of answer.
    for _ in 0..3 {
        let mut extra = TcpStream::connect(public).await.unwrap();
        let (answer, end) = read_to_end(&mut extra, Duration::from_secs(3)).await;
        assert_eq!(end, End::Closed, "an extra connection was kept");
        assert!(answer.is_empty(), "an extra connection got {answer:?}");
    }
    // The cap is per listener: the other listener still serves.
    assert_honest_client_served(gateway.listener("other")).await;
    let metrics = gateway.metrics().await;
    assert_eq!(
        sample_sum(
            &metrics,
            "tollgate_connections_refused_total",
            &[("listener", "public")]
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample_sum(
            &metrics,
            "tollgate_connections_refused_total",
            &[("listener", "other")]
        ),
        None
    );

    // Closing the held connections frees their places.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let served = tokio::time::timeout(
            Duration::from_secs(2),
            HttpClient::http1().send(tollgate_tests::clients::get_request(
                public,
                "shop.test",
                "/again",
            )),
        )
        .await;
        if let Ok(Ok(response)) = served {
            assert_eq!(response.status, StatusCode::OK);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the listener did not serve again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// stream_idle_timeout (2 s) ends exchanges where no byte moves: an upstream that stalls
/// mid-body, and a client that stops reading a large response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_ends_stalled_upstreams_and_clients_that_stop_reading() {
    let gateway = start(1000).await;
    let public = gateway.listener("public");

    // The upstream sends one chunk, then waits 20 s before the next.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(public).await.unwrap();
    stalled
        .write_all(
            b"GET /stall?stream_chunks=3&chunk_delay_ms=20000 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        )
        .await
        .unwrap();
    // A client that uploads 16 MB to be echoed back, reads the answer's head, then stops
    // reading.
    const ECHOED: usize = 16 * 1024 * 1024;
    let mut not_reading = TcpStream::connect(public).await.unwrap();
    let head =
        format!("POST /echo-body HTTP/1.1\r\nHost: shop.test\r\nContent-Length: {ECHOED}\r\n\r\n");
    not_reading.write_all(head.as_bytes()).await.unwrap();
    not_reading.write_all(&vec![b'e'; ECHOED]).await.unwrap();
    let mut head = [0u8; 512];
    let read = not_reading.read(&mut head).await.unwrap();
    assert!(head[..read].starts_with(b"HTTP/1.1 200"));
    let reading_stopped = Instant::now();

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_honest_client_served(public).await;

    let (answer, end) = read_to_end(&mut stalled, Duration::from_secs(10)).await;
    assert_eq!(end, End::Closed, "the stalled stream was not ended");
    assert!(answer.contains("chunk 0"), "{answer:?}");
    assert!(!answer.contains("chunk 1"), "{answer:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(8),
        "the stalled stream ended after {waited:?}"
    );

    // Not read for at least 4 s (twice the timeout), then read what is left: the
    // connection must have been closed before the whole answer arrived.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(reading_stopped.elapsed())).await;
    let mut received = read;
    let mut buffer = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let end = loop {
        match tokio::time::timeout_at(deadline, not_reading.read(&mut buffer)).await {
            Err(_) => break End::Open,
            Ok(Ok(0)) | Ok(Err(_)) => break End::Closed,
            Ok(Ok(read)) => received += read,
        }
    };
    assert_eq!(end, End::Closed);
    assert!(
        received < ECHOED,
        "the client got {received} bytes: the response was not cut"
    );
    assert_honest_client_served(public).await;
}
