//! proxy-wasm glue for jwt-auth.

use std::rc::Rc;

use tollgate_sdk::config;
use tollgate_sdk::consumer::{self, Consumer};
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType};

use crate::logic::{Config, Failure, JwtAuth};

#[cfg(target_arch = "wasm32")]
tollgate_sdk::proxy_wasm::main! {{
    tollgate_sdk::proxy_wasm::set_log_level(tollgate_sdk::proxy_wasm::types::LogLevel::Info);
    tollgate_sdk::proxy_wasm::set_root_context(|_| root_context());
}}

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root { auth: None })
}

struct Root {
    auth: Option<Rc<JwtAuth>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parsed =
            config::parse::<Config>(&config::plugin_configuration()).and_then(JwtAuth::new);
        self.auth = config::report("jwt-auth", parsed).map(Rc::new);
        self.auth.is_some()
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            auth: self.auth.clone()?,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
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
