//! proxy-wasm glue for cors.

use std::rc::Rc;

use tollgate_sdk::config;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType};

use crate::logic::{Config, Cors, Preflight};

#[cfg(target_arch = "wasm32")]
tollgate_sdk::proxy_wasm::main! {{
    tollgate_sdk::proxy_wasm::set_log_level(tollgate_sdk::proxy_wasm::types::LogLevel::Info);
    tollgate_sdk::proxy_wasm::set_root_context(|_| root_context());
}}

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root { cors: None })
}

struct Root {
    cors: Option<Rc<Cors>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parsed = config::parse::<Config>(&config::plugin_configuration()).and_then(Cors::new);
        self.cors = config::report("cors", parsed).map(Rc::new);
        self.cors.is_some()
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            cors: self.cors.clone()?,
            origin: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    cors: Rc<Cors>,
    /// The `Origin` of an actual (non-preflight) cross-origin request.
    origin: Option<String>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(origin) = self.get_http_request_header("origin") else {
            return Action::Continue;
        };
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let requested = self.get_http_request_header("access-control-request-method");
        match (method.as_str(), requested) {
            ("OPTIONS", Some(requested)) => {
                let asked = self.get_http_request_header("access-control-request-headers");
                match self.cors.preflight(&origin, &requested, asked.as_deref()) {
                    Preflight::Allowed(headers) => {
                        let pairs: Vec<(&str, &str)> = headers
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect();
                        self.send_http_response(204, pairs, None);
                    }
                    Preflight::Refused(reason) => {
                        let body = serde_json::json!({ "message": format!("CORS preflight refused: {reason}") }).to_string();
                        self.send_http_response(
                            403,
                            vec![("content-type", "application/json"), ("vary", "Origin")],
                            Some(body.as_bytes()),
                        );
                    }
                }
                Action::Pause
            }
            _ => {
                self.origin = Some(origin);
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(origin) = self.origin.take() else {
            return Action::Continue;
        };
        for (name, value) in self.cors.response_headers(&origin) {
            self.set_http_response_header(&name, Some(&value));
        }
        self.add_http_response_header("vary", "Origin");
        Action::Continue
    }
}
