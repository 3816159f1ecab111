//! Time limits on the bodies of one exchange, so that a client or an upstream that stops
//! sending cannot hold a connection, its policy snapshot and its plugin VMs forever.
//!
//! - [`ReadTimeout`] wraps the request body: no frame for `body_read_timeout` → the body
//!   fails with [`BodyReadTimeout`], which the pipeline answers with `408` and a close.
//! - [`StreamIdle`] wraps the response body: while hyper waits for the next frame, no frame
//!   for `stream_idle_timeout` → the body fails and hyper resets the stream (h2) or closes
//!   the connection (HTTP/1.1). A response that hyper does not poll because the client does
//!   not read is the connection watchdog's business (see `server::connection`).
//!
//! And [`H2Body`]: the body of an HTTP/2 stream driven with `h2` directly (a callout's
//! response, a call to `tollgate ratelimit`), as a [`Body`] like hyper's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// What a body's frame fails with, whatever the body: the one error type the pipeline's
/// boxed bodies share.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body made no progress for `server.body_read_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyReadTimeout;

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body made no progress within body_read_timeout")
    }
}

impl std::error::Error for BodyReadTimeout {}

/// The request body broke its own framing (a bad chunk size, a connection closed early):
/// the client's fault, answered `400`, never blamed on the upstream.
#[derive(Debug)]
pub struct MalformedBody(pub hyper::Error);

impl std::fmt::Display for MalformedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed request body: {}", self.0)
    }
}

impl std::error::Error for MalformedBody {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The response stream made no progress for `server.stream_idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamIdleTimeout;

impl std::fmt::Display for StreamIdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the response stream made no progress within stream_idle_timeout")
    }
}

impl std::error::Error for StreamIdleTimeout {}

/// Whether `error` or any error it wraps (the upstream clients wrap request body errors) is an
/// `E`: how the pipeline tells a client's body failure from an upstream's.
pub fn caused_by<E: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// A deadline that restarts on every frame. The clock starts at the first poll rather than
/// at construction, so that time spent before anyone reads (plugins deciding, an upstream
/// connecting) does not count against the body.
struct Stall {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    fn new(limit: Duration) -> Self {
        Self { limit, sleep: None }
    }

    fn progressed(&mut self) {
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(Instant::now() + self.limit);
        }
    }

    /// Ready when the body has been waited on for `limit` without a frame.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let limit = self.limit;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)))
            .as_mut()
            .poll(cx)
    }
}

/// A body that fails with `error` when it makes no progress for a while.
pub struct Guarded<B, E> {
    inner: B,
    stall: Stall,
    error: E,
    failed: bool,
}

/// The request body with `server.body_read_timeout`.
pub type ReadTimeout<B> = Guarded<B, BodyReadTimeout>;

/// The response body with `server.stream_idle_timeout`.
pub type StreamIdle<B> = Guarded<B, StreamIdleTimeout>;

impl<B> ReadTimeout<B> {
    pub fn new(inner: B, body_read_timeout: Duration) -> Self {
        Guarded::with_error(inner, body_read_timeout, BodyReadTimeout)
    }
}

impl<B> StreamIdle<B> {
    pub fn new(inner: B, stream_idle_timeout: Duration) -> Self {
        Guarded::with_error(inner, stream_idle_timeout, StreamIdleTimeout)
    }
}

impl<B, E> Guarded<B, E> {
    fn with_error(inner: B, limit: Duration, error: E) -> Self {
        Self {
            inner,
            stall: Stall::new(limit),
            error,
            failed: false,
        }
    }
}

impl<B, E> Body for Guarded<B, E>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
    E: std::error::Error + Copy + Send + Sync + Unpin + 'static,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.stall.poll_expired(cx) {
                Poll::Ready(()) => {
                    this.failed = true;
                    Poll::Ready(Some(Err(Box::new(this.error))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An `h2` stream's incoming data and trailers as a [`Body`]. The stream's flow-control
/// window is given back as each frame is taken, so the peer can keep sending.
pub struct H2Body {
    stream: h2::RecvStream,
    /// The data frames have ended; the trailers (if any) are next.
    data_done: bool,
}

impl H2Body {
    pub fn new(stream: h2::RecvStream) -> Self {
        Self {
            stream,
            data_done: false,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match this.stream.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => this.data_done = true,
            }
        }
        this.stream.poll_trailers(cx).map(|trailers| {
            trailers
                .transpose()
                .map(|trailers| trailers.map(Frame::trailers))
        })
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body")
            .field("data_done", &self.data_done)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn trickle(gaps: Vec<Duration>) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let stream = futures_util::stream::unfold(gaps.into_iter(), |mut gaps| async move {
            let gap = gaps.next()?;
            tokio::time::sleep(gap).await;
            Some((Ok(Frame::data(Bytes::from_static(b"x"))), gaps))
        });
        StreamBody::new(Box::pin(stream))
    }

    #[tokio::test]
    async fn a_moving_body_is_never_cut() {
        let gaps = vec![Duration::from_millis(30); 10];
        let body = ReadTimeout::new(trickle(gaps), Duration::from_millis(150));
        let collected = body.collect().await.expect("the body keeps moving");
        assert_eq!(collected.to_bytes().len(), 10);
    }

    #[tokio::test]
    async fn a_stalled_body_fails_with_the_typed_error() {
        let gaps = vec![Duration::from_millis(10), Duration::from_secs(2)];
        let body = ReadTimeout::new(trickle(gaps), Duration::from_millis(100));
        let error = body.collect().await.expect_err("the body stalls");
        assert!(caused_by::<BodyReadTimeout>(error.as_ref()));
    }

    #[tokio::test]
    async fn a_stalled_response_fails_with_its_own_error() {
        let body = StreamIdle::new(
            trickle(vec![Duration::from_secs(2)]),
            Duration::from_millis(100),
        );
        let error = body.collect().await.expect_err("the stream stalls");
        assert!(error.is::<StreamIdleTimeout>());
        assert!(!caused_by::<BodyReadTimeout>(error.as_ref()));
    }
}
