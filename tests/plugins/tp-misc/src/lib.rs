//! `tp-misc`: the host functions the other test plugins do not call in a request, one per
//! value of the request header `x-misc`. Results go into request headers (the echo backend
//! shows them):
//! - `log-level`: `proxy_get_log_level` → `x-log-level: <0-5>`;
//! - `foreign`: `proxy_call_foreign_function("tollgate.no_such_function")` → `x-foreign:
//!   <Ok or the status name>` (a host without that function answers `NotFound`);
//! - `callbacks`: `proxy_call_foreign_function("tollgate.callbacks", [1])` from a request
//!   context, and with two bytes → `x-callbacks: <status>` and `x-callbacks-two: <status>`
//!   (only a root context says what its configuration needs, in one byte);
//! - `done`: `proxy_done` → `x-done: <Ok or the status name>`;
//! - `status`: `proxy_get_status` before any callout → `x-status: <code>`;
//! - `grpc-cancel`: opens a gRPC stream to cluster `grpc` (`tollgate.test.Echo/Chat`),
//!   cancels it, cancels it again → `x-grpc-cancel: Ok`, `x-grpc-cancel-again: <status
//!   name>`; any stream callback after the cancel would add `x-grpc-after-cancel: <callback>`
//!   (none must arrive) — the request continues at once;
//! - `reset`: `proxy_close_stream(HttpRequest)` in the request headers → the gateway resets
//!   the stream: no response (HTTP/1.1 closes the connection, HTTP/2 sends RST_STREAM);
//! - `reset-response`: `proxy_close_stream(HttpResponse)` in the response headers → the same,
//!   before any of the response is sent;
//! - `reset-body`: `proxy_close_stream(HttpResponse)` in the first response body callback →
//!   the response head is out, its body ends in a reset.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Misc { mode: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Misc {
    /// The request's `x-misc`, for the response callbacks.
    mode: Option<String>,
}

fn outcome<T>(result: Result<T, proxy_wasm::types::Status>) -> String {
    match result {
        Ok(_) => "Ok".to_string(),
        Err(status) => format!("{status:?}"),
    }
}

impl Context for Misc {
    fn on_grpc_stream_message(&mut self, _token: u32, _size: usize) {
        self.add_http_request_header("x-grpc-after-cancel", "message");
    }

    fn on_grpc_stream_close(&mut self, _token: u32, _status: u32) {
        self.add_http_request_header("x-grpc-after-cancel", "close");
    }
}

impl HttpContext for Misc {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.mode.as_deref() == Some("reset-response") {
            let _ = hostcalls::reset_http_response();
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if self.mode.as_deref() == Some("reset-body") {
            let _ = hostcalls::reset_http_response();
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.mode = self.get_http_request_header("x-misc");
        match self.mode.as_deref() {
            Some("log-level") => {
                let level = hostcalls::get_log_level().map(|level| level as u32);
                self.add_http_request_header(
                    "x-log-level",
                    &level.map_or_else(|s| format!("{s:?}"), |l| l.to_string()),
                );
            }
            Some("foreign") => {
                let result =
                    hostcalls::call_foreign_function("tollgate.no_such_function", Some(b"{}"));
                self.add_http_request_header("x-foreign", &outcome(result));
            }
            Some("callbacks") => {
                let result = hostcalls::call_foreign_function("tollgate.callbacks", Some(&[1]));
                self.add_http_request_header("x-callbacks", &outcome(result));
                let result = hostcalls::call_foreign_function("tollgate.callbacks", Some(&[1, 2]));
                self.add_http_request_header("x-callbacks-two", &outcome(result));
            }
            Some("done") => self.add_http_request_header("x-done", &outcome(hostcalls::done())),
            Some("status") => {
                let code = hostcalls::get_grpc_status().map(|(code, _)| code);
                self.add_http_request_header(
                    "x-status",
                    &code.map_or_else(|s| format!("{s:?}"), |c| c.to_string()),
                );
            }
            Some("grpc-cancel") => {
                match hostcalls::open_grpc_stream("grpc", "tollgate.test.Echo", "Chat", Vec::new())
                {
                    Ok(token) => {
                        self.add_http_request_header(
                            "x-grpc-cancel",
                            &outcome(hostcalls::cancel_grpc_stream(token)),
                        );
                        self.add_http_request_header(
                            "x-grpc-cancel-again",
                            &outcome(hostcalls::cancel_grpc_stream(token)),
                        );
                    }
                    Err(status) => self.add_http_request_header(
                        "x-grpc-cancel",
                        &format!("open failed: {status:?}"),
                    ),
                }
            }
            Some("reset") => {
                let _ = hostcalls::reset_http_request();
                return Action::Pause;
            }
            _ => {}
        }
        Action::Continue
    }
}
