//! Plugins that fail, and modules that cannot be plugins (`tp-misbehave`, the WAT modules):
//! - a panicking plugin: `fail_closed` answers 503 without calling the upstream, `fail_open`
//!   skips the plugin, other routes keep working, the trap is logged with the plugin's name;
//!   each trap fails only its own request (the worker rebuilds the VM, the circuit stays
//!   closed below `max_traps_per_minute`: `plugin_failures.rs` covers the rest);
//! - an infinite loop is cut by the per-callback deadline (503 in about a second);
//! - a memory bomb hits the per-VM memory limit (503) and the gateway survives;
//! - a bad guest pointer gets INVALID_MEMORY_ACCESS (6) or traps only that VM;
//! - `on_configure` returning false, or a panic in `on_vm_start`, makes `tollgate check` fail
//!   naming the plugin (with the plugin's log line) and `tollgate run` refuse to start;
//! - modules without a known `proxy_abi_version_*` export are rejected with an ABI error;
//! - `tollgate check` accepts every test plugin with a valid configuration.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use tollgate_tests::clients::{get_request, HttpClient, HttpResponse};
use tollgate_tests::gateway::{run_check, CommandOutcome, Gateway, PolicyDir};
use tollgate_tests::plugins::{
    no_abi_wat, plugins_file, unknown_abi_wat, PluginSpec, TP_BODY, TP_CALLOUT, TP_GRPC,
    TP_HEADERS, TP_HEADER_HEAVY, TP_LOCAL_REPLY, TP_METRICS, TP_MISBEHAVE, TP_PROPERTIES,
    TP_SHARED,
};
use tollgate_tests::scenario::Scenario;

fn misbehave(name: &str, mode: &str, route: &str) -> PluginSpec {
    PluginSpec::new(name, TP_MISBEHAVE)
        .config(json!({ "mode": mode }))
        .routes(&[route])
}

/// The gateway of this file's tests; each adds what it needs and starts it.
fn scenario() -> Scenario {
    Scenario::new()
        .echo("echo")
        .forward("panic-closed", "/panic-closed", "echo")
        .forward("panic-open", "/panic-open", "echo")
        .forward("loop", "/loop", "echo")
        .forward("memory", "/memory", "echo")
        .forward("bad-pointer", "/bad-pointer", "echo")
        .forward("plain", "/", "echo")
}

/// GET through the gateway with a 10 s bound; returns the response and how long it took.
async fn get(gateway: &Gateway, path: &str) -> (HttpResponse, Duration) {
    let started = Instant::now();
    let request = get_request(gateway.listener("public"), "fail.test", path);
    match tokio::time::timeout(Duration::from_secs(10), HttpClient::http1().send(request)).await {
        Ok(Ok(response)) => (response, started.elapsed()),
        Ok(Err(e)) => panic!("GET {path}: {e:#}; gateway log:\n{}", gateway.log()),
        Err(_) => panic!(
            "GET {path}: no answer within 10 s; gateway log:\n{}",
            gateway.log()
        ),
    }
}

async fn assert_healthy(gateway: &Gateway) {
    let (response, _) = get(gateway, "/plain").await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "a route without plugins keeps working\n{}",
        gateway.log()
    );
    assert_eq!(
        gateway.admin_get("/readyz").await.status,
        StatusCode::OK,
        "the gateway stays ready"
    );
}

/// Waits (bounded) until the gateway log contains every fragment.
async fn assert_log_mentions(gateway: &Gateway, fragments: &[&str]) {
    for _ in 0..40 {
        if fragments.iter().all(|f| gateway.log().contains(f)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gateway.log();
    let missing: Vec<_> = fragments.iter().filter(|f| !log.contains(**f)).collect();
    panic!("the gateway log does not mention {missing:?}:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_plugin_fails_closed_or_open_and_other_routes_work() {
    let gateway = scenario()
        .plugins(&[
            misbehave("panicky-closed", "panic", "panic-closed").failure_policy("fail_closed"),
            misbehave("panicky-open", "panic", "panic-open").failure_policy("fail_open"),
        ])
        .start()
        .await;
    let echo = gateway.backend("echo");
    for attempt in 0..3 {
        let (response, _) = get(&gateway, "/panic-closed").await;
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {}",
            response.text()
        );
        assert_healthy(&gateway).await;
        let (response, _) = get(&gateway, "/panic-open").await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "fail_open skips the plugin (attempt {attempt})"
        );
    }
    let requests = echo.requests();
    assert!(
        requests
            .iter()
            .all(|r| !r.path.starts_with("/panic-closed")),
        "fail_closed must not forward"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.path.starts_with("/panic-open"))
            .count(),
        3
    );
    assert_log_mentions(&gateway, &["panicky-closed", "tp-misbehave: panic mode"]).await;
    // Every attempt ran the plugin on a VM of its own: no request met an "unavailable" VM.
    let plugins = gateway.admin_get("/plugins").await.json();
    let closed = plugins["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == "panicky-closed")
        .expect("panicky-closed")
        .clone();
    assert_eq!(closed["traps"], 3, "{closed}");
    assert_eq!(closed["circuit"]["state"], "closed", "{closed}");
    assert!(closed["vm_restarts"].as_u64() >= Some(1), "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_cut_by_the_deadline() {
    let gateway = scenario()
        .plugins(&[misbehave("spinner", "loop", "loop").field("callback_timeout", json!("100ms"))])
        .start()
        .await;
    let echo = gateway.backend("echo");
    for attempt in 0..2 {
        let (response, elapsed) = get(&gateway, "/loop").await;
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {}",
            response.text()
        );
        assert!(
            elapsed < Duration::from_secs(2),
            "attempt {attempt}: the deadline took {elapsed:?}"
        );
        assert_healthy(&gateway).await;
    }
    assert!(echo.requests().iter().all(|r| !r.path.starts_with("/loop")));
    assert_log_mentions(&gateway, &["spinner"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_limit_and_the_gateway_survives() {
    let gateway = scenario()
        .plugins(&[
            misbehave("hog", "memory", "memory").field("memory_limit", json!(16 * 1024 * 1024))
        ])
        .start()
        .await;
    let echo = gateway.backend("echo");
    for attempt in 0..2 {
        let (response, elapsed) = get(&gateway, "/memory").await;
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {}",
            response.text()
        );
        assert!(
            elapsed < Duration::from_secs(5),
            "attempt {attempt}: took {elapsed:?}"
        );
        assert_healthy(&gateway).await;
    }
    assert!(echo
        .requests()
        .iter()
        .all(|r| !r.path.starts_with("/memory")));
    assert_log_mentions(&gateway, &["hog"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_guest_pointer_is_refused_or_traps_only_that_vm() {
    let gateway = scenario()
        .plugins(&[misbehave("pointer", "bad-pointer", "bad-pointer")])
        .start()
        .await;
    for attempt in 0..2 {
        let (response, _) = get(&gateway, "/bad-pointer").await;
        match response.status {
            StatusCode::OK => {
                assert_eq!(
                    response.header("x-bad-pointer-status"),
                    Some("6"),
                    "attempt {attempt}: an out-of-bounds key must give INVALID_MEMORY_ACCESS (6)"
                );
                assert_eq!(
                    response.header("x-bad-return-pointer-status"),
                    Some("6"),
                    "attempt {attempt}: a result that cannot be placed must give \
                     INVALID_MEMORY_ACCESS (6)"
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!(
                "attempt {attempt}: expected 200 with status 6, or 503 after a trap; got {other}"
            ),
        }
        assert_healthy(&gateway).await;
    }
}

// ---- configurations and modules the gateway must refuse ----

const CHECK_POLICIES: &str = r#"
listeners:
  - name: public
    address: 127.0.0.1:18080
    protocol: http
clusters:
  - name: echo
    endpoints: [{ address: "127.0.0.1:19001" }]
  - name: grpc-service
    endpoints: [{ address: "127.0.0.1:19002" }]
    http2: true
virtual_hosts:
  - name: test
    domains: ["*"]
    routes:
      - name: plain
        match: { path: { prefix: / } }
        forward: { cluster: echo }
"#;

fn check(plugins: &[PluginSpec]) -> CommandOutcome {
    let mut dir = PolicyDir::new();
    dir.write("gateway.yaml", CHECK_POLICIES)
        .write("plugins.json", &plugins_file(plugins));
    run_check(&dir.path())
}

fn assert_rejected(outcome: &CommandOutcome, fragments: &[&str]) {
    assert!(
        outcome.code.is_some_and(|code| code != 0),
        "check should fail; exit {:?}, output:\n{}",
        outcome.code,
        outcome.output
    );
    for fragment in fragments {
        assert!(
            outcome
                .output
                .to_lowercase()
                .contains(&fragment.to_lowercase()),
            "the error should mention {fragment:?}; output:\n{}",
            outcome.output
        );
    }
}

/// Runs `tollgate run` with these plugins, which it must refuse: it has to exit non-zero
/// within 20 s (it is killed and the test fails otherwise). Returns its output.
async fn run_must_refuse(scenario: Scenario, plugins: &[PluginSpec]) -> String {
    scenario
        .without_public_listener()
        .policy_file("gateway.yaml", CHECK_POLICIES)
        .plugins(plugins)
        .workers(1)
        .run_until_refused(Duration::from_secs(20))
        .await
}

#[tokio::test]
async fn on_configure_false_is_refused_with_the_plugin_log_line() {
    let plugins = [misbehave("refuser", "configure-false", "plain")];
    assert_rejected(
        &check(&plugins),
        &["refuser", "tp-misbehave refuses this configuration"],
    );
    let output = run_must_refuse(Scenario::new(), &plugins).await;
    assert!(
        output.contains("refuser"),
        "run names the plugin; output:\n{output}"
    );
}

#[test]
fn panic_in_on_vm_start_is_refused() {
    let plugins = [PluginSpec::new("starter", TP_MISBEHAVE)
        .vm_config(json!({ "mode": "panic-on-start" }))
        .routes(&["plain"])];
    assert_rejected(&check(&plugins), &["starter", "panic-on-start"]);
}

#[test]
fn invalid_plugin_configuration_names_the_field() {
    let plugins = [PluginSpec::new("untagged", TP_HEADERS)
        .config(json!({ "label": "x" }))
        .routes(&["plain"])];
    assert_rejected(&check(&plugins), &["untagged", "\"tag\""]);
}

/// A copy of a WAT module under a neutral name (no "abi" in it), so that an error that
/// mentions the ABI does so because it explains the problem, not because it echoes the path.
fn neutral_copy(dir: &PolicyDir, source: &Path, name: &str) -> PathBuf {
    let copy = dir.path().parent().expect("temp root").join(name);
    std::fs::copy(source, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
    copy
}

#[test]
fn module_without_abi_version_is_rejected() {
    let mut dir = PolicyDir::new();
    let module = neutral_copy(&dir, &no_abi_wat(), "bare-module.wat");
    let plugins = [PluginSpec::new("bare", module).routes(&["plain"])];
    dir.write("gateway.yaml", CHECK_POLICIES)
        .write("plugins.json", &plugins_file(&plugins));
    let outcome = run_check(&dir.path());
    assert_rejected(&outcome, &["bare", "abi"]);
}

#[test]
fn module_with_unknown_abi_version_is_rejected() {
    let mut dir = PolicyDir::new();
    let module = neutral_copy(&dir, &unknown_abi_wat(), "future-module.wat");
    let plugins = [PluginSpec::new("future", module).routes(&["plain"])];
    dir.write("gateway.yaml", CHECK_POLICIES)
        .write("plugins.json", &plugins_file(&plugins));
    let outcome = run_check(&dir.path());
    assert_rejected(&outcome, &["future", "abi"]);
}

#[tokio::test]
async fn run_refuses_a_module_without_abi_version() {
    let scenario = Scenario::new();
    let module = neutral_copy(scenario.policies(), &no_abi_wat(), "bare-module.wat");
    let output = run_must_refuse(
        scenario,
        &[PluginSpec::new("bare", module).routes(&["plain"])],
    )
    .await;
    assert!(output.to_lowercase().contains("abi"), "output:\n{output}");
}

#[test]
fn check_accepts_every_test_plugin() {
    let plugins = [
        PluginSpec::new("headers", TP_HEADERS).config(json!({ "tag": "t" })),
        PluginSpec::new("body", TP_BODY),
        PluginSpec::new("local-reply", TP_LOCAL_REPLY),
        PluginSpec::new("callout", TP_CALLOUT)
            .config(json!({ "cluster": "echo", "path": "/", "timeout_ms": 100 })),
        PluginSpec::new("shared", TP_SHARED),
        PluginSpec::new("metrics", TP_METRICS),
        PluginSpec::new("properties", TP_PROPERTIES)
            .config(json!({ "properties": [{ "path": ["request", "path"], "type": "string" }] })),
        PluginSpec::new("grpc", TP_GRPC)
            .config(json!({ "cluster": "grpc-service", "service": "s", "method": "m" })),
        PluginSpec::new("misbehave-ok", TP_MISBEHAVE).config(json!({ "mode": "ok" })),
        // Runtime failure modes only fail when a request arrives.
        PluginSpec::new("misbehave-panic", TP_MISBEHAVE).config(json!({ "mode": "panic" })),
        PluginSpec::new("heavy", TP_HEADER_HEAVY),
    ];
    let plugins: Vec<PluginSpec> = plugins.into_iter().map(|p| p.routes(&["plain"])).collect();
    let outcome = check(&plugins);
    assert_eq!(outcome.code, Some(0), "output:\n{}", outcome.output);
    assert!(Path::new(TP_HEADERS).is_absolute());
}
