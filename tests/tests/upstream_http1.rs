//! The gateway's HTTP/1.1 client towards upstreams, against an upstream that answers with
//! bytes each test writes: what a user of Envoy or nginx expects of a proxy talking to an
//! HTTP/1.1 server that frames its answers in unusual, broken or hostile ways.
//!
//! - Framing (RFC 9112 §6.3): `Content-Length`, chunked (extensions, trailers),
//!   close-delimited, chunked over `Content-Length`, transfer codings before `chunked`, a
//!   `Transfer-Encoding` without `chunked` last; whatever the framing, the client gets the
//!   body decoded, and a connection goes back to the pool only when its framing proved where
//!   the answer ended.
//! - Broken answers: differing `Content-Length` values, bad chunk sizes, garbage or invalid
//!   status lines, a head too large or with too many fields, obs-fold, bare LF: a `502`, or,
//!   when the head had already gone to the client, a response that cannot be mistaken for a
//!   complete one; the gateway goes on serving.
//! - Answers without a body (`HEAD`, `204`, `304`), interim `1xx` answers, `HTTP/1.0`.
//! - An upstream that closes: without answering, mid-body, while idle in the pool, early
//!   with a `413` before it read the upload.
//! - What the gateway writes upstream: one framing per request, the body's exact bytes,
//!   header values as the client sent them.
//!
//! Every gateway here runs one worker: pools are per worker, so with one worker every
//! request meets the same pool and connection reuse can be counted at the upstream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tollgate_tests::clients::{raw_exchange, request, HttpResponse, RawResponse};
use tollgate_tests::scenario::{Running, Scenario, HOST};

/// How long a client waits for a whole answer: far longer than any answer here takes, far
/// shorter than the route's 15 s timeout, so a gateway that hangs fails the test instead of
/// ending in a `504`.
const CLIENT_WAIT: Duration = Duration::from_secs(5);

/// How long the scripted upstream waits for the next bytes of a request (or for the next
/// request on a kept connection) before it closes the connection.
const UPSTREAM_READ_WAIT: Duration = Duration::from_secs(10);

/// A pause after a response before the next request, so that the gateway has put its
/// upstream connection back into the pool: the body's end reaches the client a moment
/// before the connection is ready for another request.
const SETTLE: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// The scripted upstream
// ---------------------------------------------------------------------------------------

/// What the scripted upstream does with a connection after writing an answer.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Waits for the next request on the connection.
    KeepOpen,
    /// Closes the connection at once.
    Close,
    /// Keeps the connection open this long, reading nothing, then closes it without a word:
    /// a server whose keep-alive timeout is shorter than the gateway's.
    CloseAfter(Duration),
    /// Stops writing (FIN), then reads and discards what still comes for up to 5 s before
    /// closing: a server's lingering close after an early answer, so that unread request
    /// bytes do not turn its close into a reset that destroys the answer.
    Linger,
    /// Keeps the connection open this long, reading nothing, then closes it.
    Hold(Duration),
}

/// One scripted answer.
#[derive(Clone, Debug)]
struct Reply {
    /// Read the request body (by its `Content-Length` or chunks) before answering; `false`
    /// answers right after the request head.
    read_body: bool,
    bytes: Vec<u8>,
    then: Then,
}

/// Answers after reading the whole request.
fn reply(bytes: impl AsRef<[u8]>, then: Then) -> Reply {
    Reply {
        read_body: true,
        bytes: bytes.as_ref().to_vec(),
        then,
    }
}

/// Answers right after the request head, before reading any of its body.
fn early_reply(bytes: impl AsRef<[u8]>, then: Then) -> Reply {
    Reply {
        read_body: false,
        bytes: bytes.as_ref().to_vec(),
        then,
    }
}

/// `200 OK` with a `Content-Length` body.
fn ok(body: &[u8]) -> Vec<u8> {
    let mut bytes =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// What the scripted upstream received of one request.
#[derive(Clone, Debug)]
struct Seen {
    /// The connection it came on: 0 for the first connection accepted, and so on.
    connection: usize,
    /// The head, up to and including the empty line.
    head: String,
    /// Every byte read for the request: head and body as framed.
    raw: Vec<u8>,
    /// The body, chunks decoded; empty for a request answered before its body was read.
    body: Vec<u8>,
}

impl Seen {
    /// The values of every `name` line of the head, in order (name matched
    /// case-insensitively, values trimmed).
    fn header_values(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(line_name, _)| line_name.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
            .collect()
    }

    /// The value of `name` as raw bytes, exactly as written (between the colon's optional
    /// whitespace and the line end), for values that are not UTF-8.
    fn raw_header_value(&self, name: &str) -> Option<Vec<u8>> {
        let head_end = find(&self.raw, b"\r\n\r\n")?;
        self.raw[..head_end]
            .split(|byte| *byte == b'\n')
            .skip(1)
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .find_map(|line| {
                let colon = line.iter().position(|byte| *byte == b':')?;
                if !line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
                    return None;
                }
                let value = &line[colon + 1..];
                let start = value
                    .iter()
                    .position(|byte| *byte != b' ' && *byte != b'\t')
                    .unwrap_or(value.len());
                let end = value
                    .iter()
                    .rposition(|byte| *byte != b' ' && *byte != b'\t')
                    .map_or(start, |last| last + 1);
                Some(value[start..end].to_vec())
            })
    }
}

struct Shared {
    replies: Vec<Reply>,
    /// Requests read so far; the next one gets `replies[next]`.
    next: AtomicUsize,
    accepted: AtomicUsize,
    closed: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// A raw-TCP HTTP/1.1 upstream on a loopback port. The requests it reads, in the order they
/// arrive over all its connections, get the scripted replies one by one; a request beyond
/// the script is answered `500 unscripted request` and its connection closed. Stops (its
/// connections closed) when dropped.
struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            replies,
            next: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set so that aborting the accept loop closes them too.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let connection = accepting.accepted.fetch_add(1, Ordering::SeqCst);
                let shared = accepting.clone();
                connections.spawn(async move {
                    serve(stream, connection, &shared).await;
                    shared.closed.fetch_add(1, Ordering::SeqCst);
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, shared, task }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen lock").clone()
    }

    /// The connection each request came on, in order.
    fn connection_of_each(&self) -> Vec<usize> {
        self.seen().iter().map(|seen| seen.connection).collect()
    }

    /// Waits until `count` connections have ended (or 3 s passed).
    async fn wait_for_closed(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.shared.closed.load(Ordering::SeqCst) < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            self.shared.closed.load(Ordering::SeqCst) >= count,
            "the upstream closed {count} connections within 3 s"
        );
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection by the script until a reply closes it, the gateway closes it or
/// nothing arrives for [`UPSTREAM_READ_WAIT`].
async fn serve(stream: TcpStream, connection: usize, shared: &Shared) {
    let mut reader = Reader {
        stream,
        buffered: Vec::new(),
    };
    loop {
        let Some(head) = reader
            .take_through(b"\r\n\r\n", MAX_REQUEST_HEAD, UPSTREAM_READ_WAIT)
            .await
        else {
            return;
        };
        let index = shared.next.fetch_add(1, Ordering::SeqCst);
        let reply = shared.replies.get(index).cloned().unwrap_or_else(|| {
            reply(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 19\r\n\r\nunscripted request\n",
                Then::Close,
            )
        });
        let mut raw = head.clone();
        let head = String::from_utf8_lossy(&head).into_owned();
        let body = if reply.read_body {
            match request_body(&mut reader, &head, &mut raw).await {
                Some(body) => body,
                None => return,
            }
        } else {
            Vec::new()
        };
        shared.seen.lock().expect("seen lock").push(Seen {
            connection,
            head,
            raw,
            body,
        });
        let written = tokio::time::timeout(
            Duration::from_secs(5),
            reader.stream.write_all(&reply.bytes),
        )
        .await;
        if !matches!(written, Ok(Ok(()))) {
            // The gateway stopped reading (a head it refused, say): nothing more to do.
            return;
        }
        match reply.then {
            Then::KeepOpen => continue,
            Then::Close => {
                let _ = reader.stream.shutdown().await;
                return;
            }
            Then::CloseAfter(wait) | Then::Hold(wait) => {
                tokio::time::sleep(wait).await;
                return;
            }
            Then::Linger => {
                let _ = reader.stream.shutdown().await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let mut discard = vec![0u8; 64 * 1024];
                while let Ok(Ok(read)) =
                    tokio::time::timeout_at(deadline, reader.stream.read(&mut discard)).await
                {
                    if read == 0 {
                        break;
                    }
                }
                return;
            }
        }
    }
}

/// Request heads are far smaller; a longer one ends the connection.
const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Request bodies are at most a few MiB here.
const MAX_REQUEST_BODY: usize = 128 << 20;
/// Chunks and trailer lines of one request body.
const MAX_CHUNKS: usize = 100_000;

/// A connection's bytes read but not yet taken.
struct Reader {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl Reader {
    /// Reads more bytes; `false` at the end of the stream, on an error, or when nothing
    /// came within `wait`.
    async fn fill(&mut self, wait: Duration) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            Ok(Ok(read)) if read > 0 => {
                self.buffered.extend_from_slice(&chunk[..read]);
                true
            }
            _ => false,
        }
    }

    /// The bytes up to and including `delimiter`, looked for in at most `limit` bytes.
    async fn take_through(
        &mut self,
        delimiter: &[u8],
        limit: usize,
        wait: Duration,
    ) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.buffered, delimiter) {
                return Some(self.buffered.drain(..at + delimiter.len()).collect());
            }
            // Each turn reads at least one byte, so `limit` bounds the loop.
            if self.buffered.len() > limit || !self.fill(wait).await {
                return None;
            }
        }
    }

    /// The next `count` bytes.
    async fn take(&mut self, count: usize) -> Option<Vec<u8>> {
        while self.buffered.len() < count {
            if !self.fill(UPSTREAM_READ_WAIT).await {
                return None;
            }
        }
        Some(self.buffered.drain(..count).collect())
    }
}

/// Reads the body the head announces (chunked, by `Content-Length`, or none), appending the
/// bytes as read to `raw`; the body decoded, or `None` when it broke off.
async fn request_body(reader: &mut Reader, head: &str, raw: &mut Vec<u8>) -> Option<Vec<u8>> {
    let lower = head.to_ascii_lowercase();
    let values = |name: &str| -> Vec<String> {
        lower
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(line_name, _)| *line_name == name)
            .map(|(_, value)| value.trim().to_owned())
            .collect()
    };
    if values("transfer-encoding")
        .iter()
        .any(|value| value.ends_with("chunked"))
    {
        return chunked_body(reader, raw).await;
    }
    let length = match values("content-length").first() {
        Some(value) => value.parse::<usize>().ok()?,
        None => 0,
    };
    if length > MAX_REQUEST_BODY {
        return None;
    }
    let body = reader.take(length).await?;
    raw.extend_from_slice(&body);
    Some(body)
}

async fn chunked_body(reader: &mut Reader, raw: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    for _ in 0..MAX_CHUNKS {
        let line = reader
            .take_through(b"\r\n", 1024, UPSTREAM_READ_WAIT)
            .await?;
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
        let size_text = text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        if size == 0 {
            // Trailer fields, then the empty line.
            for _ in 0..MAX_CHUNKS {
                let line = reader
                    .take_through(b"\r\n", 8 * 1024, UPSTREAM_READ_WAIT)
                    .await?;
                raw.extend_from_slice(&line);
                if line == b"\r\n" {
                    return Some(body);
                }
            }
            return None;
        }
        if body.len() + size > MAX_REQUEST_BODY {
            return None;
        }
        let data = reader.take(size + 2).await?;
        raw.extend_from_slice(&data);
        body.extend_from_slice(&data[..size]);
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

// ---------------------------------------------------------------------------------------
// The gateway and its clients
// ---------------------------------------------------------------------------------------

/// A gateway with one worker routing `/echo` to an echo backend (to show it still serves)
/// and everything else to the scripted upstream, without retries.
async fn gateway_for(upstream: &Upstream) -> Running {
    scenario_for(upstream).start().await
}

fn scenario_for(upstream: &Upstream) -> Scenario {
    Scenario::new()
        .workers(1)
        .echo("echo")
        .cluster_at("scripted", upstream.addr())
        .forward("echo", "/echo", "echo")
        .forward("scripted", "/", "scripted")
}

/// Sends a request with `body` through the gateway's public listener and reads the whole
/// answer: `Err` with the client's error when the answer broke off or was not well framed.
/// Panics when nothing complete arrived within [`CLIENT_WAIT`].
async fn send(
    gateway: &Running,
    method: &str,
    path: &str,
    body: &'static [u8],
) -> Result<HttpResponse, String> {
    let request = request(method, gateway.addr(), HOST, path)
        .body(Full::new(Bytes::from_static(body)))
        .expect("valid request");
    match tokio::time::timeout(CLIENT_WAIT, gateway.client().send(request)).await {
        Ok(result) => result.map_err(|error| format!("{error:#}")),
        Err(_) => panic!(
            "{method} {path}: no complete answer (nor an error) within {CLIENT_WAIT:?}; the \
             gateway hangs"
        ),
    }
}

async fn get(gateway: &Running, path: &str) -> Result<HttpResponse, String> {
    send(gateway, "GET", path, b"").await
}

/// A GET whose answer must be complete; panics with the client's error otherwise.
async fn get_ok(gateway: &Running, path: &str) -> HttpResponse {
    get(gateway, path)
        .await
        .unwrap_or_else(|error| panic!("GET {path}: {error}"))
}

/// Asserts an answer came whole with `status` and `body`.
fn assert_answer(what: &str, outcome: &Result<HttpResponse, String>, status: u16, body: &[u8]) {
    match outcome {
        Ok(response) => {
            assert_eq!(
                response.status.as_u16(),
                status,
                "{what}: status (body {:?})",
                response.text()
            );
            assert_eq!(
                &response.body[..],
                body,
                "{what}: body {:?}",
                response.text()
            );
        }
        Err(error) => panic!(
            "{what}: expected {status} with a body of {} bytes, the client got an error: \
             {error}",
            body.len()
        ),
    }
}

/// Asserts an answer came whole with `status`, whatever its body (the gateway's own text
/// for the answers it makes).
fn assert_status(what: &str, outcome: &Result<HttpResponse, String>, status: u16) {
    match outcome {
        Ok(response) => assert_eq!(
            response.status.as_u16(),
            status,
            "{what}: status (body {:?})",
            response.text()
        ),
        Err(error) => panic!("{what}: expected {status}, the client got an error: {error}"),
    }
}

/// Asserts the client did not get a complete, well-framed response carrying the upstream's
/// broken answer: either a `502` (the gateway noticed before it sent the head) or an answer
/// that broke off (connection closed or reset mid-body).
fn assert_not_complete(what: &str, outcome: &Result<HttpResponse, String>) {
    if let Ok(response) = outcome {
        assert_eq!(
            response.status,
            StatusCode::BAD_GATEWAY,
            "{what}: the client got a complete {} answer with a {}-byte body {:?}; expected a \
             502 or a broken-off answer",
            response.status,
            response.body.len(),
            response.text()
        );
    }
}

/// Asserts the gateway still answers, through another cluster.
async fn assert_still_serving(gateway: &Running) {
    let response = get_ok(gateway, "/echo/after").await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "the gateway still serves: {}",
        response.text()
    );
}

/// Writes `bytes` on a new connection to the gateway and reads the answer (see
/// [`raw_exchange`]); the request should say `Connection: close` when its answer has no
/// length the reader can see.
async fn raw_request(gateway: &Running, bytes: &[u8]) -> RawResponse {
    raw_exchange(gateway.addr(), bytes, CLIENT_WAIT).await
}

// ---------------------------------------------------------------------------------------
// Framing of answers, and connection reuse
// ---------------------------------------------------------------------------------------

/// Bytes that look like framing: a body must pass as bytes, never be parsed.
const TRICKY_BODY: &[u8] =
    b"line one\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\0\xff end";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_answer_passes_exactly_and_its_connection_is_reused() {
    let upstream = Upstream::start(vec![
        reply(ok(TRICKY_BODY), Then::KeepOpen),
        reply(ok(b"second"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let first = get(&gateway, "/first").await;
    assert_answer("first", &first, 200, TRICKY_BODY);
    tokio::time::sleep(SETTLE).await;
    let second = get(&gateway, "/second").await;
    assert_answer("second", &second, 200, b"second");
    assert_eq!(
        upstream.connection_of_each(),
        vec![0, 0],
        "both requests on one upstream connection"
    );
    assert_eq!(upstream.connections(), 1, "no other connection opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_pass_whole_and_their_connection_goes_on_with_small_ones() {
    // Reads grow with a large body and shrink back when the connection is pooled: every
    // byte of each answer arrives in order, whatever the reads' sizes were.
    let pattern = |len: usize, seed: usize| -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    };
    let (large, larger) = (pattern(3 << 20, 1), pattern(1 << 20, 2));
    let upstream = Upstream::start(vec![
        reply(ok(&large), Then::KeepOpen),
        reply(ok(b"small"), Then::KeepOpen),
        reply(ok(&larger), Then::KeepOpen),
        reply(ok(b"small again"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    for (path, body) in [
        ("/large", &large[..]),
        ("/small", b"small"),
        ("/larger", &larger[..]),
        ("/small-again", b"small again"),
    ] {
        let answer = get_ok(&gateway, path).await;
        assert_eq!(answer.status.as_u16(), 200, "{path}: status");
        // Compared by length and first difference: a mismatch of megabytes is not printed.
        let got = &answer.body[..];
        let first_difference = got.iter().zip(body).position(|(a, b)| a != b);
        assert_eq!(
            (got.len(), first_difference),
            (body.len(), None),
            "{path}: the body as sent"
        );
        tokio::time::sleep(SETTLE).await;
    }
    assert_eq!(
        upstream.connection_of_each(),
        vec![0, 0, 0, 0],
        "every request on the one upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_with_extensions_is_decoded_and_its_connection_reused() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n\
        6;name=\"quoted;value\"\r\n world\r\n\
        1\r\n!\r\n\
        0;last=yes\r\n\r\n";
    let upstream = Upstream::start(vec![
        reply(chunked, Then::KeepOpen),
        reply(ok(b"second"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let first = get(&gateway, "/chunked").await;
    assert_answer("chunked", &first, 200, b"hello world!");
    tokio::time::sleep(SETTLE).await;
    let second = get(&gateway, "/second").await;
    assert_answer("second", &second, 200, b"second");
    assert_eq!(
        upstream.connection_of_each(),
        vec![0, 0],
        "the last chunk ends the answer: its connection is reused"
    );
    assert_eq!(upstream.connections(), 1, "no other connection opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_with_trailers_is_decoded_and_its_connection_reused() {
    // Trailers end the body as the last chunk does (RFC 9112 §7.1.2): the connection is as
    // reusable as after any other complete answer, whether or not the client takes them.
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
        5\r\nhello\r\n6\r\n world\r\n\
        0\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n";
    let upstream = Upstream::start(vec![
        reply(chunked, Then::KeepOpen),
        reply(ok(b"second"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let first = get(&gateway, "/trailers").await;
    assert_answer("chunked with trailers", &first, 200, b"hello world");
    tokio::time::sleep(SETTLE).await;
    let second = get(&gateway, "/second").await;
    assert_answer("second", &second, 200, b"second");
    assert_eq!(
        upstream.connection_of_each(),
        vec![0, 0],
        "the trailers end the answer: its connection is reused"
    );
    assert_eq!(upstream.connections(), 1, "no other connection opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_answer_is_read_to_the_close_and_the_next_request_opens_a_connection() {
    // Larger than one read, so that the body arrives in pieces before the close.
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut close_delimited = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    close_delimited.extend_from_slice(&body);
    let upstream = Upstream::start(vec![
        reply(close_delimited, Then::Close),
        reply(ok(b"second"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let first = get(&gateway, "/until-close").await;
    assert_answer("close-delimited", &first, 200, &body);
    tokio::time::sleep(SETTLE).await;
    let second = get(&gateway, "/second").await;
    assert_answer("second", &second, 200, b"second");
    assert_eq!(upstream.connection_of_each(), vec![0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_framing_wins_over_content_length_and_that_connection_is_not_reused() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and such a message may be
    // an attempt at smuggling: the connection must be closed after it (Envoy and nginx both
    // close). Were it read by its Content-Length, the body would be `5\r\n`.
    let both = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let upstream = Upstream::start(vec![
        reply(both, Then::KeepOpen),
        reply(ok(b"second"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let first = get(&gateway, "/both").await;
    assert_answer("chunked and Content-Length", &first, 200, b"hello world");
    tokio::time::sleep(SETTLE).await;
    let second = get(&gateway, "/second").await;
    assert_answer("second", &second, 200, b"second");
    assert_eq!(
        upstream.connection_of_each(),
        vec![0, 1],
        "the connection that framed an answer both ways is not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_content_lengths_are_a_502() {
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            Then::KeepOpen,
        ),
        reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
            Then::KeepOpen,
        ),
        reply(ok(b"fine"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let two_lines = get(&gateway, "/two-lines").await;
    assert_status("5 then 6", &two_lines, 502);
    let list = get(&gateway, "/list").await;
    assert_status("5, 6", &list, 502);
    let fine = get(&gateway, "/fine").await;
    assert_answer("a good answer after them", &fine, 200, b"fine");
    assert_eq!(
        upstream.connection_of_each(),
        vec![0, 1, 2],
        "a connection whose answer was refused is never reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_equal_content_length_is_read_as_one_length() {
    // RFC 9110 §8.6: a list of one repeated value may be read as that value.
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
            Then::KeepOpen,
        ),
        reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            Then::KeepOpen,
        ),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let list = get(&gateway, "/list").await;
    assert_answer("5, 5", &list, 200, b"hello");
    let lines = get(&gateway, "/lines").await;
    assert_answer("5 and 5", &lines, 200, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_content_length_reaches_the_client_as_one_value() {
    // The gateway refuses `Content-Length: 5, 5` from its own clients (policies/README.md,
    // "Request smuggling"); it must not hand such a head to them either, where a strict
    // client or the next proxy refuses it or reads it differently.
    let upstream = Upstream::start(vec![reply(
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        Then::KeepOpen,
    )])
    .await;
    let gateway = gateway_for(&upstream).await;
    let answer = raw_request(
        &gateway,
        b"GET /list HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lower = answer.text.to_ascii_lowercase();
    let head = lower.split("\r\n\r\n").next().unwrap_or_default();
    let lengths: Vec<&str> = head
        .lines()
        .filter_map(|line| line.strip_prefix("content-length:"))
        .map(str::trim)
        .collect();
    assert_eq!(answer.status, Some(200), "{answer:?}");
    assert!(answer.text.contains("hello"), "{answer:?}");
    assert!(
        lengths == ["5"] || (lengths.is_empty() && head.contains("transfer-encoding: chunked")),
        "the client gets one length (or chunks), not a list: {:?}",
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fields_of_the_upstream_connection_never_reach_the_client() {
    // The common form (only the fixed names) and one whose `Connection` names a field of its
    // own and that carries `TE`, which take different ways through the client.
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\nTrailer: x-sum\r\nUpgrade: h2c\r\n\
             Content-Length: 5\r\nX-Kept: 1\r\nContent-Length: 5\r\n\r\nhello",
            Then::KeepOpen,
        ),
        reply(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\
             TE: trailers\r\nX-Kept: 2\r\nContent-Length: 5\r\n\r\nworld",
            Then::KeepOpen,
        ),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;
    for (path, body, kept) in [("/fixed", b"hello", "1"), ("/named", b"world", "2")] {
        let answer = get_ok(&gateway, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(&answer.body[..], body, "{path}");
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "trailer",
            "upgrade",
            "x-private",
            "te",
        ] {
            assert!(
                !answer.headers.contains_key(name),
                "{path}: {name} reached the client: {:?}",
                answer.headers
            );
        }
        assert_eq!(answer.headers["x-kept"], kept, "{path}: other fields go on");
        let lengths: Vec<_> = answer.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["5"], "{path}: one length");
    }
    assert_eq!(upstream.connections(), 1, "the connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_chunk_size_never_reaches_the_client_as_a_complete_body() {
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        // 2^80 - 1: overflows any integer a parser would keep the size in; wrapped to 64 or
        // 32 bits it is a huge size again, never a small one.
        reply(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        reply(ok(b"fine"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let letters = get(&gateway, "/letters").await;
    assert_not_complete("chunk size zz", &letters);
    let overflow = get(&gateway, "/overflow").await;
    assert_not_complete("chunk size 2^80 - 1", &overflow);
    println!("chunk size zz: {letters:?}\nchunk size 2^80 - 1: {overflow:?}");

    let fine = get(&gateway, "/fine").await;
    assert_answer("a good answer after them", &fine, 200, b"fine");
    assert_eq!(
        upstream.connection_of_each(),
        vec![0, 1, 2],
        "a connection whose chunks broke is never reused"
    );
    assert_still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_or_invalid_status_line_is_a_502() {
    let bad_heads: [&[u8]; 5] = [
        b"HELLO THERE\r\nContent-Length: 2\r\n\r\nok",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n",
        b"HTTP/1.1 99 Too Small\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 abc Letters\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2000 Too Long\r\nContent-Length: 2\r\n\r\nok",
    ];
    let mut replies: Vec<Reply> = bad_heads
        .iter()
        .map(|head| reply(head, Then::KeepOpen))
        .collect();
    replies.push(reply(ok(b"fine"), Then::KeepOpen));
    let upstream = Upstream::start(replies).await;
    let gateway = gateway_for(&upstream).await;

    for head in bad_heads {
        let what = String::from_utf8_lossy(&head[..head.len().min(24)]).into_owned();
        let outcome = get(&gateway, "/bad").await;
        assert_status(&format!("{what:?}"), &outcome, 502);
    }
    let fine = get(&gateway, "/fine").await;
    assert_answer("a good answer after them", &fine, 200, b"fine");
    assert_eq!(
        upstream.connection_of_each(),
        vec![0, 1, 2, 3, 4, 5],
        "a connection whose answer was refused is never reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enormous_or_crowded_answer_head_is_a_prompt_502() {
    let mut enormous = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    enormous.extend_from_slice(&vec![b'a'; 1 << 20]);
    enormous.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
    let mut crowded = b"HTTP/1.1 200 OK\r\n".to_vec();
    for index in 0..1000 {
        crowded.extend_from_slice(format!("X-Field-{index}: v\r\n").as_bytes());
    }
    crowded.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    let upstream = Upstream::start(vec![
        reply(enormous, Then::KeepOpen),
        reply(crowded, Then::KeepOpen),
        reply(ok(b"fine"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    for what in ["a 1 MiB field", "1,000 fields"] {
        let started = Instant::now();
        let outcome = get(&gateway, "/big").await;
        let waited = started.elapsed();
        assert_status(what, &outcome, 502);
        assert!(
            waited < Duration::from_secs(3),
            "{what}: answered after {waited:?}, not promptly"
        );
    }
    let fine = get(&gateway, "/fine").await;
    assert_answer("a good answer after them", &fine, 200, b"fine");
    assert_eq!(upstream.connection_of_each(), vec![0, 1, 2]);
    assert_still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_before_the_final_one_are_passed_over() {
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal",
            Then::KeepOpen,
        ),
        reply(ok(b"second"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let outcome = get(&gateway, "/interim").await;
    assert_answer("after 100 and 103", &outcome, 200, b"final");
    assert_eq!(
        outcome.as_ref().ok().and_then(|r| r.header("x-final")),
        Some("yes"),
        "the final answer's head"
    );
    tokio::time::sleep(SETTLE).await;
    let second = get(&gateway, "/second").await;
    assert_answer("second", &second, 200, b"second");
    assert_eq!(upstream.connection_of_each(), vec![0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_is_read_after_204_or_304_and_the_connection_is_reused() {
    // A 304 may carry the Content-Length of the representation (RFC 9110 §8.6): no body
    // follows it. A client that waited for 1,234 bytes would hang here.
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n",
            Then::KeepOpen,
        ),
        reply(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n",
            Then::KeepOpen,
        ),
        reply(ok(b"third"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let no_content = get(&gateway, "/204").await;
    assert_answer("204", &no_content, 204, b"");
    tokio::time::sleep(SETTLE).await;
    let not_modified = get(&gateway, "/304").await;
    assert_answer("304", &not_modified, 304, b"");
    tokio::time::sleep(SETTLE).await;
    let third = get(&gateway, "/third").await;
    assert_answer("after them", &third, 200, b"third");
    assert_eq!(
        upstream.connection_of_each(),
        vec![0, 0, 0],
        "answers without a body end with their head: the connection goes on"
    );
    assert_eq!(upstream.connections(), 1, "no other connection opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_with_content_length_has_no_body_and_its_connection_is_reused() {
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n",
            Then::KeepOpen,
        ),
        reply(ok(b"second"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let head = send(&gateway, "HEAD", "/resource", b"").await;
    assert_answer("HEAD", &head, 200, b"");
    assert_eq!(
        head.as_ref().ok().and_then(|r| r.header("content-length")),
        Some("1000"),
        "a HEAD answer keeps the length a GET would have (RFC 9110 §9.3.2)"
    );
    tokio::time::sleep(SETTLE).await;
    let second = get(&gateway, "/second").await;
    assert_answer("GET after HEAD", &second, 200, b"second");
    assert_eq!(upstream.connection_of_each(), vec![0, 0]);
    assert_eq!(upstream.seen()[0].head.split(' ').next(), Some("HEAD"));
    assert_eq!(upstream.connections(), 1, "no other connection opened");
}

// ---------------------------------------------------------------------------------------
// Upstreams that close
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_without_answering_is_a_502_without_retries() {
    let upstream = Upstream::start(vec![
        reply(b"", Then::Close),
        reply(ok(b"fine"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let unanswered = get(&gateway, "/unanswered").await;
    assert_status("closed unanswered", &unanswered, 502);
    assert_eq!(
        upstream.seen().len(),
        1,
        "tried once: the route has no retries"
    );
    let fine = get(&gateway, "/fine").await;
    assert_answer("a good answer after it", &fine, 200, b"fine");
    assert_eq!(upstream.connection_of_each(), vec![0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_connection_closed_unanswered_is_retried_on_a_new_one_when_the_route_says_so() {
    let upstream = Upstream::start(vec![
        reply(b"", Then::Close),
        reply(ok(b"retried"), Then::KeepOpen),
    ])
    .await;
    let gateway = Scenario::new()
        .workers(1)
        .cluster_at("scripted", upstream.addr())
        .route(
            "{ name: retried, match: { path: { prefix: / } }, \
             forward: { cluster: scripted, retries: { attempts: 1, on: [reset] } } }",
        )
        .start()
        .await;
    let outcome = get(&gateway, "/retried").await;
    assert_answer("retried after a reset", &outcome, 200, b"retried");
    assert_eq!(upstream.connection_of_each(), vec![0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_mid_body_never_looks_like_a_complete_answer() {
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            Then::Close,
        ),
        // Chunked, closed before the last chunk: a gateway that re-chunks for its client must
        // not end the client's body with a last chunk of its own.
        reply(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
            Then::Close,
        ),
        // Closed inside a chunk.
        reply(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n0123456789",
            Then::Close,
        ),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    for what in [
        "10 of 100 bytes",
        "chunked, no last chunk",
        "chunked, cut mid-chunk",
    ] {
        let outcome = get(&gateway, "/cut").await;
        assert_not_complete(what, &outcome);
        println!("{what}: {outcome:?}");
    }
    assert_still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_silently_is_not_a_502() {
    // Each answer says nothing of closing; the upstream closes 100 ms later, while the
    // connection idles in the gateway's pool (its keep-alive timeout is shorter).
    let upstream = Upstream::start(vec![
        reply(ok(b"first"), Then::CloseAfter(Duration::from_millis(100))),
        reply(ok(b"second"), Then::CloseAfter(Duration::from_millis(100))),
        reply(ok(b"third"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let first = get(&gateway, "/first").await;
    assert_answer("first", &first, 200, b"first");
    upstream.wait_for_closed(1).await;
    tokio::time::sleep(SETTLE).await;
    let second = get(&gateway, "/second").await;
    assert_answer("GET after the silent close", &second, 200, b"second");
    upstream.wait_for_closed(2).await;
    tokio::time::sleep(SETTLE).await;
    // Not idempotent: it may go on a new connection only because the closed one was never
    // written to (policies/README.md, "Non-idempotent retries").
    let third = send(&gateway, "POST", "/third", b"order=1").await;
    assert_answer("POST after the silent close", &third, 200, b"third");
    assert_eq!(upstream.connection_of_each(), vec![0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_before_the_upload_is_read_reaches_the_client() {
    // Answered right after the head, then a lingering close (what nginx does as a server).
    let upstream = Upstream::start(vec![early_reply(
        "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 20\r\nConnection: close\r\n\r\n\
         upload refused: big\n",
        Then::Linger,
    )])
    .await;
    let gateway = gateway_for(&upstream).await;
    let answer = upload(&gateway, 4 << 20).await;
    println!("early 413, lingering close: {answer:?}");
    assert_eq!(
        answer.status,
        Some(413),
        "the upstream's early answer reaches the client (as with nginx and Envoy): {answer:?}"
    );
    assert_eq!(
        answer.ended, "complete",
        "the whole answer arrived: {answer:?}"
    );
    assert!(answer.text.ends_with("upload refused: big\n"), "{answer:?}");
    assert_eq!(upstream.seen().len(), 1, "sent once: {:?}", upstream.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_is_passed_on_while_the_upstream_reads_no_more_of_the_upload() {
    // The upstream answers and then neither reads nor closes for 4 s: the upload stalls in
    // full socket buffers, and the answer must not wait for it. 64 MiB is more than the
    // loopback buffers between the gateway and the upstream hold.
    let upstream = Upstream::start(vec![early_reply(
        "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 20\r\nConnection: close\r\n\r\n\
         upload refused: big\n",
        Then::Hold(Duration::from_secs(4)),
    )])
    .await;
    let gateway = scenario_for(&upstream)
        .server("max_request_body_bytes: 134217728\n")
        .start()
        .await;
    let started = Instant::now();
    let answer = upload(&gateway, 64 << 20).await;
    println!(
        "early 413, upstream holding: {answer:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(
        answer.status,
        Some(413),
        "the early answer reaches the client while the upload is stuck: {answer:?}"
    );
    assert_eq!(
        answer.ended, "complete",
        "the whole answer arrived: {answer:?}"
    );
    assert!(answer.text.ends_with("upload refused: big\n"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}, not before the upstream closed",
        started.elapsed()
    );
}

/// What a client got for an upload.
#[derive(Debug)]
struct UploadAnswer {
    status: Option<u16>,
    /// Everything read, lossily decoded (head and body).
    text: String,
    /// How the reading ended: `complete`, `closed`, an error, or `timed out`.
    ended: String,
}

/// POSTs `size` bytes (with `Content-Length`) on a new connection, writing while reading
/// the answer, as a browser does: returns what arrived by the time the answer was complete
/// by its `Content-Length`, the connection ended, or [`CLIENT_WAIT`] passed.
async fn upload(gateway: &Running, size: usize) -> UploadAnswer {
    let tcp = TcpStream::connect(gateway.addr())
        .await
        .expect("connect to the gateway");
    let (mut reading, mut writing) = tcp.into_split();
    // The task hands back the write half when it is done: dropping it would half-close the
    // connection, which no browser does and which a server may take for the client leaving.
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {size}\r\n\r\n"
        );
        if writing.write_all(head.as_bytes()).await.is_err() {
            return writing;
        }
        let piece = vec![b'u'; 64 * 1024];
        for _ in 0..size.div_ceil(piece.len()) {
            if writing.write_all(&piece).await.is_err() {
                break;
            }
        }
        writing
    });
    let deadline = tokio::time::Instant::now() + CLIENT_WAIT;
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let ended = loop {
        if answer_complete(&received) {
            break "complete".to_owned();
        }
        match tokio::time::timeout_at(deadline, reading.read(&mut buffer)).await {
            Ok(Ok(0)) => break "closed".to_owned(),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Ok(Err(error)) => break format!("error: {error}"),
            Err(_) => break "timed out".to_owned(),
        }
    };
    writer.abort();
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    UploadAnswer {
        status,
        text,
        ended,
    }
}

/// Whether `received` holds a head and as much body as its `Content-Length` says.
fn answer_complete(received: &[u8]) -> bool {
    let Some(head_end) = find(received, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    head.lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .is_some_and(|length| received.len() >= head_end + 4 + length)
}

// ---------------------------------------------------------------------------------------
// What the gateway writes upstream
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_content_length_arrives_with_that_length_and_exactly_those_bytes() {
    let upstream = Upstream::start(vec![
        reply(ok(b"stored"), Then::KeepOpen),
        reply(ok(b"second"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let outcome = send(&gateway, "POST", "/orders", TRICKY_BODY).await;
    assert_answer("POST", &outcome, 200, b"stored");
    tokio::time::sleep(SETTLE).await;
    // A second request on the same connection starts right after those bytes: none more.
    let second = get(&gateway, "/second").await;
    assert_answer("second", &second, 200, b"second");

    let seen = upstream.seen();
    let post = &seen[0];
    assert_eq!(
        post.header_values("content-length"),
        vec![TRICKY_BODY.len().to_string()],
        "{}",
        post.head
    );
    assert!(
        post.header_values("transfer-encoding").is_empty(),
        "{}",
        post.head
    );
    assert_eq!(post.body, TRICKY_BODY);
    assert_eq!(&post.raw[post.raw.len() - TRICKY_BODY.len()..], TRICKY_BODY);
    assert_eq!(upstream.connection_of_each(), vec![0, 0]);
    assert!(
        seen[1].head.starts_with("GET /second HTTP/1.1\r\n"),
        "the next request follows the body's last byte: {:?}",
        seen[1].head
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_arrives_with_one_framing_and_the_same_bytes() {
    let upstream = Upstream::start(vec![reply(ok(b"stored"), Then::KeepOpen)]).await;
    let gateway = gateway_for(&upstream).await;

    let answer = raw_request(
        &gateway,
        b"POST /chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, Some(200), "{answer:?}");
    assert!(answer.text.contains("stored"), "{answer:?}");

    let seen = upstream.seen();
    let post = &seen[0];
    let lengths = post.header_values("content-length");
    let codings = post.header_values("transfer-encoding");
    match (lengths.as_slice(), codings.as_slice()) {
        ([length], []) => assert_eq!(length, "11", "{}", post.head),
        ([], [coding]) => assert_eq!(coding.to_ascii_lowercase(), "chunked", "{}", post.head),
        _ => panic!(
            "exactly one framing header expected, Content-Length or chunked: {}",
            post.head
        ),
    }
    assert_eq!(post.body, b"hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_arrives_without_body_framing_and_with_its_header_values_unaltered() {
    let upstream = Upstream::start(vec![reply(ok(b"ok"), Then::KeepOpen)]).await;
    let gateway = gateway_for(&upstream).await;

    let values: [(&str, &[u8]); 6] = [
        ("x-spaces", b"a  b   c"),
        ("x-quotes", b"\"quoted, with comma\"; q=0.5, 'single'"),
        ("x-list", b"one,two,,three , four"),
        ("x-tab", b"left\tright"),
        ("x-obs-text", b"caf\xc3\xa9 \xff\x80"),
        ("x-symbols", b"!#$%&*+-.^_`|~()<>@[]{}?=/\\:;"),
    ];
    let mut raw =
        b"GET /headers?b=2&a=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".to_vec();
    for (name, value) in values {
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let answer = raw_request(&gateway, &raw).await;
    assert_eq!(answer.status, Some(200), "{answer:?}");

    let seen = upstream.seen();
    let request = &seen[0];
    assert!(
        request.header_values("content-length").is_empty()
            && request.header_values("transfer-encoding").is_empty(),
        "a GET without a body goes without framing headers: {}",
        request.head
    );
    assert!(request.body.is_empty());
    for (name, value) in values {
        assert_eq!(
            request.raw_header_value(name).as_deref(),
            Some(value),
            "{name}: {:?}",
            request.head
        );
    }
}

// ---------------------------------------------------------------------------------------
// Heads that parsers read differently
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_and_bare_lf_in_an_answer_head_are_refused_or_made_harmless() {
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.1 200 OK\r\nX-Folded: first\r\n second\r\nContent-Length: 5\r\n\r\nhello",
            Then::Close,
        ),
        reply(
            "HTTP/1.1 200 OK\r\nX-Bare: one\nContent-Length: 5\r\n\r\nhello",
            Then::Close,
        ),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    // RFC 9112 §5.2: a proxy rejects obs-fold or replaces it with spaces; the folded line
    // must never become a field of its own or reach the client as a line break.
    let folded = get(&gateway, "/folded").await;
    println!("obs-fold: {folded:?}");
    match &folded {
        Ok(response) if response.status == StatusCode::BAD_GATEWAY => {}
        Ok(response) => {
            assert_eq!(response.status, StatusCode::OK, "{response:?}");
            assert_eq!(&response.body[..], b"hello");
            let value = response.header("x-folded").unwrap_or_default();
            let words: Vec<&str> = value.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
            assert_eq!(
                words,
                ["first", "second"],
                "the fold replaced by spaces: {value:?}"
            );
        }
        Err(error) => panic!("obs-fold: a 502 or a clean answer expected, got: {error}"),
    }

    // RFC 9112 §2.2: a bare LF may be read as a line end; then both fields are fields, and
    // the body is the 5 bytes. Anything else must be a 502.
    let bare = get(&gateway, "/bare-lf").await;
    println!("bare LF: {bare:?}");
    match &bare {
        Ok(response) if response.status == StatusCode::BAD_GATEWAY => {}
        Ok(response) => {
            assert_eq!(response.status, StatusCode::OK, "{response:?}");
            assert_eq!(&response.body[..], b"hello");
            assert_eq!(response.header("x-bare"), Some("one"), "{response:?}");
        }
        Err(error) => panic!("bare LF: a 502 or a clean answer expected, got: {error}"),
    }
    assert_still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_answer_without_keep_alive_is_read_to_the_close_and_not_reused() {
    let upstream = Upstream::start(vec![
        reply(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nthe whole body, until the close",
            Then::Close,
        ),
        // With a length but no keep-alive: HTTP/1.0 closes after the answer by default, so
        // the gateway must not send another request on it even though it stays open.
        reply(
            "HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
            Then::KeepOpen,
        ),
        reply(ok(b"third"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let first = get(&gateway, "/first").await;
    assert_answer(
        "HTTP/1.0, no length",
        &first,
        200,
        b"the whole body, until the close",
    );
    tokio::time::sleep(SETTLE).await;
    let second = get(&gateway, "/second").await;
    assert_answer("HTTP/1.0 with a length", &second, 200, b"second");
    tokio::time::sleep(SETTLE).await;
    let third = get(&gateway, "/third").await;
    assert_answer("third", &third, 200, b"third");
    assert_eq!(upstream.connection_of_each(), vec![0, 1, 2]);
}

/// `hello\n` compressed with gzip: bytes a gateway must pass through untouched.
const GZIP_HELLO: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xcb\x48\xcd\xc9\xc9\xe7\x02\x00\x20\x30\x3a\x36\x06\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codings_before_chunked_pass_through_and_without_chunked_last_the_body_ends_at_the_close() {
    let mut gzip_chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n",
        GZIP_HELLO.len()
    )
    .into_bytes();
    gzip_chunked.extend_from_slice(GZIP_HELLO);
    gzip_chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    // RFC 9112 §6.3: chunked not last in a response → the body is read until the close.
    let mut gzip_only = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec();
    gzip_only.extend_from_slice(GZIP_HELLO);
    let upstream = Upstream::start(vec![
        reply(gzip_chunked, Then::KeepOpen),
        reply(gzip_only, Then::Close),
        reply(ok(b"third"), Then::KeepOpen),
    ])
    .await;
    let gateway = gateway_for(&upstream).await;

    let chunked = get(&gateway, "/gzip-chunked").await;
    assert_answer("gzip, chunked", &chunked, 200, GZIP_HELLO);
    tokio::time::sleep(SETTLE).await;
    let until_close = get(&gateway, "/gzip").await;
    assert_answer("gzip alone", &until_close, 200, GZIP_HELLO);
    tokio::time::sleep(SETTLE).await;
    let third = get(&gateway, "/third").await;
    assert_answer("third", &third, 200, b"third");
    let connections = upstream.connection_of_each();
    assert_ne!(
        connections[2], connections[1],
        "a close-delimited answer's connection is not reused: {connections:?}"
    );
}
