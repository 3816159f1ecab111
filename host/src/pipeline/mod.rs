//! The per-request flow. Every request walks the same phases, drawn once here:
//!
//! ```text
//! accept → TLS (SNI, ALPN) → HTTP/1.1 or h2                      (server)
//!   → request id, host, route match ─────────── 404 if none     (routing)
//!   → request phase: plugin chain in order                      (proxy-wasm runtime)
//!   → fault injection (delay, abort)
//!   → route action: redirect | direct response | forward         (local, forward)
//!        forward: hop-by-hop removal, X-Forwarded-*, rewrite, split, endpoint,
//!                 timeout, retries, mirror, upgrade tunnel
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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

use crate::config::Action;
use crate::routing::{normalize_host, NoMatch, RequestHead};
use crate::snapshot::Snapshot;
use crate::tls::TlsInfo;
use crate::upstream::BoxError;
pub use access_log::AccessRecord;

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

/// Handles one request from start to finish; never fails (errors become responses).
pub async fn handle(
    mut request: Request<Incoming>,
    snapshot: Arc<Snapshot>,
    downstream: Arc<Downstream>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let request_id = headers::ensure_request_id(request.headers_mut());
    let mut record = AccessRecord::new(&request, &downstream, request_id.clone(), started);

    let mut response = route_and_act(request, &snapshot, &downstream, &mut record).await;

    response
        .headers_mut()
        .insert(&headers::X_REQUEST_ID, request_id);
    record.status = response.status().as_u16();
    Ok(access_log::finish_on_body_end(response, record))
}

async fn route_and_act(
    request: Request<Incoming>,
    snapshot: &Snapshot,
    downstream: &Downstream,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    // hyper enforces the limit for heads of 8 KiB and more (its smallest buffer); smaller
    // configured limits are checked here.
    if head_size(&request) > snapshot.config.server.max_request_header_bytes {
        record.detail = "request_headers_too_large";
        return local::reply(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large\n");
    }
    let Some(authority) = request_authority(&request) else {
        record.detail = "missing_host";
        return local::reply(StatusCode::BAD_REQUEST, "the request names no host\n");
    };
    let Some(listener) = snapshot.listeners.get(&downstream.listener) else {
        record.detail = "no_listener";
        return local::reply(StatusCode::NOT_FOUND, "no routes on this listener\n");
    };
    let host = normalize_host(&authority);
    let path = request.uri().path().to_string();
    let head = RequestHead {
        host: &host,
        path: &path,
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

    // Request phase: the plugin chain runs here.

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
                &authority,
                downstream.scheme(),
            )
        }
        Action::Forward(forward) => match snapshot.forwards.get(&route.name) {
            Some(resolved) => {
                let limits = RequestLimits {
                    max_body_bytes: snapshot.config.server.max_request_body_bytes,
                };
                forward::forward(
                    request, forward, resolved, downstream, &authority, limits, record,
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
    // Response phase: the plugin chain runs here, in reverse order, on the response above.
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form HTTP/1.1),
/// else the `Host` header.
fn request_authority(request: &Request<Incoming>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_string());
    }
    request
        .headers()
        .get(http::header::HOST)
        .and_then(|value: &HeaderValue| value.to_str().ok())
        .filter(|host| !host.is_empty())
        .map(str::to_string)
}

/// The size of the request head as HTTP/1.1 would write it: request line and headers.
fn head_size<B>(request: &Request<B>) -> usize {
    let line = request.method().as_str().len() + request.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    request
        .headers()
        .iter()
        .fold(line, |size, (name, value)| size + name.as_str().len() + value.len() + 4)
        + 2
}

fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::random::<f64>() * 100.0 < percent)
}

/// How long a response took, for logs.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
