//! proxy-wasm glue for acl.

use std::rc::Rc;

use tollgate_sdk::config;
use tollgate_sdk::consumer;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType};
use tollgate_sdk::route::current_route_name;

use crate::logic::{Acl, Config, Decision};

#[cfg(target_arch = "wasm32")]
tollgate_sdk::proxy_wasm::main! {{
    tollgate_sdk::proxy_wasm::set_log_level(tollgate_sdk::proxy_wasm::types::LogLevel::Info);
    tollgate_sdk::proxy_wasm::set_root_context(|_| root_context());
}}

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root { acl: None })
}

struct Root {
    acl: Option<Rc<Acl>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parsed = config::parse::<Config>(&config::plugin_configuration()).and_then(Acl::new);
        self.acl = config::report("acl", parsed).map(Rc::new);
        self.acl.is_some()
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            acl: self.acl.clone()?,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    acl: Rc<Acl>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let route = current_route_name();
        let consumer = consumer::get();
        let (status, message) = match self
            .acl
            .decide(route.as_deref(), &method, consumer.as_ref())
        {
            Decision::Allow => return Action::Continue,
            Decision::Unauthenticated => (401, "authentication required"),
            Decision::Forbidden(reason) => (403, reason),
        };
        let body = serde_json::json!({ "message": message }).to_string();
        self.send_http_response(
            status,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
