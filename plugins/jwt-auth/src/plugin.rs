//! proxy-wasm glue for jwt-auth.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer::{self, Consumer};
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::Action;
use tollgate_sdk::Plugin;

use crate::logic::{Config, Failure, JwtAuth};

tollgate_sdk::plugin!(JwtAuth);

impl Plugin for JwtAuth {
    const NAME: &'static str = "jwt-auth";
    type Config = Config;
    type Request = Request;

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        JwtAuth::new(config)
    }

    fn request(auth: &Rc<Self>, _context_id: u32) -> Request {
        Request { auth: auth.clone() }
    }
}

/// The context of one request.
pub struct Request {
    auth: Rc<JwtAuth>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        consumer::strip_client_supplied();
        let config = &self.auth.config;
        // Headers filled from claims are never taken from the client.
        for header in config.claims_to_headers.values() {
            self.set_http_request_header(header, None);
        }
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let header = self.get_http_request_header(&config.header);
        let Some(token) = self.auth.token_from(header.as_deref(), &path) else {
            return self.reject(&Failure::Missing);
        };
        let now = tollgate_sdk::now_nanos() / 1_000_000_000;
        match self.auth.verify(&token, now) {
            Ok(verified) => {
                for (name, value) in &verified.headers {
                    self.set_http_request_header(name, Some(value));
                }
                if config.hide_credentials {
                    self.set_http_request_header(&config.header, None);
                }
                consumer::set(&Consumer::new(verified.consumer, verified.groups));
                Action::Continue
            }
            Err(failure) => self.reject(&failure),
        }
    }
}

impl Request {
    fn reject(&self, failure: &Failure) -> Action {
        let body = serde_json::json!({ "message": failure.message() }).to_string();
        self.send_http_response(
            401,
            vec![
                (
                    "www-authenticate",
                    &failure.challenge(&self.auth.config.realm),
                ),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
