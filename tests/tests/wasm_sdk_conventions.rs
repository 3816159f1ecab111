//! What modules written outside this repository expect of the host, as Envoy provides it:
//! - configuration bytes: `tp-http-config` (written like the Rust SDK's `http_config`
//!   example) reads its configuration as a string and adds `custom-header: <string>` to
//!   responses; `config: "Hello"` gives `Hello` (raw bytes, no JSON quotes), an object gives
//!   its JSON text, a string `route_config` is raw too, and no configuration is empty;
//! - WASI under `wasi_unstable`: a module importing `wasi_unstable.fd_write` and
//!   `wasi_unstable.proc_exit` passes `tollgate check`, its `fd_write` reaches the gateway
//!   log, and its `proc_exit` ends the VM like a trap (the request fails closed with 503).

use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tollgate_tests::clients::{request, HttpClient};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::{check_plugins, wasi_unstable_wat, PluginSpec, TP_HTTP_CONFIG};
use tollgate_tests::scenario::{Running, Scenario};

async fn start(plugin: PluginSpec) -> Running {
    Scenario::new()
        .echo("echo")
        .forward("special", "/special", "echo")
        .forward("plain", "/", "echo")
        .plugin(plugin)
        .start()
        .await
}

/// The `custom-header` of a GET to `path` through a gateway running `tp-http-config` with
/// this plugin entry.
async fn custom_header(plugin: PluginSpec, path: &str) -> Option<String> {
    let gateway = start(plugin).await;
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "example.test", path)
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    response.header("custom-header").map(str::to_owned)
}

#[tokio::test]
async fn a_string_configuration_arrives_as_its_raw_bytes() {
    let plugin = PluginSpec::new("http-config", TP_HTTP_CONFIG).config(json!("Hello"));
    assert_eq!(custom_header(plugin, "/").await.as_deref(), Some("Hello"));
}

#[tokio::test]
async fn an_object_configuration_arrives_as_json() {
    let plugin =
        PluginSpec::new("http-config", TP_HTTP_CONFIG).config(json!({ "greeting": "Hello" }));
    assert_eq!(
        custom_header(plugin, "/").await.as_deref(),
        Some(r#"{"greeting":"Hello"}"#)
    );
}

#[tokio::test]
async fn a_string_route_configuration_is_raw_and_no_configuration_is_empty() {
    let plugin = PluginSpec::new("http-config", TP_HTTP_CONFIG)
        .field("route_config", json!({ "special": "Hello, special route" }));
    let gateway = start(plugin).await;
    let client = HttpClient::http1();
    let special = client
        .get(gateway.listener("public"), "example.test", "/special")
        .await;
    assert_eq!(
        special.header("custom-header"),
        Some("Hello, special route")
    );
    let plain = client
        .get(gateway.listener("public"), "example.test", "/")
        .await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.header("custom-header"), Some(""));
}

#[tokio::test]
async fn wasi_unstable_imports_pass_check_and_run() {
    let plugin = PluginSpec::new("wasi-unstable", wasi_unstable_wat());
    let outcome = check_plugins(std::slice::from_ref(&plugin));
    assert_eq!(
        outcome.code,
        Some(0),
        "tollgate check should accept the module; output:\n{}",
        outcome.output
    );

    let gateway = start(plugin).await;
    let echo = gateway.backend("echo");
    let client = HttpClient::http1();
    let response = client
        .get(gateway.listener("public"), "example.test", "/")
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let seen = echo.wait_for_requests(1, Duration::from_secs(5)).await;
    assert_eq!(seen[0].header("x-wasi"), Some("unstable"));
    wait_for_log(&gateway, "wasi_unstable fd_write reached the log").await;

    // A body makes the module call proc_exit(3): its VM ends and the request fails closed.
    let with_body = request("POST", gateway.listener("public"), "example.test", "/")
        .body(Full::from("payload"))
        .expect("a request");
    let response = client.send(with_body).await.expect("an answer");
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(echo.request_count(), 1, "the POST never reached upstream");
    wait_for_log(&gateway, "proc_exit(3)").await;
}

/// Waits (bounded) until the gateway log contains `fragment`.
async fn wait_for_log(gateway: &Gateway, fragment: &str) {
    for _ in 0..100 {
        if gateway.log().contains(fragment) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the gateway log never showed {fragment:?}; log:\n{}",
        gateway.log()
    );
}
