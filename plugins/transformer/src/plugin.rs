//! proxy-wasm glue for the transformer.

use std::rc::Rc;

use tollgate_sdk::config;
use tollgate_sdk::proxy_wasm::hostcalls;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType, MapType};

use crate::logic::{is_json, Config, HeaderOps};

#[cfg(target_arch = "wasm32")]
tollgate_sdk::proxy_wasm::main! {{
    tollgate_sdk::proxy_wasm::set_log_level(tollgate_sdk::proxy_wasm::types::LogLevel::Info);
    tollgate_sdk::proxy_wasm::set_root_context(|_| root_context());
}}

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root { config: None })
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let parsed =
            config::parse::<Config>(&config::plugin_configuration()).and_then(Config::validate);
        self.config = config::report("transformer", parsed).map(Rc::new);
        self.config.is_some()
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Transform {
            config: self.config.clone()?,
            request_body: false,
            response_body: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Transform {
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
            && is_json(self.get_http_request_header("content-type").as_deref())
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
            && is_json(self.get_http_response_header("content-type").as_deref())
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
        let mut headers = hostcalls::get_map(map).unwrap_or_default();
        ops.apply(&mut headers);
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let _ = hostcalls::set_map(map, pairs);
        return;
    }
    for name in &ops.remove {
        let _ = hostcalls::remove_map_value(map, name);
    }
    for (name, value) in &ops.set {
        let _ = hostcalls::set_map_value(map, name, Some(value));
    }
    for (name, value) in &ops.add {
        if let Ok(None) = hostcalls::get_map_value(map, name) {
            let _ = hostcalls::add_map_value(map, name, value);
        }
    }
}
