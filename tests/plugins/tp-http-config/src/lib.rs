//! `tp-http-config`: a plugin written the way the proxy-wasm Rust SDK's `http_config` example
//! is, so that it behaves here as it does in Envoy. `on_configure` takes the plugin
//! configuration bytes as a UTF-8 string, unparsed (no configuration: the empty string), and
//! every response gains `custom-header: <that string>`.
//!
//! With `config: "Hello"` the header is `Hello`, not `"Hello"`: a string configuration
//! reaches the plugin as its raw bytes. Any other JSON value arrives as JSON text.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(HeaderFromConfig { value: Rc::from("") })
    });
}}

struct HeaderFromConfig {
    value: Rc<str>,
}

impl Context for HeaderFromConfig {}

impl RootContext for HeaderFromConfig {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match String::from_utf8(bytes) {
            Ok(text) => {
                self.value = Rc::from(text);
                true
            }
            Err(_) => false,
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddHeader {
            value: Rc::clone(&self.value),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AddHeader {
    value: Rc<str>,
}

impl Context for AddHeader {}

impl HttpContext for AddHeader {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("custom-header", &self.value);
        Action::Continue
    }
}
