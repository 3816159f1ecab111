//! Opening connections to endpoints: DNS resolution on every connect (so DNS changes are
//! followed), a connect timeout, TCP_NODELAY, and TLS with the cluster's server name (and
//! its client certificate, see `crate::tls::client_config`); what a TLS failure was is read
//! back from the errors by [`tls_failure`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Connects to a cluster's endpoints.
#[derive(Clone)]
pub struct Connector {
    connect_timeout: Duration,
    tls: Option<(TlsConnector, Option<String>)>,
}

impl Connector {
    pub fn new(
        connect_timeout: Duration,
        tls: Option<(Arc<rustls::ClientConfig>, Option<String>)>,
    ) -> Self {
        Self {
            connect_timeout,
            tls: tls.map(|(config, server_name)| (TlsConnector::from(config), server_name)),
        }
    }

    /// Opens a connection to `host:port` (a bracketed IPv6 host is accepted as well).
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<UpstreamStream> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::time::timeout(self.connect_timeout, connect_any(host, port))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {host}:{port} timed out"),
                )
            })??;
        stream.set_nodelay(true)?;
        let Some((tls, server_name)) = &self.tls else {
            return Ok(UpstreamStream::Plain(stream));
        };
        let name = server_name.clone().unwrap_or_else(|| host.to_string());
        let name = ServerName::try_from(name).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid TLS server name: {e}"),
            )
        })?;
        let stream = tokio::time::timeout(self.connect_timeout, tls.connect(name, stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(UpstreamStream::Tls(Box::new(stream)))
    }
}

/// What went wrong with TLS behind an upstream error, in words, when TLS is what failed: the
/// endpoint's certificate did not pass verification, or the endpoint refused the handshake
/// (an alert, such as one for a client certificate missing or not trusted). With TLS 1.3
/// an endpoint checks the client certificate after the client considers the handshake
/// done, so its refusal can arrive as the first read of the exchange; it is found there too.
pub fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(describe_tls_error(tls));
        }
        // An I/O error's `source` skips the error it wraps: look into it here.
        next = match error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

fn describe_tls_error(error: &rustls::Error) -> String {
    use rustls::AlertDescription as Alert;
    match error {
        rustls::Error::AlertReceived(
            alert @ (Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::AccessDenied
            | Alert::HandshakeFailure),
        ) => format!(
            "the upstream refused the TLS handshake ({alert:?}): it requires a client \
             certificate (tls.cert, tls.key) that it trusts"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("the upstream refused the TLS handshake ({alert:?})")
        }
        // rustls shows a verifier's own error in its debug form.
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            format!("invalid upstream certificate: {}", other.0)
        }
        rustls::Error::InvalidCertificate(error) => {
            format!("invalid upstream certificate: {error}")
        }
        other => other.to_string(),
    }
}

/// Resolves `host` and tries each address in turn.
async fn connect_any(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last_error = None;
    for address in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        )
    }))
}

/// A connection to an endpoint, plain or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
