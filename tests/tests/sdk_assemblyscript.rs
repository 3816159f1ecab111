//! A plugin written with the AssemblyScript SDK (`@solo-io/proxy-runtime`; the fixture in
//! tests/fixtures/assemblyscript, built by `tollgate_tests::assemblyscript::module`) runs in
//! the gateway unchanged:
//! - `tollgate check` accepts the module (ABI 0.2.0, `malloc` as its allocator, WASI's
//!   `proc_exit` imported from `wasi_unstable`);
//! - its configuration string reaches `on_configure` raw, and its log line reaches the
//!   gateway log;
//! - it adds a request header (the echo backend shows it) and a response header holding the
//!   configuration, and copies the `request.path` and `plugin_name` properties into headers;
//! - it answers `/as-forbidden` itself with 403, and the upstream is never called.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tollgate_tests::assemblyscript::{self, PLUGIN_NAME};
use tollgate_tests::clients::HttpClient;
use tollgate_tests::plugins::{check_plugins, PluginSpec};
use tollgate_tests::scenario::Scenario;

const CONFIGURATION: &str = "Hello from AssemblyScript";

fn plugin() -> PluginSpec {
    PluginSpec::new(PLUGIN_NAME, assemblyscript::module()).config(json!(CONFIGURATION))
}

/// The gateway of this file's tests; each adds what it needs and starts it.
fn scenario() -> Scenario {
    Scenario::new()
        .echo("echo")
        .forward("all", "/", "echo")
        .plugin(plugin())
}

#[test]
fn check_accepts_the_assemblyscript_module() {
    let outcome = check_plugins(&[plugin()]);
    assert_eq!(
        outcome.code,
        Some(0),
        "tollgate check should accept the module; output:\n{}",
        outcome.output
    );
}

#[tokio::test]
async fn headers_and_properties_go_through_the_gateway() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "example.test", "/hello?x=1")
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(response.header("x-as-config"), Some(CONFIGURATION));
    assert_eq!(response.header("x-as-plugin"), Some(PLUGIN_NAME));

    let seen = echo.wait_for_requests(1, Duration::from_secs(5)).await;
    assert_eq!(seen[0].header("x-as-config"), Some(CONFIGURATION));
    assert_eq!(seen[0].header("x-as-path"), Some("/hello?x=1"));
}

#[tokio::test]
async fn the_plugin_answers_a_forbidden_path_itself() {
    let gateway = scenario().start().await;
    let echo = gateway.backend("echo");
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "example.test", "/as-forbidden")
        .await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert_eq!(response.text(), "denied by as-fixture");
    // The response phase runs on the local answer too.
    assert_eq!(response.header("x-as-config"), Some(CONFIGURATION));
    assert_eq!(echo.request_count(), 0, "the upstream must not be called");
}

#[tokio::test]
async fn the_plugin_log_reaches_the_gateway_log() {
    let gateway = scenario().start().await;
    let expected = format!("{PLUGIN_NAME} configured with {CONFIGURATION}");
    for _ in 0..100 {
        if gateway.log().contains(&expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the gateway log never showed {expected:?}; log:\n{}",
        gateway.log()
    );
}
