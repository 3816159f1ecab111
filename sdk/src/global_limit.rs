//! Limits shared by every gateway replica: the `global` settings of the rate-limit and quota
//! plugins, and the call to a rate limit service that decides for them.
//!
//! Without `global` a plugin counts in proxy-wasm shared data, which is per gateway process.
//! With it, each request asks a rate limit service over gRPC (Envoy's
//! `RateLimitService/ShouldRateLimit`, see [`crate::ratelimit_service`]) on the cluster
//! `global.cluster`, sending the request's descriptor with the plan's limit. `tollgate
//! ratelimit` is such a service (counters in Redis); Envoy's own rate limit service is
//! another, so the same module limits the same way inside Envoy.
//!
//! ```yaml
//! global: { cluster: ratelimit, domain: shop, timeout: 200ms, failure_mode: allow }
//! ```
//!
//! When the service cannot answer within `timeout` (down, unreachable, Redis down behind it),
//! `failure_mode` decides: `allow` (the default) lets the request through, `deny` answers
//! 500 as Envoy's rate limit filter does. Either way the plugin's counter
//! `global_limit_failures` counts it and a warning is logged at most once per 10 s.

use std::cell::Cell;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, LogLevel, MetricType, Status};
use serde::Deserialize;

use crate::config::{ensure, join_path, parse_duration, ConfigError};
use crate::ratelimit_service::{
    Code, Descriptor, DescriptorStatus, RateLimitRequest, RateLimitResponse, METHOD, SERVICE,
};
use crate::shared::Decision;

/// `global:` as written in a plugin's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    /// The cluster of the rate limit service (HTTP/2).
    pub cluster: String,
    /// The service's domain: limits of different domains never share a counter.
    pub domain: String,
    /// How long a request waits for the service (`200ms` by default; `ms`, `s` or `m`).
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub failure_mode: FailureMode,
}

/// What happens to a request when the service does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    #[default]
    Allow,
    Deny,
}

/// Validated `global` settings, and the failure bookkeeping of this VM.
#[derive(Debug, Clone)]
pub struct Global {
    pub cluster: String,
    pub domain: String,
    pub timeout: Duration,
    pub failure_mode: FailureMode,
    /// When a failure was last logged (host time, seconds).
    last_logged: Cell<Option<u64>>,
    failures_metric: Cell<Option<u32>>,
}

/// Seconds between two warnings about a failing rate limit service.
const LOG_INTERVAL_SECS: u64 = 10;

impl RawGlobal {
    /// Validates the settings found at `path` (for example `global`).
    pub fn validate(self, path: &str) -> Result<Global, ConfigError> {
        ensure(
            !self.cluster.trim().is_empty(),
            &join_path(path, "cluster"),
            "must name the rate limit service's cluster",
        )?;
        ensure(
            !self.domain.trim().is_empty(),
            &join_path(path, "domain"),
            "must not be empty",
        )?;
        let timeout = match &self.timeout {
            None => Duration::from_millis(200),
            Some(text) => parse_duration(text)
                .filter(|timeout| !timeout.is_zero() && *timeout <= Duration::from_secs(60))
                .ok_or_else(|| {
                    ConfigError::new(
                        join_path(path, "timeout"),
                        format!(
                            "{text:?} is not a duration between 1ms and 60s (like 200ms or 1s)"
                        ),
                    )
                })?,
        };
        Ok(Global {
            cluster: self.cluster,
            domain: self.domain,
            timeout,
            failure_mode: self.failure_mode,
            last_logged: Cell::new(None),
            failures_metric: Cell::new(None),
        })
    }
}

/// What the service said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the decision carries the limit, what remains and the reset for the headers.
    Allowed(Decision),
    /// Over the limit.
    OverLimit(Decision),
    /// No usable answer: the failure mode decides.
    Failed(String),
}

impl Global {
    /// Sends the descriptors (each with hits 1 unless it says otherwise) to the service; the
    /// token of the call, whose answer arrives in `on_grpc_call_response`.
    pub fn dispatch(&self, descriptors: Vec<Descriptor>) -> Result<u32, Status> {
        let request = RateLimitRequest {
            domain: self.domain.clone(),
            descriptors,
            hits_addend: 1,
        };
        hostcalls::dispatch_grpc_call(
            &self.cluster,
            SERVICE,
            METHOD,
            Vec::new(),
            Some(&request.encode()),
            self.timeout,
        )
    }

    /// The answer of a call with one descriptor, in `on_grpc_call_response(token,
    /// status_code, size)`.
    pub fn verdict(&self, status_code: u32, response_size: usize) -> Verdict {
        match answer_bytes(status_code, response_size) {
            Ok(bytes) => verdict_of(&bytes),
            Err(reason) => Verdict::Failed(reason),
        }
    }

    /// The whole answer of a call, in `on_grpc_call_response(token, status_code, size)`: a
    /// response whose overall code is OK or OVER_LIMIT, or why there is none.
    pub fn response(
        &self,
        status_code: u32,
        response_size: usize,
    ) -> Result<RateLimitResponse, String> {
        let bytes = answer_bytes(status_code, response_size)?;
        let response = RateLimitResponse::decode(&bytes)
            .ok_or("the rate limit service's answer is not a RateLimitResponse")?;
        match response.overall_code {
            Code::Unknown => Err("the rate limit service answered UNKNOWN".into()),
            _ => Ok(response),
        }
    }

    /// The service gave no usable answer to the current request: counts and logs it, then
    /// applies the failure mode. `Allow` returns `Continue` (the caller resumes the request
    /// if it paused it); `Deny` answers 500 with `{"error": ERROR, ...}` and returns `Pause`.
    pub fn fail(&self, plugin: &str, reason: &str, error: &str) -> Action {
        self.record_failure(plugin, reason);
        match self.failure_mode {
            FailureMode::Allow => Action::Continue,
            FailureMode::Deny => {
                let body = serde_json::json!({
                    "error": error,
                    "message": "the rate limit service is unavailable",
                })
                .to_string();
                let _ = hostcalls::send_http_response(
                    500,
                    vec![("content-type", "application/json")],
                    Some(body.as_bytes()),
                );
                Action::Pause
            }
        }
    }

    /// Counts a failed call and logs it, at most once per interval.
    pub fn record_failure(&self, plugin: &str, reason: &str) {
        let metric = match self.failures_metric.get() {
            Some(id) => Some(id),
            None => {
                let id = crate::metrics::define(MetricType::Counter, "global_limit_failures");
                self.failures_metric.set(id);
                id
            }
        };
        if let Some(id) = metric {
            crate::metrics::increment(id, 1);
        }
        let now = crate::now_secs();
        if self
            .last_logged
            .get()
            .is_none_or(|last| now >= last + LOG_INTERVAL_SECS)
        {
            self.last_logged.set(Some(now));
            let outcome = match self.failure_mode {
                FailureMode::Allow => "requests are allowed (failure_mode: allow)",
                FailureMode::Deny => "requests are refused with 500 (failure_mode: deny)",
            };
            crate::log(
                LogLevel::Warn,
                &format!(
                    "{plugin}: global limit on cluster {:?} unavailable: {reason}; {outcome} \
                     (logged once per {LOG_INTERVAL_SECS} s; global_limit_failures counts each)",
                    self.cluster
                ),
            );
        }
    }
}

fn answer_bytes(status_code: u32, response_size: usize) -> Result<Vec<u8>, String> {
    if status_code != 0 {
        return Err(format!(
            "the rate limit service answered gRPC status {status_code}"
        ));
    }
    Ok(
        hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
            .ok()
            .flatten()
            .unwrap_or_default(),
    )
}

/// The verdict in a `RateLimitResponse` for a call with one descriptor.
pub fn verdict_of(bytes: &[u8]) -> Verdict {
    let Some(response) = RateLimitResponse::decode(bytes) else {
        return Verdict::Failed(
            "the rate limit service's answer is not a RateLimitResponse".into(),
        );
    };
    let status = response.statuses.first().cloned().unwrap_or_default();
    match response.overall_code {
        Code::Ok => Verdict::Allowed(decision(&status, true)),
        Code::OverLimit => Verdict::OverLimit(decision(&status, false)),
        Code::Unknown => Verdict::Failed("the rate limit service answered UNKNOWN".into()),
    }
}

fn decision(status: &DescriptorStatus, allowed: bool) -> Decision {
    let reset_after = Duration::from_secs(status.seconds_until_reset.unwrap_or(0));
    Decision {
        allowed,
        limit: u64::from(status.requests_per_unit),
        remaining: u64::from(status.limit_remaining),
        reset_after,
        retry_after: if allowed { Duration::ZERO } else { reset_after },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(json: &str) -> Result<Global, String> {
        let raw: RawGlobal = crate::config::parse(json.as_bytes()).map_err(|e| e.to_string())?;
        raw.validate("global").map_err(|e| e.to_string())
    }

    #[test]
    fn settings_validate_with_defaults() {
        let settings = global(r#"{"cluster": "ratelimit", "domain": "shop"}"#).unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(200));
        assert_eq!(settings.failure_mode, FailureMode::Allow);
        let settings = global(
            r#"{"cluster": "rl", "domain": "shop", "timeout": "1.5s", "failure_mode": "deny"}"#,
        )
        .unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(1500));
        assert_eq!(settings.failure_mode, FailureMode::Deny);
        assert_eq!(
            global(r#"{"cluster": "rl", "domain": "shop", "timeout": "soon"}"#).unwrap_err(),
            "field \"global.timeout\": \"soon\" is not a duration between 1ms and 60s (like 200ms or 1s)"
        );
        assert_eq!(
            global(r#"{"cluster": "", "domain": "shop"}"#).unwrap_err(),
            "field \"global.cluster\": must name the rate limit service's cluster"
        );
        assert!(
            global(r#"{"cluster": "rl", "domain": "d", "failure_mode": "maybe"}"#)
                .unwrap_err()
                .contains("unknown variant `maybe`")
        );
    }

    #[test]
    fn answers_become_decisions() {
        // OVER_LIMIT, 30 per minute, none left, reset in 42 s.
        let over: &[u8] = &[
            0x08, 2, 0x12, 12, 0x08, 2, 0x12, 4, 0x08, 30, 0x10, 2, 0x22, 2, 0x08, 42,
        ];
        let Verdict::OverLimit(decision) = verdict_of(over) else {
            panic!("over limit expected");
        };
        assert_eq!((decision.limit, decision.remaining), (30, 0));
        assert_eq!(decision.retry_after, Duration::from_secs(42));
        // OK with 7 left.
        let ok: &[u8] = &[
            0x08, 1, 0x12, 10, 0x08, 1, 0x12, 4, 0x08, 30, 0x10, 2, 0x18, 7,
        ];
        let Verdict::Allowed(decision) = verdict_of(ok) else {
            panic!("allowed expected");
        };
        assert_eq!(decision.remaining, 7);
        assert!(matches!(verdict_of(&[0xff]), Verdict::Failed(_)));
        assert!(matches!(verdict_of(&[]), Verdict::Failed(_)));
    }
}
