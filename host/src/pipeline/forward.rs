//! The `forward` action: from the downstream request to an upstream endpoint and back, with
//! rewrites, weighted splits, timeouts, retries, mirroring and upgrade tunnels.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{headers, local, AccessRecord, Downstream, RequestLimits, ResponseBody};
use crate::config::{Forward, RetryConditions};
use crate::server::body::{caused_by, BodyReadTimeout, MalformedBody};
use crate::snapshot::ResolvedForward;
use crate::telemetry::metrics::{metrics, UpstreamErrorKind};
use crate::upstream::{BoxError, Cluster, PickError, UpstreamBody};

/// Bodies up to this size are buffered when a retry or a mirror may need to send them again.
const REPLAY_BUFFER_LIMIT: u64 = 64 * 1024;

/// The request as it will be sent upstream, minus the endpoint.
struct Outgoing {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
}

/// The request body: streamed once, or buffered so that it can be sent again.
enum RequestBody {
    Stream(Option<UpstreamBody>),
    Replayable(Bytes),
}

impl RequestBody {
    fn take(&mut self) -> Option<UpstreamBody> {
        match self {
            Self::Stream(body) => body.take(),
            Self::Replayable(bytes) => Some(full(bytes.clone())),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Self::Replayable(_))
    }
}

fn full(bytes: Bytes) -> UpstreamBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A failed try, classified as the retry conditions and the metrics see it.
#[derive(Debug)]
enum TryError {
    Connect(String),
    Timeout,
    Reset(String),
    BodyTooLarge,
    /// The client stopped sending the request body (`server.body_read_timeout`).
    BodyTimeout,
    /// The client's request body broke its framing.
    MalformedBody,
    NoEndpoint(PickError),
}

pub(super) async fn forward(
    mut request: Request<UpstreamBody>,
    forward: &Forward,
    resolved: &ResolvedForward,
    downstream: &Downstream,
    authority: &str,
    limits: RequestLimits,
    record: &mut AccessRecord,
) -> Response<ResponseBody> {
    let content_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if content_length.is_some_and(|length| length > limits.max_body_bytes) {
        record.detail = "request_body_too_large";
        return local::reply(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }

    let target = resolved.choose();
    let cluster = &target.cluster;
    record.cluster = cluster.name.clone();

    let is_upgrade =
        request.version() == Version::HTTP_11 && headers::is_upgrade_request(request.headers());
    let downstream_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut request));

    let (parts, body) = request.into_parts();
    let mut outgoing = Outgoing {
        method: parts.method,
        path_and_query: rewrite_path(&parts.uri, forward),
        headers: parts.headers,
    };
    headers::remove_hop_by_hop(&mut outgoing.headers, is_upgrade);
    headers::set_forwarded(
        &mut outgoing.headers,
        downstream.remote.ip(),
        downstream.scheme(),
        authority,
    );
    let upstream_host = forward.rewrite_host.as_deref().unwrap_or(authority);
    match HeaderValue::from_str(upstream_host) {
        Ok(host) => {
            outgoing.headers.insert(header::HOST, host);
        }
        Err(_) => return local::reply(StatusCode::BAD_REQUEST, "invalid host\n"),
    }

    // Buffer small bodies when they may be sent more than once; stream everything else.
    let has_body = !(http_body::Body::is_end_stream(&body) || content_length == Some(0));
    let wants_replay = forward.retries.is_some() || resolved.mirror.is_some();
    let mut body = if !has_body {
        RequestBody::Replayable(Bytes::new())
    } else if wants_replay
        && !is_upgrade
        && content_length.is_some_and(|length| length <= REPLAY_BUFFER_LIMIT)
    {
        // The caller already bounds the body; its declared length is within the buffer limit.
        match body.collect().await {
            Ok(collected) => RequestBody::Replayable(collected.to_bytes()),
            Err(error) if caused_by::<BodyReadTimeout>(error.as_ref()) => {
                return super::request_body_timeout(record);
            }
            Err(error) => {
                record.detail = "downstream_body_error";
                return local::reply(
                    StatusCode::BAD_REQUEST,
                    &format!("could not read the request body: {error}\n"),
                );
            }
        }
    } else {
        RequestBody::Stream(Some(body))
    };

    if let (Some(mirror_cluster), Some(mirror)) = (&resolved.mirror, &forward.mirror) {
        if let RequestBody::Replayable(bytes) = &body {
            if super::chance(mirror.percent) {
                send_mirror(
                    mirror_cluster.clone(),
                    &outgoing,
                    upstream_host,
                    bytes.clone(),
                );
            }
        }
    }

    let deadline = Instant::now() + forward.timeout;
    let max_tries = 1 + forward
        .retries
        .as_ref()
        .map_or(0, |retries| retries.attempts);
    let per_try_timeout = forward
        .retries
        .as_ref()
        .and_then(|retries| retries.per_try_timeout);
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        record.attempts = attempt;
        let try_deadline = match per_try_timeout {
            Some(per_try) => deadline.min(Instant::now() + per_try),
            None => deadline,
        };
        let result = try_once(
            cluster,
            &target.endpoints,
            &outgoing,
            body.take(),
            try_deadline,
            record,
        )
        .await;
        let retry_allowed = attempt < max_tries && body.replayable() && Instant::now() < deadline;
        let conditions = forward.retries.as_ref().map(|retries| &retries.conditions);
        match (&result, conditions) {
            (Ok(response), Some(conditions))
                if retry_allowed && retry_on_status(conditions, response.status()) =>
            {
                tracing::debug!(route = %resolved.route, status = %response.status(), attempt, "retrying");
            }
            (Err(error), Some(conditions))
                if retry_allowed && retry_on_error(conditions, error) =>
            {
                tracing::debug!(route = %resolved.route, ?error, attempt, "retrying");
            }
            _ => break result,
        }
        // A short jittered back-off, as Envoy's default 25 ms base interval.
        let backoff = Duration::from_millis(25 * u64::from(attempt) + rand::random::<u64>() % 25);
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
    };

    match outcome {
        Ok(mut response) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(downstream_upgrade) = downstream_upgrade {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(downstream_upgrade, upstream_upgrade));
                }
            } else {
                headers::remove_hop_by_hop(response.headers_mut(), false);
            }
            response.map(|body| {
                body.map_err(|error| -> BoxError { Box::new(error) })
                    .boxed()
            })
        }
        Err(TryError::BodyTimeout) => super::request_body_timeout(record),
        Err(TryError::MalformedBody) => super::malformed_request_body(record),
        Err(error) => {
            let (status, detail, kind) = match &error {
                TryError::Connect(_) => (
                    StatusCode::BAD_GATEWAY,
                    "upstream_connect_failure",
                    Some(UpstreamErrorKind::Connect),
                ),
                TryError::Timeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    Some(UpstreamErrorKind::Timeout),
                ),
                TryError::Reset(_) => (
                    StatusCode::BAD_GATEWAY,
                    "upstream_reset",
                    Some(UpstreamErrorKind::Reset),
                ),
                TryError::BodyTooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_body_too_large",
                    None,
                ),
                TryError::BodyTimeout | TryError::MalformedBody => {
                    unreachable!("answered above")
                }
                TryError::NoEndpoint(PickError::NoHealthy) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_healthy_upstream",
                    Some(UpstreamErrorKind::NoHealthy),
                ),
                TryError::NoEndpoint(PickError::Overflow) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_overflow",
                    Some(UpstreamErrorKind::Overflow),
                ),
            };
            if let Some(kind) = kind {
                metrics().upstream_error(&cluster.name, kind);
            }
            record.detail = detail;
            tracing::debug!(route = %resolved.route, cluster = %cluster.name, ?error, "upstream request failed");
            let message = match &error {
                TryError::Connect(cause) | TryError::Reset(cause) => format!("{detail}: {cause}\n"),
                _ => format!("{detail}\n"),
            };
            local::reply(status, &message)
        }
    }
}

/// One try: pick an endpoint, send, and wait for the response headers until `deadline`.
async fn try_once(
    cluster: &Arc<Cluster>,
    endpoints: &[usize],
    outgoing: &Outgoing,
    body: Option<UpstreamBody>,
    deadline: Instant,
    record: &mut AccessRecord,
) -> Result<Response<Incoming>, TryError> {
    let guard = cluster.pick(endpoints).map_err(TryError::NoEndpoint)?;
    record.upstream = Some(guard.endpoint.clone());
    let uri: Uri = format!(
        "{}://{}{}",
        cluster.scheme(),
        guard.endpoint.address,
        outgoing.path_and_query
    )
    .parse()
    .map_err(|e: http::uri::InvalidUri| TryError::Reset(e.to_string()))?;
    let mut request =
        Request::new(body.unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed()));
    *request.method_mut() = outgoing.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = outgoing.headers.clone();
    if cluster.http2 {
        // HTTP/2 carries the host as `:authority`, taken from the URI.
        *request.version_mut() = Version::HTTP_2;
        request.headers_mut().remove(header::HOST);
    } else {
        *request.version_mut() = Version::HTTP_11;
    }

    let sent = tokio::time::timeout_at(deadline, cluster.client().request(request)).await;
    let result = match sent {
        Err(_) => Err(TryError::Timeout),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) if body_limit_exceeded(&error) => Err(TryError::BodyTooLarge),
        Ok(Err(error)) if caused_by::<BodyReadTimeout>(&error) => Err(TryError::BodyTimeout),
        Ok(Err(error)) if caused_by::<MalformedBody>(&error) => Err(TryError::MalformedBody),
        Ok(Err(error)) if error.is_connect() => Err(TryError::Connect(root_cause(&error))),
        Ok(Err(error)) => Err(TryError::Reset(root_cause(&error))),
    };
    match &result {
        Ok(response) if response.status().is_server_error() => guard.failure(),
        Ok(_) => guard.success(),
        Err(TryError::Connect(_) | TryError::Reset(_) | TryError::Timeout) => guard.failure(),
        Err(_) => {}
    }
    // The guard (the endpoint's active-request count) ends with the response headers; the
    // body streams on without holding the cluster's concurrency slot.
    result
}

fn retry_on_status(conditions: &RetryConditions, status: StatusCode) -> bool {
    let code = status.as_u16();
    (conditions.any_5xx && status.is_server_error())
        || (conditions.gateway_error && matches!(code, 502..=504))
        || (conditions.retriable_4xx && code == 409)
        || conditions.status_codes.contains(&code)
}

fn retry_on_error(conditions: &RetryConditions, error: &TryError) -> bool {
    match error {
        TryError::Connect(_) => {
            conditions.connect_failure || conditions.any_5xx || conditions.gateway_error
        }
        TryError::Reset(_) => conditions.reset || conditions.any_5xx || conditions.gateway_error,
        TryError::Timeout => conditions.any_5xx || conditions.gateway_error,
        TryError::NoEndpoint(_)
        | TryError::BodyTooLarge
        | TryError::BodyTimeout
        | TryError::MalformedBody => false,
    }
}

fn rewrite_path(uri: &Uri, forward: &Forward) -> String {
    let path = uri.path();
    let query = uri
        .query()
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    let path = match (&forward.rewrite_prefix, &forward.matched_prefix) {
        (Some(replacement), Some(matched)) => match path.strip_prefix(matched.as_str()) {
            Some(rest) => join_path(replacement, rest),
            None => path.to_string(),
        },
        _ => path.to_string(),
    };
    format!("{path}{query}")
}

/// Joins a rewritten prefix with the rest of the path without doubling or losing a slash.
fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.ends_with('/'), rest.starts_with('/')) {
        (true, true) => format!("{prefix}{}", &rest[1..]),
        (false, false) if !rest.is_empty() && !prefix.is_empty() => format!("{prefix}/{rest}"),
        _ if prefix.is_empty() && !rest.starts_with('/') => format!("/{rest}"),
        _ => format!("{prefix}{rest}"),
    }
}

fn body_limit_exceeded(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Sends a copy of the request to the mirror cluster and forgets it, as Envoy's request
/// mirroring does: the host gets a `-shadow` suffix and the answer is discarded.
fn send_mirror(cluster: Arc<Cluster>, outgoing: &Outgoing, host: &str, body: Bytes) {
    let all: Vec<usize> = (0..cluster.endpoints.len()).collect();
    let Ok(guard) = cluster.pick(&all) else {
        return;
    };
    let uri = format!(
        "{}://{}{}",
        cluster.scheme(),
        guard.endpoint.address,
        outgoing.path_and_query
    );
    let Ok(uri) = uri.parse::<Uri>() else { return };
    let mut request = Request::new(full(body));
    *request.method_mut() = outgoing.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = outgoing.headers.clone();
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (name, Some(port)),
        _ => (host, None),
    };
    let shadow_host = match port {
        Some(port) => format!("{name}-shadow:{port}"),
        None => format!("{name}-shadow"),
    };
    if let Ok(value) = HeaderValue::from_str(&shadow_host) {
        request.headers_mut().insert(header::HOST, value);
    }
    if cluster.http2 {
        *request.version_mut() = Version::HTTP_2;
        request.headers_mut().remove(header::HOST);
    }
    tokio::spawn(async move {
        let sent =
            tokio::time::timeout(Duration::from_secs(30), cluster.client().request(request)).await;
        match sent {
            Ok(Ok(response)) => {
                // Drain the answer so that the connection can be reused.
                let _ = response.into_body().collect().await;
                guard.success();
            }
            Ok(Err(error)) => {
                tracing::debug!(cluster = %cluster.name, %error, "mirror request failed");
            }
            Err(_) => tracing::debug!(cluster = %cluster.name, "mirror request timed out"),
        }
    });
}

/// Copies bytes both ways between an upgraded client connection and the upstream one.
async fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut downstream = hyper_util::rt::TokioIo::new(downstream);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths_without_doubling_slashes() {
        assert_eq!(join_path("/v1", "/orders"), "/v1/orders");
        assert_eq!(join_path("/v1/", "/orders"), "/v1/orders");
        assert_eq!(join_path("/v1", ""), "/v1");
        assert_eq!(join_path("/", ""), "/");
        assert_eq!(join_path("", "/x"), "/x");
        assert_eq!(join_path("", "x"), "/x");
        assert_eq!(join_path("/v1", "x"), "/v1/x");
    }

    #[test]
    fn retry_conditions_follow_envoy_names() {
        let gateway = RetryConditions {
            gateway_error: true,
            ..Default::default()
        };
        assert!(retry_on_status(&gateway, StatusCode::BAD_GATEWAY));
        assert!(!retry_on_status(
            &gateway,
            StatusCode::INTERNAL_SERVER_ERROR
        ));
        let any = RetryConditions {
            any_5xx: true,
            ..Default::default()
        };
        assert!(retry_on_status(&any, StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retry_on_error(&any, &TryError::Timeout));
        let connect = RetryConditions {
            connect_failure: true,
            ..Default::default()
        };
        assert!(retry_on_error(
            &connect,
            &TryError::Connect("refused".into())
        ));
        assert!(!retry_on_error(&connect, &TryError::Reset("reset".into())));
        let codes = RetryConditions {
            status_codes: vec![429],
            ..Default::default()
        };
        assert!(retry_on_status(&codes, StatusCode::TOO_MANY_REQUESTS));
    }
}
