//! Clients that talk to the gateway the way users' clients do: HTTP/1.1, HTTP/2 with prior
//! knowledge, TLS with a chosen SNI name, ALPN and client certificate, WebSocket, and raw
//! bytes for requests no well-behaved client would send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

use crate::certs::{crypto_provider, dns_names, parse_certs, parse_key, IssuedCert};

/// A whole response: status, headers, body and trailers.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl HttpResponse {
    /// Reads the whole body of a response.
    pub async fn collect(response: Response<Incoming>) -> anyhow::Result<Self> {
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.context("read the response body")?;
        let trailers = collected.trailers().cloned();
        Ok(Self {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}); status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// A request to `http://ADDR/PATH` carrying `Host: HOST`, so that the connection goes to
/// the gateway while the virtual host is chosen by name.
pub fn request(
    method: &str,
    addr: SocketAddr,
    host: &str,
    path_and_query: &str,
) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path_and_query}"))
        .header(http::header::HOST, host)
}

/// A GET request with no body; see [`request`].
pub fn get_request(addr: SocketAddr, host: &str, path_and_query: &str) -> Request<Full<Bytes>> {
    request("GET", addr, host, path_and_query)
        .body(Full::default())
        .expect("valid request")
}

/// A client over plain TCP: HTTP/1.1 through a connection pool, or HTTP/2 with prior
/// knowledge (h2c) on a new connection per request.
#[derive(Clone)]
pub struct HttpClient {
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Http1(Box<Client<HttpConnector, Full<Bytes>>>),
    H2c,
}

impl HttpClient {
    pub fn http1() -> Self {
        let pool = Client::builder(TokioExecutor::new()).build_http();
        Self {
            transport: Transport::Http1(Box::new(pool)),
        }
    }

    pub fn h2c() -> Self {
        Self {
            transport: Transport::H2c,
        }
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> anyhow::Result<HttpResponse> {
        HttpResponse::collect(self.send_streaming(request).await?).await
    }

    /// Sends a request and returns as soon as the response headers arrive.
    pub async fn send_streaming(
        &self,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<Response<Incoming>> {
        let uri = request.uri().clone();
        match &self.transport {
            Transport::Http1(pool) => pool
                .request(request)
                .await
                .with_context(|| format!("HTTP/1.1 request {uri}")),
            Transport::H2c => {
                let addr = uri
                    .authority()
                    .context("request URI names the server")?
                    .as_str();
                let mut sender = h2c_connect(addr).await?;
                let request = authority_from_host(request, "http");
                sender
                    .send_request(request)
                    .await
                    .with_context(|| format!("h2c request {uri}"))
            }
        }
    }

    /// GET `PATH` with `Host: HOST` from the server at `addr`; panics on transport errors.
    pub async fn get(&self, addr: SocketAddr, host: &str, path_and_query: &str) -> HttpResponse {
        self.send(get_request(addr, host, path_and_query))
            .await
            .unwrap_or_else(|e| panic!("GET {host}{path_and_query} via {addr}: {e:#}"))
    }
}

/// Opens an HTTP/2 connection with prior knowledge (h2c) to `addr`, driven in the
/// background; requests sent on it share that one connection.
pub async fn h2c_connect<B>(
    addr: impl tokio::net::ToSocketAddrs + std::fmt::Display,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .context("h2c handshake")?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends `total` GET requests, `concurrency` at a time, and counts the responses by the
/// value of `header`; answers without it count as `status NNN`, transport errors as
/// `error`.
pub async fn tally_by_header(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    path_and_query: &str,
    total: usize,
    concurrency: usize,
    header: &str,
) -> std::collections::BTreeMap<String, usize> {
    use futures_util::StreamExt;
    let outcomes: Vec<String> = futures_util::stream::iter(0..total)
        .map(|_| async move {
            match client.send(get_request(addr, host, path_and_query)).await {
                Ok(response) => match response.header(header) {
                    Some(value) => value.to_owned(),
                    None => format!("status {}", response.status.as_u16()),
                },
                Err(_) => "error".to_owned(),
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut counts = std::collections::BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome).or_insert(0) += 1;
    }
    counts
}

/// HTTP/2 names the virtual host in `:authority`, which hyper takes from the URI: move the
/// `Host` header there. The connection is already open, so the URI no longer needs to say
/// where the server is.
fn authority_from_host<B>(mut request: Request<B>, scheme: &str) -> Request<B> {
    let Some(host) = request.headers_mut().remove(http::header::HOST) else {
        return request;
    };
    let host = host.to_str().expect("ASCII host").to_owned();
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_owned();
    *request.uri_mut() = format!("{scheme}://{host}{path}")
        .parse::<Uri>()
        .expect("valid URI");
    request
}

/// Protocol versions a TLS client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// How a TLS client connects: the SNI name (also the name verified), the CA it trusts,
/// the ALPN protocols it offers, an optional client certificate and optionally a single
/// protocol version.
#[derive(Clone)]
pub struct TlsOptions {
    pub server_name: String,
    pub ca_pem: String,
    pub alpn: Vec<String>,
    pub client_cert: Option<IssuedCert>,
    pub only_version: Option<TlsVersion>,
    /// Accept whatever certificate the server presents, to see which one it picks for a
    /// name none of its certificates covers.
    pub accept_any_certificate: bool,
}

impl TlsOptions {
    /// Offers ALPN `h2` and `http/1.1`, no client certificate, TLS 1.2 and 1.3.
    pub fn new(server_name: &str, ca_pem: &str) -> Self {
        Self {
            server_name: server_name.to_owned(),
            ca_pem: ca_pem.to_owned(),
            alpn: vec!["h2".to_owned(), "http/1.1".to_owned()],
            client_cert: None,
            only_version: None,
            accept_any_certificate: false,
        }
    }

    pub fn accept_any_certificate(mut self) -> Self {
        self.accept_any_certificate = true;
        self
    }

    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_string()).collect();
        self
    }

    pub fn client_cert(mut self, cert: &IssuedCert) -> Self {
        self.client_cert = Some(cert.clone());
        self
    }

    pub fn only_version(mut self, version: TlsVersion) -> Self {
        self.only_version = Some(version);
        self
    }
}

/// What the TLS handshake settled.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    pub alpn: Option<String>,
    /// DNS names of the certificate the server presented.
    pub peer_dns_names: Vec<String>,
    pub version: Option<TlsVersion>,
}

/// An established TLS connection, ready for one request.
pub struct TlsSession {
    pub info: TlsInfo,
    stream: TlsStream<TcpStream>,
}

/// Connects and completes the TLS handshake. With TLS 1.3 a server that rejects the
/// client certificate says so only after the client's handshake is done, so a rejection
/// may show up on [`TlsSession::send`] instead.
pub async fn tls_connect(addr: SocketAddr, options: &TlsOptions) -> anyhow::Result<TlsSession> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(&options.ca_pem) {
        roots.add(cert)?;
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match options.only_version {
        Some(TlsVersion::Tls12) => &[&rustls::version::TLS12],
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
        None => rustls::DEFAULT_VERSIONS,
    };
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(versions)?;
    let builder = if options.accept_any_certificate {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match &options.client_cert {
        Some(cert) => {
            builder.with_client_auth_cert(parse_certs(&cert.cert_pem), parse_key(&cert.key_pem))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();

    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(options.server_name.clone())?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .context("TLS handshake")?;
    let (_, connection) = stream.get_ref();
    let info = TlsInfo {
        alpn: connection
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        peer_dns_names: connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| dns_names(leaf))
            .unwrap_or_default(),
        version: connection
            .protocol_version()
            .and_then(|version| match version {
                rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
                rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
                _ => None,
            }),
    };
    Ok(TlsSession { info, stream })
}

impl TlsSession {
    /// Sends one request, over HTTP/2 when ALPN chose `h2`, else HTTP/1.1.
    pub async fn send(self, request: Request<Full<Bytes>>) -> anyhow::Result<HttpResponse> {
        let io = TokioIo::new(self.stream);
        let response = if self.info.alpn.as_deref() == Some("h2") {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            sender
                .send_request(authority_from_host(request, "https"))
                .await?
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            sender.send_request(origin_form(request)).await?
        };
        HttpResponse::collect(response).await
    }
}

/// Trusts any server certificate, still checking the handshake signatures.
#[derive(Debug)]
struct AcceptAnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// HTTP/1.1 requests on an open connection carry only the path in the request line.
fn origin_form<B>(mut request: Request<B>) -> Request<B> {
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_owned();
    *request.uri_mut() = path.parse::<Uri>().expect("valid path");
    request
}

/// Connects to `ws://ADDR/PATH` with `Host: HOST` and completes the WebSocket handshake.
pub async fn websocket_connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    request
        .headers_mut()
        .insert(http::header::HOST, host.parse()?);
    let tcp = TcpStream::connect(addr).await?;
    let (socket, _) = tokio_tungstenite::client_async(request, tcp).await?;
    Ok(socket)
}

/// The answer to raw bytes written on a new connection.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code of the first response line, if one arrived.
    pub status: Option<u16>,
    /// Everything read, lossily decoded.
    pub text: String,
}

/// Writes `request` on a new connection and reads until the response is complete (by its
/// `content-length`), the server closes, or `timeout` passes. A server that answers and
/// closes before reading everything may make the write fail; the answer is still read.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> RawResponse {
    let mut tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = tcp.write_all(request).await;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buffer = [0u8; 16 * 1024];
    while !response_complete(&received) {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok());
    RawResponse { status, text }
}

fn response_complete(received: &[u8]) -> bool {
    let Some(head_end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    let content_length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok());
    let chunked = head
        .lines()
        .filter_map(|line| line.strip_prefix("transfer-encoding:"))
        .any(|value| value.trim().ends_with("chunked"));
    match content_length {
        Some(length) => received.len() >= head_end + 4 + length,
        None if chunked => chunked_body_complete(&received[head_end + 4..]),
        // Without a length or chunks the body ends when the server closes.
        None => false,
    }
}

/// Whether a chunked body has arrived up to its last chunk and the empty line after any
/// trailers.
fn chunked_body_complete(mut body: &[u8]) -> bool {
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            // Not chunked as it claims: only the server's close ends it.
            return false;
        };
        body = &body[line_end + 2..];
        if size == 0 {
            // Trailers, if any, then an empty line.
            return body.starts_with(b"\r\n") || body.windows(4).any(|w| w == b"\r\n\r\n");
        }
        if body.len() < size + 2 {
            return false;
        }
        body = &body[size + 2..];
    }
}

/// Asserts the raw answer's status, showing everything that arrived when it differs.
pub fn expect_status(response: &RawResponse, expected: u16) {
    let shown: String = response.text.chars().take(600).collect();
    assert_eq!(
        response.status,
        Some(expected),
        "expected status {expected}, got this answer (first 600 characters): {shown:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::response_complete;

    #[test]
    fn raw_answers_end_at_their_length_or_last_chunk() {
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok"
        ));
        let chunked = b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut answer = chunked.to_vec();
        answer.extend_from_slice(b"5\r\nhello\r\n");
        assert!(!response_complete(&answer));
        answer.extend_from_slice(b"0\r\n");
        assert!(!response_complete(&answer));
        answer.extend_from_slice(b"\r\n");
        assert!(response_complete(&answer));
        let mut with_trailers = chunked.to_vec();
        with_trailers.extend_from_slice(b"0\r\ngrpc-status: 0\r\n\r\n");
        assert!(response_complete(&with_trailers));
        // No length and no chunks: only the server's close ends the body.
        assert!(!response_complete(b"HTTP/1.0 200 OK\r\n\r\nbody"));
    }
}
