//! `tp-headers`: reads and rewrites header maps through every header-map host call.
//!
//! Configuration (JSON, read in `on_configure`): `{"tag": "<string>"}`. Missing, not JSON or
//! without a string `tag`: logs `tp-headers: configuration field "tag" ...` at error level and
//! `on_configure` returns false.
//!
//! Request headers (`on_http_request_headers`), in this order:
//! 1. reads every pair with `get_http_request_headers` (`proxy_get_header_map_pairs`);
//! 2. adds `x-tp-count: N` (N = number of pairs read) and `x-tp-seen: NAMES` (the names read,
//!    in order, joined by `,`);
//! 3. copies `:method`, `:path`, `:authority`, `:scheme` (read one by one with
//!    `proxy_get_header_map_value`) into `x-tp-method`, `x-tp-path`, `x-tp-authority`,
//!    `x-tp-scheme` (absent pseudo-header: value `<missing>`);
//! 4. adds `x-tp-tag: <tag>`;
//! 5. removes `x-remove-me`;
//! 6. if `x-replace-me` is present, replaces its value with `replaced`;
//! 7. if `x-tp-set-path` is present, replaces `:path` with its value (the host re-selects the
//!    route).
//!
//! Response headers (`on_http_response_headers`): reads every pair, appends
//! `("x-tp-response", <tag>)` and writes the whole map back with `set_http_response_headers`
//! (`proxy_set_header_map_pairs`, `:status` included), then adds `x-tp-status: <:status>`.
//! Always continues.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { tag: String::new() }) });
}}

struct Root {
    tag: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&config);
        match parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get("tag"))
            .and_then(|t| t.as_str())
        {
            Some(tag) => {
                self.tag = tag.to_owned();
                true
            }
            None => {
                let why = match parsed {
                    Err(e) => format!("the configuration is not JSON ({e})"),
                    Ok(_) => "it is missing or not a string".to_owned(),
                };
                let _ = hostcalls::log(
                    LogLevel::Error,
                    &format!("tp-headers: configuration field \"tag\" is required: {why}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers {
            tag: self.tag.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Headers {
    tag: String,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let pairs = self.get_http_request_headers();
        let names: Vec<&str> = pairs.iter().map(|(name, _)| name.as_str()).collect();
        self.add_http_request_header("x-tp-count", &pairs.len().to_string());
        self.add_http_request_header("x-tp-seen", &names.join(","));
        for (pseudo, copy) in [
            (":method", "x-tp-method"),
            (":path", "x-tp-path"),
            (":authority", "x-tp-authority"),
            (":scheme", "x-tp-scheme"),
        ] {
            let value = self
                .get_http_request_header(pseudo)
                .unwrap_or_else(|| "<missing>".to_owned());
            self.add_http_request_header(copy, &value);
        }
        self.add_http_request_header("x-tp-tag", &self.tag);
        self.remove_http_request_header("x-remove-me");
        if self.get_http_request_header("x-replace-me").is_some() {
            self.set_http_request_header("x-replace-me", Some("replaced"));
        }
        if let Some(path) = self.get_http_request_header("x-tp-set-path") {
            self.set_http_request_header(":path", Some(&path));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut pairs = self.get_http_response_headers();
        pairs.push(("x-tp-response".to_owned(), self.tag.clone()));
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.set_http_response_headers(borrowed);
        let status = self
            .get_http_response_header(":status")
            .unwrap_or_else(|| "<missing>".to_owned());
        self.add_http_response_header("x-tp-status", &status);
        Action::Continue
    }
}
