//! The `token-introspection` plugin through the real gateway (two workers), with an
//! authorization server written here that answers RFC 7662 introspection requests by token
//! and counts them:
//! - an active token reaches the upstream with the consumer from `consumer_claim` and the
//!   `forward_claims` headers; the server is asked once, then every worker answers from the
//!   shared cache; it saw a form POST with the gateway's client credentials;
//! - a cached answer ends at the token's `exp`, or earlier at `cache_ttl`; at most
//!   `cache_entries` answers are kept;
//! - an inactive token gets `401` `error="invalid_token"` (and is cached for
//!   `negative_cache_ttl`), a token without the required scope `403`
//!   `error="insufficient_scope"`, no token `401` `Bearer`;
//! - a server that is down, too slow or refuses the gateway's credentials gets the request
//!   `503` within the timeout (`failure_mode: deny`) or lets it through (`allow`);
//! - bad configurations are rejected naming the plugin and the field.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tollgate_tests::backends::{self, Backend, ResponseBody};
use tollgate_tests::bundled::TOKEN_INTROSPECTION;
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::credentials::unix_now;
use tollgate_tests::plugins::{assert_rejected, check_plugins, PluginSpec};
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario};

const CLIENT_ID: &str = "gateway";
const CLIENT_SECRET: &str = "gateway-s3cret";

/// One introspection request as the server saw it.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    content_type: String,
    authorization: String,
    body: String,
}

/// The authorization server, on loopback, and the introspection requests it answered. By
/// the posted token:
/// - `good-token`: active, `sub` alice, `client_id` shop-web, `username` alice@shop.test,
///   scope `orders:read profile`, expiring in an hour;
/// - `short-token`: active, `sub` carol, scope `orders:read`, expiring in 2 s;
/// - `reader-token`: active, `sub` dave, scope `profile` only;
/// - `slow-token`: active after 3 s;
/// - anything else: `{"active": false}`.
///
/// A request without the gateway's client credentials gets `401` `invalid_client`.
struct AuthorizationServer {
    backend: Backend,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl AuthorizationServer {
    async fn start() -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let backend = backends::answering(move |head, body| {
            let recorded = recorded.clone();
            async move { introspect(&head, &body, &recorded).await }
        })
        .await;
        Self { backend, calls }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// How many times the server was asked about `token`.
    fn calls_for(&self, token: &str) -> usize {
        let body = format!("token={token}&token_type_hint=access_token");
        self.calls().iter().filter(|call| call.body == body).count()
    }
}

async fn introspect(
    head: &Parts,
    body: &Bytes,
    recorded: &Mutex<Vec<Call>>,
) -> Response<ResponseBody> {
    let header = |name: &str| {
        head.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let call = Call {
        method: head.method.to_string(),
        path: head.uri.path().to_owned(),
        content_type: header("content-type"),
        authorization: header("authorization"),
        body: String::from_utf8_lossy(body).into_owned(),
    };
    recorded.lock().unwrap().push(call.clone());
    let json_answer = |status: u16, value: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::from(value.to_string()).boxed())
            .expect("valid answer")
    };
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    if call.authorization != expected {
        return json_answer(401, json!({ "error": "invalid_client" }));
    }
    let form: HashMap<&str, &str> = call
        .body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    match form.get("token").copied().unwrap_or("") {
        "good-token" => json_answer(
            200,
            json!({ "active": true, "sub": "alice", "client_id": "shop-web",
            "username": "alice@shop.test", "scope": "orders:read profile", "exp": unix_now() + 3600 }),
        ),
        "short-token" => json_answer(
            200,
            json!({ "active": true, "sub": "carol", "client_id": "shop-web",
            "scope": "orders:read", "exp": unix_now() + 2 }),
        ),
        "reader-token" => json_answer(
            200,
            json!({ "active": true, "sub": "dave", "scope": "profile" }),
        ),
        "slow-token" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json_answer(
                200,
                json!({ "active": true, "sub": "sloth", "scope": "orders:read" }),
            )
        }
        _ => json_answer(200, json!({ "active": false })),
    }
}

fn plugin(name: &str, route: &str, config: Value) -> PluginSpec {
    let mut full = json!({
        "cluster": "idp",
        "path": "/oauth2/introspect",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "timeout": "300ms",
        "required_scopes": ["orders:read"],
        "forward_claims": { "client_id": "x-client-id", "username": "x-username" },
        "negative_cache_ttl": "30s"
    });
    for (key, value) in config.as_object().expect("an object") {
        full[key] = value.clone();
    }
    PluginSpec::new(name, TOKEN_INTROSPECTION)
        .config(full)
        .routes(&[route])
}

struct Setup {
    gateway: Running,
    server: AuthorizationServer,
}

async fn start() -> Setup {
    let server = AuthorizationServer::start().await;
    let gateway = Scenario::new()
        .echo("echo")
        .workers(2)
        .cluster_at("idp", server.backend.addr())
        .cluster(&format!(
            "{{ name: dead, endpoints: [{{ address: \"{}\" }}], connect_timeout: 200ms }}",
            backends::refusing_address()
        ))
        .forward("api", "/api", "echo")
        .forward("capped", "/capped", "echo")
        .forward("down-deny", "/down-deny", "echo")
        .forward("down-allow", "/down-allow", "echo")
        .forward("bad-client", "/bad-client", "echo")
        .forward("one-place", "/one-place", "echo")
        .forward("public", "/", "echo")
        .plugin(plugin("introspect", "api", json!({})))
        .plugin(plugin(
            "introspect-capped",
            "capped",
            json!({ "cache_ttl": "1s", "consumer_claim": "client_id" }),
        ))
        .plugin(plugin(
            "introspect-down",
            "down-deny",
            json!({ "cluster": "dead" }),
        ))
        .plugin(plugin(
            "introspect-down-open",
            "down-allow",
            json!({ "cluster": "dead", "failure_mode": "allow" }),
        ))
        .plugin(plugin(
            "introspect-bad-client",
            "bad-client",
            json!({ "client_secret": "wrong" }),
        ))
        .plugin(plugin(
            "introspect-one-place",
            "one-place",
            json!({ "cache_entries": 1 }),
        ))
        .start()
        .await;
    Setup { gateway, server }
}

impl Setup {
    /// A GET with `token` as the bearer token, on a connection of its own (so that
    /// requests spread over the workers).
    async fn get(&self, path: &str, token: Option<&str>) -> HttpResponse {
        let mut builder = request("GET", self.gateway.listener("public"), "shop.test", path)
            .header("x-client-id", "forged");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let req = builder.body(Full::default()).expect("valid request");
        HttpClient::http1()
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}; gateway log:\n{}", self.gateway.log()))
    }
}

fn seen(response: &HttpResponse) -> Value {
    response.json()["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_tokens_are_introspected_once_and_shared_by_the_workers() {
    let setup = start().await;
    for attempt in 0..5 {
        let response = setup.get("/api/orders", Some("good-token")).await;
        setup
            .gateway
            .assert_status(&response, StatusCode::OK, &format!("attempt {attempt}"));
        let headers = seen(&response);
        assert_eq!(headers["x-tollgate-consumer"], "alice", "{headers}");
        assert_eq!(
            headers["x-client-id"], "shop-web",
            "the claim replaces a forged header: {headers}"
        );
        assert_eq!(headers["x-username"], "alice@shop.test", "{headers}");
        assert!(headers.get("authorization").is_none(), "hidden: {headers}");
    }
    assert_eq!(
        setup.server.calls_for("good-token"),
        1,
        "{:?}",
        setup.server.calls()
    );
    // The kernel spreads connections over the workers by their addresses: five may all
    // land on one worker (1 time in 16), sixteen more together all but surely reach both.
    let more = (0..16).map(|_| setup.get("/api/orders", Some("good-token")));
    for response in futures_util::future::join_all(more).await {
        setup
            .gateway
            .assert_status(&response, StatusCode::OK, "a cached answer");
    }
    assert_eq!(setup.server.calls_for("good-token"), 1);
    let metrics = setup.gateway.metrics().await;
    let counted = |name| sample_sum(&metrics, name, &[("plugin", "introspect")]);
    assert_eq!(
        counted("token_introspection_calls_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        counted("token_introspection_cache_hits_total"),
        Some(20.0),
        "{metrics}"
    );
    assert_eq!(
        counted("token_introspection_allowed_total"),
        Some(21.0),
        "{metrics}"
    );

    let call = &setup.server.calls()[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/oauth2/introspect");
    assert_eq!(call.content_type, "application/x-www-form-urlencoded");
    assert_eq!(call.body, "token=good-token&token_type_hint=access_token");
    assert_eq!(
        call.authorization,
        format!("Basic {}", STANDARD.encode("gateway:gateway-s3cret"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_end_at_exp_or_at_cache_ttl() {
    let setup = start().await;
    // Expires in 2 s: cached until then, asked again after.
    for _ in 0..2 {
        let response = setup.get("/api/a", Some("short-token")).await;
        setup
            .gateway
            .assert_status(&response, StatusCode::OK, "short-lived token");
        assert_eq!(seen(&response)["x-tollgate-consumer"], "carol");
    }
    assert_eq!(setup.server.calls_for("short-token"), 1);
    // Valid for an hour, but `cache_ttl: 1s` on this route; the consumer is the client.
    let response = setup.get("/capped/a", Some("good-token")).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "capped");
    assert_eq!(seen(&response)["x-tollgate-consumer"], "shop-web");
    let response = setup.get("/capped/a", Some("good-token")).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "capped, cached");
    assert_eq!(setup.server.calls_for("good-token"), 1);

    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let response = setup.get("/capped/a", Some("good-token")).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "capped, after cache_ttl");
    assert_eq!(
        setup.server.calls_for("good-token"),
        2,
        "asked again after cache_ttl"
    );
    let response = setup.get("/api/a", Some("short-token")).await;
    setup.gateway.assert_status(
        &response,
        StatusCode::OK,
        "after exp the server decides again",
    );
    assert_eq!(
        setup.server.calls_for("short-token"),
        2,
        "asked again after exp"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_at_most_cache_entries_answers() {
    let setup = start().await;
    // One place: each token's answer replaces the other's.
    for token in ["good-token", "good-token", "short-token", "good-token"] {
        let response = setup.get("/one-place/a", Some(token)).await;
        setup
            .gateway
            .assert_status(&response, StatusCode::OK, token);
    }
    assert_eq!(
        setup.server.calls_for("good-token"),
        2,
        "asked again once replaced"
    );
    assert_eq!(setup.server.calls_for("short-token"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_tokens_get_401_and_missing_scopes_403() {
    let setup = start().await;
    for _ in 0..2 {
        let response = setup.get("/api/a", Some("revoked-token")).await;
        setup
            .gateway
            .assert_status(&response, StatusCode::UNAUTHORIZED, "inactive");
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
    }
    assert_eq!(
        setup.server.calls_for("revoked-token"),
        1,
        "inactive answers are cached"
    );

    let response = setup.get("/api/a", Some("reader-token")).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::FORBIDDEN, "scope missing");
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\", scope=\"orders:read\"")
    );

    let response = setup.get("/api/a", None).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::UNAUTHORIZED, "no token");
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    assert_eq!(setup.gateway.backend("echo").request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_denies_with_503_or_allows_by_failure_mode() {
    let setup = start().await;
    let started = Instant::now();
    let response = setup.get("/down-deny/a", Some("good-token")).await;
    setup.gateway.assert_status(
        &response,
        StatusCode::SERVICE_UNAVAILABLE,
        "server down, deny",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let response = setup.get("/api/a", Some("slow-token")).await;
    setup.gateway.assert_status(
        &response,
        StatusCode::SERVICE_UNAVAILABLE,
        "server too slow",
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
        "answered after the 300ms timeout: {elapsed:?}"
    );

    let response = setup.get("/bad-client/a", Some("good-token")).await;
    setup.gateway.assert_status(
        &response,
        StatusCode::SERVICE_UNAVAILABLE,
        "client credentials refused",
    );
    let wrong = format!("Basic {}", STANDARD.encode("gateway:wrong"));
    assert!(
        setup
            .server
            .calls()
            .iter()
            .any(|call| call.authorization == wrong),
        "the configured credentials were sent: {:?}",
        setup.server.calls()
    );

    let response = setup.get("/down-allow/a", Some("good-token")).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "server down, allow");
    assert!(seen(&response).get("x-tollgate-consumer").is_none());
    assert_eq!(setup.gateway.backend("echo").request_count(), 1);
    let metrics = setup.gateway.metrics().await;
    for plugin in ["introspect-down", "introspect-down-open", "introspect"] {
        assert_eq!(
            sample_sum(
                &metrics,
                "token_introspection_failed_total",
                &[("plugin", plugin)]
            ),
            Some(1.0),
            "{plugin}: {metrics}"
        );
    }
}

#[test]
fn bad_introspection_configurations_are_rejected_naming_plugin_and_field() {
    let outcome = check_plugins(&[PluginSpec::new("introspect", TOKEN_INTROSPECTION)
        .config(json!({ "cluster": "idp", "path": "/i", "cache_ttl": "forever" }))]);
    assert_rejected(
        &outcome,
        &["introspect", "token-introspection", "cache_ttl"],
    );
    let outcome = check_plugins(&[PluginSpec::new("introspect", TOKEN_INTROSPECTION)
        .config(json!({ "cluster": "idp", "path": "/i", "client_id": "gateway" }))]);
    assert_rejected(&outcome, &["introspect", "client_secret"]);
}
