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
//! The plugin chain phases are where the proxy-wasm runtime hooks in; until it does, the
//! request goes straight from the route match to the fault and the action.

mod access_log;
mod forward;
pub mod headers;
mod local;
pub mod plugins;
mod request_body;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

use std::borrow::Cow;

use crate::config::{Action, Normalization};
use crate::routing::normalize::{self, Rejection};
use crate::routing::{NoMatch, RequestHead};
use crate::server::body::{MalformedBody, ReadTimeout};
use crate::snapshot::Snapshot;
use crate::tls::TlsInfo;
use crate::upstream::{BoxError, UpstreamBody};
use crate::wasm::header_map::{Pseudo, PseudoHeaderMap};
use crate::wasm::host::StreamInfo;
pub use access_log::{response_details, AccessRecord, Redaction, ResponseDetails};
use http_body_util::{BodyExt, Limited};
use plugins::{PluginRun, SharedRun, Stopped};
use request_body::RequestStop;

/// The body of every response the gateway sends downstream.
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// What the server knows about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub listener: Arc<str>,
    pub connection_id: u64,
    pub remote: SocketAddr,
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
/// a stream a plugin reset, which gets none.
pub async fn handle(
    mut request: Request<Incoming>,
    snapshot: Arc<Snapshot>,
    downstream: Arc<Downstream>,
) -> Result<Response<ResponseBody>, StreamReset> {
    let started = Instant::now();
    // Identity is set by authentication plugins only: a client's copy never gets through.
    headers::remove_reserved(request.headers_mut());
    // Hop-by-hop headers, and those the client's `Connection` names, go before any plugin
    // runs: removed later, a client could name the headers a plugin adds (the consumer
    // identity, a transformer's header) and have the gateway strip them for it.
    let upgrade = request.version() == http::Version::HTTP_11
        && headers::is_upgrade_request(request.headers());
    headers::remove_hop_by_hop(request.headers_mut(), upgrade);
    let request_id = headers::ensure_request_id(request.headers_mut());
    let mut record = AccessRecord::new(
        &request,
        &downstream,
        request_id.clone(),
        started,
        snapshot.access_log_redaction.clone(),
    );

    let response = route_and_act(request, &snapshot, &downstream, &mut record).await;
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
    Ok(access_log::finish_on_body_end(response, record))
}

async fn route_and_act(
    mut request: Request<Incoming>,
    snapshot: &Snapshot,
    downstream: &Downstream,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    // hyper enforces the limit for heads of 8 KiB and more (its smallest buffer); smaller
    // configured limits are checked here.
    if head_size(&request) > snapshot.config.server.max_request_header_bytes {
        record.detail = "request_headers_too_large";
        return local::reply(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        );
    }
    let normalization = &snapshot.config.server.normalization;
    let CanonicalHost { host, authority } = match canonical_target(&mut request, normalization) {
        Ok(target) => target,
        Err(refusal) => {
            record.detail = refusal.detail;
            return local::reply(StatusCode::BAD_REQUEST, &format!("{}\n", refusal.message));
        }
    };
    let Some(listener) = snapshot.listeners.get(&downstream.listener) else {
        record.detail = "no_listener";
        return local::reply(StatusCode::NOT_FOUND, "no routes on this listener\n");
    };
    let path = request.uri().path();
    let head = RequestHead {
        host: &host,
        path,
        query: request.uri().query(),
        method: request.method(),
        headers: request.headers(),
    };
    let matched = match listener.routes.find(&head) {
        Ok(matched) => matched,
        Err(NoMatch::UnknownHost) => {
            record.detail = "unknown_host";
            return local::reply(
                StatusCode::NOT_FOUND,
                &format!("no virtual host for {host:?}\n"),
            );
        }
        Err(NoMatch::NoRoute) => {
            record.detail = "no_route";
            return local::reply(StatusCode::NOT_FOUND, &format!("no route for {path:?}\n"));
        }
    };
    let route = matched.route;
    record.route = route.name.as_str().into();

    let chain = snapshot
        .chains
        .get(&route.name)
        .filter(|chain| !chain.is_empty())
        .cloned();
    let Some(chain) = chain else {
        let request = request.map(|body| downstream_body(body, &snapshot.config.server));
        return act(request, route, snapshot, downstream, &authority, record).await;
    };

    // Request phase: the plugin chain, in order.
    let wait_limit = match &route.action {
        Action::Forward(forward) => forward.timeout,
        _ => Duration::from_secs(15),
    };
    let info = stream_info(
        &request,
        downstream,
        record,
        route,
        &matched.virtual_host.name,
        snapshot,
    );
    let mut run = PluginRun::new(&chain, info, wait_limit);
    run.limit_buffering(snapshot.config.server.max_buffered_body_bytes);
    let (mut parts, body) = request.into_parts();
    // The plugins work on the request's own header map, moved in and back.
    let head = PseudoHeaderMap::request(
        &parts.method,
        downstream.scheme(),
        &authority,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        std::mem::take(&mut parts.headers),
    );
    let end_of_stream = http_body::Body::is_end_stream(&body);
    // What the plugins changed of the head; a pseudo-header they left as it was costs no copy.
    let (new_authority, new_path) = match run.request_headers(head, end_of_stream).await {
        Ok(mut head) => {
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
            let changes = (
                changed(Pseudo::Authority, &authority),
                changed(Pseudo::Path, old_path),
            );
            parts.headers = head.take_headers();
            changes
        }
        Err(stop) => return plugin_stop(stop, plugins::share(run), record).await,
    };
    let path_changed = new_path.is_some();
    let authority_changed = new_authority.is_some();
    // What a plugin sets is made canonical exactly like what a client sends, so that a
    // plugin cannot route a request where the client could not. A path or authority that
    // cannot be made canonical is answered 400, as it would be from the client: plugins
    // build these from the request (a rewrite of its path, a header's value), so the fault
    // is the request's, and a 5xx would make hostile input look like a gateway failure.
    let mut host = host;
    let mut authority = authority;
    if authority_changed {
        let new_authority = new_authority.as_deref().unwrap_or_default();
        match canonical_authority(new_authority, normalization) {
            Ok(canonical) => (host, authority) = (canonical.host, canonical.authority),
            Err(rejection) => {
                record.detail = "invalid_plugin_authority";
                let message = format!("a plugin set an invalid :authority: {rejection}\n");
                let response = local::reply(StatusCode::BAD_REQUEST, &message);
                return plugin_response(plugins::share(run), response, record).await;
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&authority) {
        parts.headers.insert(http::header::HOST, value);
    }
    if path_changed {
        let new_path = new_path.as_deref().unwrap_or_default();
        match plugin_uri(new_path, normalization) {
            Ok(uri) => parts.uri = uri,
            Err(rejection) => {
                record.detail = "invalid_plugin_path";
                let message = format!("a plugin set an invalid :path: {rejection}\n");
                let response = local::reply(StatusCode::BAD_REQUEST, &message);
                return plugin_response(plugins::share(run), response, record).await;
            }
        }
    }

    // A changed :path or :authority selects the route again, as Envoy clears its route cache.
    let mut route = route;
    if path_changed || authority_changed {
        let head = RequestHead {
            host: &host,
            path: parts.uri.path(),
            query: parts.uri.query(),
            method: &parts.method,
            headers: &parts.headers,
        };
        match listener.routes.find(&head) {
            Ok(rematched) => {
                route = rematched.route;
                record.route = route.name.as_str().into();
            }
            Err(_) => {
                record.detail = "no_route_after_plugin";
                let response = local::reply(
                    StatusCode::NOT_FOUND,
                    &format!("no route for {:?}\n", parts.uri.path()),
                );
                return plugin_response(plugins::share(run), response, record).await;
            }
        }
    }

    // Request body: streamed through the plugins that read it, piece by piece, while the
    // upstream request starts with the head (see `request_body`).
    let server = &snapshot.config.server;
    let streams_through_plugins = !end_of_stream && run.reads_request_stream();
    let passes_whole_first = !end_of_stream
        && run.reads_request_body()
        && replays_small_body(route, snapshot, &parts.headers);
    if run.reads_request_body() && !end_of_stream {
        if declared_length(&parts.headers)
            .is_some_and(|length| length > server.max_request_body_bytes)
        {
            record.detail = "request_body_too_large";
            return close_after(local::reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            ));
        }
        // A plugin may change the body's length, and the head goes before the body has
        // passed: the upstream gets no length (HTTP/1.1 chunked, HTTP/2 framed).
        parts.headers.remove(http::header::CONTENT_LENGTH);
        parts.headers.remove(http::header::TRANSFER_ENCODING);
    }
    let run = plugins::share(run);
    let (body, body_stop): (UpstreamBody, _) = if end_of_stream {
        let empty = http_body_util::Empty::new().map_err(|never| match never {});
        (empty.boxed(), None)
    } else if passes_whole_first {
        // A small body (by its declared length) on a route that may send it again (retries,
        // a mirror) goes through the plugins whole before the upstream request starts, so
        // that it leaves with its final length and can be replayed, as Envoy buffers bodies
        // for retries.
        let (body, stopped) =
            request_body::through_plugins(downstream_body(body, server), run.clone());
        match body.collect().await {
            Ok(collected) => {
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
                (body, None)
            }
            Err(_) => match stopped.await {
                Ok(stop) => return request_stopped(stop, run, record).await,
                Err(_) => return malformed_request_body(record),
            },
        }
    } else if streams_through_plugins {
        let (body, stop) =
            request_body::through_plugins(downstream_body(body, server), run.clone());
        (body, Some(stop))
    } else {
        (downstream_body(body, server), None)
    };
    let request = http::Request::from_parts(parts, body);
    let outcome = match body_stop {
        None => Ok(act(request, route, snapshot, downstream, &authority, record).await),
        Some(stopped) => {
            let upstream = act(request, route, snapshot, downstream, &authority, record);
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

/// Answers a request whose body the plugins, or the body's limits, stopped.
async fn request_stopped(
    stop: RequestStop,
    run: SharedRun,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    match stop {
        RequestStop::Plugin(stop) => plugin_stop(stop, run, record).await,
        RequestStop::Refused(detail, response) => {
            record.detail = detail;
            run.lock()
                .await
                .set_final_response(response.status().as_u16(), PseudoHeaderMap::default());
            close_after(response)
        }
    }
}

/// Whether the request's body is small by its declared length and the route may send it
/// more than once.
fn replays_small_body(
    route: &crate::config::Route,
    snapshot: &Snapshot,
    headers: &http::HeaderMap,
) -> bool {
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
fn downstream_body(body: Incoming, server: &crate::config::ServerSettings) -> UpstreamBody {
    Limited::new(
        ReadTimeout::new(
            body.map_err(|error| -> BoxError { Box::new(MalformedBody(error)) }),
            server.body_read_timeout,
        ),
        server.max_request_body_bytes as usize,
    )
    .boxed()
}

/// The answer to a request body that stopped arriving: `408`, and the connection closes
/// (an HTTP/1.1 connection cannot be reused with the rest of that body still due).
fn request_body_timeout(record: &mut AccessRecord) -> Response<ResponseBody> {
    record.detail = "request_body_timeout";
    close_after(local::reply(
        StatusCode::REQUEST_TIMEOUT,
        "the request body stopped arriving\n",
    ))
}

/// The answer to a request whose body could not be read to its end: `400`, and the
/// connection closes.
fn malformed_request_body(record: &mut AccessRecord) -> Response<ResponseBody> {
    record.detail = "downstream_body_error";
    close_after(local::reply(
        StatusCode::BAD_REQUEST,
        "could not read the request body\n",
    ))
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
            run.set_final_response(response.status().as_u16(), PseudoHeaderMap::default());
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
    shared: SharedRun,
    response: Response<ResponseBody>,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    // Response plugins see a local answer to a gRPC call in the form the client gets.
    let response = as_client_gets(response, record.grpc);
    let mut run = shared.lock().await;
    record_outcome(&run, record);
    let (mut parts, body) = response.into_parts();
    // The plugins work on the response's own header map, moved in and back.
    let mut head = PseudoHeaderMap::response(parts.status, std::mem::take(&mut parts.headers));
    let end_of_stream = http_body::Body::is_end_stream(&body);
    let body = match run.response_headers(&mut head, end_of_stream).await {
        Ok(None) => body,
        Ok(Some(answer)) => {
            record.detail = "plugin_local_reply";
            run.update_outcome(|outcome| {
                outcome.detail = record.detail;
                outcome.plugin_details = answer.details.clone();
            });
            local::body(answer.body.clone())
        }
        Err(Stopped::Failed(response)) => {
            record.detail = "plugin_failure";
            record.plugin_phase = run.failed_phase().unwrap_or("-");
            let response = as_client_gets(*response, record.grpc);
            record_outcome(&run, record);
            run.set_final_response(response.status().as_u16(), PseudoHeaderMap::default());
            return response;
        }
        Err(Stopped::Reset) => return plugin_reset(&mut run, record),
        Err(Stopped::Local(_, answer)) => local::body(answer.body.clone()),
    };
    if let Some(status) = head
        .pseudo(Pseudo::Status)
        .and_then(|value| StatusCode::from_bytes(value).ok())
    {
        parts.status = status;
    }
    // Later phases of every plugin read the head as it went downstream.
    parts.headers = head.clone_headers();
    run.set_final_response(parts.status.as_u16(), head);
    drop(run);
    Response::from_parts(parts, plugins::filter_response_body(body, shared))
}

/// Fault injection and the route's action.
async fn act(
    request: Request<UpstreamBody>,
    route: &crate::config::Route,
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
                record.detail = "fault_abort";
                return local::reply(status, "fault filter abort\n");
            }
        }
    }

    match &route.action {
        Action::DirectResponse(direct) => {
            record.detail = "direct_response";
            local::direct_response(direct)
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
            None => {
                record.detail = "no_cluster";
                local::reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no cluster for this route\n",
                )
            }
        },
    }
}

/// The request facts plugins read as properties.
fn stream_info(
    request: &Request<Incoming>,
    downstream: &Downstream,
    record: &AccessRecord,
    route: &crate::config::Route,
    virtual_host_name: &str,
    snapshot: &Snapshot,
) -> StreamInfo {
    let cluster_name = snapshot
        .forwards
        .get(&route.name)
        .and_then(|forward| forward.targets.first())
        .map(|target| target.cluster.name.clone());
    StreamInfo {
        request_id: record.request_id.clone(),
        started: std::time::SystemTime::now(),
        protocol: match request.version() {
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
        virtual_host_name: virtual_host_name.to_string(),
        tls: downstream.tls.clone(),
        outcome: Default::default(),
        filter_state: Default::default(),
        request_headers: Default::default(),
        response_headers: Default::default(),
        response_status: Default::default(),
    }
}

/// The host a request is for, made canonical: `host` is what routing matches, `authority`
/// (`host[:port]`) what plugins see as `:authority` and the upstream as `Host`.
struct CanonicalHost {
    host: String,
    authority: String,
}

/// Why a request's target was refused before routing (always 400).
struct Refusal {
    detail: &'static str,
    message: String,
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Refusal {
            detail: rejection.reason(),
            message: rejection.to_string(),
        }
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
        return Err(Refusal {
            detail: "duplicate_host",
            message: "the request has more than one Host header".into(),
        });
    }
    let host_header = match host_header {
        Some(value) => Some(value.to_str().map_err(|_| Rejection::InvalidHost)?),
        None => None,
    };
    let canonical = match (request.uri().authority(), host_header) {
        (Some(target), header) => {
            let canonical = canonical_authority(target.as_str(), settings)?;
            if let Some(header) = header {
                if normalize::host(header, settings)? != canonical.host {
                    return Err(Refusal {
                        detail: "host_mismatch",
                        message: "the Host header names another host than the request target"
                            .into(),
                    });
                }
            }
            canonical
        }
        (None, Some(header)) if !header.is_empty() => canonical_authority(header, settings)?,
        (None, _) => {
            return Err(Refusal {
                detail: "missing_host",
                message: "the request names no host".into(),
            })
        }
    };
    if let Some(uri) = canonical_uri(request.uri(), settings)? {
        *request.uri_mut() = uri;
    }
    Ok(canonical)
}

fn canonical_authority(
    authority: &str,
    settings: &Normalization,
) -> Result<CanonicalHost, Rejection> {
    let host = normalize::host(authority, settings)?;
    let authority = match normalize::port(authority) {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    Ok(CanonicalHost { host, authority })
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
