//! Compiled modules are cached on disk by content hash, so that a restart (here: a second
//! `tollgate check`) finds them instead of compiling again.

use std::process::{Command, Stdio};

use serde_json::json;
use tollgate_tests::gateway::{tollgate_binary, PolicyDir};
use tollgate_tests::plugins::{plugins_file, PluginSpec, TP_HEADERS};

fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

fn check(policies: &PolicyDir, cache: &std::path::Path) -> std::process::Output {
    Command::new(tollgate_binary())
        .args(["check", "--policies"])
        .arg(policies.path())
        .env("TOLLGATE_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_restart_reuses_the_compiled_module_cache() {
    let mut policies = PolicyDir::new();
    policies.write(
        "gateway.yaml",
        "listeners: [{ name: public, address: \"${listen:public}\" }]\nvirtual_hosts: [{ name: all, domains: [\"*\"], routes: [{ name: r, direct_response: { status: 200 } }] }]\n",
    );
    policies.write(
        "plugins.json",
        &plugins_file(&[PluginSpec::new("cached", TP_HEADERS).config(json!({ "tag": "c" }))]),
    );
    let cache = policies.path().parent().unwrap().join("module-cache");

    let first = check(&policies, &cache);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let compiled = compiled_entries(&cache);
    assert!(
        !compiled.is_empty(),
        "the first run wrote compiled code under {}",
        cache.display()
    );

    let second = check(&policies, &cache);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        compiled_entries(&cache),
        compiled,
        "the second run found the compiled code and wrote none"
    );
}

/// Compiled-code entries of the cache with their modification times (usage statistics the
/// cache keeps beside them are left out).
fn compiled_entries(cache: &std::path::Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    let mut entries: Vec<_> = files_in(cache)
        .into_iter()
        .filter(|path| {
            path.extension()
                .is_none_or(|extension| extension != "stats")
        })
        .map(|path| {
            let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
            (path, modified)
        })
        .collect();
    entries.sort();
    entries
}
