//! What the built test plugins import and export, read from the modules themselves (a small
//! parser of the wasm binary's import and export sections; no gateway involved):
//! - every `env` import is one of the 37 proxy-wasm host functions (`PROXY_WASM_HOST_FUNCTIONS`), and every
//!   other import comes from `wasi_snapshot_preview1` — so the host must provide exactly
//!   these, and the plugins stay loadable by Envoy;
//! - every plugin exports `memory`, `proxy_abi_version_0_2_1`, `proxy_on_memory_allocate`,
//!   `proxy_on_context_create` and `_initialize` (the reactor entry point);
//! - function names survive the release build (the name section), for guest backtraces;
//! - `tp-misbehave` really imports `env.proxy_get_header_map_value` (its raw import merged with
//!   the SDK's).

use std::collections::BTreeSet;

use tollgate_tests::plugins::{
    module_info, parse_module, ALL, PROXY_WASM_HOST_FUNCTIONS, TP_MISBEHAVE,
};

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
