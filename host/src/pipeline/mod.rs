//! The per-request flow. Every request walks the same phases, drawn once here:
//!
//! ```text
//! accept → TLS (SNI, ALPN) → HTTP/1.1 or h2                      (server)
//!   → reserved identity and hop-by-hop headers removed, request id  (headers)
//!   → host checked and made canonical (one Host, no userinfo, agrees with the target's
//!     authority; case, port, trailing dot) ── 400 if refused      (routing::normalize)
//!   → path made canonical (escaped slashes, escapes, `//`, dot segments) ── 400 if refused
//!   → route match on the canonical host and path ── 404 if none  (routing)
//!   → request phase: plugin chain in order; a changed :path or   (proxy-wasm runtime)
//!     :authority is made canonical and matched again ── 400 / 404
//!   → request body: streamed piece by piece through the plugins   (request_body)
//!     that read it, alongside the upstream request
//!   → fault injection (delay, abort)
//!   → route action: redirect | direct response | forward         (local, forward)
//!        forward: X-Forwarded-* (every XFF line kept), contained prefix rewrite, split,
//!                 endpoint, timeout, retries, mirror, upgrade tunnel
//!   → response phase: plugin chain in reverse order             (proxy-wasm runtime)
//!   → access log line and metrics when the response body ends  (access_log)
//! ```
//!
//! Each step is one function, called in this order from [`handle`]: `route`, then
//! `with_plugins` (`request_phase`, `apply_head_changes`, `body_reading`, `upstream_body`)
//! when the route has a plugin chain, `act` (fault, then the action; `forward::forward`),
//! `plugin_response`. A route without plugins goes from `route` straight to `act`.
//!
//! Every answer the gateway makes itself (each `── 4xx/5xx` above, and the upstream's
//! failures) is a [`refusal::Refusal`]: its status, text, gRPC status and access-log detail
//! come from that one type.

mod access_log;
mod forward;
pub mod headers;
pub(crate) mod local;
pub mod plugins;
pub mod refusal;
mod request_body;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

use std::borrow::Cow;

use crate::body::{MalformedBody, ReadTimeout};
use crate::config::{Action, Normalization, Route, ServerSettings, VirtualHost};
use crate::routing::normalize::{self, Rejection};
use crate::routing::{NoMatch, RequestHead, RouteMatch};
use crate::snapshot::{ListenerState, Snapshot};
use crate::tls::TlsInfo;
use crate::upstream::{empty_body, BoxError, UpstreamBody};
use crate::wasm::header_map::{Pseudo, PseudoHeaderMap};
use crate::wasm::host::StreamInfo;
pub use access_log::{AccessRecord, LoggedBody};
use http_body_util::{BodyExt, Limited};
use plugins::{PluginRun, SharedRun, Stopped};
use refusal::Refusal;
use request_body::RequestStop;
use tokio::sync::oneshot;

/// The body of every response the gateway sends downstream.
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// What the server knows about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub listener: Arc<str>,
    pub connection_id: u64,
    pub remote: SocketAddr,
    /// `remote`'s address as `X-Forwarded-For` carries it ([`headers::address_value`]): made
    /// once for the connection, shared by its requests.
    pub client_address: http::HeaderValue,
    pub local: SocketAddr,
    pub tls: Option<TlsInfo>,
}

impl Downstream {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Limits the pipeline enforces on every request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_body_bytes: u64,
}

/// A plugin reset the stream (`proxy_close_stream`): the exchange ends with no response, as
/// in Envoy. Returned to hyper as the service's error, which closes an HTTP/1.1 connection
/// without writing anything and resets an HTTP/2 stream (RST_STREAM) alone.
#[derive(Debug, Clone, Copy)]
pub struct StreamReset;

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a plugin reset the stream")
    }
}

impl std::error::Error for StreamReset {}

/// Handles one request from start to finish. Errors become responses; the one exception is
/// a stream a plugin reset, which gets none. `held` is kept until the response body has been
/// sent or dropped, or, with no response, until the exchange ends.
pub async fn handle<H>(
    mut request: Request<Incoming>,
    snapshot: Arc<Snapshot>,
    downstream: Arc<Downstream>,
    held: H,
) -> Result<Response<LoggedBody<H>>, StreamReset> {
    let started = Instant::now();
    // Identity is set by authentication plugins only: a client's copy never gets through.
    headers::remove_reserved(request.headers_mut());
    // Hop-by-hop headers, and those the client's `Connection` names, go before any plugin
    // runs: removed later, a client could name the headers a plugin adds (the consumer
    // identity, a transformer's header) and have the gateway strip them for it.
    let upgrade = request.version() == http::Version::HTTP_11
        && headers::is_upgrade_request(request.headers());
    crate::fields::remove_hop_by_hop(request.headers_mut(), upgrade);
    let request_id = headers::ensure_request_id(request.headers_mut());
    let mut record = AccessRecord::new(
        &request,
        &downstream,
        request_id.clone(),
        started,
        snapshot.access_log_redaction.clone(),
        snapshot.registries.gateway_metrics.clone(),
    );
    record.trace = snapshot.tracing.as_ref().map(|tracing| {
        tracing.start_request(
            request.headers(),
            request.method(),
            request.uri().path(),
            downstream.scheme(),
            downstream.remote,
        )
    });

    let response = respond(request, &snapshot, &downstream, &mut record).await;
    if response.extensions().get::<StreamReset>().is_some() {
        // Logged as Envoy logs a reset stream: no status.
        record.status = 0;
        record.finish_without_response();
        return Err(StreamReset);
    }
    let mut response = as_client_gets(response, record.grpc);

    response
        .headers_mut()
        .insert(&headers::X_REQUEST_ID, request_id);
    record.status = response.status().as_u16();
    Ok(access_log::finish_on_body_end(response, record, held))
}

/// A request from its route to its answer, top to bottom: route → the plugins' request phase
/// → the route's action (forward, with retries) → the plugins' response phase. `handle`
/// writes the access log line after.
async fn respond(
    request: Request<Incoming>,
    snapshot: &Snapshot,
    downstream: &Downstream,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    let routed = match route(request, snapshot, downstream, record) {
        Ok(routed) => routed,
        Err(refusal) => return refuse(refusal, record),
    };
    let chain = snapshot
        .chains
        .get(&routed.route.name)
        .filter(|chain| !chain.is_empty())
        .cloned();
    match chain {
        // Boxed: its state (the plugin run, the head's copies) would otherwise make every
        // request's future as large, plugins or not, and that future is moved whole.
        Some(chain) => {
            crate::boxed!(with_plugins(routed, &chain, snapshot, downstream, record)).await
        }
        None => {
            let Routed {
                request,
                route,
                target,
                ..
            } = routed;
            let request = request.map(|body| downstream_body(body, &snapshot.config.server));
            act(
                request,
                route,
                snapshot,
                downstream,
                target.authority(),
                record,
            )
            .await
        }
    }
}

/// The answer to a refused request, its reason written in the access record. A request whose
/// body will not be read to its end gets the connection's last answer (see [`close_after`]).
fn refuse(refusal: Refusal, record: &mut AccessRecord) -> Response<ResponseBody> {
    record.detail = refusal.detail();
    let response = refusal.response();
    if refusal.leaves_body_unread() {
        close_after(response)
    } else {
        response
    }
}

/// A request matched to its route.
struct Routed<'s> {
    request: Request<Incoming>,
    listener: &'s ListenerState,
    route: &'s Route,
    virtual_host: &'s Arc<VirtualHost>,
    target: CanonicalHost,
}

/// Checks the request head, makes its host and path canonical and matches its route.
fn route<'s>(
    mut request: Request<Incoming>,
    snapshot: &'s Snapshot,
    downstream: &Downstream,
    record: &mut AccessRecord,
) -> Result<Routed<'s>, Refusal> {
    // hyper enforces the limit for heads of 8 KiB and more (its smallest buffer); smaller
    // configured limits are checked here.
    if head_size(&request) > snapshot.config.server.max_request_header_bytes {
        return Err(Refusal::RequestHeadersTooLarge);
    }
    let target = canonical_target(&mut request, &snapshot.config.server.normalization)?;
    let listener = snapshot
        .listeners
        .get(&downstream.listener)
        .ok_or(Refusal::NoListener)?;
    let head = RequestHead {
        host: target.host(),
        path: request.uri().path(),
        query: request.uri().query(),
        method: request.method(),
        headers: request.headers(),
    };
    let matched = listener
        .routes
        .find(&head)
        .map_err(|no_match| match no_match {
            NoMatch::UnknownHost => Refusal::UnknownHost {
                host: target.host().to_string(),
            },
            NoMatch::NoRoute => Refusal::NoRoute {
                path: request.uri().path().to_string(),
            },
        })?;
    record.route = matched.route_name.clone();
    Ok(Routed {
        request,
        listener,
        route: matched.route,
        virtual_host: matched.virtual_host,
        target,
    })
}

/// The route's plugin chain around its action: the request phase, the request body through
/// the plugins, the action, the response phase.
async fn with_plugins(
    routed: Routed<'_>,
    chain: &crate::snapshot::Chain,
    snapshot: &Snapshot,
    downstream: &Downstream,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    let wait_limit = match &routed.route.action {
        Action::Forward(forward) => forward.timeout,
        _ => Duration::from_secs(15),
    };
    let info = stream_info(&routed, downstream, record, snapshot);
    let buffer_limit = snapshot.config.server.max_buffered_body_bytes;
    let mut shared = PluginRun::new_shared(chain, info, wait_limit, buffer_limit);
    // Nothing else holds the run until the request body task does: worked on in place.
    let run = plugins::unshared(&mut shared);
    let Routed {
        request,
        listener,
        route,
        target,
        ..
    } = routed;
    let (mut parts, body) = request.into_parts();
    let end_of_stream = http_body::Body::is_end_stream(&body);
    let changed = match request_phase(
        run,
        &mut parts,
        target.authority(),
        downstream,
        end_of_stream,
    )
    .await
    {
        Ok(changed) => changed,
        Err(stop) => return plugin_stop(stop, shared, record).await,
    };
    let normalization = &snapshot.config.server.normalization;
    let (route, target) =
        match apply_head_changes(changed, &mut parts, listener, normalization, target) {
            Ok((None, target)) => (route, target),
            Ok((Some(rerouted), target)) => {
                record.route = rerouted.route_name.clone();
                (rerouted.route, target)
            }
            Err(refusal) => {
                let response = refuse(refusal, record);
                return plugin_response(shared, response, record).await;
            }
        };

    let reading = match body_reading(run, &mut parts, route, snapshot, end_of_stream) {
        Ok(reading) => reading,
        Err(refusal) => return refuse(refusal, record),
    };
    let run = shared;
    let server = &snapshot.config.server;
    let (body, body_stop) = match upstream_body(&mut parts, body, reading, &run, server).await {
        Ok(prepared) => prepared,
        Err(stop) => return request_stopped(stop, run, record).await,
    };
    let request = http::Request::from_parts(parts, body);
    let authority = target.authority();
    let outcome = match body_stop {
        None => Ok(act(request, route, snapshot, downstream, authority, record).await),
        Some(stopped) => {
            let upstream = act(request, route, snapshot, downstream, authority, record);
            // A stop from the body task abandons the upstream request (the future drops).
            let stopped = async {
                match stopped.await {
                    Ok(stop) => stop,
                    // The body went through whole: only the upstream decides now.
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                stop = stopped => Err(stop),
                response = upstream => Ok(response),
            }
        }
    };
    match outcome {
        Ok(response) => plugin_response(run, response, record).await,
        Err(stop) => request_stopped(stop, run, record).await,
    }
}

/// What the request phase's plugins changed of `:authority` and `:path`.
struct HeadChanges {
    authority: Option<String>,
    path: Option<String>,
}

/// Request phase: the plugin chain, in order, over the request head. The headers and method
/// they set are applied to `parts`; a changed `:authority` or `:path` is returned, to be made
/// canonical and routed again.
async fn request_phase(
    run: &mut PluginRun,
    parts: &mut http::request::Parts,
    authority: &str,
    downstream: &Downstream,
    end_of_stream: bool,
) -> Result<HeadChanges, Stopped> {
    // The plugins work on the request's own header map, moved in and back.
    let mut head = Box::new(PseudoHeaderMap::request(
        &parts.method,
        downstream.scheme(),
        authority,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        std::mem::take(&mut parts.headers),
    ));
    head.make_room();
    let mut head = run.request_headers(head, end_of_stream).await?;
    // A pseudo-header the plugins left as it was costs no copy.
    let changed = |pseudo: Pseudo, old: &str| {
        head.pseudo(pseudo)
            .filter(|new| *new != old.as_bytes())
            .map(|new| String::from_utf8_lossy(new).into_owned())
    };
    if let Some(method) = changed(Pseudo::Method, parts.method.as_str())
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
    {
        parts.method = method;
    }
    let old_path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let changes = HeadChanges {
        authority: changed(Pseudo::Authority, authority),
        path: changed(Pseudo::Path, old_path),
    };
    parts.headers = head.take_headers();
    Ok(changes)
}

/// Applies a changed `:authority` and `:path` to the request. What a plugin sets is made
/// canonical exactly like what a client sends, so that a plugin cannot route a request where
/// the client could not; a change selects the route again, as Envoy clears its route cache.
/// Returns the new route (if routed again) and the authority.
///
/// A path or authority that cannot be made canonical is answered 400, as it would be from
/// the client: plugins build these from the request (a rewrite of its path, a header's
/// value), so the fault is the request's, and a 5xx would make hostile input look like a
/// gateway failure.
fn apply_head_changes<'s>(
    changed: HeadChanges,
    parts: &mut http::request::Parts,
    listener: &'s ListenerState,
    normalization: &Normalization,
    mut target: CanonicalHost,
) -> Result<(Option<RouteMatch<'s>>, CanonicalHost), Refusal> {
    let rerouting = changed.authority.is_some() || changed.path.is_some();
    if let Some(new_authority) = &changed.authority {
        target = canonical_authority(new_authority, None, normalization)
            .map_err(Refusal::InvalidPluginAuthority)?;
    }
    if let Some(new_path) = &changed.path {
        parts.uri = plugin_uri(new_path, normalization).map_err(Refusal::InvalidPluginPath)?;
    }
    if !rerouting {
        // The upstream request's `Host` is the authority, set where the request is forwarded
        // (`forward::outgoing`: the client's own value when it is the authority already).
        return Ok((None, target));
    }
    // Routing again sees `Host` as the new authority, as a client would have sent it.
    parts
        .headers
        .insert(http::header::HOST, target.authority.clone());
    let head = RequestHead {
        host: target.host(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        method: &parts.method,
        headers: &parts.headers,
    };
    match listener.routes.find(&head) {
        Ok(rematched) => Ok((Some(rematched), target)),
        Err(_) => Err(Refusal::NoRouteAfterPlugin {
            path: parts.uri.path().to_string(),
        }),
    }
}

/// How the request body passes the plugins on its way upstream.
enum BodyReading {
    /// The request has none.
    Empty,
    /// No plugin reads it: it goes as it arrives.
    Untouched,
    /// A small body (by its declared length) on a route that may send it again: through the
    /// plugins whole before the upstream request starts.
    Whole,
    /// Through the plugins piece by piece, while the upstream request starts with the head.
    Streamed,
}

/// How the request body will pass the plugins. A body plugins read loses its length headers
/// (they may change it, and the head goes first: the upstream gets HTTP/1.1 chunked or
/// HTTP/2 framing); one declared over `server.max_request_body_bytes` is refused at once.
fn body_reading(
    run: &PluginRun,
    parts: &mut http::request::Parts,
    route: &Route,
    snapshot: &Snapshot,
    end_of_stream: bool,
) -> Result<BodyReading, Refusal> {
    if end_of_stream {
        return Ok(BodyReading::Empty);
    }
    if run.reads_request_body() {
        let limit = snapshot.config.server.max_request_body_bytes;
        if declared_length(&parts.headers).is_some_and(|length| length > limit) {
            return Err(Refusal::BodyTooLarge);
        }
        let whole = replays_small_body(route, snapshot, &parts.headers);
        parts.headers.remove(http::header::CONTENT_LENGTH);
        parts.headers.remove(http::header::TRANSFER_ENCODING);
        if whole {
            return Ok(BodyReading::Whole);
        }
    }
    Ok(if run.reads_request_stream() {
        BodyReading::Streamed
    } else {
        BodyReading::Untouched
    })
}

/// The upstream request's body, and the signal of the body task when the plugins stream it
/// (see `request_body`). A whole body leaves with its final length and can be replayed, as
/// Envoy buffers bodies for retries.
async fn upstream_body(
    parts: &mut http::request::Parts,
    body: Incoming,
    reading: BodyReading,
    run: &SharedRun,
    server: &ServerSettings,
) -> Result<(UpstreamBody, Option<oneshot::Receiver<RequestStop>>), RequestStop> {
    match reading {
        BodyReading::Empty => Ok((empty_body(), None)),
        BodyReading::Untouched => Ok((downstream_body(body, server), None)),
        BodyReading::Streamed => {
            let (body, stop) =
                request_body::through_plugins(downstream_body(body, server), run.clone());
            Ok((body, Some(stop)))
        }
        BodyReading::Whole => {
            let (body, stopped) =
                request_body::through_plugins(downstream_body(body, server), run.clone());
            let collected = match body.collect().await {
                Ok(collected) => collected,
                Err(_) => {
                    return Err(stopped
                        .await
                        .unwrap_or(RequestStop::Refused(Refusal::MalformedBody { cause: None })))
                }
            };
            let trailers = collected.trailers().cloned();
            let bytes = collected.to_bytes();
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            let body = http_body_util::Full::new(bytes).map_err(|never| match never {});
            let body = match trailers {
                Some(map) => body.with_trailers(async move { Some(Ok(map)) }).boxed(),
                None => body.boxed(),
            };
            Ok((body, None))
        }
    }
}

/// Answers a request whose body the plugins, or the body's limits, stopped.
async fn request_stopped(
    stop: RequestStop,
    run: SharedRun,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    match stop {
        RequestStop::Plugin(stop) => plugin_stop(stop, run, record).await,
        RequestStop::Refused(refusal) => {
            let response = refuse(refusal, record);
            run.lock()
                .await
                .set_final_response(response.status().as_u16(), Box::default());
            response
        }
    }
}

/// Whether the request's body is small by its declared length and the route may send it
/// more than once.
fn replays_small_body(route: &Route, snapshot: &Snapshot, headers: &http::HeaderMap) -> bool {
    let Action::Forward(forward_action) = &route.action else {
        return false;
    };
    let Some(resolved) = snapshot.forwards.get(&route.name) else {
        return false;
    };
    forward::may_send_again(forward_action, resolved)
        && declared_length(headers).is_some_and(|length| length <= forward::REPLAY_BUFFER_LIMIT)
}

/// The request's `Content-Length`, when it has a valid one.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The request body as the pipeline reads it: bounded in size by
/// `server.max_request_body_bytes` and in stall time by `server.body_read_timeout`.
fn downstream_body(body: Incoming, server: &ServerSettings) -> UpstreamBody {
    // Nothing to bound when there is nothing to read (a GET): no box either.
    if http_body::Body::is_end_stream(&body) {
        return empty_body();
    }
    Limited::new(
        ReadTimeout::new(
            body.map_err(|error| -> BoxError { Box::new(MalformedBody(error)) }),
            server.body_read_timeout,
        ),
        server.max_request_body_bytes as usize,
    )
    .boxed()
}

/// Marks an HTTP/1.1 answer as the connection's last: whatever the client sent after it is
/// never read as another request. (HTTP/2 drops the header; each stream frames itself.)
fn close_after(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Answers a request whose plugins stopped it.
async fn plugin_stop(
    stop: Stopped,
    shared: SharedRun,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    match stop {
        Stopped::Local(index, answer) => {
            record.detail = "plugin_local_reply";
            {
                let mut run = shared.lock().await;
                run.update_outcome(|outcome| outcome.plugin_details = answer.details.clone());
                run.answered_by(index);
            }
            plugin_response(shared, plugins::local_response(&answer), record).await
        }
        Stopped::Failed(response) => {
            let mut run = shared.lock().await;
            record.detail = "plugin_failure";
            record.plugin_phase = run.failed_phase().unwrap_or("-");
            let response = as_client_gets(*response, record.grpc);
            record_outcome(&run, record);
            run.set_final_response(response.status().as_u16(), Box::default());
            response
        }
        Stopped::Reset => plugin_reset(&mut *shared.lock().await, record),
    }
}

/// A local answer as the client gets it: trailers-only for a gRPC call (see `local`),
/// unchanged otherwise. Applied wherever an answer leaves the gateway or meets the response
/// plugins; it changes an answer once.
fn as_client_gets(response: Response<ResponseBody>, grpc: bool) -> Response<ResponseBody> {
    if grpc {
        local::for_grpc(response)
    } else {
        response
    }
}

/// A plugin reset the stream: every plugin still gets its log phase (the run ends here,
/// with no response), and `handle` ends the exchange without one.
fn plugin_reset(run: &mut PluginRun, record: &mut AccessRecord) -> Response<ResponseBody> {
    record.detail = "plugin_reset";
    record_outcome(run, record);
    run.finish();
    let mut response = Response::new(local::body(Bytes::new()));
    response.extensions_mut().insert(StreamReset);
    response
}

/// Shares what the access record knows of the answer with the plugins' properties.
fn record_outcome(run: &PluginRun, record: &AccessRecord) {
    run.update_outcome(|outcome| {
        outcome.detail = record.detail;
        outcome.cluster = (&*record.cluster != "-").then(|| record.cluster.clone());
        outcome.upstream = record.upstream.clone();
        outcome.attempts = record.attempts;
    });
}

/// Response phase: the plugin chain in reverse order, then the body through the plugins.
async fn plugin_response(
    mut shared: SharedRun,
    response: Response<ResponseBody>,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    // Response plugins see a local answer to a gRPC call in the form the client gets.
    let response = as_client_gets(response, record.grpc);
    // In place once the request body task has ended (nearly always: most requests have no
    // body), else under the lock.
    let mut guard = None;
    if !plugins::is_unshared(&shared) {
        guard = Some(shared.clone().lock_owned().await);
    }
    let run: &mut PluginRun = match guard.as_mut() {
        Some(guard) => guard,
        None => plugins::unshared(&mut shared),
    };
    record_outcome(run, record);
    if !run.reads_response_head() {
        run.response_head_unread(response.status().as_u16());
        drop(guard);
        let (parts, body) = response.into_parts();
        return Response::from_parts(parts, plugins::filter_response_body(body, shared));
    }
    let (mut parts, body) = response.into_parts();
    // The plugins work on the response's own header map, moved in and back.
    let mut head = Box::new(PseudoHeaderMap::response(
        parts.status,
        std::mem::take(&mut parts.headers),
    ));
    head.make_room();
    let end_of_stream = http_body::Body::is_end_stream(&body);
    let (head, body) = match run.response_headers(head, end_of_stream).await {
        Ok((head, None)) => (head, body),
        Ok((head, Some(answer))) => {
            record.detail = "plugin_local_reply";
            run.update_outcome(|outcome| {
                outcome.detail = record.detail;
                outcome.plugin_details = answer.details.clone();
            });
            (head, local::body(answer.body.clone()))
        }
        Err(Stopped::Failed(response)) => {
            record.detail = "plugin_failure";
            record.plugin_phase = run.failed_phase().unwrap_or("-");
            let response = as_client_gets(*response, record.grpc);
            record_outcome(run, record);
            run.set_final_response(response.status().as_u16(), Box::default());
            return response;
        }
        Err(Stopped::Reset) => return plugin_reset(run, record),
        // The phase returns a plugin's local reply as `Ok((head, Some(answer)))`; this arm
        // treats a stop in that form alike.
        Err(Stopped::Local(_, answer)) => (
            Box::new(plugins::local_reply_head(&answer)),
            local::body(answer.body.clone()),
        ),
    };
    if let Some(status) = head
        .pseudo(Pseudo::Status)
        .and_then(|value| StatusCode::from_bytes(value).ok())
    {
        parts.status = status;
    }
    // Plugins that run later read the head as it went downstream; without them, it goes
    // downstream with no copy.
    if run.reads_response_head_later() {
        parts.headers = head.clone_headers();
        run.set_final_response(parts.status.as_u16(), head);
    } else {
        parts.headers = head.into_headers();
        run.set_final_status(parts.status.as_u16());
    }
    drop(guard);
    Response::from_parts(parts, plugins::filter_response_body(body, shared))
}

/// Fault injection and the route's action.
async fn act(
    request: Request<UpstreamBody>,
    route: &Route,
    snapshot: &Snapshot,
    downstream: &Downstream,
    authority: &str,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    if let Some(fault) = &route.fault {
        if let Some((percent, delay)) = fault.delay {
            if chance(percent) {
                record.detail = "fault_delay";
                tokio::time::sleep(delay).await;
            }
        }
        if let Some((percent, status)) = fault.abort {
            if chance(percent) {
                return refuse(Refusal::Fault { status }, record);
            }
        }
    }

    let answer = match &route.action {
        Action::DirectResponse(direct) => {
            record.detail = "direct_response";
            Ok(local::direct_response(direct))
        }
        Action::Redirect(redirect) => {
            record.detail = "redirect";
            local::redirect(
                redirect,
                &route.matcher.path,
                request.uri(),
                authority,
                downstream.scheme(),
            )
        }
        Action::Forward(forward) => match snapshot.forwards.get(&route.name) {
            Some(resolved) => {
                let limits = RequestLimits {
                    max_body_bytes: snapshot.config.server.max_request_body_bytes,
                };
                forward::forward(
                    request, forward, resolved, downstream, authority, limits, record,
                )
                .await
            }
            None => Err(Refusal::NoCluster),
        },
    };
    answer.unwrap_or_else(|refusal| refuse(refusal, record))
}

/// The request facts plugins read as properties, made in the allocation their contexts share.
fn stream_info(
    routed: &Routed<'_>,
    downstream: &Downstream,
    record: &AccessRecord,
    snapshot: &Snapshot,
) -> Arc<StreamInfo> {
    let route = routed.route;
    let cluster_name = snapshot
        .forwards
        .get(&route.name)
        .and_then(|forward| forward.targets.first())
        .map(|target| target.cluster.name.clone());
    crate::arc!(StreamInfo {
        request_id: record.request_id.clone(),
        started: std::time::SystemTime::now(),
        protocol: match routed.request.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        downstream_remote: downstream.remote,
        downstream_local: downstream.local,
        connection_id: downstream.connection_id,
        tls_version: downstream.tls.as_ref().and_then(|tls| tls.version),
        mtls: downstream
            .tls
            .as_ref()
            .is_some_and(|tls| tls.peer_certificate),
        server_name: downstream
            .tls
            .as_ref()
            .and_then(|tls| tls.server_name.clone()),
        route_name: record.route.clone(),
        cluster_name,
        grpc: record.grpc,
        virtual_host: routed.virtual_host.clone(),
        tls: downstream.tls.clone(),
        outcome: Default::default(),
        filter_state: Default::default(),
        request_headers: Default::default(),
        response_headers: Default::default(),
        response_status: Default::default(),
        trace: record.trace.clone(),
    })
}

/// The host a request is for, made canonical: `authority` (`host[:port]`) is what plugins
/// see as `:authority` and the upstream as `Host`; its host, what routing matches, is its
/// beginning (one string for both).
struct CanonicalHost {
    /// ASCII: the client's own bytes, shared, when its `Host` was canonical already (nearly
    /// every client's is), else a canonical copy.
    authority: HeaderValue,
    host_len: usize,
}

impl CanonicalHost {
    #[allow(unsafe_code)] // read on every request; its bytes were text when it was made
    fn authority(&self) -> &str {
        // SAFETY: every `CanonicalHost` is made by `canonical_authority`, whose value holds
        // the bytes of a `&str` (the `Host` value is used only when its bytes equal it).
        unsafe { std::str::from_utf8_unchecked(self.authority.as_bytes()) }
    }

    fn host(&self) -> &str {
        &self.authority()[..self.host_len]
    }
}

/// Checks the request's host and path and makes both canonical, before anything reads
/// them: routing, plugins, the upstream.
///
/// The host comes from the target's authority (absolute-form HTTP/1.1, HTTP/2's
/// `:authority`), else the `Host` header. Two `Host` headers are refused (RFC 9112 §3.2), and
/// so is a `Host` that names another host than the target's authority: RFC 9112 lets an
/// origin ignore `Host` then, but the gateway's upstreams may read it, and two names in one
/// request is how one component is made to route what another authorizes. The request's URI
/// gets the canonical path, its query untouched.
fn canonical_target<B>(
    request: &mut Request<B>,
    settings: &Normalization,
) -> Result<CanonicalHost, Refusal> {
    let mut host_headers = request.headers().get_all(http::header::HOST).iter();
    let host_header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(Refusal::DuplicateHost);
    }
    let host_header = match host_header {
        Some(value) => Some((value.to_str().map_err(|_| Rejection::InvalidHost)?, value)),
        None => None,
    };
    let canonical = match (request.uri().authority(), host_header) {
        (Some(target), header) => {
            let canonical = canonical_authority(target.as_str(), None, settings)?;
            if let Some((header, _)) = header {
                if normalize::host(header, settings)? != canonical.host() {
                    return Err(Refusal::HostMismatch);
                }
            }
            canonical
        }
        (None, Some((header, value))) if !header.is_empty() => {
            canonical_authority(header, Some(value), settings)?
        }
        (None, _) => return Err(Refusal::MissingHost),
    };
    if let Some(uri) = canonical_uri(request.uri(), settings)? {
        *request.uri_mut() = uri;
    }
    Ok(canonical)
}

/// `header`: the `Host` value `authority` was read from, whose bytes a canonical authority
/// then shares.
fn canonical_authority(
    authority: &str,
    header: Option<&HeaderValue>,
    settings: &Normalization,
) -> Result<CanonicalHost, Rejection> {
    // Nearly every client sends its authority canonical already: one pass, and no copy
    // when it came as `Host`.
    if let Some(host_len) = normalize::canonical_host_len(authority) {
        let authority = match header {
            Some(header) if header.as_bytes() == authority.as_bytes() => header.clone(),
            _ => HeaderValue::from_str(authority).map_err(|_| Rejection::InvalidHost)?,
        };
        return Ok(CanonicalHost {
            authority,
            host_len,
        });
    }
    let mut canonical = normalize::host(authority, settings)?;
    let host_len = canonical.len();
    if let Some(port) = normalize::port(authority) {
        canonical.push(':');
        canonical.push_str(port);
    }
    Ok(CanonicalHost {
        authority: HeaderValue::from_maybe_shared(Bytes::from(canonical))
            .map_err(|_| Rejection::InvalidHost)?,
        host_len,
    })
}

/// The URI with its path made canonical; `None` when it already is (the common case, which
/// allocates nothing).
fn canonical_uri(
    uri: &http::Uri,
    settings: &Normalization,
) -> Result<Option<http::Uri>, Rejection> {
    let path = match normalize::path(uri.path(), settings)? {
        Cow::Borrowed(_) => return Ok(None),
        Cow::Owned(path) => path,
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| Rejection::InvalidPath)?);
    http::Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| Rejection::InvalidPath)
}

/// The URI of a `:path` a plugin set: an origin-form target, made canonical.
fn plugin_uri(path_and_query: &str, settings: &Normalization) -> Result<http::Uri, Rejection> {
    if !path_and_query.starts_with('/') {
        return Err(Rejection::InvalidPath);
    }
    let uri: http::Uri = path_and_query.parse().map_err(|_| Rejection::InvalidPath)?;
    Ok(canonical_uri(&uri, settings)?.unwrap_or(uri))
}

/// The size of the request head as HTTP/1.1 would write it: request line and headers.
fn head_size<B>(request: &Request<B>) -> usize {
    let line = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len())
        + 12;
    request.headers().iter().fold(line, |size, (name, value)| {
        size + name.as_str().len() + value.len() + 4
    }) + 2
}

fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::random::<f64>() * 100.0 < percent)
}

/// How long a response took, for logs.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str, hosts: &[&str]) -> Result<CanonicalHost, Refusal> {
        let mut request = Request::builder().uri(uri);
        for host in hosts {
            request = request.header(http::header::HOST, *host);
        }
        let mut request = request.body(()).unwrap();
        canonical_target(&mut request, &Normalization::default())
    }

    #[test]
    fn a_canonical_host_is_the_clients_own_bytes() {
        let mut request = Request::builder()
            .uri("/a")
            .header(http::header::HOST, "shop.example:8080")
            .body(())
            .unwrap();
        let target = canonical_target(&mut request, &Normalization::default()).unwrap();
        assert_eq!(target.authority(), "shop.example:8080");
        assert_eq!(target.host(), "shop.example");
        // Shared, not copied: the same bytes as the request's `Host`.
        let host = request.headers()[http::header::HOST].as_bytes();
        assert_eq!(target.authority().as_ptr(), host.as_ptr());
    }

    #[test]
    fn hosts_are_made_canonical_from_the_header_or_the_target() {
        let made = target("/", &["Shop.Example.:8080"]).unwrap();
        assert_eq!(
            (made.authority(), made.host()),
            ("shop.example:8080", "shop.example")
        );
        let made = target("http://API.example/x", &[]).unwrap();
        assert_eq!(
            (made.authority(), made.host()),
            ("api.example", "api.example")
        );
        let made = target("http://api.example/x", &["API.example"]).unwrap();
        assert_eq!(made.authority(), "api.example");
        assert!(matches!(
            target("http://api.example/x", &["shop.example"]),
            Err(Refusal::HostMismatch)
        ));
        assert!(matches!(
            target("/", &["a.example", "a.example"]),
            Err(Refusal::DuplicateHost)
        ));
        assert!(matches!(target("/", &[]), Err(Refusal::MissingHost)));
    }
}
