//! The host calls a plugin only in the phases whose callbacks its module exports
//! (`request-only.wat`: `proxy_on_request_headers` and no response callback):
//! - a request that passed the plugin gets its response even when the plugin's VM on that
//!   worker died meanwhile and cannot be started again: the response phase never enters the
//!   VM (entering it would need a VM, and `fail_closed` would answer 503);
//! - the request that broke the VM is answered 503 (`fail_closed`), and the plugin's
//!   request phase keeps failing while its VMs refuse to start.
//!
//! Both requests are streams of one HTTP/2 connection, so that one worker serves both.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tollgate_tests::plugins::{request_only_wat, PluginSpec};
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
