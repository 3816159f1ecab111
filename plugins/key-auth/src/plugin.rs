//! proxy-wasm glue for key-auth.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer;
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::Action;
use tollgate_sdk::{Callbacks, Plugin};

use crate::logic::{find_key, strip_query_param, Config, Found, KeyAuth};

tollgate_sdk::plugin!(KeyAuth);
tollgate_sdk::layout!("layout.txt");

impl Plugin for KeyAuth {
    const NAME: &'static str = "key-auth";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS;

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        KeyAuth::new(config)
    }

    fn request(auth: &Rc<Self>, _context_id: u32) -> Request {
        Request { auth: auth.clone() }
    }
}

/// The context of one request.
pub struct Request {
    auth: Rc<KeyAuth>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // No `consumer::strip_client_supplied()`: a request either gets a local 401 (it never
        // reaches the upstream) or goes on with `consumer::set_parts`, which replaces both
        // identity headers, so a client's copies never survive; stripping first would be two
        // more host calls per request.
        let found = find_key(&self.auth.config, headers::request, || {
            headers::request(":path").unwrap_or_default()
        });
        let Some((place, key)) = found else {
            return self.reject("missing API key");
        };
        let Some((name, groups)) = self.auth.identity(&key) else {
            return self.reject("invalid API key");
        };
        if self.auth.config.hide_credentials {
            match place {
                Found::Header(header) => self.set_http_request_header(header, None),
                Found::Query(param) => {
                    let path = headers::request(":path").unwrap_or_default();
                    self.set_http_request_header(":path", Some(&strip_query_param(&path, param)))
                }
            }
        }
        consumer::set_parts(name, groups);
        Action::Continue
    }
}

impl Request {
    fn reject(&self, message: &str) -> Action {
        let body = format!("{{\"message\":\"{message}\"}}");
        self.send_http_response(
            401,
            vec![
                ("www-authenticate", &self.auth.challenge()),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
