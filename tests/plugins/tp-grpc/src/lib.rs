//! `tp-grpc`: a unary gRPC callout per request, pausing the request until it answers.
//!
//! Configuration: `{"cluster": "<cluster name>", "service": "<pkg.Service>", "method":
//! "<Method>"}` (all required; otherwise a log line and `on_configure` returns false).
//!
//! Request headers: `dispatch_grpc_call(cluster, service, method, [("x-tp-grpc", b"1")],
//! Some(MESSAGE), 2 s)` with `MESSAGE` = the 7 bytes `0a 05 h e l l o` (a protobuf string
//! field 1 = "hello"; the host adds the 5-byte gRPC frame prefix), returns `Pause`. A failed
//! dispatch adds `x-grpc-status: dispatch-error-<Status>` and continues.
//!
//! `on_grpc_call_response(token, status_code, response_size)`: adds request headers
//! `x-grpc-status: <status_code>`, `x-grpc-len: <response_size>` and `x-grpc-body: <the
//! response message read with get_grpc_call_response_body, as lossy UTF-8>` (only when
//! response_size > 0), then `resume_http_request()`.
//!
//! With `"stream": true` in the configuration it opens a gRPC stream instead
//! (`open_grpc_stream` with the same metadata), sends two messages (`one`, then `two` with
//! end of stream) and pauses. It counts `on_grpc_stream_initial_metadata`, collects every
//! `on_grpc_stream_message`, and on `on_grpc_stream_close(token, status)` adds request
//! headers `x-grpc-stream-status: <status>`, `x-grpc-stream-messages: <count>`,
//! `x-grpc-stream-body: <the messages joined by ','>` and `x-grpc-stream-metadata: <initial
//! metadata count>`, then resumes.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

/// The request message sent to the gRPC service.
pub const MESSAGE: &[u8] = b"\x0a\x05hello";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

#[derive(Clone, serde::Deserialize)]
struct Config {
    cluster: String,
    service: String,
    method: String,
    #[serde(default)]
    stream: bool,
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
                let _ =
                    hostcalls::log(LogLevel::Error, &format!("tp-grpc: bad configuration: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Grpc {
            config: self.config.clone()?,
            messages: Vec::new(),
            metadata: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Grpc {
    config: Config,
    messages: Vec<String>,
    metadata: usize,
}

impl Context for Grpc {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        self.add_http_request_header("x-grpc-status", &status_code.to_string());
        self.add_http_request_header("x-grpc-len", &response_size.to_string());
        if response_size > 0 {
            let body = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            self.add_http_request_header("x-grpc-body", &String::from_utf8_lossy(&body));
        }
        self.resume_http_request();
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token_id: u32, num_elements: u32) {
        self.metadata = num_elements as usize;
    }

    fn on_grpc_stream_message(&mut self, _token_id: u32, message_size: usize) {
        let body = self
            .get_grpc_stream_message(0, message_size)
            .unwrap_or_default();
        self.messages
            .push(String::from_utf8_lossy(&body).into_owned());
    }

    fn on_grpc_stream_close(&mut self, _token_id: u32, status_code: u32) {
        self.add_http_request_header("x-grpc-stream-status", &status_code.to_string());
        self.add_http_request_header("x-grpc-stream-messages", &self.messages.len().to_string());
        self.add_http_request_header("x-grpc-stream-body", &self.messages.join(","));
        self.add_http_request_header("x-grpc-stream-metadata", &self.metadata.to_string());
        self.resume_http_request();
    }
}

impl HttpContext for Grpc {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = self.config.clone();
        if config.stream {
            let token = match self.open_grpc_stream(
                &config.cluster,
                &config.service,
                &config.method,
                vec![("x-tp-grpc", b"1")],
            ) {
                Ok(token) => token,
                Err(status) => {
                    self.add_http_request_header(
                        "x-grpc-stream-status",
                        &format!("open-error-{status:?}"),
                    );
                    return Action::Continue;
                }
            };
            self.send_grpc_stream_message(token, Some(b"one"), false);
            self.send_grpc_stream_message(token, Some(b"two"), true);
            return Action::Pause;
        }
        match self.dispatch_grpc_call(
            &config.cluster,
            &config.service,
            &config.method,
            vec![("x-tp-grpc", b"1")],
            Some(MESSAGE),
            Duration::from_secs(2),
        ) {
            Ok(_) => Action::Pause,
            Err(status) => {
                self.add_http_request_header(
                    "x-grpc-status",
                    &format!("dispatch-error-{status:?}"),
                );
                Action::Continue
            }
        }
    }
}
