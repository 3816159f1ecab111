//! The host calls a plugin only in the phases whose callbacks its module exports
//! (`request-only.wat`: `proxy_on_request_headers` and no response callback):
//! - a request that passed the plugin gets its response even when the plugin's VM on that
//!   worker died meanwhile and cannot be started again: the response phase never enters the
//!   VM (entering it would need a VM, and `fail_closed` would answer 503);
//! - the request that broke the VM is answered 503 (`fail_closed`), and the plugin's
//!   request phase keeps failing while its VMs refuse to start.
//!
//! Both requests are streams of one HTTP/2 connection, so that one worker serves both.
//!
//! A module that declares the callbacks it implements (its `tollgate.callbacks` section, which
//! the SDK writes) is entered for those only; without the section, every export is called.
//!
//! A plugin that works on the response only (`response-only.wat`) still reads the request
//! head in the response phase, and the upstream gets the request as the client sent it,
//! `Host` included (the client's own value, kept when it is the canonical authority).
//!
//! Behind a plugin that works on the request only (`headers-only.wat`), where no plugin reads
//! the response head, the client gets the response as a route without plugins gives it:
//! status, every header value in order, body.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tollgate_tests::backends::{self, ResponseBody};
use tollgate_tests::clients::{get_request, HttpClient};
use tollgate_tests::plugins::{
    declared_callbacks_wat, headers_only_wat, request_only_wat, response_only_wat, PluginSpec,
};
use tollgate_tests::prometheus::plugin_callbacks_between;
use tollgate_tests::scenario::Scenario;

async fn send(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: std::net::SocketAddr,
    path: &str,
    break_vm: bool,
) -> StatusCode {
    let mut request = http::Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("x-test", "exports");
    if break_vm {
        request = request.header("x-break", "1");
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    let response = sender.send_request(request).await.expect("h2 request");
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test]
async fn a_plugin_without_response_callbacks_is_not_entered_in_the_response_phase() {
    let gateway = Scenario::new()
        .echo("echo")
        .route("{ name: guarded, match: { path: { prefix: / } }, forward: { cluster: echo, timeout: 10s } }")
        .plugin(
            PluginSpec::new("request-only", request_only_wat())
                .routes(&["guarded"])
                .failure_policy("fail_closed"),
        )
        .start()
        .await;
    let addr = gateway.listener("public");

    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    assert_eq!(send(&mut sender, addr, "/", false).await, StatusCode::OK);

    // The slow request passes the plugin and waits at the upstream while the second one, on
    // the same connection (so the same worker), kills the plugin's VM for good.
    let mut slow_sender = sender.clone();
    let slow =
        tokio::spawn(
            async move { send(&mut slow_sender, addr, "/slow?delay_ms=1500", false).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        send(&mut sender, addr, "/break", true).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "the request that made the plugin trap is answered by fail_closed"
    );
    let slow = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the slow request is answered")
        .expect("the slow request task");
    assert_eq!(
        slow,
        StatusCode::OK,
        "the response phase entered a plugin that exports no response callback; log:\n{}",
        gateway.log()
    );
    // The plugin is gone on this worker: its request phase fails from now on.
    assert_eq!(
        send(&mut sender, addr, "/after", false).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        gateway
            .backend("echo")
            .requests()
            .iter()
            .all(|seen| seen.path != "/break"),
        "the broken request never reached the upstream"
    );
}

#[tokio::test]
async fn a_module_is_entered_only_for_the_callbacks_it_declares() {
    // The same module without its section, for contrast.
    let dir = tempfile::tempdir().expect("temporary folder");
    let undeclared = dir.path().join("undeclared-callbacks.wat");
    let text = std::fs::read_to_string(declared_callbacks_wat()).expect("read the module");
    std::fs::write(
        &undeclared,
        text.replace("(@custom \"tollgate.callbacks\" \"\\01\")", ""),
    )
    .expect("write the module");
    let gateway = Scenario::new()
        .workers(1)
        .echo("echo")
        .route("{ name: declared, match: { path: { prefix: /declared } }, forward: { cluster: echo } }")
        .route("{ name: undeclared, match: { path: { prefix: /undeclared } }, forward: { cluster: echo } }")
        .plugin(PluginSpec::new("declared", declared_callbacks_wat()).routes(&["declared"]))
        .plugin(PluginSpec::new("undeclared", undeclared).routes(&["undeclared"]))
        .start()
        .await;
    let before = gateway.metrics().await;
    for n in 0..3 {
        for plugin in ["declared", "undeclared"] {
            let response = gateway.get(&format!("/{plugin}/{n}")).await;
            gateway.assert_status(&response, StatusCode::OK, plugin);
            assert_eq!(
                response.header("x-response-seen").is_some(),
                plugin == "undeclared",
                "{plugin}: on_response_headers entered only where the module does not say it \
                 lacks it"
            );
        }
    }
    let seen = |plugin: &str| -> Vec<String> {
        gateway
            .backend("echo")
            .requests()
            .iter()
            .filter(|request| request.path.starts_with(&format!("/{plugin}/")))
            .map(|request| request.header("x-request-seen").unwrap_or("-").to_string())
            .collect()
    };
    assert_eq!(
        seen("declared"),
        ["0", "0", "0"],
        "on_log and on_done never run"
    );
    assert_eq!(
        seen("undeclared")[0],
        "0",
        "on_log and on_done of the undeclared module: {:?}",
        seen("undeclared")
    );
    assert_ne!(
        seen("undeclared")[2],
        "0",
        "on_log and on_done ran for earlier requests"
    );

    // Per request the declared module is entered three times (create the context, request
    // headers, delete it); the undeclared one for every callback it exports.
    let entered = |text: &str, plugin: &str| plugin_callbacks_between(&before, text, plugin);
    let after = gateway
        .metrics_when(|text| {
            entered(text, "declared") >= 9.0 && entered(text, "undeclared") >= 18.0
        })
        .await;
    assert_eq!(entered(&after, "declared"), 9.0, "/metrics:\n{after}");
    assert!(entered(&after, "undeclared") >= 18.0, "/metrics:\n{after}");
}

#[tokio::test]
async fn a_response_plugin_reads_the_request_head_and_the_upstream_gets_it_as_sent() {
    let gateway = Scenario::new()
        .workers(1)
        .echo("echo")
        .route("{ name: answered, match: { path: { prefix: / } }, forward: { cluster: echo } }")
        .plugin(PluginSpec::new("response-only", response_only_wat()).routes(&["answered"]))
        .start()
        .await;
    let addr = gateway.addr();
    for (protocol, client) in [
        ("HTTP/1.1", HttpClient::http1()),
        ("h2c", HttpClient::h2c()),
    ] {
        for n in 0..2 {
            let path = format!("/{protocol}/{n}?q=1");
            let mut request = get_request(addr, "api.example.com", &path);
            request
                .headers_mut()
                .insert("x-who", http::HeaderValue::from_static("alice"));
            let response = client.send(request).await.expect("request");
            gateway.assert_status(&response, StatusCode::OK, protocol);
            assert_eq!(
                response.header("x-request-who"),
                Some("alice"),
                "{protocol}: the plugin read the request's header in the response phase"
            );
            assert_eq!(
                response.header("x-request-path"),
                Some(path.as_str()),
                "{protocol}: and its :path"
            );
        }
    }
    // A `Host` that is not canonical goes upstream canonical, plugin or not.
    let response = HttpClient::http1()
        .get(addr, "API.Example.COM.", "/uppercase")
        .await;
    gateway.assert_status(&response, StatusCode::OK, "uppercase Host");
    let requests = gateway.backend("echo").requests();
    assert_eq!(requests.len(), 5, "every request went upstream");
    for request in &requests {
        assert_eq!(
            request.header("host"),
            Some("api.example.com"),
            "{request:?}"
        );
        if request.path != "/uppercase" {
            assert_eq!(request.header("x-who"), Some("alice"), "{request:?}");
            assert!(request.path.ends_with("?q=1"), "{request:?}");
        }
    }
}

#[tokio::test]
async fn behind_a_request_plugin_the_response_comes_as_the_upstream_sent_it() {
    let upstream = backends::answering(|_head, _body| async move {
        http::Response::builder()
            .status(StatusCode::CREATED)
            .header("x-multi", "1")
            .header("set-cookie", "a=1")
            .header("x-multi", "2")
            .header("set-cookie", "b=2")
            .header("content-type", "text/plain")
            .header("x-empty", "")
            .body(Full::from("made upstream").boxed() as ResponseBody)
            .expect("valid answer")
    })
    .await;
    let gateway = Scenario::new()
        .workers(1)
        .backend("made", upstream)
        .route("{ name: plain, match: { path: { prefix: /plain } }, forward: { cluster: made } }")
        .route(
            "{ name: plugged, match: { path: { prefix: /plugged } }, forward: { cluster: made } }",
        )
        .plugin(PluginSpec::new("headers-only", headers_only_wat()).routes(&["plugged"]))
        .start()
        .await;
    let addr = gateway.addr();
    // What a response says, without what differs from one response to the next (its date,
    // the request's id).
    let said = |response: &tollgate_tests::clients::HttpResponse| {
        assert!(response.headers.contains_key("x-request-id"));
        let mut headers: Vec<(String, String)> = response
            .headers
            .iter()
            .filter(|(name, _)| *name != http::header::DATE && *name != "x-request-id")
            .map(|(name, value)| (name.to_string(), value.to_str().expect("ASCII").to_owned()))
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        (response.status, headers, response.body.clone())
    };
    for (protocol, client) in [
        ("HTTP/1.1", HttpClient::http1()),
        ("h2c", HttpClient::h2c()),
    ] {
        for n in 0..2 {
            let plain = client.get(addr, "api.example.com", "/plain").await;
            let plugged = client.get(addr, "api.example.com", "/plugged").await;
            gateway.assert_status(&plugged, StatusCode::CREATED, protocol);
            assert_eq!(
                said(&plugged),
                said(&plain),
                "{protocol}, request {n}: the response behind the plugin"
            );
            let values = |name: &str| {
                plugged
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|value| value.to_str().expect("ASCII").to_owned())
                    .collect::<Vec<_>>()
            };
            assert_eq!(values("x-multi"), ["1", "2"], "{protocol}: in order");
            assert_eq!(values("set-cookie"), ["a=1", "b=2"], "{protocol}: in order");
            assert_eq!(&plugged.body[..], b"made upstream", "{protocol}");
        }
    }
    // The plugin ran: its request header reached the upstream on the plugged route only.
    let requests = gateway.backend("made").requests();
    assert_eq!(requests.len(), 8, "every request went upstream");
    for request in &requests {
        let seen = request.header("x-headers-only");
        if request.path.starts_with("/plugged") {
            assert_eq!(seen, Some("seen"), "{request:?}");
        } else {
            assert_eq!(seen, None, "{request:?}");
        }
    }
}
