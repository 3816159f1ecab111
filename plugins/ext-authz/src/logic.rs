//! Pure ext-authz logic: configuration, the check request, and the decision taken on the
//! authorization service's answer.

use std::time::Duration;

use serde::Deserialize;
use tollgate_sdk::callout::{CallResponse, HttpCall};
use tollgate_sdk::config::{ConfigError, Validate};
use tollgate_sdk::consumer::{self, Consumer};
use tollgate_sdk::is_header_name;

/// Request header set on requests let through because the authorization service failed
/// and `failure_mode_allow` is on (a client-sent copy is always removed).
pub const FAILURE_MODE_ALLOWED_HEADER: &str = "x-ext-authz-failure-mode-allowed";

/// Headers the plugin adds to every check request, from the original request.
pub const FORWARDED_METHOD: &str = "x-forwarded-method";
pub const FORWARDED_URI: &str = "x-forwarded-uri";
pub const FORWARDED_HOST: &str = "x-forwarded-host";
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";
const FORWARDED: [&str; 4] = [
    FORWARDED_METHOD,
    FORWARDED_URI,
    FORWARDED_HOST,
    FORWARDED_PROTO,
];

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster of the authorization service (`clusters:` in Tollgate, a cluster in Envoy).
    pub cluster: String,
    /// `:authority` of the check request; default: the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// Path (and query) of the check request.
    #[serde(default = "default_path")]
    pub path: String,
    /// Method of the check request (the original one travels as `x-forwarded-method`).
    #[serde(default = "default_method")]
    pub method: String,
    /// Client request headers copied onto the check request (case-insensitive names).
    #[serde(default = "default_allowed_headers")]
    pub allowed_headers: Vec<String>,
    /// Headers of an allowing answer set on the request before it is forwarded.
    #[serde(default)]
    pub headers_to_upstream: Vec<String>,
    /// Headers of a denying answer sent to the client with the denial.
    #[serde(default = "default_headers_to_client")]
    pub headers_to_client: Vec<String>,
    /// Header of an allowing answer that names the consumer (SDK consumer convention).
    #[serde(default)]
    pub consumer_header: Option<String>,
    /// Header of an allowing answer with the consumer's groups, comma-separated.
    #[serde(default)]
    pub groups_header: Option<String>,
    /// How long to wait for the answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// On an error (5xx, timeout, reset, dispatch failure): let the request through.
    #[serde(default)]
    pub failure_mode_allow: bool,
    /// On an error without `failure_mode_allow`: the status answered to the client.
    #[serde(default = "default_status_on_error")]
    pub status_on_error: u16,
}

fn default_path() -> String {
    "/".into()
}
fn default_method() -> String {
    "GET".into()
}
fn default_allowed_headers() -> Vec<String> {
    vec!["authorization".into()]
}
fn default_headers_to_client() -> Vec<String> {
    vec![
        "www-authenticate".into(),
        "content-type".into(),
        "location".into(),
    ]
}
fn default_timeout_ms() -> u64 {
    200
}
fn default_status_on_error() -> u16 {
    403
}

/// Headers whose framing meaning forbids copying them between messages.
fn is_framing(name: &str) -> bool {
    matches!(
        name,
        "content-length" | "transfer-encoding" | "connection" | "host"
    )
}

fn check_names(
    names: &[String],
    field: &str,
    extra: impl Fn(&str) -> Option<&'static str>,
) -> Result<(), ConfigError> {
    for (i, name) in names.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        let problem = if !is_header_name(name) {
            Some("not a valid header name (pseudo-headers cannot be used)")
        } else if is_framing(&lower) {
            Some("framing headers (content-length, transfer-encoding, connection, host) cannot be copied")
        } else {
            extra(&lower)
        };
        if let Some(problem) = problem {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                format!("{name:?}: {problem}"),
            ));
        }
    }
    Ok(())
}

fn check_name(name: &Option<String>, field: &str) -> Result<(), ConfigError> {
    match name {
        Some(name) if !is_header_name(name) => Err(ConfigError::new(
            field,
            format!("{name:?}: not a valid header name"),
        )),
        _ => Ok(()),
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.trim().is_empty() {
            return Err(ConfigError::new("cluster", "must name a cluster"));
        }
        if let Some(authority) = &self.authority {
            if authority.is_empty() || authority.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(ConfigError::new(
                    "authority",
                    "must be a host name, optionally with a port",
                ));
            }
        }
        if !self.path.starts_with('/') || self.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ConfigError::new(
                "path",
                format!("{:?}: must start with / and contain no spaces", self.path),
            ));
        }
        if self.method.is_empty() || !self.method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::new(
                "method",
                format!("{:?}: must be an upper-case HTTP method", self.method),
            ));
        }
        check_names(&self.allowed_headers, "allowed_headers", |name| {
            FORWARDED
                .contains(&name)
                .then_some("set by the plugin from the original request; do not list it")
        })?;
        check_names(&self.headers_to_upstream, "headers_to_upstream", |_| None)?;
        check_names(&self.headers_to_client, "headers_to_client", |_| None)?;
        check_name(&self.consumer_header, "consumer_header")?;
        check_name(&self.groups_header, "groups_header")?;
        if self.groups_header.is_some() && self.consumer_header.is_none() {
            return Err(ConfigError::new(
                "groups_header",
                "needs consumer_header (groups belong to a consumer)",
            ));
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Err(ConfigError::new(
                "timeout_ms",
                format!("{}: must be between 1 and 60000", self.timeout_ms),
            ));
        }
        if !(200..=599).contains(&self.status_on_error) {
            return Err(ConfigError::new(
                "status_on_error",
                format!(
                    "{}: must be an HTTP status from 200 to 599",
                    self.status_on_error
                ),
            ));
        }
        Ok(())
    }
}

/// The parts of the original request the check request needs.
#[derive(Debug, Clone, Default)]
pub struct Original {
    pub method: String,
    /// Path with query.
    pub path: String,
    pub authority: String,
    pub scheme: String,
    /// Every request header (lower-case names), pseudo-headers included or not.
    pub headers: Vec<(String, String)>,
}

impl Config {
    fn listed(names: &[String], name: &str) -> bool {
        names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// The check request for `original`: `method` on `path`, the `allowed_headers` the
    /// client sent (every value, in order) and the four `x-forwarded-*` headers.
    pub fn check_request(&self, original: &Original) -> HttpCall {
        let authority = self.authority.as_deref().unwrap_or(&self.cluster);
        let mut call = HttpCall::new(&self.method, authority, &self.path)
            .timeout(Duration::from_millis(self.timeout_ms));
        for (name, value) in &original.headers {
            if !name.starts_with(':') && Self::listed(&self.allowed_headers, name) {
                call = call.header(name, value);
            }
        }
        for (name, value) in [
            (FORWARDED_METHOD, &original.method),
            (FORWARDED_URI, &original.path),
            (FORWARDED_HOST, &original.authority),
            (FORWARDED_PROTO, &original.scheme),
        ] {
            if !value.is_empty() {
                call = call.header(name, value);
            }
        }
        call
    }

    /// What to do with the service's answer (status 0: the call failed).
    pub fn decide(&self, response: &CallResponse) -> Decision {
        match response.status {
            200..=299 => self.allow(response),
            300..=499 => Decision::Deny(LocalReply {
                status: response.status,
                headers: self.pick(&self.headers_to_client, response),
                body: response.body.clone(),
            }),
            0 => self.on_error("no answer (timeout, reset or unreachable)".into()),
            status => self.on_error(format!("the authorization service answered {status}")),
        }
    }

    /// What to do when the service could not be asked or did not answer properly.
    pub fn on_error(&self, reason: String) -> Decision {
        if self.failure_mode_allow {
            Decision::AllowOnError { reason }
        } else {
            Decision::Error {
                reason,
                reply: LocalReply {
                    status: self.status_on_error,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: br#"{"message":"authorization service unavailable"}"#.to_vec(),
                },
            }
        }
    }

    fn allow(&self, response: &CallResponse) -> Decision {
        let set = self.pick(&self.headers_to_upstream, response);
        // A listed header the service did not send must not come from the client either.
        let remove = self
            .headers_to_upstream
            .iter()
            .map(|name| name.to_ascii_lowercase())
            .filter(|name| !set.iter().any(|(n, _)| n == name))
            .collect();
        let consumer = self.consumer_header.as_deref().and_then(|header| {
            let name = response.header(header)?.trim();
            if !consumer::is_valid_name(name) {
                return None;
            }
            let groups = self
                .groups_header
                .as_deref()
                .and_then(|h| response.header(h))
                .map(consumer::parse_groups)
                .unwrap_or_default()
                .into_iter()
                .filter(|g| consumer::is_valid_name(g))
                .collect();
            Some(Consumer::new(name, groups))
        });
        Decision::Allow {
            set,
            remove,
            consumer,
        }
    }

    /// The answer's headers named in `names`, lower-case, every value, in answer order.
    fn pick(&self, names: &[String], response: &CallResponse) -> Vec<(String, String)> {
        response
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with(':') && Self::listed(names, name))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
            .collect()
    }
}

/// A response the plugin sends to the client instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the request after setting `set`, removing `remove` and recording `consumer`.
    Allow {
        set: Vec<(String, String)>,
        remove: Vec<String>,
        consumer: Option<Consumer>,
    },
    /// The service said no: answer the client with this.
    Deny(LocalReply),
    /// The service failed and `failure_mode_allow` is on: forward, marked.
    AllowOnError { reason: String },
    /// The service failed: answer `status_on_error`.
    Error { reason: String, reply: LocalReply },
}

#[cfg(test)]
mod tests {
    use tollgate_sdk::config::parse_validated;

    use super::*;

    fn config(json: &str) -> Config {
        parse_validated::<Config>(json.as_bytes()).unwrap()
    }

    fn error(json: &str) -> ConfigError {
        parse_validated::<Config>(json.as_bytes()).unwrap_err()
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> CallResponse {
        let mut list = vec![(":status".to_string(), status.to_string())];
        list.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        CallResponse::from_parts(list, body.as_bytes().to_vec())
    }

    #[test]
    fn defaults_follow_envoy() {
        let c = config(r#"{"cluster": "authz"}"#);
        assert_eq!(c.path, "/");
        assert_eq!(c.method, "GET");
        assert_eq!(c.allowed_headers, ["authorization"]);
        assert_eq!(c.timeout_ms, 200);
        assert!(!c.failure_mode_allow);
        assert_eq!(c.status_on_error, 403);
    }

    #[test]
    fn bad_configurations_name_the_field() {
        assert_eq!(error("{}").to_string(), "missing field `cluster`");
        assert_eq!(
            error(r#"{"cluster": "a", "timeout": 5}"#).path(),
            "timeout",
            "unknown fields are errors"
        );
        assert_eq!(error(r#"{"cluster": " "}"#).path(), "cluster");
        assert_eq!(error(r#"{"cluster": "a", "path": "check"}"#).path(), "path");
        assert_eq!(
            error(r#"{"cluster": "a", "method": "get"}"#).path(),
            "method"
        );
        assert_eq!(
            error(r#"{"cluster": "a", "allowed_headers": ["cookie", "x-forwarded-uri"]}"#).path(),
            "allowed_headers[1]"
        );
        assert_eq!(
            error(r#"{"cluster": "a", "headers_to_upstream": [":path"]}"#).path(),
            "headers_to_upstream[0]"
        );
        assert_eq!(
            error(r#"{"cluster": "a", "headers_to_client": ["content-length"]}"#).path(),
            "headers_to_client[0]"
        );
        assert_eq!(
            error(r#"{"cluster": "a", "groups_header": "x-groups"}"#).path(),
            "groups_header"
        );
        assert_eq!(
            error(r#"{"cluster": "a", "timeout_ms": 0}"#).path(),
            "timeout_ms"
        );
        assert_eq!(
            error(r#"{"cluster": "a", "status_on_error": 99}"#).path(),
            "status_on_error"
        );
        assert_eq!(
            error(r#"{"cluster": "a", "failure_mode_allow": "yes"}"#).path(),
            "failure_mode_allow"
        );
    }

    #[test]
    fn the_check_request_carries_allowed_headers_and_the_original_request() {
        let c = config(
            r#"{"cluster": "authz", "path": "/check", "allowed_headers": ["Authorization", "x-tenant"]}"#,
        );
        let original = Original {
            method: "POST".into(),
            path: "/orders?id=1".into(),
            authority: "shop.test".into(),
            scheme: "http".into(),
            headers: vec![
                (":method".into(), "POST".into()),
                ("authorization".into(), "Bearer t".into()),
                ("cookie".into(), "secret".into()),
                ("x-tenant".into(), "a".into()),
                ("x-tenant".into(), "b".into()),
                ("x-forwarded-uri".into(), "/forged".into()),
            ],
        };
        let call = c.check_request(&original);
        assert_eq!(call.timeout, Duration::from_millis(200));
        assert_eq!(
            call.header_list(),
            [
                (":method", "GET"),
                (":path", "/check"),
                (":authority", "authz"),
                ("authorization", "Bearer t"),
                ("x-tenant", "a"),
                ("x-tenant", "b"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/orders?id=1"),
                ("x-forwarded-host", "shop.test"),
                ("x-forwarded-proto", "http"),
            ]
        );
    }

    #[test]
    fn two_hundreds_allow_and_copy_headers_and_the_consumer() {
        let c = config(
            r#"{"cluster": "a", "headers_to_upstream": ["x-user", "X-Plan", "x-tenant"],
                "consumer_header": "x-user", "groups_header": "x-groups"}"#,
        );
        let decision = c.decide(&answer(
            204,
            &[
                ("X-User", "alice"),
                ("x-plan", "gold"),
                ("x-groups", "ops, dev"),
                ("x-other", "1"),
            ],
            "",
        ));
        assert_eq!(
            decision,
            Decision::Allow {
                set: vec![
                    ("x-user".into(), "alice".into()),
                    ("x-plan".into(), "gold".into())
                ],
                remove: vec!["x-tenant".into()],
                consumer: Some(Consumer::new("alice", vec!["ops".into(), "dev".into()])),
            }
        );
        // No usable name: allowed, without a consumer.
        let decision = c.decide(&answer(200, &[("x-user", "a,b")], ""));
        assert!(
            matches!(decision, Decision::Allow { consumer: None, .. }),
            "{decision:?}"
        );
    }

    #[test]
    fn three_and_four_hundreds_deny_with_the_answer() {
        let c = config(r#"{"cluster": "a"}"#);
        assert_eq!(
            c.decide(&answer(
                401,
                &[
                    ("www-authenticate", "Bearer"),
                    ("content-type", "text/plain"),
                    ("x-secret", "s")
                ],
                "who are you?"
            )),
            Decision::Deny(LocalReply {
                status: 401,
                headers: vec![
                    ("www-authenticate".into(), "Bearer".into()),
                    ("content-type".into(), "text/plain".into())
                ],
                body: b"who are you?".to_vec(),
            })
        );
        let redirect = c.decide(&answer(302, &[("location", "/login")], ""));
        assert!(
            matches!(&redirect, Decision::Deny(r) if r.status == 302 && r.headers == [("location".to_string(), "/login".to_string())]),
            "{redirect:?}"
        );
    }

    #[test]
    fn errors_follow_the_failure_mode() {
        let closed = config(r#"{"cluster": "a"}"#);
        for status in [0, 500, 503, 101] {
            match closed.decide(&answer(status, &[], "oops")) {
                Decision::Error { reply, .. } => {
                    assert_eq!(reply.status, 403);
                    assert!(String::from_utf8_lossy(&reply.body).contains("unavailable"));
                }
                other => panic!("{status}: {other:?}"),
            }
        }
        let failed = CallResponse::default();
        let custom = config(r#"{"cluster": "a", "status_on_error": 503}"#);
        assert!(
            matches!(custom.decide(&failed), Decision::Error { reply, .. } if reply.status == 503)
        );
        let open = config(r#"{"cluster": "a", "failure_mode_allow": true}"#);
        assert!(matches!(
            open.decide(&failed),
            Decision::AllowOnError { .. }
        ));
        assert!(matches!(
            open.decide(&answer(502, &[], "")),
            Decision::AllowOnError { .. }
        ));
        // A denial is a denial whatever the failure mode.
        assert!(matches!(
            open.decide(&answer(403, &[], "")),
            Decision::Deny(_)
        ));
    }
}
