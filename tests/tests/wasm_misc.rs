//! The host functions no other test plugin calls in a request, through `tp-misc`: the log
//! level, an unknown foreign function (NOT_FOUND, as in an Envoy without extensions), the one
//! Tollgate has (`tollgate.callbacks`) refused outside a root context and with two bytes,
//! `proxy_done`, `proxy_get_status`, cancelling a gRPC stream (no callback after the cancel,
//! a second cancel is NOT_FOUND) and `proxy_close_stream` resetting the request.

use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::{PluginSpec, TP_MISC};
use tollgate_tests::scenario::Scenario;

async fn ask(gateway: &Gateway, misc: &str) -> HttpResponse {
    let req = request("GET", gateway.listener("public"), "misc.test", "/")
        .header("x-misc", misc)
        .body(Full::default())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), HttpClient::http1().send(req))
        .await
        .expect("answered within 10 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remaining_host_functions_behave_as_in_envoy() {
    let gateway = Scenario::new()
        .echo("echo")
        .grpc_stream_echo("grpc")
        .route("{ name: all, forward: { cluster: echo } }")
        .plugin(PluginSpec::new("misc", TP_MISC))
        .start()
        .await;
    let upstream = |response: &HttpResponse| {
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{}\n{}",
            response.text(),
            gateway.log()
        );
        response.json()["headers"].clone()
    };

    let headers = upstream(&ask(&gateway, "log-level").await);
    let level: u32 = headers["x-log-level"].as_str().unwrap().parse().unwrap();
    assert!(level <= 5, "a proxy-wasm log level: {headers}");

    let headers = upstream(&ask(&gateway, "foreign").await);
    assert_eq!(headers["x-foreign"], "NotFound", "{headers}");

    // Tollgate's one foreign function answers a root context only, with one byte.
    let headers = upstream(&ask(&gateway, "callbacks").await);
    assert_eq!(headers["x-callbacks"], "BadArgument", "{headers}");
    assert_eq!(headers["x-callbacks-two"], "BadArgument", "{headers}");

    let headers = upstream(&ask(&gateway, "done").await);
    assert_eq!(headers["x-done"], "Ok", "{headers}");

    let headers = upstream(&ask(&gateway, "status").await);
    assert_eq!(headers["x-status"], "0", "{headers}");

    let headers = upstream(&ask(&gateway, "grpc-cancel").await);
    assert_eq!(headers["x-grpc-cancel"], "Ok", "{headers}");
    assert_eq!(
        headers["x-grpc-cancel-again"], "NotFound",
        "a cancelled token is gone: {headers}"
    );
    assert!(
        headers.get("x-grpc-after-cancel").is_none(),
        "no callback after a cancel: {headers}"
    );

    // A reset stream gets no response: the client sees the connection close.
    let req = request("GET", gateway.listener("public"), "misc.test", "/")
        .header("x-misc", "reset")
        .body(Full::default())
        .unwrap();
    let reset = tokio::time::timeout(Duration::from_secs(10), HttpClient::http1().send(req))
        .await
        .expect("ended within 10 s");
    assert!(reset.is_err(), "no response to a reset stream: {reset:?}");
    assert!(
        gateway
            .backend("echo")
            .requests()
            .iter()
            .all(|r| r.header("x-misc") != Some("reset")),
        "a reset request never reaches the upstream"
    );

    // The VM survived all of it.
    let headers = upstream(&ask(&gateway, "status").await);
    assert_eq!(headers["x-status"], "0");
}
