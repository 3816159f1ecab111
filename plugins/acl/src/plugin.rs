//! proxy-wasm glue for acl.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer;
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::Action;
use tollgate_sdk::route::current_route_name;
use tollgate_sdk::{Callbacks, Plugin};

use crate::logic::{Acl, Config, Decision};

tollgate_sdk::plugin!(Acl);
tollgate_sdk::layout!("layout.txt");

impl Plugin for Acl {
    const NAME: &'static str = "acl";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS;

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        Acl::new(config)
    }

    fn request(acl: &Rc<Self>, _context_id: u32) -> Request {
        Request { acl: acl.clone() }
    }
}

/// The context of one request.
pub struct Request {
    acl: Rc<Acl>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let method = headers::request(":method").unwrap_or_default();
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
