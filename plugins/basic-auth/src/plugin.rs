//! proxy-wasm glue for basic-auth.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer::{self, Consumer};
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::Action;
use tollgate_sdk::{Callbacks, Plugin};

use crate::logic::{BasicAuth, Config};

tollgate_sdk::plugin!(BasicAuth);
tollgate_sdk::layout!("layout.txt");

impl Plugin for BasicAuth {
    const NAME: &'static str = "basic-auth";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS;

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        BasicAuth::new(config)
    }

    fn request(auth: &Rc<Self>, _context_id: u32) -> Request {
        Request { auth: auth.clone() }
    }
}

/// The context of one request.
pub struct Request {
    auth: Rc<BasicAuth>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        consumer::strip_client_supplied();
        let Some(authorization) = headers::request("authorization") else {
            return self.reject("missing credentials");
        };
        let Some(consumer) = self.auth.authenticate(&authorization) else {
            return self.reject("invalid credentials");
        };
        if self.auth.config.hide_credentials {
            self.set_http_request_header("authorization", None);
        }
        consumer::set(&Consumer::new(
            consumer.name.clone(),
            consumer.groups.clone(),
        ));
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
