//! Plugin callouts: one buffered request, one response, on the cluster's protocol.
//!
//! A callout (`proxy_http_call`, a unary `proxy_grpc_call` such as a global rate limit's
//! check) has its whole request body at hand when it is sent. To an HTTP/1.1 cluster it goes
//! on a pooled connection like forwarded traffic. To an HTTP/2 cluster it goes on a
//! connection of its own per endpoint and worker, driven with `h2` directly: the calling task
//! opens the stream, queues the body with the head and awaits the answer itself. hyper's
//! client would pass every call through its dispatch channel to the connection's task and
//! spawn two more tasks per call (one to pipe the body, one to hand the response back), which
//! on a global limit's path cost about as much as the HTTP/2 framing itself.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};

use crate::body::{BoxError, H2Body};

use super::pool::{
    handshake_error, EndpointConnections, Multiplexed, Opening, SharedConnection, UpstreamError,
};
use super::{Cluster, Endpoint, PooledBody};

/// The sender of an endpoint's callout connection, and whether that connection has ended
/// (set by the task that drives it, or by a failed request).
#[derive(Clone)]
pub(super) struct CallSender {
    sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Multiplexed for CallSender {
    fn slot(endpoint: &mut EndpointConnections) -> &mut Option<SharedConnection<Self>> {
        &mut endpoint.calls
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

impl Cluster {
    /// Sends a callout's `request` to `endpoint` and returns its response, whose body is
    /// read as it arrives. The URI is the path and query; the protocol, scheme and
    /// authority are the cluster's and the endpoint's.
    pub async fn call(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        request: Request<Bytes>,
    ) -> Result<Response<CallBody>, UpstreamError> {
        if !self.http2 {
            let request =
                request.map(|body| Full::new(body).map_err(|never| match never {}).boxed());
            let response = self.send(endpoint, request).await?;
            return Ok(response.map(CallBody::Http1));
        }
        let (mut head, body) = request.into_parts();
        head.version = Version::HTTP_2;
        head.uri = self.http2_uri(endpoint, &head.uri)?;
        loop {
            let (call, reused) = self
                .shared_sender(endpoint, || self.open_calls(endpoint))
                .await?;
            // Waits for a free stream slot (the endpoint's concurrent-stream limit); fails
            // when the connection has ended or is going away.
            let mut sender = match call.sender.clone().ready().await {
                Ok(sender) => sender,
                Err(error) => {
                    call.closed.store(true, Ordering::Relaxed);
                    self.forget_if_closed::<CallSender>(endpoint);
                    if reused {
                        // Nothing was sent: the next turn opens a new connection.
                        continue;
                    }
                    return Err(UpstreamError::Call(error));
                }
            };
            let request = Request::from_parts(head, ());
            let fail = |error: h2::Error| {
                if error.is_io() || error.is_go_away() {
                    call.closed.store(true, Ordering::Relaxed);
                    self.forget_if_closed::<CallSender>(endpoint);
                }
                UpstreamError::Call(error)
            };
            let (response, mut stream) = sender
                .send_request(request, body.is_empty())
                .map_err(fail)?;
            if !body.is_empty() {
                // Queued with the head and flushed as flow control allows; a callout's body
                // is bounded by the plugin's memory.
                stream.send_data(body, true).map_err(fail)?;
            }
            let response = response.await.map_err(fail)?;
            return Ok(response.map(|body| CallBody::Http2(H2Body::new(body))));
        }
    }

    /// Opens an HTTP/2 connection for callouts to `endpoint`, and a task that drives it.
    fn open_calls(&self, endpoint: &Endpoint) -> Opening<CallSender> {
        self.open_shared(endpoint, |stream, address| async move {
            let (sender, connection) = h2::client::handshake(stream)
                .await
                .map_err(handshake_error)?;
            let closed = Arc::new(AtomicBool::new(false));
            let ended = closed.clone();
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(endpoint = %address, %error, "callout connection ended with an error");
                }
                ended.store(true, Ordering::Relaxed);
            });
            Ok(CallSender { sender, closed })
        })
    }
}

/// A callout's response body: from a pooled HTTP/1.1 connection, or an HTTP/2 stream of the
/// callout connection.
#[derive(Debug)]
pub enum CallBody {
    Http1(PooledBody),
    Http2(H2Body),
}

impl Body for CallBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            CallBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            CallBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CallBody::Http1(body) => body.is_end_stream(),
            CallBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CallBody::Http1(body) => body.size_hint(),
            CallBody::Http2(body) => body.size_hint(),
        }
    }
}
