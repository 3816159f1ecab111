//! `tp-header-heavy`: the header-heavy benchmark plugin. No configuration.
//!
//! Per request, in `on_http_request_headers`: 20 `add_http_request_header("x-heavy-<i>",
//! "value-<i>")` (i = 0..20), then 20 `get_http_request_header("x-heavy-<i>")`, then 20
//! `remove_http_request_header("x-heavy-<i>")`; then one more add, `x-heavy-found: <how many
//! of the 20 gets found their header>`, so that a test can tell the plugin ran. The upstream
//! therefore sees `x-heavy-found: 20` and no other `x-heavy-*` header.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Heavy) });
}}

const NAMES: [&str; 20] = [
    "x-heavy-0",
    "x-heavy-1",
    "x-heavy-2",
    "x-heavy-3",
    "x-heavy-4",
    "x-heavy-5",
    "x-heavy-6",
    "x-heavy-7",
    "x-heavy-8",
    "x-heavy-9",
    "x-heavy-10",
    "x-heavy-11",
    "x-heavy-12",
    "x-heavy-13",
    "x-heavy-14",
    "x-heavy-15",
    "x-heavy-16",
    "x-heavy-17",
    "x-heavy-18",
    "x-heavy-19",
];

const VALUES: [&str; 20] = [
    "value-0", "value-1", "value-2", "value-3", "value-4", "value-5", "value-6", "value-7",
    "value-8", "value-9", "value-10", "value-11", "value-12", "value-13", "value-14", "value-15",
    "value-16", "value-17", "value-18", "value-19",
];

struct Heavy;

impl Context for Heavy {}

impl HttpContext for Heavy {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in NAMES.iter().zip(VALUES) {
            self.add_http_request_header(name, value);
        }
        let found = NAMES
            .iter()
            .filter(|name| self.get_http_request_header(name).is_some())
            .count();
        for name in NAMES {
            self.remove_http_request_header(name);
        }
        self.add_http_request_header("x-heavy-found", &found.to_string());
        Action::Continue
    }
}
