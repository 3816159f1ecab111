//! proxy-wasm glue for ip-restriction.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::{Action, MapType};
use tollgate_sdk::{Callbacks, Plugin};

use crate::logic::{Config, IpRestriction};

tollgate_sdk::plugin!(IpRestriction);
tollgate_sdk::layout!("layout.txt");

impl Plugin for IpRestriction {
    const NAME: &'static str = "ip-restriction";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS;

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        IpRestriction::new(config)
    }

    fn request(rules: &Rc<Self>, _context_id: u32) -> Request {
        Request {
            rules: rules.clone(),
        }
    }
}

/// The context of one request.
pub struct Request {
    rules: Rc<IpRestriction>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let peer = tollgate_sdk::property_string(&["source", "address"]);
        let forwarded: Vec<String> = if self.rules.trusted_hops > 0 {
            headers::pairs(MapType::HttpRequestHeaders)
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
