//! The response body on its way downstream through the plugins that read it, chunk by
//! chunk (trailers included); the run's log phase follows its end.

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::super::ResponseBody;
use super::{PluginRun, SharedRun};
use crate::upstream::BoxError;
use crate::wasm::header_map::PseudoHeaderMap;

/// The response body as the plugins see it, chunk by chunk; the log phase runs when it ends.
pub fn filter_response_body(body: ResponseBody, run: SharedRun) -> ResponseBody {
    FilteredBody {
        inner: body,
        run,
        waiting: None,
        done: false,
        trailers_done: false,
    }
    .boxed()
}

/// The wait for a run the request body task holds (a plugin paused the request at its end).
type RunWait = std::pin::Pin<
    Box<dyn std::future::Future<Output = tokio::sync::OwnedMutexGuard<PluginRun>> + Send + Sync>,
>;

struct FilteredBody {
    inner: ResponseBody,
    run: SharedRun,
    waiting: Option<RunWait>,
    done: bool,
    /// The trailers went through the plugins already (they may follow a flushed body).
    trailers_done: bool,
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // The run first, then the frame: a frame is never read and then held back
            // waiting for the run. Once the request body task has ended, this body holds
            // the run's only handle and works on it in place; until then, under its lock.
            let mut guard = None;
            if !super::is_unshared(&this.run) {
                guard = Some(std::task::ready!(this.poll_run(cx)));
            }
            let run: &mut PluginRun = match guard.as_mut() {
                Some(guard) => guard,
                None => super::unshared(&mut this.run),
            };
            let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !run.reads_response_body() => {
                        // No plugin of the chain reads the body: it passes as it came.
                        run.response_size += data.len() as u64;
                        if this.inner.is_end_stream() {
                            this.done = true;
                        }
                        if !data.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        if this.done {
                            return Poll::Ready(None);
                        }
                    }
                    Ok(data) => {
                        let end = this.inner.is_end_stream();
                        let out = match run.response_body_chunk(data.to_vec(), end) {
                            Ok(out) => out,
                            Err(failure) => return reset(&mut this.done, failure),
                        };
                        if end {
                            this.done = true;
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                        if this.done {
                            return Poll::Ready(None);
                        }
                    }
                    Err(frame) if this.trailers_done => {
                        this.done = true;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Err(frame) => {
                        this.trailers_done = true;
                        // Trailers end the stream: release any buffered body first is not
                        // possible in one frame, so flush it and keep the trailers for later.
                        let flushed = match run.response_body_chunk(Vec::new(), true) {
                            Ok(flushed) => flushed,
                            Err(failure) => return reset(&mut this.done, failure),
                        };
                        let mut trailers = PseudoHeaderMap::from_headers(
                            frame.into_trailers().unwrap_or_default(),
                        );
                        if let Err(failure) = run.response_trailers(&mut trailers) {
                            return reset(&mut this.done, failure);
                        }
                        this.done = true;
                        let map = trailers.into_headers();
                        if !flushed.is_empty() {
                            // Send the released body now; the trailers follow as the final frame.
                            let pending_trailers = map;
                            this.inner = http_body_util::Empty::new()
                                .map_err(|never| match never {})
                                .with_trailers(async move { Some(Ok(pending_trailers)) })
                                .boxed();
                            this.done = false;
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(flushed)))));
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    let out = match run.response_body_chunk(Vec::new(), true) {
                        Ok(out) => out,
                        Err(failure) => return reset(&mut this.done, failure),
                    };
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl FilteredBody {
    /// The run, at once unless the request body task holds it; then woken when it lets go.
    fn poll_run(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<tokio::sync::OwnedMutexGuard<PluginRun>> {
        if self.waiting.is_none() {
            match self.run.clone().try_lock_owned() {
                Ok(run) => return std::task::Poll::Ready(run),
                Err(_) => self.waiting = Some(Box::pin(self.run.clone().lock_owned())),
            }
        }
        let waiting = self.waiting.as_mut().expect("set above");
        let run = std::task::ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        std::task::Poll::Ready(run)
    }
}

/// Ends the body in an error: hyper resets an HTTP/2 stream and closes an HTTP/1.1 connection
/// before the body's end, so the client can tell the body is incomplete.
fn reset(
    done: &mut bool,
    failure: impl Into<BoxError>,
) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    *done = true;
    std::task::Poll::Ready(Some(Err(failure.into())))
}
