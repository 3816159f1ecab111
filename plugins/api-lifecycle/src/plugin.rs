//! proxy-wasm glue for api-lifecycle.

use std::rc::Rc;

use tollgate_sdk::config;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType};

use crate::logic::{ApiLifecycle, Config, Outcome};

#[cfg(target_arch = "wasm32")]
tollgate_sdk::proxy_wasm::main! {{
    tollgate_sdk::proxy_wasm::set_log_level(tollgate_sdk::proxy_wasm::types::LogLevel::Info);
    tollgate_sdk::proxy_wasm::set_root_context(|_| root_context());
}}

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root { lifecycle: None })
}

struct Root {
    lifecycle: Option<Rc<ApiLifecycle>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parsed =
            config::parse::<Config>(&config::plugin_configuration()).and_then(ApiLifecycle::new);
        self.lifecycle = config::report("api-lifecycle", parsed).map(Rc::new);
        self.lifecycle.is_some()
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            lifecycle: self.lifecycle.clone()?,
            add: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    lifecycle: Rc<ApiLifecycle>,
    /// Response headers for a forwarded request.
    add: Vec<(String, String)>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let now = tollgate_sdk::now_nanos() / 1_000_000_000;
        match self.lifecycle.rules.for_current_route().outcome(now) {
            Outcome::Forward(headers) => {
                self.add = headers;
                Action::Continue
            }
            Outcome::Answer(status, headers, body) => {
                let pairs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.send_http_response(status, pairs, Some(&body));
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.add) {
            self.set_http_response_header(&name, Some(&value));
        }
        Action::Continue
    }
}
