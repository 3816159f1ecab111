//! proxy-wasm glue for the transformer.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::hostcalls;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::{Action, MapType};
use tollgate_sdk::{Callbacks, Plugin};

use crate::logic::{is_json, Config, HeaderOps, Phase};

// The checked configuration is all the transformer needs: it is the plugin.
tollgate_sdk::plugin!(Config);
tollgate_sdk::layout!("layout.txt");

impl Plugin for Config {
    const NAME: &'static str = "transformer";
    type Config = Self;
    type Request = Transform;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS
        .and(Callbacks::REQUEST_BODY)
        .and(Callbacks::RESPONSE_HEADERS)
        .and(Callbacks::RESPONSE_BODY);

    fn from_config(config: Self) -> Result<Self, ConfigError> {
        config.validate()
    }

    /// A phase without JSON rules reads no body, and one without any rule not even its
    /// headers: with header rules only, bodies stream through the gateway untouched.
    fn callbacks(&self) -> Callbacks {
        let phase = |phase: &Phase, headers: Callbacks, body: Callbacks| match (
            phase.headers.is_empty(),
            phase.json.is_empty(),
        ) {
            (true, true) => Callbacks::NONE,
            (false, true) => headers,
            (_, false) => headers.and(body),
        };
        phase(
            &self.request,
            Callbacks::REQUEST_HEADERS,
            Callbacks::REQUEST_BODY,
        )
        .and(phase(
            &self.response,
            Callbacks::RESPONSE_HEADERS,
            Callbacks::RESPONSE_BODY,
        ))
    }

    fn request(config: &Rc<Self>, _context_id: u32) -> Transform {
        Transform {
            config: config.clone(),
            request_body: false,
            response_body: false,
        }
    }
}

/// The context of one request.
pub struct Transform {
    config: Rc<Config>,
    /// The request body is JSON and will be rewritten.
    request_body: bool,
    response_body: bool,
}

impl Context for Transform {}

impl HttpContext for Transform {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let phase = &self.config.request;
        if !phase.headers.is_empty() {
            edit_headers(MapType::HttpRequestHeaders, &phase.headers);
        }
        if !phase.json.is_empty()
            && !end_of_stream
            && is_json(headers::request("content-type").as_deref())
        {
            self.request_body = true;
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.request_body {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size) {
            if let Some(new) = self.config.request.json.transform(&body) {
                self.set_http_request_body(0, body_size, &new);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let phase = &self.config.response;
        if !phase.headers.is_empty() {
            edit_headers(MapType::HttpResponseHeaders, &phase.headers);
        }
        if !phase.json.is_empty()
            && !end_of_stream
            && is_json(headers::response("content-type").as_deref())
        {
            self.response_body = true;
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.response_body {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, body_size) {
            if let Some(new) = self.config.response.json.transform(&body) {
                self.set_http_response_body(0, body_size, &new);
            }
        }
        Action::Continue
    }
}

/// Applies `ops` to a header map. Without renames every operation is one host call on one
/// header; a rename moves every value of a header, so it reads and writes the whole map.
fn edit_headers(map: MapType, ops: &HeaderOps) {
    if !ops.rename.is_empty() {
        // As bytes: a value that is not UTF-8 goes back as it came.
        let mut headers = hostcalls::get_map_bytes(map).unwrap_or_default();
        ops.apply(&mut headers);
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let _ = hostcalls::set_map_bytes(map, pairs);
        return;
    }
    for name in &ops.remove {
        let _ = hostcalls::remove_map_value(map, name);
    }
    for (name, value) in &ops.set {
        let _ = hostcalls::set_map_value(map, name, Some(value));
    }
    for (name, value) in &ops.add {
        if let Ok(None) = hostcalls::get_map_value_bytes(map, name) {
            let _ = hostcalls::add_map_value(map, name, value);
        }
    }
}
