//! The bundled data and lifecycle plugins through the real gateway: transformer (request and
//! response headers add/set/remove/rename, JSON bodies add/remove/rename/redact on nested
//! paths, `content-length` correct after a rewrite, non-JSON bodies untouched) and
//! api-lifecycle (Deprecation / Sunset / Link headers, retired routes → 410, mocks answered
//! without the upstream), and bad configurations rejected naming the plugin and the field.

use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};
use tollgate_tests::bundled::{API_LIFECYCLE, TRANSFORMER};
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::plugins::{assert_rejected, check_plugins, PluginSpec};
use tollgate_tests::prometheus::plugin_callbacks_between;
use tollgate_tests::scenario::{Running, Scenario};

struct Setup {
    gateway: Running,
}

async fn start(plugins: &[PluginSpec]) -> Setup {
    let gateway = Scenario::new()
        .echo("echo")
        .forward("body", "/echo-body", "echo")
        .forward("v0", "/v0", "echo")
        .forward("v1", "/v1", "echo")
        .forward("v2", "/v2", "echo")
        .forward("v3", "/v3", "echo")
        .forward("all", "/", "echo")
        .plugins(plugins)
        .start()
        .await;
    Setup { gateway }
}

impl Setup {
    async fn send(
        &self,
        client: &HttpClient,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpResponse {
        let mut builder = request(method, self.gateway.listener("public"), "shop.test", path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder
            .body(Full::from(body.to_owned()))
            .expect("valid request");
        let response = client.send(req).await.unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {e:#}; gateway log:\n{}",
                self.gateway.log()
            )
        });
        if let Some(length) = response.header("content-length") {
            assert_eq!(
                length,
                response.body.len().to_string(),
                "{method} {path}: content-length matches the body"
            );
        }
        response
    }

    fn expect(&self, response: &HttpResponse, status: StatusCode, what: &str) {
        assert_eq!(
            response.status,
            status,
            "{what}: {}\n{}",
            response.text(),
            self.gateway.log()
        );
    }
}

// === transformer ===

fn transformer() -> PluginSpec {
    PluginSpec::new("reshape", TRANSFORMER).config(json!({
        "request": {
            "headers": {
                "remove": ["x-internal"],
                "rename": { "x-old-name": "x-new-name" },
                "set": { "x-gateway": "tollgate" },
                "add": { "x-default": "d", "x-kept": "ignored" }
            },
            "json": {
                "remove": ["debug", "items.*.internal"],
                "rename": { "user.mail": "user.email" },
                "redact": ["user.password"],
                "set": { "meta.via": "gateway" },
                "add": { "meta.version": 1, "user.name": "ignored" }
            }
        },
        "response": {
            "headers": { "rename": { "x-backend": "x-served-by" }, "set": { "cache-control": "no-store" } },
            "json": {
                "remove": ["protocol"],
                "redact": ["headers.x-secret"],
                "rename": { "backend": "served_by" },
                "add": { "meta.gateway": "tollgate" }
            }
        }
    }))
}

const REQUEST_BODY: &str = r#"{"debug":true,"user":{"name":"ann","mail":"a@shop.test","password":"hunter2"},"items":[{"id":1,"internal":"x"},{"id":2,"internal":"y"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transformer_rewrites_request_headers_and_json_bodies() {
    let setup = start(&[transformer()]).await;
    let expected = json!({
        "user": { "name": "ann", "email": "a@shop.test", "password": "[REDACTED]" },
        "items": [{ "id": 1 }, { "id": 2 }],
        "meta": { "via": "gateway", "version": 1 }
    });
    for (protocol, client) in [
        ("HTTP/1.1", HttpClient::http1()),
        ("h2c", HttpClient::h2c()),
    ] {
        // /echo-body answers the body it received, without a content type: not JSON, so the
        // response rules leave it alone.
        let response = setup
            .send(
                &client,
                "POST",
                "/echo-body",
                &[("content-type", "application/json")],
                REQUEST_BODY,
            )
            .await;
        setup.expect(&response, StatusCode::OK, protocol);
        assert_eq!(
            response.header("content-type"),
            None,
            "{:?}",
            response.headers
        );
        let received: Value =
            serde_json::from_slice(&response.body).expect("the upstream got JSON");
        assert_eq!(received, expected, "{protocol}");
    }

    // The other echo path shows the headers and the size of the body the upstream received.
    let response = setup
        .send(
            setup.gateway.client(),
            "POST",
            "/headers",
            &[
                ("content-type", "application/json"),
                ("x-internal", "1"),
                ("x-old-name", "o"),
                ("x-kept", "mine"),
                ("x-gateway", "client"),
            ],
            REQUEST_BODY,
        )
        .await;
    setup.expect(&response, StatusCode::OK, "headers");
    let json = response.json();
    let headers = &json["served_by"]
        .as_str()
        .map(|_| &json["headers"])
        .expect("response rules applied");
    assert!(headers.get("x-internal").is_none(), "{json}");
    assert!(headers.get("x-old-name").is_none(), "{json}");
    assert_eq!(headers["x-new-name"], "o", "{json}");
    assert_eq!(headers["x-gateway"], "tollgate", "{json}");
    assert_eq!(headers["x-default"], "d", "{json}");
    assert_eq!(headers["x-kept"], "mine", "add does not replace: {json}");
    let new_len = serde_json::to_vec(&expected).unwrap().len();
    assert_eq!(json["body_len"], new_len, "{json}");
    if let Some(length) = headers.get("content-length") {
        assert_eq!(
            length,
            &json!(new_len.to_string()),
            "the upstream's content-length fits the new body: {json}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transformer_rewrites_json_responses_and_passes_other_bodies_untouched() {
    let setup = start(&[transformer()]).await;
    let response = setup
        .send(
            setup.gateway.client(),
            "GET",
            "/anything",
            &[("x-secret", "s3")],
            "",
        )
        .await;
    setup.expect(&response, StatusCode::OK, "json response");
    assert_eq!(response.header("x-served-by"), Some("echo"));
    assert!(response.header("x-backend").is_none());
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let json = response.json();
    assert_eq!(json["served_by"], "echo", "{json}");
    assert!(json.get("backend").is_none(), "{json}");
    assert!(json.get("protocol").is_none(), "{json}");
    assert_eq!(json["headers"]["x-secret"], "[REDACTED]", "{json}");
    assert_eq!(json["meta"]["gateway"], "tollgate", "{json}");
    assert_eq!(json["path"], "/anything", "{json}");

    // A JSON-looking body sent as text/plain is not touched, either way.
    let text = r#"{"debug":true,"protocol":"kept"}"#;
    let response = setup
        .send(
            setup.gateway.client(),
            "POST",
            "/echo-body",
            &[("content-type", "text/plain")],
            text,
        )
        .await;
    setup.expect(&response, StatusCode::OK, "text body");
    assert_eq!(response.text(), text);

    // A body declared JSON that does not parse is forwarded as it is.
    let broken = r#"{"debug": tru"#;
    let response = setup
        .send(
            setup.gateway.client(),
            "POST",
            "/echo-body",
            &[("content-type", "application/json")],
            broken,
        )
        .await;
    setup.expect(&response, StatusCode::OK, "broken JSON");
    assert_eq!(response.text(), broken);
    assert_eq!(setup.gateway.backend("echo").request_count(), 3);
}

/// A transformer's configuration says which callbacks its requests need: with header rules
/// only it is entered for the headers and nothing else (no body, no `on_log`, no `on_done`:
/// the response body streams through untouched); with JSON rules for the response it
/// reads the response body too.
#[tokio::test]
async fn transformer_is_entered_only_for_what_its_configuration_changes() {
    let gateway = Scenario::new()
        .workers(1)
        .echo("echo")
        .forward("headers", "/headers", "echo")
        .forward("bodies", "/bodies", "echo")
        .plugin(
            PluginSpec::new("header-rules", TRANSFORMER)
                .config(json!({
                    "request": { "headers": { "set": { "x-gateway": "tollgate" } } },
                    "response": { "headers": { "set": { "cache-control": "no-store" } } }
                }))
                .routes(&["headers"]),
        )
        .plugin(
            PluginSpec::new("body-rules", TRANSFORMER)
                .config(
                    json!({ "response": { "json": { "add": { "meta.gateway": "tollgate" } } } }),
                )
                .routes(&["bodies"]),
        )
        .start()
        .await;
    // The first request of each starts its VM, whose start-up callbacks count too.
    for path in ["/headers/warm", "/bodies/warm"] {
        let response = gateway.get(path).await;
        gateway.assert_status(&response, StatusCode::OK, path);
    }
    let before = gateway.metrics().await;
    for n in 0..4 {
        let response = gateway.get(&format!("/headers/{n}")).await;
        gateway.assert_status(&response, StatusCode::OK, "header rules");
        assert_eq!(response.header("cache-control"), Some("no-store"));
        let response = gateway.get(&format!("/bodies/{n}")).await;
        gateway.assert_status(&response, StatusCode::OK, "body rules");
        assert_eq!(
            response.json()["meta"]["gateway"],
            "tollgate",
            "{}",
            response.text()
        );
    }
    assert!(gateway
        .backend("echo")
        .requests()
        .iter()
        .filter(|seen| seen.path.starts_with("/headers/"))
        .all(|seen| seen.header("x-gateway") == Some("tollgate")));
    // Per request: create the context, request headers, response headers, delete it.
    let entered = |text: &str, plugin: &str| plugin_callbacks_between(&before, text, plugin);
    let after = gateway
        .metrics_when(|text| entered(text, "header-rules") >= 16.0)
        .await;
    assert_eq!(entered(&after, "header-rules"), 16.0, "/metrics:\n{after}");
    // The response body callback too, at least once a request.
    assert!(entered(&after, "body-rules") >= 16.0, "/metrics:\n{after}");
}

// === api-lifecycle ===

fn lifecycle() -> PluginSpec {
    PluginSpec::new("lifecycle", API_LIFECYCLE).config(json!({
        "routes": {
            "v0": { "retired": true, "deprecated": { "sunset": "2024-01-01T00:00:00Z", "link": "https://docs.shop.test/v2" } },
            "v1": { "deprecated": { "since": "2026-01-01T00:00:00Z", "sunset": "2099-01-01T00:00:00Z", "link": "https://docs.shop.test/v2" } },
            "v2": { "deprecated": { "sunset": "2020-06-30T12:00:00Z", "enforce_sunset": true } },
            "v3": { "mock": { "status": 202, "headers": { "x-mock": "yes" }, "body": { "orders": [], "status": "design" } } }
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_lifecycle_announces_deprecation_retires_and_mocks() {
    let setup = start(&[lifecycle()]).await;
    let client = setup.gateway.client();

    let response = setup.send(client, "GET", "/v1/orders", &[], "").await;
    setup.expect(&response, StatusCode::OK, "deprecated");
    assert_eq!(response.header("deprecation"), Some("@1767225600"));
    assert_eq!(
        response.header("sunset"),
        Some("Thu, 01 Jan 2099 00:00:00 GMT")
    );
    assert_eq!(
        response.header("link"),
        Some("<https://docs.shop.test/v2>; rel=\"deprecation\"; type=\"text/html\"")
    );
    assert_eq!(response.json()["backend"], "echo");

    let response = setup.send(client, "GET", "/v0/orders", &[], "").await;
    setup.expect(&response, StatusCode::GONE, "retired");
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.json(),
        json!({ "message": "this API version is retired", "sunset": "2024-01-01T00:00:00Z", "link": "https://docs.shop.test/v2" })
    );

    let response = setup.send(client, "POST", "/v2/orders", &[], "{}").await;
    setup.expect(&response, StatusCode::GONE, "past an enforced sunset");
    assert_eq!(response.header("deprecation"), Some("true"));

    let response = setup.send(client, "GET", "/v3/orders", &[], "").await;
    setup.expect(&response, StatusCode::ACCEPTED, "mock");
    assert_eq!(response.header("x-mock"), Some("yes"));
    assert_eq!(response.json(), json!({ "orders": [], "status": "design" }));

    let response = setup.send(client, "GET", "/other", &[], "").await;
    setup.expect(&response, StatusCode::OK, "route without a lifecycle");
    assert!(response.header("deprecation").is_none());
    assert_eq!(
        setup.gateway.backend("echo").request_count(),
        2,
        "only /v1 and /other reach the upstream"
    );
}

// === bad configuration ===

#[test]
fn bad_transform_configurations_are_rejected_naming_plugin_and_field() {
    let outcome = check_plugins(&[PluginSpec::new("reshape", TRANSFORMER)
        .config(json!({ "request": { "headers": { "set": { ":path": "/admin" } } } }))]);
    assert_rejected(
        &outcome,
        &["reshape", "transformer", "request.headers.set.:path"],
    );

    let outcome = check_plugins(&[PluginSpec::new("reshape", TRANSFORMER)
        .config(json!({ "response": { "json": { "remove": ["a..b"] } } }))]);
    assert_rejected(&outcome, &["reshape", "response.json.remove[0]"]);

    let outcome = check_plugins(&[
        PluginSpec::new("reshape", TRANSFORMER).config(json!({ "request": { "body": {} } }))
    ]);
    assert_rejected(&outcome, &["reshape", "body"]);

    let outcome = check_plugins(&[PluginSpec::new("lifecycle", API_LIFECYCLE)
        .config(json!({ "routes": { "v1": { "deprecated": { "sunset": "soon" } } } }))]);
    assert_rejected(
        &outcome,
        &["lifecycle", "api-lifecycle", "routes.v1.deprecated.sunset"],
    );

    let outcome = check_plugins(&[PluginSpec::new("lifecycle", API_LIFECYCLE)
        .config(json!({ "routes": { "v1": { "mock": { "status": 42 } } } }))]);
    assert_rejected(&outcome, &["lifecycle", "routes.v1.mock.status"]);
}
