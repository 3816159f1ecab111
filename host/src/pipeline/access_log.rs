//! One access-log line and the request metrics per request, written when the response body
//! has been sent (or dropped), so that duration and size cover the whole exchange.
//!
//! Credentials must not reach the log: the values of configured query parameters and
//! headers (and of the names key-auth plugins read keys from) are written as `REDACTED`.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::refusal::Reason;
use super::{Downstream, ResponseBody};
use crate::telemetry::metrics::metrics;
use crate::upstream::{BoxError, Endpoint};
use std::net::SocketAddr;

/// Everything the access log line says about a request.
#[derive(Debug)]
pub struct AccessRecord {
    pub started: Instant,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    // The request head is kept as cheap clones (shared buffers) and formatted only when
    // the access log is on.
    pub method: http::Method,
    pub uri: http::Uri,
    pub host: Option<HeaderValue>,
    pub protocol: &'static str,
    pub request_id: HeaderValue,
    pub user_agent: Option<HeaderValue>,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub upstream: Option<Arc<Endpoint>>,
    pub status: u16,
    /// Why the gateway answered as it did when it was not a plain forward (`no_route`,
    /// `upstream_timeout`, `fault_abort`, ...); `-` otherwise.
    pub detail: &'static str,
    /// With detail `plugin_failure`: the phase the plugin failed in (`request_headers`,
    /// `response_body`, ...); `-` otherwise.
    pub plugin_phase: &'static str,
    pub attempts: u32,
    pub bytes_sent: u64,
    /// The request is a gRPC call (local answers to it are sent trailers-only).
    pub grpc: bool,
    /// What the line must not show, from the snapshot the request started with.
    pub redaction: Arc<Redaction>,
}

/// How Envoy would describe an answer: its response code details and response flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseDetails {
    /// `response.code_details`.
    pub details: String,
    /// `response.flags`: Envoy's response flag bits.
    pub flags: u64,
}

/// Envoy's response flag bits, by the short names its access logs write.
pub mod flag {
    pub const UH: u64 = 0x2;
    pub const UT: u64 = 0x4;
    pub const LR: u64 = 0x8;
    pub const UR: u64 = 0x10;
    pub const UF: u64 = 0x20;
    pub const UO: u64 = 0x80;
    pub const NR: u64 = 0x100;
    pub const DI: u64 = 0x200;
    pub const FI: u64 = 0x400;
    pub const URX: u64 = 0x8000;
    pub const SI: u64 = 0x10000;
    pub const DPE: u64 = 0x40000;
    pub const NC: u64 = 0x1000000;
}

/// Envoy's response flags: bit, and the short name its access logs write.
const RESPONSE_FLAGS: &[(u64, &str)] = &[
    (flag::UH, "UH"),
    (flag::UT, "UT"),
    (flag::LR, "LR"),
    (flag::UR, "UR"),
    (flag::UF, "UF"),
    (flag::UO, "UO"),
    (flag::NR, "NR"),
    (flag::DI, "DI"),
    (flag::FI, "FI"),
    (flag::URX, "URX"),
    (flag::SI, "SI"),
    (flag::DPE, "DPE"),
    (flag::NC, "NC"),
];

/// The one table from the access log's `detail` to Envoy's response code details and
/// flags, read by the `response.code_details` and `response.flags` properties and by the
/// access log's `response_flags`. `plugin_details` is what a plugin gave its local reply;
/// `attempts` the tries made upstream (more than one that ended in an upstream failure is
/// Envoy's `URX`, retries exhausted).
pub fn response_details(detail: &str, plugin_details: &str, attempts: u32) -> ResponseDetails {
    let (details, flags): (&str, u64) = match detail {
        "" | "-" => ("via_upstream", 0),
        "response_body_error" => (
            "upstream_reset_after_response_started{remote_reset}",
            flag::UR,
        ),
        "fault_delay" => ("via_upstream", flag::DI),
        "direct_response" | "redirect" => ("direct_response", 0),
        "plugin_local_reply" => (plugin_details, 0),
        "plugin_reset" => ("plugin_reset", flag::LR),
        // The gateway's own answers say it themselves.
        other => match Reason::from_detail(other) {
            Some(reason) => (reason.code_details(), reason.response_flags()),
            None => (other, 0),
        },
    };
    let upstream_failure =
        flags & (flag::UT | flag::UR | flag::UF) != 0 && detail != "response_body_error";
    let retried = if upstream_failure && attempts > 1 {
        flag::URX
    } else {
        0
    };
    ResponseDetails {
        details: details.to_string(),
        flags: flags | retried,
    }
}

/// Response flag bits as Envoy's access logs write them: short names joined by `,`, or `-`.
pub fn response_flag_names(flags: u64) -> String {
    let names: Vec<&str> = RESPONSE_FLAGS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

/// The value written in place of a redacted one.
pub const REDACTED: &str = "REDACTED";

/// Query parameters and headers whose values the access log writes as [`REDACTED`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Redaction {
    /// Lower-case names.
    query_params: Vec<String>,
    /// Lower-case names.
    headers: Vec<String>,
}

impl Redaction {
    /// Names are compared without regard to case; duplicates are dropped.
    pub fn new<'a>(
        query_params: impl IntoIterator<Item = &'a str>,
        headers: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let lower_unique = |names: &mut dyn Iterator<Item = &'a str>| {
            let mut names: Vec<String> = names.map(str::to_ascii_lowercase).collect();
            names.sort();
            names.dedup();
            names
        };
        Self {
            query_params: lower_unique(&mut query_params.into_iter()),
            headers: lower_unique(&mut headers.into_iter()),
        }
    }

    pub fn query_params(&self) -> &[String] {
        &self.query_params
    }

    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// `path_and_query` with the values of redacted parameters replaced; borrowed (no
    /// allocation) when nothing needs redacting. A parameter name is compared after
    /// percent-decoding, so `api%6Bey=` is caught as well as `apikey=`.
    pub fn path<'a>(&self, path_and_query: &'a str) -> Cow<'a, str> {
        if self.query_params.is_empty() {
            return Cow::Borrowed(path_and_query);
        }
        let Some((path, query)) = path_and_query.split_once('?') else {
            return Cow::Borrowed(path_and_query);
        };
        let redacted = |pair: &str| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            self.is_redacted_param(name)
        };
        if !query.split('&').any(redacted) {
            return Cow::Borrowed(path_and_query);
        }
        let mut out = String::with_capacity(path_and_query.len());
        out.push_str(path);
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if redacted(pair) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
        Cow::Owned(out)
    }

    /// `value`, or [`REDACTED`] when the header `name` (lower-case) is redacted.
    pub fn header<'a>(&self, name: &str, value: &'a str) -> &'a str {
        if value != "-" && self.headers.iter().any(|redacted| redacted == name) {
            REDACTED
        } else {
            value
        }
    }

    fn is_redacted_param(&self, name: &str) -> bool {
        let decoded = percent_decode(name);
        self.query_params
            .iter()
            .any(|redacted| redacted.eq_ignore_ascii_case(&decoded))
    }
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept as written.
fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn none() -> Arc<str> {
    static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    NONE.get_or_init(|| Arc::from("-")).clone()
}

fn text(value: Option<&HeaderValue>) -> &str {
    value.and_then(|value| value.to_str().ok()).unwrap_or("-")
}

impl AccessRecord {
    pub fn new<B>(
        request: &Request<B>,
        downstream: &Downstream,
        request_id: HeaderValue,
        started: Instant,
        redaction: Arc<Redaction>,
    ) -> Self {
        Self {
            started,
            listener: downstream.listener.clone(),
            client: downstream.remote,
            method: request.method().clone(),
            uri: request.uri().clone(),
            host: request.headers().get(http::header::HOST).cloned(),
            protocol: match request.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            request_id,
            user_agent: request.headers().get(http::header::USER_AGENT).cloned(),
            route: none(),
            cluster: none(),
            upstream: None,
            status: 0,
            detail: "-",
            plugin_phase: "-",
            attempts: 0,
            bytes_sent: 0,
            grpc: super::local::is_grpc(request.headers()),
            redaction,
        }
    }

    /// The upstream endpoint's address, or `-`.
    pub fn upstream_address(&self) -> &str {
        self.upstream
            .as_ref()
            .map_or("-", |endpoint| endpoint.address.as_str())
    }

    /// Writes the line of an exchange that ended with no response (a reset stream).
    pub fn finish_without_response(self) {
        self.emit();
    }

    fn emit(&self) {
        let duration = self.started.elapsed();
        metrics().record_request(&self.route, &self.cluster, self.status, duration);
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let redaction = &self.redaction;
        let authority = match self.uri.authority() {
            Some(authority) => authority.as_str(),
            None => text(self.host.as_ref()),
        };
        let path = redaction.path(self.uri.path_and_query().map_or("/", |p| p.as_str()));
        tracing::info!(
            target: "access",
            listener = %self.listener,
            client = %self.client,
            method = %self.method,
            authority = redaction.header("host", authority),
            path = &*path,
            protocol = self.protocol,
            status = self.status,
            route = %self.route,
            cluster = %self.cluster,
            upstream = self.upstream_address(),
            attempts = self.attempts,
            detail = self.detail,
            response_flags = response_flag_names(
                response_details(self.detail, "", self.attempts).flags
            ),
            plugin_phase = self.plugin_phase,
            bytes_sent = self.bytes_sent,
            duration_ms = format_args!("{:.3}", super::millis(duration)),
            request_id = redaction.header("x-request-id", text(Some(&self.request_id))),
            user_agent = redaction.header("user-agent", text(self.user_agent.as_ref())),
        );
    }
}

/// Wraps the response body so that the record is written once the body ends or is dropped.
pub fn finish_on_body_end(
    response: Response<ResponseBody>,
    record: AccessRecord,
) -> Response<ResponseBody> {
    response.map(|body| {
        LoggedBody {
            inner: body,
            record: Some(record),
        }
        .boxed()
    })
}

struct LoggedBody {
    inner: ResponseBody,
    record: Option<AccessRecord>,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(record)) = (frame.data_ref(), self.record.as_mut()) {
                    record.bytes_sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(record) = self.record.take() {
                    record.emit();
                }
            }
            Poll::Ready(Some(Err(error))) => {
                let plugin_failure = error.downcast_ref::<super::plugins::PluginBodyFailure>();
                if let Some(record) = self.record.as_mut() {
                    match plugin_failure {
                        Some(failure) if failure.reset => record.detail = "plugin_reset",
                        Some(failure) => {
                            record.detail = "plugin_failure";
                            record.plugin_phase = failure.phase;
                        }
                        None => record.detail = "response_body_error",
                    }
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redaction() -> Redaction {
        Redaction::new(["apikey", "Token"], ["x-api-key", "user-agent"])
    }

    #[test]
    fn redacts_named_query_parameters_only() {
        let redaction = redaction();
        assert_eq!(
            redaction.path("/a?apikey=s3cret&page=2&TOKEN=t&x=apikey"),
            "/a?apikey=REDACTED&page=2&TOKEN=REDACTED&x=apikey"
        );
        assert_eq!(
            redaction.path("/a?api%6Bey=s3cret&apikey"),
            "/a?api%6Bey=REDACTED&apikey"
        );
    }

    #[test]
    fn borrows_when_nothing_is_redacted() {
        let redaction = redaction();
        assert!(matches!(redaction.path("/a?page=2"), Cow::Borrowed(_)));
        assert!(matches!(redaction.path("/a"), Cow::Borrowed(_)));
        assert!(matches!(
            Redaction::default().path("/a?apikey=1"),
            Cow::Borrowed("/a?apikey=1")
        ));
    }

    #[test]
    fn redacts_named_headers() {
        let redaction = redaction();
        assert_eq!(redaction.header("user-agent", "secret-agent"), REDACTED);
        assert_eq!(redaction.header("user-agent", "-"), "-");
        assert_eq!(redaction.header("host", "shop.test"), "shop.test");
    }

    #[test]
    fn details_map_to_envoy_details_and_flags() {
        let no_route = response_details("no_route", "", 0);
        assert_eq!(no_route.details, "route_not_found");
        assert_eq!(response_flag_names(no_route.flags), "NR");
        let retried = response_details("upstream_connect_failure", "", 3);
        assert_eq!(response_flag_names(retried.flags), "UF,URX");
        assert_eq!(response_details("-", "", 1).details, "via_upstream");
        assert_eq!(response_details("-", "", 1).flags, 0);
        assert_eq!(
            response_details("plugin_local_reply", "denied_by_policy", 0).details,
            "denied_by_policy"
        );
    }

    #[test]
    fn decodes_escapes_leniently() {
        assert_eq!(percent_decode("a%41+b"), "aA b");
        assert_eq!(percent_decode("a%4"), "a%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
