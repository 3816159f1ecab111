//! proxy-wasm glue for basic-auth.

use std::rc::Rc;

use tollgate_sdk::config;
use tollgate_sdk::consumer::{self, Consumer};
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType};

use crate::logic::{BasicAuth, Config};

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
    auth: Option<Rc<BasicAuth>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parsed =
            config::parse::<Config>(&config::plugin_configuration()).and_then(BasicAuth::new);
        self.auth = config::report("basic-auth", parsed).map(Rc::new);
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
    auth: Rc<BasicAuth>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        consumer::strip_client_supplied();
        let Some(authorization) = self.get_http_request_header("authorization") else {
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
