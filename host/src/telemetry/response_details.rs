//! How Envoy would describe an answer: the one table from the gateway's request outcome
//! (the access log's `detail`) to Envoy's response code details and response flags, and
//! [`Reason`], every reason the gateway answers a request itself (the pipeline's
//! `Refusal` carries one), with what each logs, flags and counts.

use crate::routing::normalize::Rejection;
use crate::telemetry::metrics::UpstreamErrorKind;

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

/// The reason of a [`Refusal`], without its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RequestHeadersTooLarge,
    InvalidTarget(Rejection),
    DuplicateHost,
    HostMismatch,
    MissingHost,
    NoListener,
    UnknownHost,
    NoRoute,
    InvalidPluginAuthority,
    InvalidPluginPath,
    NoRouteAfterPlugin,
    BodyTooLarge,
    BodyBufferFull,
    RequestTimeout,
    MalformedBody,
    Fault,
    NoCluster,
    InvalidUpstreamHost,
    InvalidRedirect,
    UpstreamUnavailable,
    UpstreamReset,
    UpstreamTlsFailure,
    UpstreamTimeout,
    NoHealthyUpstream,
    UpstreamOverflow,
    PluginFailed,
}

impl Reason {
    /// Every reason, for finding one by its access-log `detail`.
    const ALL: &'static [Reason] = &[
        Self::RequestHeadersTooLarge,
        Self::InvalidTarget(Rejection::InvalidHost),
        Self::InvalidTarget(Rejection::HostUserinfo),
        Self::InvalidTarget(Rejection::EscapedSlashInPath),
        Self::InvalidTarget(Rejection::InvalidPath),
        Self::DuplicateHost,
        Self::HostMismatch,
        Self::MissingHost,
        Self::NoListener,
        Self::UnknownHost,
        Self::NoRoute,
        Self::InvalidPluginAuthority,
        Self::InvalidPluginPath,
        Self::NoRouteAfterPlugin,
        Self::BodyTooLarge,
        Self::BodyBufferFull,
        Self::RequestTimeout,
        Self::MalformedBody,
        Self::Fault,
        Self::NoCluster,
        Self::InvalidUpstreamHost,
        Self::InvalidRedirect,
        Self::UpstreamUnavailable,
        Self::UpstreamReset,
        Self::UpstreamTlsFailure,
        Self::UpstreamTimeout,
        Self::NoHealthyUpstream,
        Self::UpstreamOverflow,
        Self::PluginFailed,
    ];

    /// The reason whose access-log `detail` this is.
    pub fn from_detail(detail: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|reason| reason.detail() == detail)
    }

    /// The access log's `detail`.
    pub fn detail(self) -> &'static str {
        match self {
            Self::RequestHeadersTooLarge => "request_headers_too_large",
            Self::InvalidTarget(rejection) => rejection.reason(),
            Self::DuplicateHost => "duplicate_host",
            Self::HostMismatch => "host_mismatch",
            Self::MissingHost => "missing_host",
            Self::NoListener => "no_listener",
            Self::UnknownHost => "unknown_host",
            Self::NoRoute => "no_route",
            Self::InvalidPluginAuthority => "invalid_plugin_authority",
            Self::InvalidPluginPath => "invalid_plugin_path",
            Self::NoRouteAfterPlugin => "no_route_after_plugin",
            Self::BodyTooLarge => "request_body_too_large",
            Self::BodyBufferFull => "request_body_buffer_full",
            Self::RequestTimeout => "request_body_timeout",
            Self::MalformedBody => "downstream_body_error",
            Self::Fault => "fault_abort",
            Self::NoCluster => "no_cluster",
            Self::InvalidUpstreamHost => "invalid_upstream_host",
            Self::InvalidRedirect => "invalid_redirect",
            Self::UpstreamUnavailable => "upstream_connect_failure",
            Self::UpstreamReset => "upstream_reset",
            Self::UpstreamTlsFailure => "upstream_tls_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::UpstreamOverflow => "upstream_overflow",
            Self::PluginFailed => "plugin_failure",
        }
    }

    /// Envoy's response code details for the answer, where Envoy has a name for it; the
    /// `detail` itself otherwise.
    pub fn code_details(self) -> &'static str {
        match self {
            Self::NoListener | Self::UnknownHost | Self::NoRoute | Self::NoRouteAfterPlugin => {
                "route_not_found"
            }
            Self::NoCluster => "cluster_not_found",
            Self::UpstreamUnavailable => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            Self::UpstreamTlsFailure => {
                "upstream_reset_before_response_started{connection_failure,TLS_error}"
            }
            Self::UpstreamTimeout => "upstream_response_timeout",
            Self::UpstreamReset => "upstream_reset_before_response_started{remote_reset}",
            Self::UpstreamOverflow => "upstream_reset_before_response_started{overflow}",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::Fault => "fault_filter_abort",
            Self::PluginFailed => "wasm_fail_stream",
            Self::BodyTooLarge => "request_payload_too_large",
            Self::RequestTimeout => "stream_idle_timeout",
            Self::MalformedBody => "codec_error",
            Self::RequestHeadersTooLarge
            | Self::InvalidTarget(_)
            | Self::DuplicateHost
            | Self::HostMismatch
            | Self::MissingHost
            | Self::InvalidPluginAuthority
            | Self::InvalidPluginPath
            | Self::BodyBufferFull
            | Self::InvalidUpstreamHost
            | Self::InvalidRedirect => self.detail(),
        }
    }

    /// Envoy's response flag bits for the answer.
    pub fn response_flags(self) -> u64 {
        match self {
            Self::NoListener | Self::UnknownHost | Self::NoRoute | Self::NoRouteAfterPlugin => {
                flag::NR
            }
            Self::NoCluster => flag::NC,
            Self::UpstreamUnavailable | Self::UpstreamTlsFailure => flag::UF,
            Self::UpstreamTimeout => flag::UT,
            Self::UpstreamReset => flag::UR,
            Self::UpstreamOverflow => flag::UO,
            Self::NoHealthyUpstream => flag::UH,
            Self::Fault => flag::FI,
            Self::RequestTimeout => flag::SI,
            Self::MalformedBody => flag::DPE,
            Self::RequestHeadersTooLarge
            | Self::InvalidTarget(_)
            | Self::DuplicateHost
            | Self::HostMismatch
            | Self::MissingHost
            | Self::InvalidPluginAuthority
            | Self::InvalidPluginPath
            | Self::BodyTooLarge
            | Self::BodyBufferFull
            | Self::InvalidUpstreamHost
            | Self::InvalidRedirect
            | Self::PluginFailed => 0,
        }
    }

    /// The `kind` it counts as in `tollgate_upstream_errors_total`, when it is an upstream's
    /// failure.
    pub fn upstream_error(self) -> Option<UpstreamErrorKind> {
        match self {
            Self::UpstreamUnavailable | Self::UpstreamTlsFailure => {
                Some(UpstreamErrorKind::Connect)
            }
            Self::UpstreamTimeout => Some(UpstreamErrorKind::Timeout),
            Self::UpstreamReset => Some(UpstreamErrorKind::Reset),
            Self::NoHealthyUpstream => Some(UpstreamErrorKind::NoHealthy),
            Self::UpstreamOverflow => Some(UpstreamErrorKind::Overflow),
            Self::RequestHeadersTooLarge
            | Self::InvalidTarget(_)
            | Self::DuplicateHost
            | Self::HostMismatch
            | Self::MissingHost
            | Self::NoListener
            | Self::UnknownHost
            | Self::NoRoute
            | Self::InvalidPluginAuthority
            | Self::InvalidPluginPath
            | Self::NoRouteAfterPlugin
            | Self::BodyTooLarge
            | Self::BodyBufferFull
            | Self::RequestTimeout
            | Self::MalformedBody
            | Self::Fault
            | Self::NoCluster
            | Self::InvalidUpstreamHost
            | Self::InvalidRedirect
            | Self::PluginFailed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_found_by_its_detail() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_detail(reason.detail()), Some(*reason));
        }
        assert_eq!(Reason::from_detail("via_upstream"), None);
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
}
