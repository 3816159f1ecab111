//! Plugins that read and change the request and response through the real gateway:
//! - `tp-headers`: header pairs read (count and names: pseudo-headers present, `Host` only as
//!   `:authority`, names lower-case), headers added / removed / replaced, pseudo-headers
//!   copied into headers the echo backend shows (HTTP/1.1 and h2c), the response map written
//!   back whole with `set_header_map_pairs` (`:status` kept), `apply_to` limiting a plugin to
//!   its routes, and a `:path` change in the request phase re-selecting the route;
//! - `tp-body`: a request body buffered (Pause until end of stream) and replaced (HTTP/1.1,
//!   h2c, a body of several chunks), a response body appended to without a stale
//!   `content-length`, response trailers added (and a body paused before trailers still
//!   delivered);
//! - `tp-local-reply`: a local 403 from the request phase (upstream never called; the same
//!   plugin's response callback sees it) and a 418 replacing the upstream answer from the
//!   response phase.

use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tollgate_tests::backends;
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::{PluginSpec, TP_BODY, TP_HEADERS, TP_HEADER_HEAVY, TP_LOCAL_REPLY};
use tollgate_tests::scenario::Scenario;

/// The gateway of this file's tests; each adds what it needs and starts it.
fn scenario() -> Scenario {
    Scenario::new()
        .echo("echo")
        .echo("other")
        .grpc("grpc")
        .forward("headers", "/headers", "echo")
        .forward("rerouted", "/rerouted", "other")
        .forward("body", "/echo-body", "echo")
        .forward("grpc-trailers", "/pkg.Service", "grpc")
        .forward("local", "/local", "echo")
        .forward("plain", "/", "echo")
}

fn headers_plugin() -> PluginSpec {
    PluginSpec::new("tag-headers", TP_HEADERS)
        .config(json!({ "tag": "h1" }))
        .routes(&["headers"])
}

async fn send(
    client: &HttpClient,
    gateway: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut builder = request(method, gateway.listener("public"), "shop.test", path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder
        .body(Full::from(body.to_owned()))
        .expect("valid request");
    client
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}; gateway log:\n{}", gateway.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_are_read_added_removed_and_replaced() {
    let setup = scenario().plugins(&[headers_plugin()]).start().await;
    for (protocol, client) in [
        ("HTTP/1.1", HttpClient::http1()),
        ("h2c", HttpClient::h2c()),
    ] {
        let response = send(
            &client,
            &setup,
            "GET",
            "/headers/a?q=1",
            &[
                ("x-remove-me", "1"),
                ("x-replace-me", "original"),
                ("X-Client", "c"),
            ],
            "",
        )
        .await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{protocol}: {}\n{}",
            response.text(),
            setup.log()
        );
        let json = response.json();
        let seen = &json["headers"];
        let header = |name: &str| seen[name].as_str().map(str::to_owned);
        assert_eq!(
            header("x-tp-tag").as_deref(),
            Some("h1"),
            "{protocol}: {json}"
        );
        assert_eq!(
            header("x-tp-method").as_deref(),
            Some("GET"),
            "{protocol}: {json}"
        );
        assert_eq!(
            header("x-tp-path").as_deref(),
            Some("/headers/a?q=1"),
            "{protocol}: {json}"
        );
        assert_eq!(
            header("x-tp-authority").as_deref(),
            Some("shop.test"),
            "{protocol}: {json}"
        );
        assert_eq!(
            header("x-tp-scheme").as_deref(),
            Some("http"),
            "{protocol}: {json}"
        );
        assert_eq!(
            header("x-remove-me"),
            None,
            "{protocol}: removed header reached the backend: {json}"
        );
        assert_eq!(
            header("x-replace-me").as_deref(),
            Some("replaced"),
            "{protocol}: {json}"
        );
        assert_eq!(
            header("x-client").as_deref(),
            Some("c"),
            "{protocol}: {json}"
        );

        let names: Vec<String> = header("x-tp-seen")
            .unwrap_or_else(|| panic!("{protocol}: no x-tp-seen: {json}"))
            .split(',')
            .map(str::to_owned)
            .collect();
        let count: usize = header("x-tp-count")
            .expect("x-tp-count")
            .parse()
            .expect("x-tp-count is a number");
        assert_eq!(
            count,
            names.len(),
            "{protocol}: pair count vs names {names:?}"
        );
        for expected in [
            ":method",
            ":path",
            ":authority",
            ":scheme",
            "x-remove-me",
            "x-replace-me",
            "x-client",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{protocol}: plugin did not see {expected}: {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n == "host"),
            "{protocol}: Host must appear only as :authority: {names:?}"
        );
        assert!(
            !names.iter().any(|n| n == ":status"),
            "{protocol}: request map has :status: {names:?}"
        );
        assert!(
            names.iter().all(|n| *n == n.to_ascii_lowercase()),
            "{protocol}: names not lower-case: {names:?}"
        );

        // Response: the whole map went through get pairs → set pairs.
        assert_eq!(
            response.header("x-tp-response"),
            Some("h1"),
            "{protocol}: {:?}",
            response.headers
        );
        assert_eq!(
            response.header("x-tp-status"),
            Some("200"),
            "{protocol}: {:?}",
            response.headers
        );
        assert_eq!(
            response.header("x-backend"),
            Some("echo"),
            "{protocol}: set pairs lost a header: {:?}",
            response.headers
        );
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{protocol}: {:?}",
            response.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_run_only_on_their_routes() {
    let setup = scenario().plugins(&[headers_plugin()]).start().await;
    let client = HttpClient::http1();
    let response = send(&client, &setup, "GET", "/headers/x", &[], "").await;
    assert_eq!(
        response.json()["headers"]["x-tp-tag"],
        "h1",
        "the plugin runs on its route\n{}",
        setup.log()
    );
    let response = send(
        &client,
        &setup,
        "GET",
        "/elsewhere",
        &[("x-remove-me", "1")],
        "",
    )
    .await;
    assert_eq!(response.status, StatusCode::OK);
    let json = response.json();
    assert!(
        json["headers"].get("x-tp-tag").is_none(),
        "plugin ran outside its route: {json}"
    );
    assert_eq!(json["headers"]["x-remove-me"], "1", "{json}");
    assert_eq!(response.header("x-tp-response"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_path_in_the_request_phase_reselects_the_route() {
    let setup = scenario().plugins(&[headers_plugin()]).start().await;
    let client = HttpClient::http1();
    let response = send(
        &client,
        &setup,
        "GET",
        "/headers/start",
        &[("x-tp-set-path", "/rerouted/here?x=1")],
        "",
    )
    .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(
        response.header("x-backend"),
        Some("other"),
        "the new :path matches route `rerouted` (cluster other); gateway log:\n{}",
        setup.log()
    );
    let json = response.json();
    assert_eq!(json["path"], "/rerouted/here?x=1", "{json}");
    assert_eq!(
        json["headers"]["x-tp-path"], "/headers/start",
        "x-tp-path holds the original path: {json}"
    );
    assert_eq!(setup.backend("other").request_count(), 1);
    assert!(
        setup
            .backend("echo")
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/headers")),
        "the original route's cluster must not be called"
    );
}

fn body_plugin(routes: &[&str]) -> PluginSpec {
    PluginSpec::new("upper-body", TP_BODY).routes(routes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_is_replaced_and_response_body_appended() {
    let setup = scenario().plugins(&[body_plugin(&["body"])]).start().await;
    let client = HttpClient::http1();

    let response = send(&client, &setup, "POST", "/echo-body", &[], "hello body").await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{}\n{}",
        response.text(),
        setup.log()
    );
    assert_eq!(response.text(), "HELLO BODY\n-- via tp-body");
    if let Some(length) = response.header("content-length") {
        assert_eq!(
            length,
            response.body.len().to_string(),
            "a stale content-length reached the client"
        );
    }
    assert_eq!(
        setup
            .backend("echo")
            .requests()
            .last()
            .expect("backend saw the request")
            .body_len,
        10
    );

    // A larger body arrives in several chunks: the plugin pauses until the end and gets it all.
    let big: String = "abcdefghij".repeat(30_000);
    let response = send(&client, &setup, "POST", "/echo-body/big", &[], &big).await;
    assert_eq!(response.status, StatusCode::OK);
    let expected = format!("{}\n-- via tp-body", big.to_ascii_uppercase());
    assert_eq!(
        response.body.len(),
        expected.len(),
        "whole body upper-cased and appended to"
    );
    assert!(
        response.text() == expected,
        "body differs from the upper-cased request plus the suffix"
    );

    // Over h2c too.
    let response = send(
        &HttpClient::h2c(),
        &setup,
        "POST",
        "/echo-body",
        &[],
        "h2 body",
    )
    .await;
    assert_eq!(response.text(), "H2 BODY\n-- via tp-body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_are_seen_and_added() {
    let setup = scenario()
        .plugins(&[body_plugin(&["grpc-trailers"])])
        .start()
        .await;
    let response = send(
        &HttpClient::h2c(),
        &setup,
        "POST",
        "/pkg.Service/Method",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        "\0\0\0\0\x02hi",
    )
    .await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{}\n{}",
        response.text(),
        setup.log()
    );
    let trailers = response
        .trailers
        .as_ref()
        .unwrap_or_else(|| panic!("no trailers; headers {:?}", response.headers));
    assert_eq!(
        trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("0"),
        "{trailers:?}"
    );
    assert_eq!(
        trailers.get("x-tp-trailer").and_then(|v| v.to_str().ok()),
        Some("seen"),
        "{trailers:?}"
    );
    // With trailers the last data frame is not the end of the stream, so (as in Envoy) the
    // body callback never sees end_of_stream and tp-body appends nothing: the paused body
    // must still be delivered, whole, before the trailers.
    assert!(
        response.body.starts_with(backends::GRPC_HELLO_MESSAGE),
        "the buffered body was delivered: {:?}",
        response.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_from_request_and_response_phase() {
    let setup = scenario()
        .plugins(&[PluginSpec::new("denier", TP_LOCAL_REPLY).routes(&["local"])])
        .start()
        .await;
    let client = HttpClient::http1();

    let response = send(
        &client,
        &setup,
        "GET",
        "/local/deny",
        &[("x-deny", "1")],
        "",
    )
    .await;
    assert_eq!(
        response.status,
        StatusCode::FORBIDDEN,
        "{}\n{}",
        response.text(),
        setup.log()
    );
    assert_eq!(response.text(), "denied\n");
    assert_eq!(response.header("x-denied-by"), Some("tp-local-reply"));
    assert!(
        setup
            .backend("echo")
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/local/deny")),
        "a local reply must not reach the upstream"
    );
    assert_eq!(
        response.header("x-tp-local-reply-saw"),
        Some("403"),
        "the plugin's own response callback runs for its local reply (a local reply goes through the response phase, as in Envoy): {:?}",
        response.headers
    );

    let response = send(
        &client,
        &setup,
        "GET",
        "/local/late",
        &[("x-deny-on-response", "1")],
        "",
    )
    .await;
    assert_eq!(
        response.status.as_u16(),
        418,
        "{}\n{}",
        response.text(),
        setup.log()
    );
    assert_eq!(response.text(), "teapot\n");
    assert_eq!(
        response.header("x-denied-by"),
        Some("tp-local-reply-response")
    );
    assert_eq!(
        response.header("x-backend"),
        None,
        "the upstream answer's headers must be gone"
    );
    assert!(
        setup
            .backend("echo")
            .requests()
            .iter()
            .any(|r| r.path == "/local/late"),
        "the upstream was called before the response-phase reply"
    );

    let response = send(&client, &setup, "GET", "/local/pass", &[], "").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-tp-local-reply-saw"), Some("200"));
    assert_eq!(response.header("x-backend"), Some("echo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_heavy_plugin_leaves_no_trace() {
    let setup = scenario()
        .plugins(&[PluginSpec::new("heavy", TP_HEADER_HEAVY).routes(&["headers"])])
        .start()
        .await;
    let response = send(
        &HttpClient::http1(),
        &setup,
        "GET",
        "/headers/heavy",
        &[],
        "",
    )
    .await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{}\n{}",
        response.text(),
        setup.log()
    );
    let json = response.json();
    let names: Vec<&String> = json["headers"]
        .as_object()
        .expect("headers object")
        .keys()
        .collect();
    assert!(
        names
            .iter()
            .all(|name| !name.starts_with("x-heavy") || *name == "x-heavy-found"),
        "20 adds then 20 removes leave nothing: {names:?}"
    );
    assert_eq!(
        json["headers"]["x-heavy-found"], "20",
        "every get found its header: {json}"
    );
}
