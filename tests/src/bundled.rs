//! The bundled plugins (the crates of the cargo workspace in `plugins/`), built for
//! `wasm32-wasip1` by `tests/build.rs`: one constant per plugin with the absolute path of its
//! `.wasm`, named after the crate (`RATE_LIMIT`, `KEY_AUTH`, ...), and `ALL`.

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The WASI preview-1 functions Envoy's proxy-wasm host (proxy-wasm-cpp-host) provides; a
/// bundled plugin importing any other WASI function would not load in Envoy.
pub const ENVOY_WASI_FUNCTIONS: [&str; 19] = [
    "args_get",
    "args_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "environ_get",
    "environ_sizes_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_prestat_dir_name",
    "fd_prestat_get",
    "fd_read",
    "fd_seek",
    "fd_write",
    "path_open",
    "poll_oneoff",
    "proc_exit",
    "random_get",
    "sched_yield",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{module_info, PROXY_WASM_HOST_FUNCTIONS};

    #[test]
    fn every_bundled_plugin_was_built() {
        assert!(ALL.len() >= 3);
        for (name, path) in ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: read {path}: {e}"));
            assert_eq!(&bytes[..4], b"\0asm", "{name} is a wasm module");
        }
    }

    /// Every bundled plugin allocates with the SDK's allocator (the `dlmalloc` crate, compiled
    /// with the plugin), not through the shim of Rust's standard allocator (`__rdl_alloc`),
    /// which forwards to the WASI libc's `malloc`.
    #[test]
    fn bundled_plugins_allocate_with_the_sdk_allocator() {
        for (name, path) in ALL {
            let names = module_info(name, path).function_names;
            assert!(!names.is_empty(), "{name} has no function names");
            assert!(
                names.iter().any(|f| f.contains("8dlmalloc8dlmalloc")),
                "{name} does not contain the dlmalloc crate"
            );
            assert!(
                !names.iter().any(|f| f.ends_with("__rdl_alloc")),
                "{name} allocates through Rust's standard allocator shim"
            );
        }
    }

    /// Portability: every import of every bundled plugin is a standard proxy-wasm host
    /// function (module `env`) or a WASI function Envoy provides — never a Tollgate-only one.
    #[test]
    fn bundled_plugins_import_only_what_envoy_provides() {
        for (name, path) in ALL {
            let info = module_info(name, path);
            assert!(!info.imports.is_empty(), "{name} imports nothing? {info:?}");
            for (module, field, kind) in &info.imports {
                let allowed = match module.as_str() {
                    "env" => PROXY_WASM_HOST_FUNCTIONS.contains(&field.as_str()),
                    "wasi_snapshot_preview1" => ENVOY_WASI_FUNCTIONS.contains(&field.as_str()),
                    _ => false,
                };
                assert!(
                    allowed && *kind == 0,
                    "{name} imports {module}.{field} (kind {kind}), which Envoy does not provide"
                );
            }
            for export in [
                "proxy_abi_version_0_2_1",
                "proxy_on_context_create",
                "memory",
            ] {
                assert!(
                    info.exports.iter().any(|(e, _)| e == export),
                    "{name} does not export {export}"
                );
            }
        }
    }
}
