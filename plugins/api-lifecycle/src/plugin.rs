//! proxy-wasm glue for api-lifecycle.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::Action;
use tollgate_sdk::{Callbacks, Plugin};

use crate::logic::{ApiLifecycle, Config, Outcome};

tollgate_sdk::plugin!(ApiLifecycle);
tollgate_sdk::layout!("layout.txt");

impl Plugin for ApiLifecycle {
    const NAME: &'static str = "api-lifecycle";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS.and(Callbacks::RESPONSE_HEADERS);

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        ApiLifecycle::new(config)
    }

    fn request(lifecycle: &Rc<Self>, _context_id: u32) -> Request {
        Request {
            lifecycle: lifecycle.clone(),
            add: Vec::new(),
        }
    }
}

/// The context of one request.
pub struct Request {
    lifecycle: Rc<ApiLifecycle>,
    /// Response headers for a forwarded request.
    add: Vec<(String, String)>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let now = tollgate_sdk::now_secs();
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
