//! `tp-stream`: reads request bodies piece by piece, steered by the request header
//! `x-stream-mode`:
//! - absent or `continue`: every `on_http_request_body` reads the piece it is handed
//!   (`get_http_request_body(0, size)`), counts its bytes and continues it;
//! - `hold`: every `on_http_request_body` returns `Pause` and never resumes (the host
//!   buffers until its limit);
//! - `reply-after:N`: continues pieces until it has counted at least `N` bytes, then
//!   answers `403` with the body `stopped after <count> bytes`;
//! - `call-then-continue`: on the first piece, calls `GET /callout` on cluster `sink`
//!   (5 s timeout) and returns `Pause`; when the call answers, `resume_http_request()`. Later
//!   pieces are read and continued as with `continue`.
//!
//! `on_http_request_trailers` adds the request trailers `x-body-bytes: <bytes counted>` and
//! `x-body-ends: <body callbacks that had end_of_stream>`, so that the upstream can tell
//! the trailers came after the whole body. With the request header `x-stream-response:
//! hold`, `on_http_response_body` returns `Pause` until `end_of_stream` (the host buffers
//! the whole response body).

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Stream::default()) });
}}

#[derive(Default)]
enum Mode {
    #[default]
    Continue,
    Hold,
    ReplyAfter(usize),
    CallThenContinue,
}

#[derive(Default)]
struct Stream {
    mode: Mode,
    hold_response: bool,
    counted: usize,
    ends: usize,
    called: bool,
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mode = self
            .get_http_request_header("x-stream-mode")
            .unwrap_or_default();
        self.mode = match mode.as_str() {
            "hold" => Mode::Hold,
            "call-then-continue" => Mode::CallThenContinue,
            other => match other.strip_prefix("reply-after:").map(str::parse) {
                Some(Ok(limit)) => Mode::ReplyAfter(limit),
                _ => Mode::Continue,
            },
        };
        self.hold_response =
            self.get_http_request_header("x-stream-response").as_deref() == Some("hold");
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.ends += 1;
        }
        if let Mode::Hold = self.mode {
            return Action::Pause;
        }
        let piece = self.get_http_request_body(0, body_size).unwrap_or_default();
        if let Mode::CallThenContinue = self.mode {
            if !std::mem::replace(&mut self.called, true) {
                let headers = vec![
                    (":method", "GET"),
                    (":path", "/callout"),
                    (":authority", "sink"),
                ];
                if self
                    .dispatch_http_call("sink", headers, None, vec![], Duration::from_secs(5))
                    .is_ok()
                {
                    return Action::Pause;
                }
            }
        }
        self.counted += piece.len();
        if let Mode::ReplyAfter(limit) = self.mode {
            if self.counted >= limit {
                let message = format!("stopped after {} bytes", self.counted);
                self.send_http_response(403, vec![], Some(message.as_bytes()));
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.add_http_request_trailer("x-body-bytes", &self.counted.to_string());
        self.add_http_request_trailer("x-body-ends", &self.ends.to_string());
        Action::Continue
    }

    fn on_http_response_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if self.hold_response && !end_of_stream {
            return Action::Pause;
        }
        Action::Continue
    }
}
