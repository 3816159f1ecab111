//! Request bodies stream through the plugins piece by piece, as Envoy streams them, through
//! the real gateway:
//! - a bidirectional gRPC-style stream gets each reply before its next message is sent,
//!   through a headers-only plugin (no body callback exported), through `tp-stream`, which
//!   reads and continues every piece, and through `tp-stream` pausing the first message
//!   for a callout and resuming when it answers (the held message goes on at once);
//! - a 1 GiB upload, generated as it is sent, reaches the upstream whole (count and SHA-256)
//!   through `tp-stream` reading every piece, while the gateway's peak memory grows by less
//!   than 64 MiB; the upstream gets it without `Content-Length`, since a body plugin may
//!   change its length;
//! - `tp-body`, which pauses until the end and rewrites the whole body, still gets it whole
//!   and the upstream the rewritten one;
//! - a plugin holding more than `max_buffered_body_bytes` of a request is answered 413 and
//!   the upstream gets nothing; holding as much of a response resets it;
//! - a local reply from the body phase mid-upload reaches the client, and the upstream
//!   request is abandoned;
//! - request trailers reach the plugins after the whole body, and the upstream after it;
//! - on a route whose plugins read no body the client's `Content-Length` goes upstream;
//! - a small body on a route with retries goes through the plugins whole first, so that it
//!   leaves with its new length and a retry sends it again;
//! - a body that stops arriving through a body plugin is still answered 408.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tollgate_tests::backends::Failure;
use tollgate_tests::plugins::{headers_only_wat, PluginSpec, TP_BODY, TP_STREAM};
use tollgate_tests::scenario::{Running, Scenario};

/// The 1 GiB upload is within the total; a paused plugin may hold 1 MiB.
const SERVER: &str = "
max_request_body_bytes: 2147483648
max_buffered_body_bytes: 1048576
body_read_timeout: 2s
";

const RETRIED_ROUTE: &str = "
name: retried
match: { path: { prefix: /echo-body-retried } }
forward:
  cluster: flaky
  retries: { attempts: 2, per_try_timeout: 2s, on: [5xx] }
";

/// What the sink upstream saw of one request.
#[derive(Clone, Debug, Default)]
struct Upload {
    path: String,
    headers: HeaderMap,
    bytes: u64,
    /// The first MiB of the body, for exact checks of small bodies.
    start: Vec<u8>,
    sha256: String,
    trailers: Option<HeaderMap>,
    /// `Some(true)`: the body ended; `Some(false)`: it broke off (the request was abandoned).
    completed: Option<bool>,
}

/// An upstream (HTTP/1.1 and h2) that reads each request body as it arrives and records
/// it; it answers when the body ends, with `bytes=N sha256=HEX`, or with `N` bytes of
/// `x` when the request asks with `x-sink-respond-bytes: N`.
struct Sink {
    addr: SocketAddr,
    uploads: Arc<Mutex<Vec<Upload>>>,
}

impl Sink {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uploads: Arc<Mutex<Vec<Upload>>> = Arc::default();
        let recorded = uploads.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        sink_request(request, recorded.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, uploads }
    }

    fn uploads_to(&self, path: &str) -> Vec<Upload> {
        let uploads = self.uploads.lock().unwrap();
        uploads
            .iter()
            .filter(|upload| upload.path == path)
            .cloned()
            .collect()
    }

    /// The one request to `path`, once its body ended or broke off (within 10 s).
    async fn settled_upload(&self, path: &str) -> Upload {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let uploads = self.uploads_to(path);
            if let [upload] = uploads.as_slice() {
                if upload.completed.is_some() {
                    return upload.clone();
                }
            }
            assert!(
                uploads.len() <= 1,
                "one request to {path} expected: {uploads:?}"
            );
            assert!(
                Instant::now() < deadline,
                "the upstream request to {path} neither ended nor broke off: {uploads:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type SinkBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn sink_request(
    request: Request<Incoming>,
    uploads: Arc<Mutex<Vec<Upload>>>,
) -> Result<Response<SinkBody>, Infallible> {
    let index = {
        let mut uploads = uploads.lock().unwrap();
        uploads.push(Upload {
            path: request.uri().path().to_string(),
            headers: request.headers().clone(),
            ..Upload::default()
        });
        uploads.len() - 1
    };
    let respond_bytes = request
        .headers()
        .get("x-sink-respond-bytes")
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    let mut body = request.into_body();
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let completed = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    hash.update(&data);
                    bytes += data.len() as u64;
                    let mut uploads = uploads.lock().unwrap();
                    let upload = &mut uploads[index];
                    upload.bytes = bytes;
                    let room = (1usize << 20).saturating_sub(upload.start.len());
                    upload
                        .start
                        .extend_from_slice(&data[..room.min(data.len())]);
                }
                Err(frame) => {
                    uploads.lock().unwrap()[index].trailers = frame.into_trailers().ok();
                }
            },
        }
    };
    let sha256 = hex(&hash.finalize());
    {
        let mut uploads = uploads.lock().unwrap();
        uploads[index].sha256 = sha256.clone();
        uploads[index].completed = Some(completed);
    }
    let body = match respond_bytes {
        Some(size) => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let pieces = (0..size.div_ceil(chunk.len())).map(move |index| {
                let length = chunk.len().min(size - index * chunk.len());
                Ok::<_, Infallible>(Frame::data(chunk.slice(..length)))
            });
            StreamBody::new(futures_util::stream::iter(pieces)).boxed()
        }
        None => Full::new(Bytes::from(format!("bytes={bytes} sha256={sha256}"))).boxed(),
    };
    Ok(Response::new(body))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

struct Setup {
    gateway: Running,
    sink: Sink,
}

async fn start() -> Setup {
    let sink = Sink::start().await;
    // Called for every piece of a 1 GiB body on a shared machine: a deadline that a
    // descheduled worker can miss would fail the upload for a reason this file does not test.
    let plugins = [
        PluginSpec::new("headers-only", headers_only_wat())
            .routes(&["headers-only-grpc", "headers-only-upload"]),
        PluginSpec::new("reader", TP_STREAM).routes(&[
            "reader-grpc",
            "callout-grpc",
            "upload",
            "trailers",
        ]),
        PluginSpec::new("rewriter", TP_BODY).routes(&["rewrite", "retried"]),
    ]
    .map(|plugin| plugin.field("callback_timeout", json!("1s")));
    let gateway = Scenario::new()
        .server(SERVER)
        .grpc_stream_echo("grpc")
        // Answers its first request 503, then echoes.
        .flaky("flaky", 1, Failure::Status503)
        .cluster_at("sink", sink.addr)
        .cluster(&format!(
            "{{ name: sink-h2, endpoints: [{{ address: \"{}\" }}], http2: true }}",
            sink.addr
        ))
        .route("{ name: headers-only-grpc, match: { path: { prefix: /headers.only.Echo/ } }, forward: { cluster: grpc, timeout: 30s } }")
        .route("{ name: reader-grpc, match: { path: { prefix: /reader.Echo/ } }, forward: { cluster: grpc, timeout: 30s } }")
        .route("{ name: callout-grpc, match: { path: { prefix: /callout.Echo/ } }, forward: { cluster: grpc, timeout: 30s } }")
        .route("{ name: upload, match: { path: { prefix: /upload } }, forward: { cluster: sink, timeout: 120s } }")
        .forward("rewrite", "/rewrite", "sink")
        .forward("trailers", "/trailers", "sink-h2")
        .forward("headers-only-upload", "/headers-only-upload", "sink")
        .route(RETRIED_ROUTE)
        .plugins(&plugins)
        .start()
        .await;
    Setup { gateway, sink }
}

type Pieces = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A client request body: what the test sends through its channel, piece by piece;
/// dropping the sender ends it.
struct Piecewise(mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl http_body::Body for Piecewise {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

fn streamed_request(uri: &str, headers: &[(&str, &str)]) -> (Pieces, Request<Piecewise>) {
    let (pieces, receiver) = mpsc::channel(1);
    let mut builder = Request::post(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    (pieces, builder.body(Piecewise(receiver)).unwrap())
}

async fn h2c_sender(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Piecewise> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// A gRPC message frame (uncompressed) carrying `payload`.
fn grpc_message(payload: &str) -> Bytes {
    let mut message = vec![0u8];
    message.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    message.extend_from_slice(payload.as_bytes());
    Bytes::from(message)
}

/// Reads the response body until `expected` bytes of data came (or fails after 5 s).
async fn next_reply(body: &mut Incoming, expected: &Bytes) -> Bytes {
    let mut reply = Vec::new();
    while reply.len() < expected.len() {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a reply within 5 s, before the next message is sent")
            .expect("the stream is still open")
            .expect("the reply stream is intact");
        if let Ok(data) = frame.into_data() {
            reply.extend_from_slice(&data);
        }
    }
    Bytes::from(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_gets_each_reply_before_its_next_message() {
    let setup = start().await;
    let public = setup.gateway.listener("public");
    for (service, mode) in [
        ("headers.only.Echo", "continue"),
        ("reader.Echo", "continue"),
        ("callout.Echo", "call-then-continue"),
    ] {
        let mut sender = h2c_sender(public).await;
        let (pieces, request) = streamed_request(
            &format!("http://grpc.test/{service}/Chat"),
            &[
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("x-stream-mode", mode),
            ],
        );
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{service}: no response head before the request body ended; log:\n{}",
                    setup.gateway.log()
                )
            })
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{service}");
        let mut body = response.into_body();
        for number in 1..=3 {
            let message = grpc_message(&format!("message {number} to {service}"));
            pieces.send(Ok(Frame::data(message.clone()))).await.unwrap();
            assert_eq!(
                next_reply(&mut body, &message).await,
                message,
                "{service}: reply {number}"
            );
        }
        drop(pieces);
        let trailers = loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("the stream ends within 5 s of the half-close")
                .expect("trailers end the stream")
                .expect("the stream is intact");
            if let Ok(trailers) = frame.into_trailers() {
                break trailers;
            }
        };
        assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{service}");
    }
    let seen = setup.gateway.backend("grpc").requests();
    let headers_only = seen
        .iter()
        .find(|request| request.path.starts_with("/headers.only.Echo/"))
        .expect("the headers-only stream reached the backend");
    assert_eq!(
        headers_only.header("x-headers-only"),
        Some("seen"),
        "the headers-only plugin ran on its route"
    );
    assert_eq!(
        setup.sink.uploads_to("/callout").len(),
        1,
        "tp-stream called out once, on the first message"
    );
}

/// The peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

async fn http1_sender(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Piecewise> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_through_a_body_reading_plugin_in_bounded_memory() {
    const TOTAL: u64 = 1 << 30;
    const PIECE: usize = 64 * 1024;
    let setup = start().await;
    let public = setup.gateway.listener("public");
    let pid = setup.gateway.pid();

    // A first upload warms the workers' VMs and buffers, so that the peak measured after
    // the big one is what streaming it cost.
    let mut sender = http1_sender(public).await;
    let (pieces, request) = streamed_request("http://shop.test/upload/warm-up", &[]);
    drop(pieces);
    let warm_up = sender.send_request(request).await.unwrap();
    warm_up.into_body().collect().await.unwrap();
    // The peak so far is the start-up's (compiling modules); restarting it from the
    // current use (`5` into clear_refs) measures the upload alone.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the gateway's VmHWM");
    let peak_before = peak_rss(pid);
    let mut sender = http1_sender(public).await;

    let (pieces, request) = streamed_request(
        "http://shop.test/upload/big",
        &[("content-length", &TOTAL.to_string())],
    );
    let started = Instant::now();
    // The body is generated as it is sent, each piece distinct (its index up front), and
    // hashed on the way: the test never holds more than a piece or two.
    let generator = tokio::spawn(async move {
        let mut pattern = vec![0u8; PIECE];
        for (index, byte) in pattern.iter_mut().enumerate() {
            *byte = (index % 251) as u8;
        }
        let mut hash = Sha256::new();
        for index in 0..TOTAL / PIECE as u64 {
            pattern[..8].copy_from_slice(&index.to_le_bytes());
            let piece = Bytes::copy_from_slice(&pattern);
            hash.update(&piece);
            if pieces.send(Ok(Frame::data(piece))).await.is_err() {
                return format!("the gateway stopped reading the upload at piece {index}");
            }
        }
        hex(&hash.finalize())
    });
    let response = tokio::time::timeout(Duration::from_secs(120), async {
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .expect("the upload finished within 120 s");
    let elapsed = started.elapsed();
    let sent_sha256 = generator.await.unwrap();
    let peak_after = peak_rss(pid);

    assert_eq!(
        response.0,
        StatusCode::OK,
        "{}; log:\n{}",
        response.1,
        setup.gateway.log()
    );
    assert_eq!(response.1, format!("bytes={TOTAL} sha256={sent_sha256}"));
    let upload = setup.sink.settled_upload("/upload/big").await;
    assert_eq!(upload.completed, Some(true));
    assert_eq!(upload.bytes, TOTAL);
    assert_eq!(upload.sha256, sent_sha256);
    assert!(
        upload.headers.get("content-length").is_none(),
        "a body plugin may change the length: the upstream gets none ({:?})",
        upload.headers
    );
    let growth = peak_after.saturating_sub(peak_before);
    println!(
        "1 GiB through tp-stream: {elapsed:?} ({:.0} MiB/s); gateway peak RSS {} MiB → {} MiB",
        TOTAL as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
        peak_before >> 20,
        peak_after >> 20
    );
    assert!(
        growth < 64 << 20,
        "the gateway's peak RSS grew by {} MiB streaming 1 GiB",
        growth >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_pausing_until_the_end_rewrites_the_whole_body() {
    let setup = start().await;
    let public = setup.gateway.listener("public");
    for (protocol, path) in [("HTTP/1.1", "/rewrite/h1"), ("h2", "/rewrite/h2")] {
        let (pieces, request) = streamed_request(&format!("http://shop.test{path}"), &[]);
        let pieces_sent = tokio::spawn(async move {
            for number in 0..3 {
                let piece = format!("piece {number} of the body; ").repeat(500);
                pieces
                    .send(Ok(Frame::data(Bytes::from(piece))))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let response = if protocol == "h2" {
            h2c_sender(public).await.send_request(request).await
        } else {
            http1_sender(public).await.send_request(request).await
        }
        .unwrap();
        pieces_sent.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{protocol}");
        let upload = setup.sink.settled_upload(path).await;
        let expected: String = (0..3)
            .map(|number| format!("piece {number} of the body; ").repeat(500))
            .collect::<String>()
            .to_ascii_uppercase();
        assert_eq!(upload.completed, Some(true), "{protocol}");
        assert_eq!(
            String::from_utf8_lossy(&upload.start),
            expected,
            "{protocol}: the upstream gets the whole body, rewritten"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffering_past_the_limit_answers_413_for_requests_and_resets_responses() {
    let setup = start().await;
    let public = setup.gateway.listener("public");

    // Request side: the plugin holds every piece; past 1 MiB the gateway answers 413.
    let mut sender = h2c_sender(public).await;
    let (pieces, request) =
        streamed_request("http://shop.test/upload/held", &[("x-stream-mode", "hold")]);
    let sending = tokio::spawn(async move {
        let piece = Bytes::from(vec![b'h'; 64 * 1024]);
        // Up to 4 MiB: the answer comes well before.
        for _ in 0..64 {
            if pieces.send(Ok(Frame::data(piece.clone()))).await.is_err() {
                return;
            }
        }
        // Kept open: the answer must not wait for the end of the body.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered within 10 s")
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"request body too large\n");
    let upload = setup.sink.settled_upload("/upload/held").await;
    assert_eq!(
        upload.completed,
        Some(false),
        "the upstream request is abandoned"
    );
    assert_eq!(upload.bytes, 0, "the upstream got nothing of the held body");
    sending.abort();

    // Response side: the plugin holds the 4 MiB response until its end; past 1 MiB the
    // response (its head already sent) is reset.
    let mut sender = h2c_sender(public).await;
    let (pieces, request) = streamed_request(
        "http://shop.test/upload/big-answer",
        &[
            ("x-stream-response", "hold"),
            ("x-sink-respond-bytes", "4194304"),
        ],
    );
    drop(pieces);
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered within 10 s")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the response ends within 10 s");
    assert!(
        body.is_err(),
        "the response must be reset, not delivered ({} bytes)",
        body.map(|body| body.to_bytes().len()).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reply_mid_upload_reaches_the_client_and_abandons_the_upstream_request() {
    let setup = start().await;
    let public = setup.gateway.listener("public");
    let mut sender = h2c_sender(public).await;
    let (pieces, request) = streamed_request(
        "http://shop.test/upload/refused",
        &[("x-stream-mode", "reply-after:100000")],
    );
    let sending = tokio::spawn(async move {
        let piece = Bytes::from(vec![b'r'; 16 * 1024]);
        let mut sent = 0;
        // At most 4 MiB, a piece every 5 ms: the reply comes after about 100 kB.
        for _ in 0..256 {
            if pieces.send(Ok(Frame::data(piece.clone()))).await.is_err() {
                break;
            }
            sent += piece.len();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    });
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered within 10 s")
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(body.starts_with("stopped after "), "{body}");
    let upload = setup.sink.settled_upload("/upload/refused").await;
    assert_eq!(
        upload.completed,
        Some(false),
        "the upstream request is abandoned, not completed"
    );
    assert!(
        upload.bytes < 4 << 20,
        "the upstream got {} bytes",
        upload.bytes
    );
    sending.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_follow_the_whole_body_through_plugins_and_upstream() {
    let setup = start().await;
    let public = setup.gateway.listener("public");
    let mut sender = h2c_sender(public).await;
    let (pieces, request) = streamed_request("http://shop.test/trailers", &[]);
    let sending = tokio::spawn(async move {
        for number in 0..3 {
            let piece = Bytes::from(format!("piece {number}; ").repeat(100));
            pieces.send(Ok(Frame::data(piece))).await.unwrap();
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-client-trailer", HeaderValue::from_static("sent"));
        pieces.send(Ok(Frame::trailers(trailers))).await.unwrap();
    });
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered within 10 s")
        .unwrap();
    sending.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let upload = setup.sink.settled_upload("/trailers").await;
    let body_length: usize = (0..3)
        .map(|number| format!("piece {number}; ").repeat(100).len())
        .sum();
    assert_eq!(upload.completed, Some(true));
    assert_eq!(upload.bytes, body_length as u64);
    assert_eq!(
        upload.headers.get("content-length"),
        None,
        "{:?}",
        upload.headers
    );
    let trailers = upload
        .trailers
        .expect("the upstream got trailers after the body");
    assert_eq!(trailers.get("x-client-trailer").unwrap(), "sent");
    assert_eq!(
        trailers.get("x-body-bytes").unwrap(),
        &body_length.to_string(),
        "the plugin saw the whole body before the trailers"
    );
    assert_eq!(
        trailers.get("x-body-ends").unwrap(),
        "0",
        "with trailers, no body callback has end_of_stream (as in Envoy)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_body_plugins_keeps_the_clients_content_length() {
    let setup = start().await;
    let public = setup.gateway.listener("public");
    let body = "x".repeat(100_000);
    let (pieces, request) = streamed_request(
        "http://shop.test/headers-only-upload",
        &[("content-length", &body.len().to_string())],
    );
    let sending = tokio::spawn(async move {
        for piece in body.as_bytes().chunks(30_000) {
            let piece = Bytes::copy_from_slice(piece);
            pieces.send(Ok(Frame::data(piece))).await.unwrap();
        }
    });
    let response = http1_sender(public)
        .await
        .send_request(request)
        .await
        .unwrap();
    sending.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let upload = setup.sink.settled_upload("/headers-only-upload").await;
    assert_eq!(upload.completed, Some(true));
    assert_eq!(upload.bytes, 100_000);
    assert_eq!(
        upload
            .headers
            .get("content-length")
            .map(|value| value.to_str().unwrap()),
        Some("100000"),
        "{:?}",
        upload.headers
    );
    assert_eq!(upload.headers.get("x-headers-only").unwrap(), "seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_through_a_body_plugin_is_answered_408() {
    let setup = start().await;
    let public = setup.gateway.listener("public");
    let mut sender = h2c_sender(public).await;
    let (pieces, request) = streamed_request("http://shop.test/upload/stalled", &[]);
    pieces
        .send(Ok(Frame::data(Bytes::from_static(
            b"the start, then nothing",
        ))))
        .await
        .unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered within 10 s")
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(8),
        "answered after {waited:?} (body_read_timeout: 2s)"
    );
    let upload = setup.sink.settled_upload("/upload/stalled").await;
    assert_eq!(
        upload.completed,
        Some(false),
        "the upstream request is abandoned"
    );
    drop(pieces);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_on_a_retried_route_is_rewritten_once_and_sent_again() {
    let setup = start().await;
    let public = setup.gateway.listener("public");
    let body = "a small order, ".repeat(10);
    // PUT: idempotent, so a 503 is retried.
    let request = Request::put("http://shop.test/echo-body-retried")
        .header("content-length", body.len().to_string())
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let tcp = TcpStream::connect(public).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the retry hides the 503");
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    let expected = body.to_ascii_uppercase();
    assert!(
        answer.starts_with(expected.as_bytes()),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let tries = setup.gateway.backend("flaky").requests();
    assert_eq!(tries.len(), 2, "{tries:?}");
    let retry = &tries[1];
    assert_eq!(retry.body_len, expected.len());
    assert_eq!(
        retry.header("content-length"),
        Some(expected.len().to_string().as_str()),
        "the body leaves with its final length"
    );
}
