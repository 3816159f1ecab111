//! Every answer the gateway makes itself instead of forwarding, and everything that follows
//! from why: the HTTP status, the text, the gRPC status a gRPC client gets instead, the
//! access log's `detail`, Envoy's response code details and response flags, and the
//! upstream error metric it counts in.
//!
//! A [`Refusal`] names the reason with what its text needs; its [`Reason`] is the same
//! reason without the text. Each property is one exhaustive `match`, so a new reason cannot
//! be added without saying what it logs, flags and answers.

use std::borrow::Cow;

use http::{Response, StatusCode};

use super::local;
use super::ResponseBody;
use crate::routing::normalize::Rejection;
pub use crate::telemetry::response_details::Reason;

/// gRPC status codes, as a gRPC client reads them from `grpc-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The code an HTTP status stands for when an answer names none, as gRPC's HTTP mapping
    /// (and Envoy) has it.
    pub fn from_http_status(status: u16) -> Self {
        match status {
            400 => Self::Internal,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 => Self::Unimplemented,
            429 | 502 | 503 | 504 => Self::Unavailable,
            _ => Self::Unknown,
        }
    }

    /// The number `grpc-status` carries.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// Why the gateway answered a request itself, with what the answer's text says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request head is larger than `server.max_request_header_bytes`.
    RequestHeadersTooLarge,
    /// The request's host or path cannot be made canonical, or the route's prefix rewrite
    /// leads to a path that cannot be sent.
    InvalidTarget(Rejection),
    DuplicateHost,
    /// The `Host` header names another host than the request target.
    HostMismatch,
    MissingHost,
    NoListener,
    UnknownHost {
        host: String,
    },
    NoRoute {
        path: String,
    },
    /// A plugin set an `:authority` that cannot be made canonical.
    InvalidPluginAuthority(Rejection),
    /// A plugin set a `:path` that cannot be made canonical.
    InvalidPluginPath(Rejection),
    /// A plugin changed `:path` or `:authority` to something no route matches.
    NoRouteAfterPlugin {
        path: String,
    },
    /// The request body is larger than `server.max_request_body_bytes`.
    BodyTooLarge,
    /// The request body outgrew what the plugins that read it may buffer.
    BodyBufferFull,
    /// The request body stopped arriving (`server.body_read_timeout`).
    RequestTimeout,
    /// The request body broke its framing; `cause` when it is worth telling the client.
    MalformedBody {
        cause: Option<String>,
    },
    /// The route's fault injection aborted the request with `status`.
    Fault {
        status: StatusCode,
    },
    /// The route forwards to a cluster the snapshot does not have.
    NoCluster,
    /// The upstream `Host` (the authority, or the route's `rewrite_host`) is not a valid
    /// header value.
    InvalidUpstreamHost,
    /// A redirect's `Location` is not a valid header value.
    InvalidRedirect,
    UpstreamUnavailable {
        cause: String,
    },
    UpstreamReset {
        cause: String,
    },
    /// TLS with the endpoint failed: its certificate was refused (chain or names), or it
    /// refused the handshake (our client certificate).
    UpstreamTlsFailure {
        cause: String,
    },
    UpstreamTimeout,
    NoHealthyUpstream,
    UpstreamOverflow,
    /// A plugin failed (trapped, ran out of a limit, or its VM was replaced) and fails closed.
    PluginFailed {
        plugin: String,
    },
    /// A plugin paused the request and did not resume it within the route's timeout.
    PluginStalled,
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Self::InvalidTarget(rejection)
    }
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Self::RequestHeadersTooLarge => Reason::RequestHeadersTooLarge,
            Self::InvalidTarget(rejection) => Reason::InvalidTarget(*rejection),
            Self::DuplicateHost => Reason::DuplicateHost,
            Self::HostMismatch => Reason::HostMismatch,
            Self::MissingHost => Reason::MissingHost,
            Self::NoListener => Reason::NoListener,
            Self::UnknownHost { .. } => Reason::UnknownHost,
            Self::NoRoute { .. } => Reason::NoRoute,
            Self::InvalidPluginAuthority(_) => Reason::InvalidPluginAuthority,
            Self::InvalidPluginPath(_) => Reason::InvalidPluginPath,
            Self::NoRouteAfterPlugin { .. } => Reason::NoRouteAfterPlugin,
            Self::BodyTooLarge => Reason::BodyTooLarge,
            Self::BodyBufferFull => Reason::BodyBufferFull,
            Self::RequestTimeout => Reason::RequestTimeout,
            Self::MalformedBody { .. } => Reason::MalformedBody,
            Self::Fault { .. } => Reason::Fault,
            Self::NoCluster => Reason::NoCluster,
            Self::InvalidUpstreamHost => Reason::InvalidUpstreamHost,
            Self::InvalidRedirect => Reason::InvalidRedirect,
            Self::UpstreamUnavailable { .. } => Reason::UpstreamUnavailable,
            Self::UpstreamReset { .. } => Reason::UpstreamReset,
            Self::UpstreamTlsFailure { .. } => Reason::UpstreamTlsFailure,
            Self::UpstreamTimeout => Reason::UpstreamTimeout,
            Self::NoHealthyUpstream => Reason::NoHealthyUpstream,
            Self::UpstreamOverflow => Reason::UpstreamOverflow,
            Self::PluginFailed { .. } | Self::PluginStalled => Reason::PluginFailed,
        }
    }

    /// The access log's `detail`.
    pub fn detail(&self) -> &'static str {
        self.reason().detail()
    }

    /// Whether the answer leaves the rest of the request body unread: an HTTP/1.1
    /// connection cannot carry another request after it.
    pub fn leaves_body_unread(&self) -> bool {
        matches!(
            self,
            Self::BodyTooLarge
                | Self::BodyBufferFull
                | Self::RequestTimeout
                | Self::MalformedBody { .. }
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::RequestHeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::InvalidTarget(_)
            | Self::DuplicateHost
            | Self::HostMismatch
            | Self::MissingHost
            | Self::InvalidPluginAuthority(_)
            | Self::InvalidPluginPath(_)
            | Self::MalformedBody { .. }
            | Self::InvalidUpstreamHost => StatusCode::BAD_REQUEST,
            Self::NoListener
            | Self::UnknownHost { .. }
            | Self::NoRoute { .. }
            | Self::NoRouteAfterPlugin { .. } => StatusCode::NOT_FOUND,
            Self::BodyTooLarge | Self::BodyBufferFull => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Fault { status } => *status,
            Self::InvalidRedirect => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UpstreamUnavailable { .. } | Self::UpstreamReset { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout | Self::PluginStalled => StatusCode::GATEWAY_TIMEOUT,
            Self::NoCluster
            | Self::UpstreamTlsFailure { .. }
            | Self::NoHealthyUpstream
            | Self::UpstreamOverflow
            | Self::PluginFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status a gRPC client gets: the one the HTTP status stands for, so that both
    /// kinds of client learn the same thing.
    pub fn grpc_status(&self) -> GrpcCode {
        GrpcCode::from_http_status(self.status().as_u16())
    }

    /// The answer's text (the body of an HTTP answer, `grpc-message` of a gRPC one).
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Self::RequestHeadersTooLarge => "request headers too large".into(),
            Self::InvalidTarget(rejection) => rejection.to_string().into(),
            Self::DuplicateHost => "the request has more than one Host header".into(),
            Self::HostMismatch => {
                "the Host header names another host than the request target".into()
            }
            Self::MissingHost => "the request names no host".into(),
            Self::NoListener => "no routes on this listener".into(),
            Self::UnknownHost { host } => format!("no virtual host for {host:?}").into(),
            Self::NoRoute { path } | Self::NoRouteAfterPlugin { path } => {
                format!("no route for {path:?}").into()
            }
            Self::InvalidPluginAuthority(rejection) => {
                format!("a plugin set an invalid :authority: {rejection}").into()
            }
            Self::InvalidPluginPath(rejection) => {
                format!("a plugin set an invalid :path: {rejection}").into()
            }
            Self::BodyTooLarge | Self::BodyBufferFull => "request body too large".into(),
            Self::RequestTimeout => "the request body stopped arriving".into(),
            Self::MalformedBody { cause: None } => "could not read the request body".into(),
            Self::MalformedBody { cause: Some(cause) } => {
                format!("could not read the request body: {cause}").into()
            }
            Self::Fault { .. } => "fault filter abort".into(),
            Self::NoCluster => "no cluster for this route".into(),
            Self::InvalidUpstreamHost => "invalid host".into(),
            Self::InvalidRedirect => "redirect target is not a valid header value".into(),
            Self::UpstreamUnavailable { cause }
            | Self::UpstreamReset { cause }
            | Self::UpstreamTlsFailure { cause } => format!("{}: {cause}", self.detail()).into(),
            Self::UpstreamTimeout | Self::NoHealthyUpstream | Self::UpstreamOverflow => {
                self.detail().into()
            }
            Self::PluginFailed { plugin } => format!("plugin {plugin:?} is unavailable").into(),
            Self::PluginStalled => "a plugin paused the request past its timeout".into(),
        }
    }

    /// The answer in its HTTP form: the text as a plain-text body. It carries its gRPC
    /// status, so that `local::for_grpc` turns it into the trailers-only answer a gRPC
    /// client gets.
    pub fn response(&self) -> Response<ResponseBody> {
        local::reply(self.status(), &self.message(), self.grpc_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        let codes: Vec<GrpcCode> = [400, 401, 403, 404, 429, 502, 503, 504, 500, 418]
            .into_iter()
            .map(GrpcCode::from_http_status)
            .collect();
        use GrpcCode::*;
        assert_eq!(
            codes,
            [
                Internal,
                Unauthenticated,
                PermissionDenied,
                Unimplemented,
                Unavailable,
                Unavailable,
                Unavailable,
                Unavailable,
                Unknown,
                Unknown
            ]
        );
        assert_eq!(Unavailable.code(), 14);
    }

    #[test]
    fn http_and_grpc_answers_agree() {
        let refusal = Refusal::NoRoute {
            path: "/nowhere".into(),
        };
        assert_eq!(refusal.status(), StatusCode::NOT_FOUND);
        assert_eq!(refusal.grpc_status(), GrpcCode::Unimplemented);
        assert_eq!(refusal.message(), "no route for \"/nowhere\"");
        assert_eq!(refusal.reason().code_details(), "route_not_found");
        let grpc = local::for_grpc(refusal.response());
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "12");
        assert_eq!(grpc.headers()["grpc-message"], "no route for \"/nowhere\"");
    }
}
