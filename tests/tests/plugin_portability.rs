//! Every bundled plugin (the crates of `plugins/`) can run in Envoy: read from the built
//! modules themselves, each imports only the 37 standard proxy-wasm host functions from
//! `env` and WASI preview-1 functions from `wasi_snapshot_preview1` — no Tollgate-only
//! import — and exports the proxy-wasm entry points.

use std::collections::BTreeSet;

use tollgate_tests::bundled;
use tollgate_tests::plugins::{module_info, PROXY_WASM_HOST_FUNCTIONS};

#[test]
fn bundled_plugins_import_only_standard_proxy_wasm_and_wasi_functions() {
    let standard: BTreeSet<&str> = PROXY_WASM_HOST_FUNCTIONS.into_iter().collect();
    assert!(
        bundled::ALL.len() >= 7,
        "expected every bundled plugin to be built: {:?}",
        bundled::ALL
    );
    let mut problems = Vec::new();
    for (name, path) in bundled::ALL {
        let info = module_info(name, path);
        for (module, field, kind) in &info.imports {
            match (module.as_str(), *kind) {
                ("env", 0) if standard.contains(field.as_str()) => {}
                ("wasi_snapshot_preview1", 0) => {}
                ("env", 0) => problems.push(format!(
                    "{name} imports env.{field}, not one of the 37 standard proxy-wasm host functions"
                )),
                _ => problems.push(format!(
                    "{name} imports {module}.{field} (kind {kind}): only env and wasi_snapshot_preview1 functions are allowed"
                )),
            }
        }
        let exports: BTreeSet<&str> = info.exports.iter().map(|(e, _)| e.as_str()).collect();
        for required in [
            "memory",
            "proxy_abi_version_0_2_1",
            "proxy_on_memory_allocate",
            "proxy_on_context_create",
            "proxy_on_configure",
            "proxy_on_request_headers",
        ] {
            if !exports.contains(required) {
                problems.push(format!("{name} does not export {required}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_auth_access_and_transform_plugins_are_bundled() {
    let names: BTreeSet<&str> = bundled::ALL.iter().map(|(name, _)| *name).collect();
    for plugin in [
        "key-auth",
        "jwt-auth",
        "acl",
        "ip-restriction",
        "cors",
        "transformer",
        "api-lifecycle",
        "ext-authz",
        "hmac-auth",
        "token-introspection",
    ] {
        assert!(names.contains(plugin), "{plugin} is not bundled: {names:?}");
    }
}
