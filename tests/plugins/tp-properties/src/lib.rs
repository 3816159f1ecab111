//! `tp-properties`: reads host properties and passes a value to a later plugin.
//!
//! Configuration:
//! `{"properties": [{"path": ["request", "path"], "type": "string"}, ...], "read_marker": false,
//! "log_properties": [["request", "duration"], ...]}`
//! with `type` one of `string` (raw bytes, as UTF-8), `int` (8 bytes, little-endian i64,
//! written in decimal), `bool` (1 byte: `true`/`false`) or `bytes` (lower-case hex). Both
//! fields are optional (default: no properties, `read_marker` false).
//!
//! - Request headers, when `read_marker` is false: `set_property(["tp_marker"],
//!   "from-tp-properties")` (a single-segment path, the form Envoy can read back).
//! - Request headers, when `read_marker` is true: reads `get_property(["tp_marker"])` and
//!   remembers it (`<missing>` when absent).
//! - Response headers: for every configured property, `get_property(path)` and adds
//!   `x-prop-<segments joined by '-', with '_' and '.' also turned into '-'>: <decoded value>`
//!   (`<missing>` when the host has no value, `<bad-int:N bytes>` / `<bad-bool:N bytes>` for a
//!   wrongly sized value). When `read_marker` is true, also adds `x-tp-marker: <marker>`.
//! - Log phase (`on_log`): for every path in `log_properties`, `get_property(path)` and logs
//!   at info level one line `tp-properties on_log <segments joined by '.'>=<lower-case hex>`
//!   (`=<missing>` when the host has no value). The gateway log shows them.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: Config::default() }) });
}}

const MARKER: &str = "tp_marker";

#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    properties: Vec<Property>,
    #[serde(default)]
    read_marker: bool,
    #[serde(default)]
    log_properties: Vec<Vec<String>>,
}

#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Property {
    path: Vec<String>,
    #[serde(rename = "type")]
    kind: Kind,
}

#[derive(Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    String,
    Int,
    Bool,
    Bytes,
}

struct Root {
    config: Config,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        if bytes.is_empty() || bytes == b"null" {
            return true;
        }
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = config;
                true
            }
            Err(e) => {
                let _ = proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    &format!("tp-properties: bad configuration: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Properties {
            config: self.config.clone(),
            marker: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Properties {
    config: Config,
    marker: Option<String>,
}

impl Context for Properties {}

fn decode(kind: Kind, value: Option<Vec<u8>>) -> String {
    let Some(bytes) = value else {
        return "<missing>".to_owned();
    };
    match kind {
        Kind::String => String::from_utf8_lossy(&bytes).into_owned(),
        Kind::Int => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(raw) => i64::from_le_bytes(raw).to_string(),
            Err(_) => format!("<bad-int:{} bytes>", bytes.len()),
        },
        Kind::Bool => match bytes.as_slice() {
            [0] => "false".to_owned(),
            [_] => "true".to_owned(),
            _ => format!("<bad-bool:{} bytes>", bytes.len()),
        },
        Kind::Bytes => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

impl HttpContext for Properties {
    fn on_log(&mut self) {
        for path in &self.config.log_properties {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let value = decode(Kind::Bytes, self.get_property(segments));
            let _ = proxy_wasm::hostcalls::log(
                LogLevel::Info,
                &format!("tp-properties on_log {}={value}", path.join(".")),
            );
        }
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.config.read_marker {
            let marker = self.get_property(vec![MARKER]);
            self.marker = Some(marker.map_or_else(
                || "<missing>".to_owned(),
                |v| String::from_utf8_lossy(&v).into_owned(),
            ));
        } else {
            self.set_property(vec![MARKER], Some(b"from-tp-properties"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for property in &self.config.properties {
            let path: Vec<&str> = property.path.iter().map(String::as_str).collect();
            let value = decode(property.kind, self.get_property(path));
            let name = format!("x-prop-{}", property.path.join("-")).replace(['_', '.'], "-");
            self.add_http_response_header(&name, &value);
        }
        if let Some(marker) = &self.marker {
            self.add_http_response_header("x-tp-marker", marker);
        }
        Action::Continue
    }
}
