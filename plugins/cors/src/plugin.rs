//! proxy-wasm glue for cors.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::Action;
use tollgate_sdk::{Callbacks, Plugin};

use crate::logic::{Config, Cors, Preflight};

tollgate_sdk::plugin!(Cors);
tollgate_sdk::layout!("layout.txt");

impl Plugin for Cors {
    const NAME: &'static str = "cors";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS.and(Callbacks::RESPONSE_HEADERS);

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        Cors::new(config)
    }

    fn request(cors: &Rc<Self>, _context_id: u32) -> Request {
        Request {
            cors: cors.clone(),
            origin: None,
        }
    }
}

/// The context of one request.
pub struct Request {
    cors: Rc<Cors>,
    /// The `Origin` of an actual (non-preflight) cross-origin request.
    origin: Option<String>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(origin) = headers::request("origin") else {
            return Action::Continue;
        };
        let method = headers::request(":method").unwrap_or_default();
        let requested = headers::request("access-control-request-method");
        match (method.as_str(), requested) {
            ("OPTIONS", Some(requested)) => {
                let asked = headers::request("access-control-request-headers");
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
