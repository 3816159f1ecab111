//! The proxy-wasm test plugins and helpers to attach them to routes.
//!
//! The plugins are the crates of the cargo workspace in `tests/plugins`, built for
//! `wasm32-wasip1` by `tests/build.rs`; each constant below is the absolute path of one
//! `.wasm` (`TP_HEADERS`, `TP_BODY`, ... and `ALL`). Each plugin's `src/lib.rs` starts with
//! the contract the `tests/tests/wasm_*.rs` tests check. The WAT modules in
//! `tests/plugins/wat` are hand-written invalid modules.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// A module with memory and an allocator but no `proxy_abi_version_*` export.
pub fn no_abi_wat() -> PathBuf {
    wat_path("no-abi.wat")
}

/// A module exporting `proxy_abi_version_9_9_9`, an ABI version no host knows.
pub fn unknown_abi_wat() -> PathBuf {
    wat_path("unknown-abi.wat")
}

fn wat_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join("wat")
        .join(name)
}

/// Every host function of module `env` that the proxy-wasm Rust SDK (0.2.5) can import: the
/// 37 of DESIGN.md §6. A plugin that imports anything else from `env` cannot run in Envoy.
pub const PROXY_WASM_HOST_FUNCTIONS: [&str; 37] = [
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_shared_data",
    "proxy_get_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_call_foreign_function",
    "proxy_set_effective_context",
    "proxy_done",
];

/// One entry of the `plugins:` section of a policies folder, built field by field and
/// written as JSON (the policies folder accepts JSON files).
#[derive(Clone, Debug)]
pub struct PluginSpec(Map<String, Value>);

impl PluginSpec {
    /// A plugin instance `name` running the module at `module` (an absolute path), with
    /// configuration `null` and the gateway's defaults for everything else.
    pub fn new(name: &str, module: impl Into<PathBuf>) -> Self {
        let module: PathBuf = module.into();
        let mut fields = Map::new();
        fields.insert("name".into(), json!(name));
        fields.insert(
            "module".into(),
            json!(module.to_str().expect("UTF-8 module path")),
        );
        Self(fields)
    }

    /// The configuration handed to `on_configure` (as JSON bytes).
    pub fn config(self, config: Value) -> Self {
        self.field("config", config)
    }

    /// The VM configuration handed to `on_vm_start` (as JSON bytes).
    pub fn vm_config(self, config: Value) -> Self {
        self.field("vm_config", config)
    }

    /// Runs the plugin only on these routes.
    pub fn routes(self, routes: &[&str]) -> Self {
        self.field("apply_to", json!({ "routes": routes }))
    }

    /// `fail_closed`, `fail_open` or `reload`.
    pub fn failure_policy(self, policy: &str) -> Self {
        self.field("failure_policy", json!(policy))
    }

    /// Higher runs earlier in the request phase.
    pub fn priority(self, priority: i32) -> Self {
        self.field("priority", json!(priority))
    }

    /// Any other field of the plugin entry (`callback_timeout`, `memory_limit`, ...).
    pub fn field(mut self, key: &str, value: Value) -> Self {
        self.0.insert(key.into(), value);
        self
    }

    pub fn name(&self) -> &str {
        self.0["name"].as_str().expect("name is a string")
    }
}

/// The contents of a policies file (JSON) holding just these plugins.
pub fn plugins_file(plugins: &[PluginSpec]) -> String {
    let list: Vec<Value> = plugins
        .iter()
        .map(|plugin| Value::Object(plugin.0.clone()))
        .collect();
    serde_json::to_string_pretty(&json!({ "plugins": list })).expect("serialize plugins")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plugin_was_built() {
        assert_eq!(ALL.len(), 10);
        for (name, path) in ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: read {path}: {e}"));
            assert_eq!(&bytes[..4], b"\0asm", "{name} is a wasm module");
        }
        assert!(no_abi_wat().is_file());
        assert!(unknown_abi_wat().is_file());
    }

    #[test]
    fn plugin_specs_become_policy_json() {
        let text = plugins_file(&[PluginSpec::new("h", "/x/h.wasm")
            .config(json!({ "tag": "t" }))
            .routes(&["r"])
            .failure_policy("fail_open")]);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({ "plugins": [{
                "name": "h", "module": "/x/h.wasm", "config": { "tag": "t" },
                "apply_to": { "routes": ["r"] }, "failure_policy": "fail_open"
            }] })
        );
    }
}
