//! The request body through the plugin chain, streamed as Envoy streams it: each piece goes
//! through the plugins that read bodies as it arrives and on to the upstream as soon as they
//! continue it, so that a bidirectional stream gets its first answer before its request ends
//! and an upload is never held whole.
//!
//! A task of the request's worker reads the client's body, hands each piece to
//! [`PluginRun::request_body_chunk`](super::plugins::PluginRun::request_body_chunk) and sends
//! what comes out to the upstream request's body through a small channel (one piece ahead,
//! so a slow upstream slows the client). While a plugin holds data before the end, the task
//! also waits for that plugin to resume or answer (its callout came back), and takes that
//! up at once. The task stops the request by a signal the
//! pipeline waits on together with the upstream: a plugin's local reply or failure, a
//! buffer past `max_buffered_body_bytes`, a body past `max_request_body_bytes`, a stall past
//! `body_read_timeout`, a broken body. The upstream body then ends in an error, which
//! abandons the upstream request; once the response head went downstream, that error also
//! resets the response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use super::plugins::{BodyStop, SharedRun, Stopped};
use super::refusal::Refusal;
use crate::body::{caused_by, BodyReadTimeout};
use crate::upstream::{BoxError, UpstreamBody};
use crate::wasm::header_map::PseudoHeaderMap;

/// Why the request body task stopped the request.
pub(super) enum RequestStop {
    /// A plugin answered or failed: the response phase handles it as in the other phases.
    Plugin(Stopped),
    /// The gateway answers; the connection closes after it, since the rest of the body will
    /// not be read.
    Refused(Refusal),
}

/// The upstream request was stopped by the request body task (its reason went to the
/// pipeline).
#[derive(Debug)]
pub struct RequestBodyStopped;

impl std::fmt::Display for RequestBodyStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was stopped on its way through the plugins")
    }
}

impl std::error::Error for RequestBodyStopped {}

/// Starts streaming `body` (the client's, already bounded by the server limits) through
/// the run's plugins. Returns the upstream request's body and the stop signal.
pub(super) fn through_plugins(
    body: UpstreamBody,
    run: SharedRun,
) -> (UpstreamBody, oneshot::Receiver<RequestStop>) {
    let (pieces, receiver) = mpsc::channel(1);
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(pump(body, run, pieces, stop));
    (
        PluginOutput {
            pieces: receiver,
            ended: false,
        }
        .boxed(),
        stopped,
    )
}

type Piece = Result<Frame<Bytes>, BoxError>;

async fn pump(
    mut body: UpstreamBody,
    run: SharedRun,
    pieces: mpsc::Sender<Piece>,
    stop: oneshot::Sender<RequestStop>,
) {
    let wakes = run.lock().await.request_body_wakes();
    // Some plugin paused the body before its end and holds data.
    let mut held = false;
    let outcome = loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // An upstream request that ended (answered early, abandoned) needs no more body.
            () = pieces.closed() => return,
            // A plugin holding data resumed or answered (its callout came back, say): that
            // is taken up now, not when more of the body arrives (which a bidirectional
            // stream's client sends only after its answer).
            () = async { any_woken(&wakes).await }, if held => {
                let mut run = run.lock().await;
                let resumed = run.request_body_resumed().await;
                held = run.holds_request_body();
                drop(run);
                match resumed {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => {
                        if pieces.send(Ok(Frame::data(data))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(stopped) => break Err(plugin_stop(stopped)),
                }
            }
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => break Err(refusal(&error)),
            None => {
                // The body ended after its last piece was seen (chunked HTTP/1.1): the
                // plugins get the end with no data, as in Envoy.
                match run
                    .lock()
                    .await
                    .request_body_chunk(Bytes::new(), true)
                    .await
                {
                    Ok(data) => break Ok(Some(data)),
                    Err(stopped) => break Err(plugin_stop(stopped)),
                }
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                let end_of_stream = body.is_end_stream();
                let mut guard = run.lock().await;
                let passed = guard.request_body_chunk(data, end_of_stream).await;
                held = guard.holds_request_body();
                drop(guard);
                match passed {
                    Ok(data) if end_of_stream => break Ok(Some(data)),
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => Frame::data(data),
                    Err(stopped) => break Err(plugin_stop(stopped)),
                }
            }
            Err(frame) => {
                let Ok(map) = frame.into_trailers() else {
                    continue;
                };
                let mut trailers = PseudoHeaderMap::from_headers(map);
                let passed = run.lock().await.request_trailers(&mut trailers).await;
                match passed {
                    Ok(data) => {
                        if !data.is_empty() && pieces.send(Ok(Frame::data(data))).await.is_err() {
                            return;
                        }
                        let map = trailers.into_headers();
                        let _ = pieces.send(Ok(Frame::trailers(map))).await;
                        return;
                    }
                    Err(stopped) => break Err(plugin_stop(stopped)),
                }
            }
        };
        if pieces.send(Ok(frame)).await.is_err() {
            return;
        }
    };
    match outcome {
        Ok(last) => {
            if let Some(data) = last.filter(|data| !data.is_empty()) {
                let _ = pieces.send(Ok(Frame::data(data))).await;
            }
        }
        Err(reason) => {
            // The signal first: the pipeline then answers with it rather than with the
            // upstream failure the body error causes.
            let _ = stop.send(reason);
            let _ = pieces.send(Err(Box::new(RequestBodyStopped))).await;
        }
    }
}

/// Ready when one of the wakes fires (or had fired with nobody waiting). Only awaited while
/// a plugin holds data, so the allocation is off the streaming path.
async fn any_woken(wakes: &[std::sync::Arc<tokio::sync::Notify>]) {
    let mut waiting: Vec<_> = wakes.iter().map(|wake| Box::pin(wake.notified())).collect();
    std::future::poll_fn(|cx| {
        for notified in &mut waiting {
            if std::future::Future::poll(notified.as_mut(), cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

fn plugin_stop(stopped: BodyStop) -> RequestStop {
    match stopped {
        BodyStop::Plugin(stopped) => RequestStop::Plugin(stopped),
        BodyStop::BufferFull => RequestStop::Refused(Refusal::BodyBufferFull),
    }
}

/// The answer to a client body that could not be read (same answers as on routes without
/// body plugins).
fn refusal(error: &BoxError) -> RequestStop {
    if caused_by::<BodyReadTimeout>(error.as_ref()) {
        return RequestStop::Refused(Refusal::RequestTimeout);
    }
    if caused_by::<http_body_util::LengthLimitError>(error.as_ref()) {
        return RequestStop::Refused(Refusal::BodyTooLarge);
    }
    RequestStop::Refused(Refusal::MalformedBody { cause: None })
}

/// The upstream request's body: what the plugins let through, in order.
struct PluginOutput {
    pieces: mpsc::Receiver<Piece>,
    ended: bool,
}

impl Body for PluginOutput {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.pieces.poll_recv(cx) {
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(piece)) => {
                if piece.as_ref().is_err() {
                    self.ended = true;
                }
                Poll::Ready(Some(piece))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown: plugins may change the length (HTTP/1.1 sends it chunked).
        SizeHint::default()
    }
}
