//! proxy-wasm glue for ip-restriction.

use std::rc::Rc;

use tollgate_sdk::config;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType};

use crate::logic::{Config, IpRestriction};

#[cfg(target_arch = "wasm32")]
tollgate_sdk::proxy_wasm::main! {{
    tollgate_sdk::proxy_wasm::set_log_level(tollgate_sdk::proxy_wasm::types::LogLevel::Info);
    tollgate_sdk::proxy_wasm::set_root_context(|_| root_context());
}}

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root { rules: None })
}

struct Root {
    rules: Option<Rc<IpRestriction>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parsed =
            config::parse::<Config>(&config::plugin_configuration()).and_then(IpRestriction::new);
        self.rules = config::report("ip-restriction", parsed).map(Rc::new);
        self.rules.is_some()
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            rules: self.rules.clone()?,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    rules: Rc<IpRestriction>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let peer = tollgate_sdk::property_string(&["source", "address"]);
        let forwarded: Vec<String> = if self.rules.trusted_hops > 0 {
            self.get_http_request_headers()
                .into_iter()
                .filter(|(name, _)| name == "x-forwarded-for")
                .map(|(_, value)| value)
                .collect()
        } else {
            Vec::new()
        };
        let client = self.rules.client_ip(peer.as_deref(), &forwarded);
        if self.rules.allows(client) {
            return Action::Continue;
        }
        let body = serde_json::json!({ "message": self.rules.message }).to_string();
        self.send_http_response(
            self.rules.status,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
