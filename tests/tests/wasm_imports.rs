//! What the built test plugins import and export, read from the modules themselves (a small
//! parser of the wasm binary's import and export sections; no gateway involved):
//! - every `env` import is one of the 37 proxy-wasm host functions of DESIGN.md §6, and every
//!   other import comes from `wasi_snapshot_preview1` — so the host must provide exactly
//!   these, and the plugins stay loadable by Envoy;
//! - every plugin exports `memory`, `proxy_abi_version_0_2_1`, `proxy_on_memory_allocate`,
//!   `proxy_on_context_create` and `_initialize` (the reactor entry point);
//! - function names survive the release build (the name section), for guest backtraces;
//! - `tp-misbehave` really imports `env.proxy_get_header_map_value` (its raw import merged with
//!   the SDK's).

use std::collections::BTreeSet;

use tollgate_tests::plugins::{ALL, PROXY_WASM_HOST_FUNCTIONS, TP_MISBEHAVE};

#[derive(Debug, Default)]
struct ModuleInfo {
    /// (module, name, kind): kind 0 function, 1 table, 2 memory, 3 global, 4 tag.
    imports: Vec<(String, String, u8)>,
    /// (name, kind)
    exports: Vec<(String, u8)>,
    custom_sections: Vec<String>,
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

fn parse_module(bytes: &[u8]) -> Result<ModuleInfo, String> {
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
            0 => info.custom_sections.push(section.name()?),
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

fn module_info(name: &str, path: &str) -> ModuleInfo {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: read {path}: {e}"));
    parse_module(&bytes).unwrap_or_else(|e| panic!("{name}: {path}: {e}"))
}

#[test]
fn plugins_import_only_proxy_wasm_host_functions_and_wasi() {
    let host_functions: BTreeSet<&str> = PROXY_WASM_HOST_FUNCTIONS.into_iter().collect();
    assert_eq!(
        host_functions.len(),
        37,
        "the list of host functions has duplicates"
    );
    let mut used = BTreeSet::new();
    for (name, path) in ALL {
        let info = module_info(name, path);
        assert!(!info.imports.is_empty(), "{name} imports nothing? {info:?}");
        for (module, field, kind) in &info.imports {
            match module.as_str() {
                "env" => {
                    assert!(
                        host_functions.contains(field.as_str()),
                        "{name} imports env.{field}, which is not one of the 37 proxy-wasm host functions"
                    );
                    used.insert(field.clone());
                }
                "wasi_snapshot_preview1" => {}
                other => panic!("{name} imports {other}.{field}: only env and wasi_snapshot_preview1 are allowed"),
            }
            assert_eq!(
                *kind, 0,
                "{name}: import {module}.{field} is not a function"
            );
        }
    }
    // The test plugins between them exercise most of the ABI; this keeps them honest.
    for expected in [
        "proxy_log",
        "proxy_get_header_map_pairs",
        "proxy_set_header_map_pairs",
        "proxy_get_header_map_value",
        "proxy_add_header_map_value",
        "proxy_replace_header_map_value",
        "proxy_remove_header_map_value",
        "proxy_get_buffer_bytes",
        "proxy_set_buffer_bytes",
        "proxy_send_local_response",
        "proxy_http_call",
        "proxy_grpc_call",
        "proxy_continue_stream",
        "proxy_get_shared_data",
        "proxy_set_shared_data",
        "proxy_register_shared_queue",
        "proxy_resolve_shared_queue",
        "proxy_enqueue_shared_queue",
        "proxy_dequeue_shared_queue",
        "proxy_set_tick_period_milliseconds",
        "proxy_define_metric",
        "proxy_increment_metric",
        "proxy_record_metric",
        "proxy_get_metric",
        "proxy_get_property",
        "proxy_set_property",
        "proxy_set_effective_context",
    ] {
        assert!(
            used.contains(expected),
            "no test plugin imports {expected}; imported: {used:?}"
        );
    }
}

#[test]
fn plugins_export_the_abi_entry_points_and_keep_function_names() {
    for (name, path) in ALL {
        let info = module_info(name, path);
        let exports: BTreeSet<&str> = info
            .exports
            .iter()
            .map(|(export, _)| export.as_str())
            .collect();
        for required in [
            "memory",
            "proxy_abi_version_0_2_1",
            "proxy_on_memory_allocate",
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "_initialize",
        ] {
            assert!(
                exports.contains(required),
                "{name} does not export {required}; exports: {exports:?}"
            );
        }
        assert!(
            info.custom_sections.iter().any(|section| section == "name"),
            "{name} has no name section (function names are needed for guest backtraces); custom sections: {:?}",
            info.custom_sections
        );
    }
}

#[test]
fn misbehave_imports_the_raw_header_map_value_call() {
    let info = module_info("tp-misbehave", TP_MISBEHAVE);
    let count = info
        .imports
        .iter()
        .filter(|(module, field, _)| module == "env" && field == "proxy_get_header_map_value")
        .count();
    assert_eq!(count, 1, "imports: {:?}", info.imports);
}

#[test]
fn the_parser_rejects_what_is_not_a_module() {
    assert!(parse_module(b"(module)").is_err());
    assert!(
        parse_module(b"\0asm\x01\0\0\0\x02\x05\x01").is_err(),
        "a truncated section must not parse"
    );
    let empty = parse_module(b"\0asm\x01\0\0\0").unwrap();
    assert!(empty.imports.is_empty() && empty.exports.is_empty());
}
