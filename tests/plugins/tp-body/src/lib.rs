//! `tp-body`: buffers and rewrites bodies, and adds trailers. No configuration.
//!
//! - `on_http_request_body`: returns `Pause` until `end_of_stream`; then reads the whole
//!   buffered body and replaces it (`set_http_request_body(0, size, ..)`, the replace-all
//!   form) with its ASCII upper-cased bytes, after checking that an open-ended read
//!   (`get_http_request_body(1, usize::MAX)`) returns the body after its first byte (if not,
//!   it logs and leaves the body as it came).
//! - `on_http_response_headers`: removes `content-length` (the body changes length).
//! - `on_http_response_body`: returns `Pause` until `end_of_stream`; then appends
//!   `\n-- via tp-body` (`set_http_response_body(size, 0, ..)`, the append form). When the
//!   response has trailers, no body callback has `end_of_stream` (as in Envoy), so nothing is
//!   appended; the host delivers the paused body when the trailers continue.
//! - `on_http_request_trailers` / `on_http_response_trailers`: when there is at least one
//!   trailer, adds the trailer `x-tp-trailer: seen`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

/// What `tp-body` appends to every response body.
pub const SUFFIX: &[u8] = b"\n-- via tp-body";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Body) });
}}

struct Body;

impl Context for Body {}

impl HttpContext for Body {
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        // What follows the first byte, asked with no upper bound (`usize::MAX`), as plugins
        // wanting "the rest" do: the host clamps the range, as Envoy does, rather than
        // refuse it (which this SDK answers with a panic). Anything else leaves the body
        // as it came, which the tests see.
        let rest = self
            .get_http_request_body(1, usize::MAX)
            .unwrap_or_default();
        if body.get(1..).unwrap_or_default() != rest.as_slice() {
            let _ = hostcalls::log(LogLevel::Error, "tp-body: the open-ended read differs");
            return Action::Continue;
        }
        self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        if num_trailers > 0 {
            self.add_http_request_trailer("x-tp-trailer", "seen");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        self.set_http_response_body(body_size, 0, SUFFIX);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        if num_trailers > 0 {
            self.add_http_response_trailer("x-tp-trailer", "seen");
        }
        Action::Continue
    }
}
