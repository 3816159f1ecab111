//! `tp-callout`: an HTTP callout per request, pausing the request until it answers.
//!
//! Configuration: `{"cluster": "<cluster name>", "path": "/<path and query>", "timeout_ms": N}`
//! (all required; otherwise a log line naming the field and `on_configure` returns false).
//!
//! Request headers:
//! - with `x-callout-missing-path` present: calls `dispatch_http_call(cluster,
//!   [(":method","GET"), (":authority", cluster)], None, [], timeout)` — no `:path` — and adds
//!   request header `x-callout-error: <result>` where result is the `Status` debug name
//!   (`BadArgument` expected) or `ok` if the host accepted the call; continues at once.
//! - otherwise: dispatches `GET` with `:method GET`, `:path <path>`, `:authority <cluster>`,
//!   no body, `timeout_ms`, and returns `Pause`. If the dispatch itself fails, adds
//!   `x-callout-status: dispatch-error-<Status>` and continues.
//!
//! `on_http_call_response(token, num_headers, body_size, _)`: adds request headers
//! `x-callout-status: <callout :status>` (`failed` when the response has no headers, i.e. a
//! timeout or reset), `x-callout-header-count: <pairs get_http_call_response_headers
//! returned>` (asked whatever `num_headers` says) and `x-callout-body-len: <bytes read with
//! get_http_call_response_body>`,
//! and `x-callout-token-ok: true|false` (whether the token is the one `dispatch` returned),
//! then `resume_http_request()`.
//!
//! Request body (`on_http_request_body`): counts its callbacks and bytes, and how many of
//! the callbacks came before the callout answered; continues. Response headers: adds
//! `x-callout-body-calls`, `x-callout-body-bytes` and `x-callout-body-early` (callbacks
//! before the answer; Envoy runs none while request headers are paused).

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

#[derive(Clone, serde::Deserialize)]
struct Config {
    cluster: String,
    path: String,
    timeout_ms: u64,
}

struct Root {
    config: Option<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = Some(config);
                true
            }
            Err(e) => {
                let _ = hostcalls::log(
                    LogLevel::Error,
                    &format!("tp-callout: bad configuration: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Callout {
            config,
            token: None,
            answered: false,
            body: BodySeen::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Callout {
    config: Config,
    token: Option<u32>,
    answered: bool,
    body: BodySeen,
}

/// What the request body callbacks saw.
#[derive(Default)]
struct BodySeen {
    calls: usize,
    bytes: usize,
    /// Callbacks before the callout answered.
    early: usize,
}

impl Context for Callout {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let status = if num_headers == 0 {
            "failed".to_owned()
        } else {
            self.get_http_call_response_header(":status")
                .unwrap_or_else(|| "failed".to_owned())
        };
        let body_len = if body_size > 0 {
            self.get_http_call_response_body(0, body_size)
                .map_or(0, |body| body.len())
        } else {
            0
        };
        // The whole list whatever `num_headers` says, as plugins written with this SDK
        // commonly read it: a failed call has none (an empty list in Envoy and here).
        let header_count = self.get_http_call_response_headers().len();
        self.add_http_request_header("x-callout-header-count", &header_count.to_string());
        self.add_http_request_header("x-callout-status", &status);
        self.add_http_request_header("x-callout-body-len", &body_len.to_string());
        let token_ok = self.token == Some(token);
        self.add_http_request_header(
            "x-callout-token-ok",
            if token_ok { "true" } else { "false" },
        );
        self.answered = true;
        self.resume_http_request();
    }
}

impl HttpContext for Callout {
    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.body.calls += 1;
        self.body.bytes += body_size;
        if !self.answered {
            self.body.early += 1;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let BodySeen {
            calls,
            bytes,
            early,
        } = self.body;
        self.add_http_response_header("x-callout-body-calls", &calls.to_string());
        self.add_http_response_header("x-callout-body-bytes", &bytes.to_string());
        self.add_http_response_header("x-callout-body-early", &early.to_string());
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let cluster = self.config.cluster.clone();
        if self
            .get_http_request_header("x-callout-missing-path")
            .is_some()
        {
            let result = self.dispatch_http_call(
                &cluster,
                vec![(":method", "GET"), (":authority", &cluster)],
                None,
                vec![],
                timeout,
            );
            let outcome = match result {
                Ok(_) => "ok".to_owned(),
                Err(status) => format!("{status:?}"),
            };
            self.add_http_request_header("x-callout-error", &outcome);
            return Action::Continue;
        }
        let path = self.config.path.clone();
        match self.dispatch_http_call(
            &cluster,
            vec![
                (":method", "GET"),
                (":path", &path),
                (":authority", &cluster),
            ],
            None,
            vec![],
            timeout,
        ) {
            Ok(token) => {
                self.token = Some(token);
                Action::Pause
            }
            Err(status) => {
                self.add_http_request_header(
                    "x-callout-status",
                    &format!("dispatch-error-{status:?}"),
                );
                Action::Continue
            }
        }
    }
}
