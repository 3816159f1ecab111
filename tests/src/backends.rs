//! Upstream servers for the gateway to talk to, each on its own loopback port.
//!
//! Every backend records the requests it received, so tests can assert what the gateway
//! forwarded (path after rewrite, host, forwarded headers), and stops when dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as UpgradeRequest, Response as UpgradeResponse,
};
use tokio_tungstenite::tungstenite::Message;

use crate::certs::{crypto_provider, parse_certs, parse_key, CertAuthority, IssuedCert};

pub type ResponseBody = BoxBody<Bytes, Infallible>;
// A concrete error type (rather than a boxed trait object) keeps the connection future
// provably `Send` for hyper's auto builder.
pub(crate) type Handler = Arc<
    dyn Fn(Request<Incoming>) -> BoxFuture<'static, io::Result<Response<ResponseBody>>>
        + Send
        + Sync,
>;

/// What a backend saw of one request.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// The `Host` header, or the `:authority` of an HTTP/2 request.
    pub host: String,
    /// Lower-case names, in arrival order; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
}

impl RecordedRequest {
    pub(crate) fn new<B>(request: &Request<B>, body_len: usize) -> Self {
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                request
                    .uri()
                    .authority()
                    .map(|authority| authority.to_string())
            })
            .unwrap_or_default();
        Self {
            method: request.method().to_string(),
            path: request
                .uri()
                .path_and_query()
                .map(|pq| pq.to_string())
                .unwrap_or_else(|| "/".to_owned()),
            host,
            headers,
            body_len,
            protocol: format!("{:?}", request.version()),
        }
    }

    /// The first value of a header (name is matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn to_json(&self, backend: &str) -> serde_json::Value {
        let mut headers = serde_json::Map::new();
        for (name, value) in &self.headers {
            // Repeated headers are joined the way HTTP allows combining them.
            let joined = match headers.get(name).and_then(|v| v.as_str()) {
                Some(previous) => format!("{previous}, {value}"),
                None => value.clone(),
            };
            headers.insert(name.clone(), joined.into());
        }
        serde_json::json!({
            "backend": backend,
            "method": self.method,
            "path": self.path,
            "host": self.host,
            "headers": headers,
            "body_len": self.body_len,
            "protocol": self.protocol,
        })
    }
}

#[derive(Clone, Default)]
pub(crate) struct Recorder(Arc<Mutex<Vec<RecordedRequest>>>);

impl Recorder {
    pub(crate) fn push(&self, request: RecordedRequest) {
        self.0.lock().expect("recorder lock").push(request);
    }
}

/// A running backend. Dropping it (or [`Backend::stop`]) closes the listener and every
/// open connection.
pub struct Backend {
    addr: SocketAddr,
    recorder: Recorder,
    task: JoinHandle<()>,
}

impl Backend {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorder.0.lock().expect("recorder lock").clone()
    }

    pub fn request_count(&self) -> usize {
        self.recorder.0.lock().expect("recorder lock").len()
    }

    /// Waits until at least `count` requests arrived, or `timeout` passed; returns what
    /// arrived either way, so the caller's assertion shows what was seen.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.request_count() < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.requests()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a [`flaky`] backend fails its first requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Answer `503 Service Unavailable`.
    Status503,
    /// Close the connection without answering.
    CloseConnection,
}

/// The echo backend on a new loopback port; see [`echo_on`].
pub async fn echo(name: &str) -> Backend {
    echo_on(bind_loopback().await, name)
}

/// The echo backend: answers `200` with `x-backend: NAME` and a JSON description of the
/// request. Query parameters change the answer: `delay_ms=N` waits first, `status=N`
/// answers that status, `stream_chunks=N&chunk_delay_ms=M` streams N chunks M ms apart;
/// a path starting with `/echo-body` answers with the request body itself.
/// Serves HTTP/1.1 and HTTP/2 (prior knowledge).
pub fn echo_on(listener: TcpListener, name: &str) -> Backend {
    let recorder = Recorder::default();
    let handler = echo_handler(name.to_owned(), recorder.clone());
    spawn_http(listener, None, false, recorder, handler)
}

/// The echo backend behind TLS with the given certificate (ALPN h2 and http/1.1).
pub async fn tls_echo(name: &str, cert: &IssuedCert) -> Backend {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(parse_certs(&cert.cert_pem), parse_key(&cert.key_pem))
        .expect("server certificate and key match");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let recorder = Recorder::default();
    let handler = echo_handler(name.to_owned(), recorder.clone());
    let acceptor = TlsAcceptor::from(Arc::new(config));
    spawn_http(
        bind_loopback().await,
        Some(acceptor),
        false,
        recorder,
        handler,
    )
}

/// The echo backend behind TLS that requires a client certificate issued by `client_ca`
/// (mutual TLS, as an Istio sidecar in STRICT mode), serving `cert`. Each answer tells
/// who the client was: `x-client-subject` (the certificate's subject) and
/// `x-client-uri-san` (its URI subject alternative names, `,`-joined; empty without one).
/// A client without an acceptable certificate fails the handshake and reaches nothing.
pub async fn mtls_echo(name: &str, cert: &IssuedCert, client_ca: &CertAuthority) -> Backend {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(client_ca.cert_der().into())
        .expect("the client CA certificate is valid");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.into(),
        crypto_provider(),
    )
    .build()
    .expect("client verifier");
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs(&cert.cert_pem), parse_key(&cert.key_pem))
        .expect("server certificate and key match");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let recorder = Recorder::default();
    let echo = echo_handler(name.to_owned(), recorder.clone());
    let for_connection: ConnectionHandler = Arc::new(move |session| {
        let client = session
            .and_then(|session| session.peer_certificates())
            .and_then(|chain| chain.first())
            .map(|leaf| ClientIdentity::of(leaf))
            .unwrap_or_default();
        let echo = echo.clone();
        Arc::new(move |request| {
            let answer = echo(request);
            let client = client.clone();
            Box::pin(async move {
                let mut response = answer.await?;
                client.tell(response.headers_mut());
                Ok(response)
            })
        })
    });
    spawn_http_per_connection(
        bind_loopback().await,
        Some(TlsAcceptor::from(Arc::new(config))),
        false,
        recorder,
        for_connection,
    )
}

/// Who a client certificate names, as [`mtls_echo`] reports it.
#[derive(Clone, Default)]
struct ClientIdentity {
    subject: String,
    uri_sans: Vec<String>,
}

impl ClientIdentity {
    fn of(der: &[u8]) -> Self {
        use x509_parser::extensions::GeneralName;
        let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
            return Self::default();
        };
        let uri_sans = match certificate.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Self {
            subject: certificate.subject().to_string(),
            uri_sans,
        }
    }

    fn tell(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            ("x-client-subject", self.subject.clone()),
            ("x-client-uri-san", self.uri_sans.join(",")),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
}

/// Fails the first `failures` requests as `failure` says, then behaves like [`echo`].
/// Every request, failed or not, is recorded.
pub async fn flaky(name: &str, failures: usize, failure: Failure) -> Backend {
    let recorder = Recorder::default();
    let echo = echo_handler(name.to_owned(), recorder.clone());
    let seen = Arc::new(AtomicUsize::new(0));
    let fail_recorder = recorder.clone();
    let handler: Handler = Arc::new(move |request| {
        if seen.fetch_add(1, Ordering::SeqCst) >= failures {
            return echo(request);
        }
        fail_recorder.push(RecordedRequest::new(&request, 0));
        Box::pin(async move {
            match failure {
                Failure::Status503 => Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "flaky failure\n")),
                // An error from the service makes hyper drop the connection unanswered.
                Failure::CloseConnection => Err(io::Error::other("flaky backend hangs up")),
            }
        })
    });
    spawn_http(bind_loopback().await, None, false, recorder, handler)
}

/// The path where a [`checked`] backend answers health checks.
pub const HEALTH_PATH: &str = "/healthz";

/// Switches of a [`checked`] backend: whether its health path and its other paths answer
/// `200` (as the echo backend) or `503`. Both start healthy.
#[derive(Clone)]
pub struct Switches {
    health: Arc<AtomicBool>,
    traffic: Arc<AtomicBool>,
}

impl Switches {
    /// `/healthz` answers 200 (`true`) or 503 (`false`).
    pub fn set_health(&self, healthy: bool) {
        self.health.store(healthy, Ordering::SeqCst);
    }

    /// Every other path echoes (`true`) or answers 503 (`false`).
    pub fn set_traffic(&self, serving: bool) {
        self.traffic.store(serving, Ordering::SeqCst);
    }
}

/// An echo backend with a health path ([`HEALTH_PATH`]) and [`Switches`] to make it or
/// its traffic fail. Health checks are recorded like any request.
pub async fn checked(name: &str) -> (Backend, Switches) {
    checked_on(bind_loopback().await, name)
}

/// [`checked`] on a listener the test bound (to restart a stopped backend on its address).
pub fn checked_on(listener: TcpListener, name: &str) -> (Backend, Switches) {
    let switches = Switches {
        health: Arc::new(AtomicBool::new(true)),
        traffic: Arc::new(AtomicBool::new(true)),
    };
    let recorder = Recorder::default();
    let echo = echo_handler(name.to_owned(), recorder.clone());
    let (own_recorder, own_switches) = (recorder.clone(), switches.clone());
    let handler: Handler = Arc::new(move |request| {
        let is_check = request.uri().path() == HEALTH_PATH;
        let switch = if is_check {
            &own_switches.health
        } else {
            &own_switches.traffic
        };
        if !switch.load(Ordering::SeqCst) {
            own_recorder.push(RecordedRequest::new(&request, 0));
            return Box::pin(async {
                Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "switched off\n"))
            });
        }
        if is_check {
            own_recorder.push(RecordedRequest::new(&request, 0));
            return Box::pin(async { Ok(plain(StatusCode::OK, "ok\n")) });
        }
        echo(request)
    });
    let backend = spawn_http(listener, None, false, recorder, handler);
    (backend, switches)
}

/// A gRPC-style backend speaking HTTP/2 only: answers `content-type: application/grpc`,
/// one length-prefixed message `hello`, and trailers `grpc-status: 0`, `grpc-message: ok`.
pub async fn grpc(name: &str) -> Backend {
    let recorder = Recorder::default();
    let handler_recorder = recorder.clone();
    let name = name.to_owned();
    let handler: Handler = Arc::new(move |request| {
        let recorder = handler_recorder.clone();
        let name = name.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
            recorder.push(RecordedRequest::new(
                &Request::from_parts(parts, ()),
                body.len(),
            ));
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("ok"));
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(GRPC_HELLO_MESSAGE))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
            Ok(Response::builder()
                .header("content-type", "application/grpc")
                .header("x-backend", name)
                .body(body)
                .expect("valid response"))
        })
    });
    spawn_http(bind_loopback().await, None, true, recorder, handler)
}

/// A streaming gRPC echo backend (HTTP/2 only): every data frame the client sends comes
/// straight back as it arrives; when the client half-closes, trailers `grpc-status: 0`.
pub async fn grpc_stream_echo(name: &str) -> Backend {
    let recorder = Recorder::default();
    let handler_recorder = recorder.clone();
    let name = name.to_owned();
    let handler: Handler = Arc::new(move |request| {
        handler_recorder.push(RecordedRequest::new(&request, 0));
        let name = name.clone();
        Box::pin(async move {
            let body = request.into_body();
            let frames = futures_util::stream::unfold(Some(body), |body| async move {
                let mut body = body?;
                match body.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => Some((Ok::<_, Infallible>(Frame::data(data)), Some(body))),
                        Err(_) => Some((Ok(Frame::data(Bytes::new())), Some(body))),
                    },
                    // A broken request stream ends the answer too.
                    Some(Err(_)) => None,
                    None => {
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        Some((Ok(Frame::trailers(trailers)), None))
                    }
                }
            });
            Ok(Response::builder()
                .header("content-type", "application/grpc")
                .header("x-backend", name)
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .expect("valid response"))
        })
    });
    spawn_http(bind_loopback().await, None, true, recorder, handler)
}

/// The message the gRPC backend answers: not compressed (0), length 5, `hello`.
pub const GRPC_HELLO_MESSAGE: &[u8] = b"\x00\x00\x00\x00\x05hello";

/// A WebSocket backend that sends every text and binary message back. Each upgrade
/// request is recorded.
pub async fn websocket_echo() -> Backend {
    let listener = bind_loopback().await;
    let addr = listener.local_addr().expect("bound address");
    let recorder = Recorder::default();
    let accept_recorder = recorder.clone();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let recorder = accept_recorder.clone();
            connections.spawn(async move {
                // The callback's signature is tungstenite's, large error variant included.
                #[allow(clippy::result_large_err)]
                let record = |request: &UpgradeRequest, response: UpgradeResponse| {
                    recorder.push(RecordedRequest::new(request, 0));
                    Ok::<_, ErrorResponse>(response)
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(tcp, record).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    let reply = match message {
                        Message::Text(_) | Message::Binary(_) => message,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if socket.send(reply).await.is_err() {
                        break;
                    }
                }
            });
            while connections.try_join_next().is_some() {}
        }
    });
    Backend {
        addr,
        recorder,
        task,
    }
}

/// A loopback address where nothing listens: the port was bound and released, so
/// connections to it are refused.
pub fn refusing_address() -> SocketAddr {
    crate::gateway::free_loopback_addr()
}

pub(crate) async fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port")
}

pub(crate) fn spawn_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    http2_only: bool,
    recorder: Recorder,
    handler: Handler,
) -> Backend {
    let for_connection: ConnectionHandler = Arc::new(move |_| handler.clone());
    spawn_http_per_connection(listener, tls, http2_only, recorder, for_connection)
}

/// Gives each connection its handler, from what its TLS session says (the client's
/// certificate, say); `None` without TLS.
type ConnectionHandler = Arc<dyn Fn(Option<&rustls::ServerConnection>) -> Handler + Send + Sync>;

fn spawn_http_per_connection(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    http2_only: bool,
    recorder: Recorder,
    for_connection: ConnectionHandler,
) -> Backend {
    let addr = listener.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        // Connections live in this set so that aborting the accept loop closes them too.
        let mut connections = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let for_connection = for_connection.clone();
            let tls = tls.clone();
            connections.spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            let handler = for_connection(Some(stream.get_ref().1));
                            serve_connection(stream, http2_only, handler).await;
                        }
                    }
                    None => serve_connection(tcp, http2_only, for_connection(None)).await,
                }
            });
            while connections.try_join_next().is_some() {}
        }
    });
    Backend {
        addr,
        recorder,
        task,
    }
}

async fn serve_connection<S>(stream: S, http2_only: bool, handler: Handler)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if http2_only {
        builder = builder.http2_only();
    }
    let service = service_fn(move |request| handler(request));
    // Errors here are clients going away or the flaky backend hanging up on purpose.
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn echo_handler(name: String, recorder: Recorder) -> Handler {
    Arc::new(move |request| {
        let name = name.clone();
        let recorder = recorder.clone();
        Box::pin(async move { echo_response(&name, request, &recorder).await })
    })
}

async fn echo_response(
    name: &str,
    request: Request<Incoming>,
    recorder: &Recorder,
) -> io::Result<Response<ResponseBody>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let request = Request::from_parts(parts, ());
    let recorded = RecordedRequest::new(&request, body.len());
    recorder.push(recorded.clone());

    let query = query_pairs(request.uri().query());
    let number = |key: &str| query.get(key).and_then(|value| value.parse::<u64>().ok());
    if let Some(delay) = number("delay_ms") {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = number("status")
        .and_then(|code| StatusCode::from_u16(u16::try_from(code).ok()?).ok())
        .unwrap_or(StatusCode::OK);
    let builder = Response::builder().status(status).header("x-backend", name);

    if request.uri().path().starts_with("/echo-body") {
        return builder
            .body(Full::new(body).boxed())
            .map_err(io::Error::other);
    }
    if let Some(chunks) = number("stream_chunks") {
        let chunk_delay = Duration::from_millis(number("chunk_delay_ms").unwrap_or(0));
        return builder
            .header("content-type", "text/plain")
            .body(chunked_body(chunks, chunk_delay))
            .map_err(io::Error::other);
    }
    let json = recorded.to_json(name).to_string();
    builder
        .header("content-type", "application/json")
        .body(Full::from(json).boxed())
        .map_err(io::Error::other)
}

/// `chunks` lines `chunk I\n`, the first at once and each next one `delay` later.
fn chunked_body(chunks: u64, delay: Duration) -> ResponseBody {
    let frames = futures_util::stream::unfold(0, move |index| async move {
        if index >= chunks {
            return None;
        }
        if index > 0 {
            tokio::time::sleep(delay).await;
        }
        let chunk = Frame::data(Bytes::from(format!("chunk {index}\n")));
        Some((Ok(chunk), index + 1))
    });
    BodyExt::boxed(StreamBody::new(frames))
}

fn query_pairs(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => (pair.to_owned(), String::new()),
        })
        .collect()
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::from(text).boxed())
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::{get_request, HttpClient};

    #[tokio::test]
    async fn echo_describes_the_request() {
        let backend = echo("one").await;
        let client = HttpClient::http1();
        let response = client
            .send(get_request(backend.addr(), "example.test", "/a/b?x=1"))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.header("x-backend"), Some("one"));
        let json = response.json();
        assert_eq!(json["path"], "/a/b?x=1");
        assert_eq!(json["host"], "example.test");
        assert_eq!(json["protocol"], "HTTP/1.1");
        assert_eq!(backend.requests()[0].path, "/a/b?x=1");
    }

    #[tokio::test]
    async fn echo_speaks_h2c_and_answers_status_and_body() {
        let backend = echo("one").await;
        let client = HttpClient::h2c();
        let response = client
            .send(get_request(backend.addr(), "example.test", "/x?status=418"))
            .await
            .unwrap();
        assert_eq!(response.status.as_u16(), 418);
        assert_eq!(response.json()["protocol"], "HTTP/2.0");

        let request = crate::clients::request("POST", backend.addr(), "example.test", "/echo-body")
            .body(Full::from("ping"))
            .unwrap();
        assert_eq!(
            HttpClient::http1().send(request).await.unwrap().text(),
            "ping"
        );
    }

    #[tokio::test]
    async fn echo_streams_chunks_with_delays() {
        let backend = echo("one").await;
        let started = std::time::Instant::now();
        let response = HttpClient::http1()
            .send(get_request(
                backend.addr(),
                "h",
                "/s?stream_chunks=3&chunk_delay_ms=100",
            ))
            .await
            .unwrap();
        assert_eq!(response.text(), "chunk 0\nchunk 1\nchunk 2\n");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn flaky_fails_then_recovers() {
        let backend = flaky("f", 2, Failure::Status503).await;
        let client = HttpClient::http1();
        let statuses: Vec<u16> = futures_util::future::join_all((0..3).map(|_| async {
            client
                .send(get_request(backend.addr(), "h", "/"))
                .await
                .unwrap()
                .status
                .as_u16()
        }))
        .await;
        let mut sorted = statuses.clone();
        sorted.sort();
        assert_eq!(sorted, vec![200, 503, 503]);
        assert_eq!(backend.request_count(), 3);

        let closing = flaky("c", 1, Failure::CloseConnection).await;
        assert!(client
            .send(get_request(closing.addr(), "h", "/"))
            .await
            .is_err());
        let second = client
            .send(get_request(closing.addr(), "h", "/"))
            .await
            .unwrap();
        assert_eq!(second.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn grpc_backend_sends_trailers_over_h2() {
        let backend = grpc("g").await;
        let response = HttpClient::h2c()
            .send(get_request(backend.addr(), "h", "/pkg.Service/Method"))
            .await
            .unwrap();
        assert_eq!(response.header("content-type"), Some("application/grpc"));
        assert_eq!(&response.body[..], GRPC_HELLO_MESSAGE);
        let trailers = response.trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "ok");
    }

    #[tokio::test]
    async fn websocket_backend_echoes() {
        let backend = websocket_echo().await;
        let mut socket = crate::clients::websocket_connect(backend.addr(), "ws.test", "/chat")
            .await
            .unwrap();
        socket.send(Message::text("hello")).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "hello");
        assert_eq!(backend.requests()[0].host, "ws.test");
    }

    #[tokio::test]
    async fn tls_echo_presents_its_certificate() {
        let ca = crate::certs::CertAuthority::new("ca");
        let backend = tls_echo("secure", &ca.server_cert(&["backend.test"])).await;
        let options = crate::clients::TlsOptions::new("backend.test", &ca.cert_pem());
        let session = crate::clients::tls_connect(backend.addr(), &options)
            .await
            .unwrap();
        assert_eq!(
            session.info.peer_dns_names,
            vec!["backend.test".to_string()]
        );
        assert_eq!(session.info.alpn.as_deref(), Some("h2"));
        let response = session
            .send(get_request(backend.addr(), "backend.test", "/"))
            .await
            .unwrap();
        assert_eq!(response.json()["protocol"], "HTTP/2.0");
    }

    #[tokio::test]
    async fn refusing_address_refuses() {
        let addr = refusing_address();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}

/// A service whose answers the test writes (an authorization server, a token endpoint):
/// `answer` gets each request's head and whole body and returns the response, and may
/// wait first to play a slow service. Every request is recorded, with its body length.
pub async fn answering<F, Fut>(answer: F) -> Backend
where
    F: Fn(http::request::Parts, Bytes) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let recorder = Recorder::default();
    let handler_recorder = recorder.clone();
    let answer = Arc::new(answer);
    let handler: Handler = Arc::new(move |request| {
        let recorder = handler_recorder.clone();
        let answer = answer.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
            let head = Request::from_parts(parts, ());
            recorder.push(RecordedRequest::new(&head, body.len()));
            Ok(answer(head.into_parts().0, body).await)
        })
    });
    spawn_http(bind_loopback().await, None, false, recorder, handler)
}

/// What a [`usage_collector`] stored: requests billed per batch key (the `idempotency-key`
/// header).
#[derive(Clone, Default)]
pub struct UsageLedger(Arc<Mutex<HashMap<String, u64>>>);

impl UsageLedger {
    /// Requests billed, over every batch stored.
    pub fn billed(&self) -> u64 {
        self.0.lock().expect("ledger lock").values().sum()
    }

    /// Batches stored (distinct keys).
    pub fn batches(&self) -> usize {
        self.0.lock().expect("ledger lock").len()
    }
}

/// A billing service for the `metering` plugin that is slow to answer: each POSTed batch
/// (`{"records": [...]}` or an array) is stored at once, once per `idempotency-key` (a
/// repeat is answered `200` and not stored again), but the first `late_answers` requests
/// are answered only after `delay` — later than a plugin's timeout, so it sends the batch
/// again. Every request is recorded, with its body length.
pub async fn usage_collector(late_answers: usize, delay: Duration) -> (Backend, UsageLedger) {
    let recorder = Recorder::default();
    let ledger = UsageLedger::default();
    let handler_recorder = recorder.clone();
    let handler_ledger = ledger.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let handler: Handler = Arc::new(move |request| {
        let recorder = handler_recorder.clone();
        let ledger = handler_ledger.clone();
        let late = seen.fetch_add(1, Ordering::SeqCst) < late_answers;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
            let key = parts
                .headers
                .get("idempotency-key")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            recorder.push(RecordedRequest::new(
                &Request::from_parts(parts, ()),
                body.len(),
            ));
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let records = value
                .get("records")
                .unwrap_or(&value)
                .as_array()
                .cloned()
                .unwrap_or_default();
            let requests = records
                .iter()
                .map(|record| record["requests"].as_u64().unwrap_or(0))
                .sum();
            ledger
                .0
                .lock()
                .expect("ledger lock")
                .entry(key)
                .or_insert(requests);
            if late {
                tokio::time::sleep(delay).await;
            }
            Ok(plain(StatusCode::OK, "{}"))
        })
    });
    (
        spawn_http(bind_loopback().await, None, false, recorder, handler),
        ledger,
    )
}

/// What a [`document_server`] answers: a status and a JSON body, switched by the test while
/// the gateway runs.
#[derive(Clone)]
pub struct Document(Arc<Mutex<(StatusCode, String)>>);

impl Document {
    /// Answers `status` with `body` from now on.
    pub fn set(&self, status: StatusCode, body: &str) {
        *self.0.lock().expect("document lock") = (status, body.to_owned());
    }
}

/// A server answering every request with the current [`Document`] as
/// `application/json` (a key set, a remote configuration); every request is recorded.
pub async fn document_server(status: StatusCode, body: &str) -> (Backend, Document) {
    let recorder = Recorder::default();
    let document = Document(Arc::new(Mutex::new((status, body.to_owned()))));
    let handler_recorder = recorder.clone();
    let handler_document = document.clone();
    let handler: Handler = Arc::new(move |request| {
        handler_recorder.push(RecordedRequest::new(&request, 0));
        let (status, body) = handler_document.0.lock().expect("document lock").clone();
        Box::pin(async move {
            Ok(Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::from(body).boxed())
                .expect("valid response"))
        })
    });
    (
        spawn_http(bind_loopback().await, None, false, recorder, handler),
        document,
    )
}
