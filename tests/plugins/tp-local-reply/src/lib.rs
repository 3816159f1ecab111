//! `tp-local-reply`: answers requests itself. No configuration.
//!
//! - Request headers: if `x-deny` is present, calls
//!   `send_http_response(403, [("x-denied-by", "tp-local-reply")], Some(b"denied\n"))` and
//!   returns `Pause`.
//! - Request headers: if `x-deny-on-response` is present, remembers it; then in the response
//!   headers of the upstream answer it calls
//!   `send_http_response(418, [("x-denied-by", "tp-local-reply-response")], Some(b"teapot\n"))`
//!   instead, and returns `Pause`.
//! - Request headers: if `x-grpc-reply: <code>` is present, calls
//!   `send_grpc_response(<code>, <x-grpc-reply-message, or none when absent>,
//!   [("x-denied-by", "tp-local-reply")])` and returns `Pause`.
//! - Request headers: if `x-deny-status: <code>` is present, calls
//!   `send_http_response(<code>, [("x-denied-by", "tp-local-reply")], Some(b"slow down"))`
//!   and returns `Pause`.
//! - Every `on_http_response_headers` call (also for its own local replies, which the host runs
//!   through the same plugin's response callbacks) adds `x-tp-local-reply-saw: <:status>` to
//!   the response it sees; a response-phase local reply is sent at most once per request, so
//!   seeing its own 418 does not loop.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> {
        Box::new(LocalReply { deny_on_response: false, replied_on_response: false })
    });
}}

struct LocalReply {
    deny_on_response: bool,
    replied_on_response: bool,
}

impl Context for LocalReply {}

impl HttpContext for LocalReply {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(code) = self.get_http_request_header("x-grpc-reply") {
            let message = self.get_http_request_header("x-grpc-reply-message");
            self.send_grpc_response(
                grpc_code(code.parse().unwrap_or(2)),
                message.as_deref(),
                vec![("x-denied-by", b"tp-local-reply".as_slice())],
            );
            return Action::Pause;
        }
        if let Some(code) = self.get_http_request_header("x-deny-status") {
            self.send_http_response(
                code.parse().unwrap_or(500),
                vec![("x-denied-by", "tp-local-reply")],
                Some(b"slow down"),
            );
            return Action::Pause;
        }
        if self.get_http_request_header("x-deny").is_some() {
            self.send_http_response(
                403,
                vec![("x-denied-by", "tp-local-reply")],
                Some(b"denied\n"),
            );
            return Action::Pause;
        }
        self.deny_on_response = self.get_http_request_header("x-deny-on-response").is_some();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let status = self
            .get_http_response_header(":status")
            .unwrap_or_else(|| "<missing>".to_owned());
        self.add_http_response_header("x-tp-local-reply-saw", &status);
        if self.deny_on_response && !self.replied_on_response {
            self.replied_on_response = true;
            self.send_http_response(
                418,
                vec![("x-denied-by", "tp-local-reply-response")],
                Some(b"teapot\n"),
            );
            return Action::Pause;
        }
        Action::Continue
    }
}

/// The SDK's status enum for a code (UNKNOWN for any it does not name).
fn grpc_code(code: u32) -> proxy_wasm::types::GrpcStatusCode {
    use proxy_wasm::types::GrpcStatusCode as Code;
    match code {
        0 => Code::Ok,
        1 => Code::Cancelled,
        3 => Code::InvalidArgument,
        4 => Code::DeadlineExceeded,
        5 => Code::NotFound,
        6 => Code::AlreadyExists,
        7 => Code::PermissionDenied,
        8 => Code::ResourceExhausted,
        9 => Code::FailedPrecondition,
        10 => Code::Aborted,
        11 => Code::OutOfRange,
        12 => Code::Unimplemented,
        13 => Code::Internal,
        14 => Code::Unavailable,
        15 => Code::DataLoss,
        16 => Code::Unauthenticated,
        _ => Code::Unknown,
    }
}
