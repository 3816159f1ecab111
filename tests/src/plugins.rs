//! The proxy-wasm test plugins and helpers to attach them to routes.
//!
//! The plugins are the crates of the cargo workspace in `tests/plugins`, built for
//! `wasm32-wasip1` by `tests/build.rs`; each constant below is the absolute path of one
//! `.wasm` (`TP_HEADERS`, `TP_BODY`, ... and `ALL`). Each plugin's `src/lib.rs` starts with
//! the contract the `tests/tests/wasm_*.rs` tests check. The WAT modules in
//! `tests/plugins/wat` are hand-written modules (invalid ones, and a headers-only plugin).

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

/// A proxy-wasm module whose WASI imports come from `wasi_unstable` (see its comments).
pub fn wasi_unstable_wat() -> PathBuf {
    wat_path("wasi-unstable.wat")
}

/// A plugin that exports `proxy_on_request_headers` and no body or trailers callback; it
/// adds the request header `x-headers-only: seen`.
pub fn headers_only_wat() -> PathBuf {
    wat_path("headers-only.wat")
}

/// A plugin that exports `proxy_on_request_headers` and no response callback; a request
/// with `x-break` makes it trap and its VMs refuse to start from then on (see its comments).
pub fn request_only_wat() -> PathBuf {
    wat_path("request-only.wat")
}

/// A plugin that declares only `proxy_on_request_headers`, where it calls `GET /check` on
/// cluster `callee` and continues at once; the answer's callback logs the request's `:path`
/// as `late-path=<path>` (`late-path-missing` when it gets none).
pub fn late_callout_wat() -> PathBuf {
    wat_path("late-callout.wat")
}

/// A plugin that exports every request callback but declares (section `tollgate.callbacks`)
/// only `proxy_on_request_headers`, which adds `x-request-seen: N`, N the calls of its
/// `on_log` and `on_done` so far; its `on_response_headers` would add `x-response-seen`.
pub fn declared_callbacks_wat() -> PathBuf {
    wat_path("declared-callbacks.wat")
}

/// A plugin that declares only `proxy_on_response_headers`, where it copies the request's
/// `x-who` and `:path` into the response headers `x-request-who` and `x-request-path`.
pub fn response_only_wat() -> PathBuf {
    wat_path("response-only.wat")
}

/// A plugin that sets two per-request properties whose names differ only in a byte that is
/// not UTF-8 (`tp\xff` = `first`, `tp\xfe` = `second`), reads each back and adds them as
/// the request headers `x-first` and `x-second`.
pub fn byte_property_names_wat() -> PathBuf {
    wat_path("byte-property-names.wat")
}

fn wat_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join("wat")
        .join(name)
}

/// Every host function of module `env` that the proxy-wasm Rust SDK (0.2.5) can import: the
/// 37 functions of proxy-wasm ABI 0.2.1. A plugin that imports anything else from `env`
/// cannot run in Envoy.
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

// === wasm module reader ===

/// What a wasm binary imports and exports, read by [`parse_module`].
#[derive(Debug, Default)]
pub struct ModuleInfo {
    /// (module, name, kind): kind 0 function, 1 table, 2 memory, 3 global, 4 tag.
    pub imports: Vec<(String, String, u8)>,
    /// (name, kind)
    pub exports: Vec<(String, u8)>,
    /// Names of the custom sections (`name`, `producers`, ...).
    pub custom_sections: Vec<String>,
    /// The functions' names from the `name` section (symbol names, mangled as linked).
    pub function_names: Vec<String>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn byte(&mut self) -> Result<u8, String> {
        let byte = *self.bytes.get(self.pos).ok_or("unexpected end of module")?;
        self.pos += 1;
        Ok(byte)
    }

    fn leb_u64(&mut self) -> Result<u64, String> {
        let mut result = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            result |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(result);
            }
        }
        Err("LEB128 number too long".into())
    }

    fn leb_u32(&mut self) -> Result<u32, String> {
        u32::try_from(self.leb_u64()?).map_err(|_| "LEB128 number over u32".to_string())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("section overruns the module")?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn name(&mut self) -> Result<String, String> {
        let len = self.leb_u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|e| format!("name is not UTF-8: {e}"))
    }

    fn limits(&mut self) -> Result<(), String> {
        let flags = self.byte()?;
        self.leb_u64()?;
        if flags & 1 != 0 {
            self.leb_u64()?;
        }
        Ok(())
    }
}

/// Reads the import, export and custom sections of a version-1 wasm binary (a small
/// hand-written parser: no wasm tooling needed).
pub fn parse_module(bytes: &[u8]) -> Result<ModuleInfo, String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" || bytes[4..8] != [1, 0, 0, 0] {
        return Err("not a version-1 wasm binary module".into());
    }
    let mut info = ModuleInfo::default();
    let mut reader = Reader::new(&bytes[8..]);
    while !reader.done() {
        let id = reader.byte()?;
        let size = reader.leb_u32()? as usize;
        let mut section = Reader::new(reader.take(size)?);
        match id {
            0 => {
                let name = section.name()?;
                if name == "name" {
                    info.function_names = function_names(&mut section)?;
                }
                info.custom_sections.push(name);
            }
            2 => {
                for _ in 0..section.leb_u32()? {
                    let module = section.name()?;
                    let name = section.name()?;
                    let kind = section.byte()?;
                    match kind {
                        0 => {
                            section.leb_u32()?;
                        }
                        1 => {
                            section.byte()?;
                            section.limits()?;
                        }
                        2 => section.limits()?,
                        3 => {
                            section.byte()?;
                            section.byte()?;
                        }
                        4 => {
                            section.byte()?;
                            section.leb_u32()?;
                        }
                        other => {
                            return Err(format!("unknown import kind {other} for {module}.{name}"))
                        }
                    }
                    info.imports.push((module, name, kind));
                }
            }
            7 => {
                for _ in 0..section.leb_u32()? {
                    let name = section.name()?;
                    let kind = section.byte()?;
                    section.leb_u32()?;
                    info.exports.push((name, kind));
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The function-names subsection (id 1) of a `name` section, the rest of which is skipped.
fn function_names(section: &mut Reader) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    while !section.done() {
        let id = section.byte()?;
        let size = section.leb_u32()? as usize;
        let mut subsection = Reader::new(section.take(size)?);
        if id != 1 {
            continue;
        }
        for _ in 0..subsection.leb_u32()? {
            subsection.leb_u32()?;
            names.push(subsection.name()?);
        }
    }
    Ok(names)
}

/// Reads and parses the module at `path`; panics naming `name` on failure.
pub fn module_info(name: &str, path: &str) -> ModuleInfo {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: read {path}: {e}"));
    parse_module(&bytes).unwrap_or_else(|e| panic!("{name}: {path}: {e}"))
}

// === plugin entries ===

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

    /// The configuration handed to `on_configure`: a string as its raw bytes, any other
    /// value as JSON.
    pub fn config(self, config: Value) -> Self {
        self.field("config", config)
    }

    /// The VM configuration handed to `on_vm_start`, delivered as `config` is.
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

/// Runs `tollgate check` on a folder holding a minimal gateway (one listener, one route
/// `all` to a cluster on a closed port) and these plugins; for bad-configuration tests.
pub fn check_plugins(plugins: &[PluginSpec]) -> crate::gateway::CommandOutcome {
    let mut dir = crate::gateway::PolicyDir::new();
    dir.write(
        "gateway.yaml",
        "listeners:\n  - { name: public, address: \"${listen:public}\", protocol: http }\n\
         clusters:\n  - { name: echo, endpoints: [{ address: \"127.0.0.1:9\" }] }\n\
         virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n\
         \x20     - { name: all, match: { path: { prefix: / } }, forward: { cluster: echo } }\n",
    )
    .write("plugins.json", &plugins_file(plugins));
    crate::gateway::run_check(&dir.path())
}

/// Panics unless `outcome` failed and its output contains every fragment.
pub fn assert_rejected(outcome: &crate::gateway::CommandOutcome, fragments: &[&str]) {
    assert!(
        outcome.code.is_some_and(|code| code != 0),
        "check should fail; exit {:?}, output:\n{}",
        outcome.code,
        outcome.output
    );
    for fragment in fragments {
        assert!(
            outcome.output.contains(fragment),
            "the error should mention {fragment:?}; output:\n{}",
            outcome.output
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plugin_was_built() {
        let crates = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/plugins"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("tp-"))
            .count();
        assert_eq!(ALL.len(), crates, "one built module per test-plugin crate");
        for (name, path) in ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: read {path}: {e}"));
            assert_eq!(&bytes[..4], b"\0asm", "{name} is a wasm module");
        }
        assert!(no_abi_wat().is_file());
        assert!(unknown_abi_wat().is_file());
        assert!(wasi_unstable_wat().is_file());
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
