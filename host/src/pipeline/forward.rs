//! The `forward` action: from the downstream request to an upstream endpoint and back, with
//! rewrites, weighted splits, timeouts, retries, mirroring and upgrade tunnels.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use super::refusal::Refusal;
use super::{headers, AccessRecord, Downstream, RequestLimits, ResponseBody};
use crate::body::{caused_by, BodyReadTimeout, MalformedBody};
use crate::config::EscapedSlashesAction;
use crate::config::{Forward, HashOn, Normalization, RegexRewrite, RetryConditions};
use crate::routing::normalize::{self, Rejection};
use crate::snapshot::{ResolvedForward, Target};
use crate::upstream::{
    empty_body, hash_key, tls_failure, Cluster, Outcome, PickError, PooledBody, UpstreamBody,
    UpstreamError,
};

/// Bodies up to this size are buffered when a retry or a mirror may need to send them again.
pub(super) const REPLAY_BUFFER_LIMIT: u64 = 64 * 1024;

/// Whether the route may send a request more than once (retries, or a mirror).
pub(super) fn may_send_again(forward: &Forward, resolved: &ResolvedForward) -> bool {
    forward.retries.is_some() || resolved.mirror.is_some()
}

/// The request as it will be sent upstream, minus the endpoint.
struct Outgoing {
    method: Method,
    /// The upstream path and query (origin form).
    uri: Uri,
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
            // An empty body boxes nothing (it has no size): no allocation for a GET.
            Self::Replayable(bytes) if bytes.is_empty() => None,
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
    /// TLS with the endpoint failed: its certificate was refused, or it refused ours.
    Tls(String),
    Timeout,
    Reset(String),
    /// The upstream provably did not process the request: the connection closed before the
    /// request was written, or an HTTP/2 stream was refused (REFUSED_STREAM). Otherwise a
    /// reset.
    Unsent(String),
    BodyTooLarge,
    /// The client stopped sending the request body (`server.body_read_timeout`).
    BodyTimeout,
    /// The client's request body broke its framing.
    MalformedBody,
    NoEndpoint(PickError),
}

/// Forwards the request and returns the upstream's response, or why there is none: the
/// outgoing request, its body, a mirrored copy, the tries with their retries, the response.
pub(super) async fn forward(
    mut request: Request<UpstreamBody>,
    forward: &Forward,
    resolved: &ResolvedForward,
    downstream: &Downstream,
    authority: &str,
    limits: RequestLimits,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, Refusal> {
    let content_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if content_length.is_some_and(|length| length > limits.max_body_bytes) {
        return Err(Refusal::BodyTooLarge);
    }

    let target = resolved.choose();
    record.cluster = target.cluster.name.clone();

    let is_upgrade =
        request.version() == Version::HTTP_11 && headers::is_upgrade_request(request.headers());
    let downstream_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut request));

    let (parts, body) = request.into_parts();
    let (mut outgoing, upstream_host) = outgoing(parts, forward, downstream, authority)?;
    let replay = may_send_again(forward, resolved) && !is_upgrade;
    let mut body = request_body(body, content_length, replay).await?;
    if let (Some(mirror_cluster), Some(mirror), RequestBody::Replayable(bytes)) =
        (&resolved.mirror, &forward.mirror, &body)
    {
        if super::chance(mirror.percent) {
            send_mirror(
                mirror_cluster.clone(),
                &outgoing,
                upstream_host,
                bytes.clone(),
            );
        }
    }

    let hash = request_hash(&target.cluster, &outgoing.headers, downstream.remote.ip());
    let sent = send_with_retries(
        target,
        &mut outgoing,
        &mut body,
        hash,
        forward,
        resolved,
        record,
    );
    match sent.await {
        Ok(response) => Ok(downstream_response(response, downstream_upgrade)),
        Err(error) => {
            tracing::debug!(route = %resolved.route, cluster = %target.cluster.name, ?error, "upstream request failed");
            record.upstream_transport_failure = error.transport_failure().map(Into::into);
            let refusal = error.into_refusal();
            if let Some(kind) = refusal.reason().upstream_error() {
                record.metrics.upstream_error(&target.cluster.name, kind);
            }
            Err(refusal)
        }
    }
}

/// The key `ring_hash` places the request by, hashed: the `hash_on` header's value (the
/// first one), the cookie's or the client's IP address. `None` when the cluster does not
/// hash or the request lacks the header or cookie: the cluster then picks round robin.
fn request_hash(cluster: &Cluster, headers: &HeaderMap, client_ip: IpAddr) -> Option<u64> {
    if !cluster.hashes() {
        return None;
    }
    match &cluster.hash_on {
        HashOn::Header(name) => headers
            .get(name.as_str())
            .map(|value| hash_key(value.as_bytes())),
        HashOn::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(cookie, _)| cookie == name)
            .map(|(_, value)| hash_key(value.as_bytes())),
        // The address's bytes: no text to build for each request.
        HashOn::ClientIp => Some(match client_ip.to_canonical() {
            IpAddr::V4(v4) => hash_key(&v4.octets()),
            IpAddr::V6(v6) => hash_key(&v6.octets()),
        }),
    }
}

/// The request as the upstream gets it, minus the endpoint: the path rewritten,
/// `X-Forwarded-*` set, `Host` the authority or the route's `rewrite_host` (returned too).
fn outgoing<'a>(
    parts: http::request::Parts,
    forward: &'a Forward,
    downstream: &Downstream,
    authority: &'a str,
) -> Result<(Outgoing, &'a str), Refusal> {
    let uri = upstream_uri(&parts.uri, forward)?;
    // Hop-by-hop headers went on arrival, before the plugins (`pipeline::handle`): what a
    // plugin set is forwarded as it set it.
    let mut outgoing = Outgoing {
        method: parts.method,
        uri,
        headers: parts.headers,
    };
    // One copy of the authority serves as X-Forwarded-Host and, unless rewritten, as Host:
    // the client's own `Host` when it is already canonical (a shared buffer, no copy).
    let authority_value = match outgoing.headers.get(header::HOST) {
        Some(host) if host.as_bytes() == authority.as_bytes() => Some(host.clone()),
        _ => HeaderValue::from_str(authority).ok(),
    };
    headers::set_forwarded(
        &mut outgoing.headers,
        &downstream.client_address,
        downstream.scheme(),
        authority_value.as_ref(),
    );
    let upstream_host = forward.rewrite_host.as_deref().unwrap_or(authority);
    let host = match (&forward.rewrite_host, authority_value) {
        (None, Some(value)) => value,
        _ => HeaderValue::from_str(upstream_host).map_err(|_| Refusal::InvalidUpstreamHost)?,
    };
    outgoing.headers.insert(header::HOST, host);
    Ok((outgoing, upstream_host))
}

/// The request body: buffered when it is small and may be sent more than once (`replay`),
/// streamed otherwise.
async fn request_body(
    body: UpstreamBody,
    content_length: Option<u64>,
    replay: bool,
) -> Result<RequestBody, Refusal> {
    let has_body = !(http_body::Body::is_end_stream(&body) || content_length == Some(0));
    if !has_body {
        return Ok(RequestBody::Replayable(Bytes::new()));
    }
    if !(replay && content_length.is_some_and(|length| length <= REPLAY_BUFFER_LIMIT)) {
        return Ok(RequestBody::Stream(Some(body)));
    }
    // The caller already bounds the body; its declared length is within the buffer limit.
    match body.collect().await {
        Ok(collected) => Ok(RequestBody::Replayable(collected.to_bytes())),
        Err(error) if caused_by::<BodyReadTimeout>(error.as_ref()) => Err(Refusal::RequestTimeout),
        Err(error) => Err(Refusal::MalformedBody {
            cause: Some(error.to_string()),
        }),
    }
}

/// Sends the request to the target's endpoints until a try succeeds, the retry policy
/// gives up, or the route's timeout passes.
async fn send_with_retries(
    target: &Target,
    outgoing: &mut Outgoing,
    body: &mut RequestBody,
    hash: Option<u64>,
    forward: &Forward,
    resolved: &ResolvedForward,
    record: &mut AccessRecord,
) -> Result<Response<PooledBody>, TryError> {
    let deadline = Instant::now() + forward.timeout;
    let max_tries = 1 + forward
        .retries
        .as_ref()
        .map_or(0, |retries| retries.attempts);
    let per_try_timeout = forward
        .retries
        .as_ref()
        .and_then(|retries| retries.per_try_timeout);
    // A request that is not idempotent (RFC 9110 §9.2.2) may have had its effect even when
    // the answer was an error; it is sent again only when the upstream cannot have seen it,
    // unless the route says that repeating it is safe.
    let may_repeat = is_idempotent(&outgoing.method)
        || forward
            .retries
            .as_ref()
            .is_some_and(|retries| retries.non_idempotent);
    let mut attempt = 0;
    loop {
        attempt += 1;
        record.attempts = attempt;
        let try_deadline = match per_try_timeout {
            Some(per_try) => deadline.min(Instant::now() + per_try),
            None => deadline,
        };
        // The headers move into the last try the request may get; earlier ones send a copy.
        let last_try = attempt >= max_tries || !body.replayable();
        let headers = if last_try {
            std::mem::take(&mut outgoing.headers)
        } else {
            outgoing.headers.clone()
        };
        let result = try_once(
            target,
            hash,
            outgoing,
            headers,
            body.take(),
            try_deadline,
            record,
        )
        .await;
        let retry_allowed = attempt < max_tries && body.replayable() && Instant::now() < deadline;
        let conditions = forward.retries.as_ref().map(|retries| &retries.conditions);
        match (&result, conditions) {
            (Ok(response), Some(conditions))
                if retry_allowed
                    && may_repeat
                    && retry_on_status(conditions, response.status()) =>
            {
                tracing::debug!(route = %resolved.route, status = %response.status(), attempt, "retrying");
            }
            (Err(error), Some(conditions))
                if retry_allowed
                    && (may_repeat || error.never_reached_upstream())
                    && retry_on_error(conditions, error) =>
            {
                tracing::debug!(route = %resolved.route, ?error, attempt, "retrying");
            }
            _ => return result,
        }
        // A short jittered back-off, as Envoy's default 25 ms base interval.
        let backoff = Duration::from_millis(25 * u64::from(attempt) + rand::random::<u64>() % 25);
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The upstream's response as the client gets it; for a `101 Switching Protocols`, with the
/// tunnel between both upgraded connections started.
fn downstream_response(
    mut response: Response<PooledBody>,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    // The upstream client hands over answers without the fields of their connection
    // (`crate::fields`) but for a `101`, which keeps them for the tunnel.
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let (Some(downstream_upgrade), Some(upstream)) =
            (downstream_upgrade, response.body_mut().take_upgraded())
        {
            tokio::spawn(tunnel(downstream_upgrade, upstream));
        }
    }
    response.map(BodyExt::boxed)
}

/// One try: pick an endpoint of the target (by `hash` under `ring_hash`), send, and wait for
/// the response headers until `deadline`.
async fn try_once(
    target: &Target,
    hash: Option<u64>,
    outgoing: &Outgoing,
    headers: HeaderMap,
    body: Option<UpstreamBody>,
    deadline: Instant,
    record: &mut AccessRecord,
) -> Result<Response<PooledBody>, TryError> {
    let cluster = &target.cluster;
    let guard = cluster
        .pick(&target.endpoints, hash)
        .map_err(TryError::NoEndpoint)?;
    record.upstream = Some(guard.endpoint.clone());
    let mut headers = headers;
    let span = record.trace.as_ref().map(|trace| {
        trace.upstream_attempt(
            &outgoing.method,
            &guard.endpoint.address,
            record.attempts,
            &mut headers,
        )
    });
    let mut request = Request::new(body.unwrap_or_else(empty_body));
    *request.method_mut() = outgoing.method.clone();
    *request.uri_mut() = outgoing.uri.clone();
    *request.headers_mut() = headers;
    if cluster.http2 {
        // HTTP/2 carries the host as `:authority`, which the pool sets.
        request.headers_mut().remove(header::HOST);
    }

    let sent = tokio::time::timeout_at(deadline, cluster.send(&guard.endpoint, request)).await;
    let result = match sent {
        Err(_) => Err(TryError::Timeout),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) if caused_by::<http_body_util::LengthLimitError>(&error) => {
            Err(TryError::BodyTooLarge)
        }
        Ok(Err(error)) if caused_by::<BodyReadTimeout>(&error) => Err(TryError::BodyTimeout),
        Ok(Err(error)) if caused_by::<MalformedBody>(&error) => Err(TryError::MalformedBody),
        Ok(Err(error)) => match tls_failure(&error) {
            Some(cause) => Err(TryError::Tls(cause)),
            None if matches!(error, UpstreamError::Connect(_)) => {
                Err(TryError::Connect(root_cause(&error)))
            }
            None if request_unsent(&error) => Err(TryError::Unsent(root_cause(&error))),
            None => Err(TryError::Reset(root_cause(&error))),
        },
    };
    match &result {
        Ok(response) => guard.report(Outcome::Answered(response.status())),
        Err(TryError::Connect(_) | TryError::Tls(_)) => guard.report(Outcome::ConnectFailure),
        Err(TryError::Reset(_) | TryError::Unsent(_)) => guard.report(Outcome::Reset),
        Err(TryError::Timeout) => guard.report(Outcome::Timeout),
        Err(
            TryError::BodyTooLarge
            | TryError::NoEndpoint(_)
            | TryError::BodyTimeout
            | TryError::MalformedBody,
        ) => {}
    }
    if let Some(span) = span {
        span.end(match &result {
            Ok(response) => Ok(response.status().as_u16()),
            Err(error) => Err(error.kind()),
        });
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
        TryError::Connect(_) | TryError::Tls(_) => {
            conditions.connect_failure || conditions.any_5xx || conditions.gateway_error
        }
        TryError::Reset(_) | TryError::Unsent(_) => {
            conditions.reset || conditions.any_5xx || conditions.gateway_error
        }
        TryError::Timeout => conditions.any_5xx || conditions.gateway_error,
        TryError::NoEndpoint(_)
        | TryError::BodyTooLarge
        | TryError::BodyTimeout
        | TryError::MalformedBody => false,
    }
}

impl TryError {
    /// What the attempt's span records as `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect_failure",
            Self::Timeout => "timeout",
            Self::Tls(_) => "tls_failure",
            Self::Reset(_) | Self::Unsent(_) => "reset",
            Self::BodyTooLarge => "request_body_too_large",
            Self::BodyTimeout => "request_body_timeout",
            Self::MalformedBody => "malformed_request_body",
            Self::NoEndpoint(PickError::NoHealthy) => "no_healthy_upstream",
            Self::NoEndpoint(PickError::Overflow) => "upstream_overflow",
        }
    }

    /// The answer the client gets when the request's last try failed this way.
    fn into_refusal(self) -> Refusal {
        match self {
            Self::Connect(cause) => Refusal::UpstreamUnavailable { cause },
            Self::Tls(cause) => Refusal::UpstreamTlsFailure { cause },
            Self::Timeout => Refusal::UpstreamTimeout,
            Self::Reset(cause) | Self::Unsent(cause) => Refusal::UpstreamReset { cause },
            Self::BodyTooLarge => Refusal::BodyTooLarge,
            Self::BodyTimeout => Refusal::RequestTimeout,
            Self::MalformedBody => Refusal::MalformedBody { cause: None },
            Self::NoEndpoint(PickError::NoHealthy) => Refusal::NoHealthyUpstream,
            Self::NoEndpoint(PickError::Overflow) => Refusal::UpstreamOverflow,
        }
    }

    /// Whether the upstream cannot have acted on the request, so that sending it again is
    /// safe whatever its method. (A refused TLS handshake never let the request through,
    /// even when the refusal came after the request was written.)
    fn never_reached_upstream(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Tls(_) | Self::Unsent(_))
    }

    /// Why the connection to the endpoint failed, for the access log (Envoy's upstream
    /// transport failure reason).
    fn transport_failure(&self) -> Option<&str> {
        match self {
            Self::Connect(cause) | Self::Tls(cause) => Some(cause),
            _ => None,
        }
    }
}

/// GET, HEAD, OPTIONS, TRACE, PUT and DELETE: repeating them has the effect of sending them
/// once (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether an upstream error proves that no byte of the request reached the upstream's
/// application:
/// - hyper hands a request back unsent when the connection closed before it was written;
///   the pool then sends it on another connection if the closed one was reused, so what
///   reaches us is the case of a new connection that closed at once;
/// - an HTTP/2 RST_STREAM with REFUSED_STREAM from the upstream guarantees that the stream
///   was not processed (RFC 9113 §8.7).
fn request_unsent(error: &UpstreamError) -> bool {
    if matches!(error, UpstreamError::Unsent(_)) {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if let Some(h2_error) = error.downcast_ref::<h2::Error>() {
            return h2_error.is_remote() && h2_error.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = error.source();
    }
    false
}

/// The upstream request target (origin form): the downstream one as it is, or rewritten.
fn upstream_uri(uri: &Uri, forward: &Forward) -> Result<Uri, Rejection> {
    if let Some(rewrite) = &forward.rewrite_regex {
        return regex_rewrite_path(uri, rewrite)?
            .parse()
            .map_err(|_| Rejection::InvalidPath);
    }
    if forward.rewrite_prefix.is_none() || forward.matched_prefix.is_none() {
        if let Some(path_and_query) = uri.path_and_query() {
            return Ok(Uri::from(path_and_query.clone()));
        }
    }
    rewrite_path(uri, forward)?
        .parse()
        .map_err(|_| Rejection::InvalidPath)
}

/// The upstream path and query: the route's matched prefix replaced by `rewrite_prefix`.
///
/// What follows the matched prefix is resolved on its own before it is joined, so that it can
/// never lead out of the replacement prefix: its dot segments are removed (never above its
/// own root), even with `normalize_path` off, and a rest that would still climb for an
/// upstream that also splits at encoded slashes (`..%2F..` kept by
/// `path_with_escaped_slashes_action: keep`) is refused.
fn rewrite_path(uri: &Uri, forward: &Forward) -> Result<String, Rejection> {
    let path = uri.path();
    let query = uri
        .query()
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    let path = match (&forward.rewrite_prefix, &forward.matched_prefix) {
        (Some(replacement), Some(matched)) => match path.strip_prefix(matched.as_str()) {
            Some("") => replacement.clone(),
            Some(rest) => join_path(replacement, &contained(rest)?),
            None => path.to_string(),
        },
        _ => path.to_string(),
    };
    Ok(format!("{path}{query}"))
}

/// The upstream path and query under `rewrite.regex`: every match of the pattern in the
/// path (not the query) replaced, the query kept. A result that is not an absolute path is
/// refused.
fn regex_rewrite_path(uri: &Uri, rewrite: &RegexRewrite) -> Result<String, Rejection> {
    let path = rewrite
        .pattern
        .replace_all(uri.path(), rewrite.replacement.as_str());
    if !path.starts_with('/') {
        return Err(Rejection::InvalidPath);
    }
    Ok(match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.into_owned(),
    })
}

/// `rest` as a path of its own (with a leading `/`), its dot segments removed.
fn contained(rest: &str) -> Result<String, Rejection> {
    const RESOLVE_DOTS: Normalization = Normalization {
        normalize_path: true,
        merge_slashes: false,
        escaped_slashes: EscapedSlashesAction::Keep,
        strip_trailing_host_dot: false,
    };
    let rooted = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    let resolved = normalize::path(&rooted, &RESOLVE_DOTS)?.into_owned();
    if resolved.contains(['%', '\\']) && climbs_above_root(&resolved) {
        return Err(Rejection::InvalidPath);
    }
    Ok(resolved)
}

/// Whether an upstream that also splits at `%2F`, `%5C` and `\` and decodes `%2E` would
/// resolve `path` above its root.
fn climbs_above_root(path: &str) -> bool {
    let mut split = path.to_ascii_uppercase();
    for separator in ["%2F", "%5C", "\\"] {
        split = split.replace(separator, "/");
    }
    let mut depth = 0usize;
    for segment in split.split('/') {
        match segment.replace("%2E", ".").as_str() {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
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
    let Ok(guard) = cluster.pick(cluster.all_endpoints(), None) else {
        return;
    };
    let mut request = Request::new(full(body));
    *request.method_mut() = outgoing.method.clone();
    *request.uri_mut() = outgoing.uri.clone();
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
        request.headers_mut().remove(header::HOST);
    }
    tokio::spawn(async move {
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            cluster.send(&guard.endpoint, request),
        )
        .await;
        match sent {
            Ok(Ok(response)) => {
                // Drain the answer so that the connection can be reused.
                let status = response.status();
                let _ = response.into_body().collect().await;
                guard.report(Outcome::Answered(status));
            }
            Ok(Err(error)) => {
                tracing::debug!(cluster = %cluster.name, %error, "mirror request failed");
            }
            Err(_) => tracing::debug!(cluster = %cluster.name, "mirror request timed out"),
        }
    });
}

/// Copies bytes both ways between an upgraded client connection and the upstream one.
async fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: crate::upstream::Upgraded) {
    let downstream = match downstream.await {
        Ok(downstream) => downstream,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut downstream = hyper_util::rt::TokioIo::new(downstream);
    // What the upstream sent right after its `101` came with the answer's head.
    let (mut upstream, early) = upstream.into_parts();
    if !early.is_empty() {
        if let Err(error) = tokio::io::AsyncWriteExt::write_all(&mut downstream, &early).await {
            tracing::debug!(%error, "upgraded connection ended with an error");
            return;
        }
    }
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

    fn rewriting(matched: &str, replacement: &str) -> Forward {
        Forward {
            matched_prefix: Some(matched.into()),
            rewrite_prefix: Some(replacement.into()),
            rewrite_regex: None,
            targets: Vec::new(),
            is_split: false,
            rewrite_host: None,
            timeout: Duration::from_secs(1),
            retries: None,
            mirror: None,
        }
    }

    fn rewrite(forward: &Forward, path: &str) -> Result<String, Rejection> {
        rewrite_path(&path.parse().unwrap(), forward)
    }

    #[test]
    fn prefix_rewrites_keep_the_query_and_the_rest() {
        let api = rewriting("/api", "/v1");
        assert_eq!(rewrite(&api, "/api/orders?x=1").unwrap(), "/v1/orders?x=1");
        assert_eq!(rewrite(&api, "/api").unwrap(), "/v1");
        assert_eq!(rewrite(&api, "/api/").unwrap(), "/v1/");
        assert_eq!(rewrite(&api, "/other/x").unwrap(), "/other/x");
        assert_eq!(rewrite(&rewriting("/api/", "/"), "/api/x").unwrap(), "/x");
    }

    #[test]
    fn a_rewritten_path_never_leaves_its_replacement_prefix() {
        // As the path arrives with normalize_path off: nothing resolved it before.
        let api = rewriting("/api", "/v1");
        for (path, expected) in [
            ("/api/v1/../../admin", "/v1/admin"),
            ("/api/../admin?q=1", "/v1/admin?q=1"),
            ("/api/%2e%2e/%2E%2E/admin", "/v1/admin"),
            ("/api/./x/../../../y", "/v1/y"),
            ("/api..", "/v1/"),
            ("/api/..", "/v1/"),
            ("/api/a//../b", "/v1/a/b"),
            ("/api/..\\..\\admin", "/v1/admin"),
        ] {
            assert_eq!(rewrite(&api, path).unwrap(), expected, "{path}");
        }
        // Encoded slashes kept: an upstream that decodes them would climb, so it is refused.
        for path in [
            "/api/..%2F..%2Fadmin",
            "/api/x/..%5c..%5C..%2fadmin",
            "/api/%2E%2E%2fadmin",
        ] {
            assert_eq!(rewrite(&api, path), Err(Rejection::InvalidPath), "{path}");
        }
        assert_eq!(rewrite(&api, "/api/a%2Fb").unwrap(), "/v1/a%2Fb");
        assert_eq!(rewrite(&api, "/api/a%2F..%2Fb").unwrap(), "/v1/a%2F..%2Fb");
    }

    #[test]
    fn only_rfc_idempotent_methods_repeat_freely() {
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(&method.parse().unwrap()), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT", "LOCK"] {
            assert!(!is_idempotent(&method.parse().unwrap()), "{method}");
        }
        assert!(TryError::Connect("refused".into()).never_reached_upstream());
        assert!(TryError::Unsent("refused stream".into()).never_reached_upstream());
        assert!(!TryError::Reset("closed".into()).never_reached_upstream());
        assert!(!TryError::Timeout.never_reached_upstream());
    }

    /// An HTTP/2 upstream that resets every stream with `reason`; the error an HTTP/2
    /// cluster's pool returns for a POST to it.
    async fn error_from_h2_reset(reason: h2::Reason) -> UpstreamError {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(tcp).await.unwrap();
            while let Some(Ok((_, mut respond))) = connection.accept().await {
                respond.send_reset(reason);
            }
        });
        let cluster =
            Arc::new(Cluster::new(&h2_cluster(address), None, Default::default()).unwrap());
        let request = Request::post("/orders")
            .body(full(Bytes::from_static(b"order=1")))
            .unwrap();
        let sent = cluster.send(&cluster.endpoints[0], request);
        let error = tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .expect("the upstream answers at once")
            .expect_err("every stream is reset");
        server.abort();
        error
    }

    fn h2_cluster(address: std::net::SocketAddr) -> crate::config::Cluster {
        crate::config::Cluster {
            name: "h2".into(),
            endpoints: vec![crate::config::Endpoint {
                address: address.to_string(),
                host: address.ip().to_string(),
                port: address.port(),
                labels: Default::default(),
            }],
            load_balancing: Default::default(),
            hash_on: Default::default(),
            connect_timeout: Duration::from_secs(1),
            http2: true,
            tls: None,
            health: crate::config::HealthSettings {
                consecutive_failures: 5,
                ejection_time: Duration::from_secs(30),
                max_ejection_percent: 50,
                panic_threshold: 0,
                eject_on: Default::default(),
                active: None,
            },
            limits: crate::config::ClusterLimits {
                max_requests: 100,
                max_idle_per_endpoint: 1,
                idle_timeout: Duration::from_secs(1),
            },
            origin: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_refused_http2_stream_proves_the_request_unsent() {
        let refused = error_from_h2_reset(h2::Reason::REFUSED_STREAM).await;
        assert!(request_unsent(&refused), "{refused:?}");
        let reset = error_from_h2_reset(h2::Reason::INTERNAL_ERROR).await;
        assert!(!request_unsent(&reset), "{reset:?}");
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
