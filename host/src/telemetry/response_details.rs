//! How Envoy would describe an answer: the one table from the gateway's request outcome
//! (the access log's `detail`) to Envoy's response code details and response flags.

/// How Envoy would describe an answer: its response code details and response flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseDetails {
    /// `response.code_details`.
    pub details: String,
    /// `response.flags`: Envoy's response flag bits.
    pub flags: u64,
}

/// Envoy's response flags: bit, and the short name its access logs write.
const RESPONSE_FLAGS: &[(u64, &str)] = &[
    (0x2, "UH"),
    (0x4, "UT"),
    (0x8, "LR"),
    (0x10, "UR"),
    (0x20, "UF"),
    (0x80, "UO"),
    (0x100, "NR"),
    (0x200, "DI"),
    (0x400, "FI"),
    (0x8000, "URX"),
    (0x10000, "SI"),
    (0x40000, "DPE"),
    (0x1000000, "NC"),
];

/// The one table from the access log's `detail` to Envoy's response code details and
/// flags, read by the `response.code_details` and `response.flags` properties and by the
/// access log's `response_flags`. `plugin_details` is what a plugin gave its local reply;
/// `attempts` the tries made upstream (more than one that ended in an upstream failure is
/// Envoy's `URX`, retries exhausted).
pub fn response_details(detail: &str, plugin_details: &str, attempts: u32) -> ResponseDetails {
    let (details, flags): (&str, u64) = match detail {
        "" | "-" => ("via_upstream", 0),
        "no_route" | "unknown_host" | "no_listener" | "no_route_after_plugin" => {
            ("route_not_found", 0x100)
        }
        "no_cluster" => ("cluster_not_found", 0x1000000),
        "upstream_connect_failure" => (
            "upstream_reset_before_response_started{connection_failure}",
            0x20,
        ),
        "upstream_timeout" => ("upstream_response_timeout", 0x4),
        "upstream_reset" => ("upstream_reset_before_response_started{remote_reset}", 0x10),
        "upstream_overflow" => ("upstream_reset_before_response_started{overflow}", 0x80),
        "no_healthy_upstream" => ("no_healthy_upstream", 0x2),
        "response_body_error" => ("upstream_reset_after_response_started{remote_reset}", 0x10),
        "fault_abort" => ("fault_filter_abort", 0x400),
        "fault_delay" => ("via_upstream", 0x200),
        "direct_response" | "redirect" => ("direct_response", 0),
        "plugin_local_reply" => (plugin_details, 0),
        "plugin_failure" => ("wasm_fail_stream", 0),
        "plugin_reset" => ("plugin_reset", 0x8),
        "request_body_too_large" => ("request_payload_too_large", 0),
        "request_body_timeout" => ("stream_idle_timeout", 0x10000),
        "downstream_body_error" => ("codec_error", 0x40000),
        other => (other, 0),
    };
    let upstream_failure = flags & (0x4 | 0x10 | 0x20) != 0 && detail != "response_body_error";
    let retried = if upstream_failure && attempts > 1 {
        0x8000
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

#[cfg(test)]
mod tests {
    use super::*;

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
