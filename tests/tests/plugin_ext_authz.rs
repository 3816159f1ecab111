//! The `ext-authz` plugin through the real gateway, with an authorization service written
//! here (a small hyper server deciding by the `authorization` header):
//! - allowed (2xx): the request, paused during the callout, reaches the upstream with the
//!   service's `headers_to_upstream` and the consumer identity, its body intact; the
//!   service saw the allowed headers and `x-forwarded-method` / `-uri` / `-host` / `-proto`;
//! - denied (3xx/4xx): the client gets the service's status, body and `headers_to_client`,
//!   and the upstream never sees the request;
//! - the service failing (5xx, timeout, unreachable): `403` by default, or forwarded with
//!   `x-ext-authz-failure-mode-allowed: true` under `failure_mode_allow`;
//! - bad configurations are rejected by `tollgate check` naming the plugin and the field.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tollgate_tests::backends;
use tollgate_tests::bundled::EXT_AUTHZ;
use tollgate_tests::clients::{request, HttpResponse};
use tollgate_tests::plugins::{assert_rejected, check_plugins, PluginSpec};
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario};

/// What the authorization service saw of one check request.
#[derive(Clone, Debug)]
struct Check {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Check {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The authorization service. By `authorization`:
/// - `Bearer alice`: 200 with `x-user: alice`, `x-groups: gold,staff`, `x-plan: gold`,
///   `x-internal: secret` (not listed anywhere, so never forwarded);
/// - `Bearer anonymous`: 204 with no header at all;
/// - `Bearer login`: 302 to `/login`;
/// - `Bearer broken`: 500; `Bearer slow`: 200 after 2 s;
/// - anything else or none: 401 with `www-authenticate`, a JSON body and `x-debug` (not
///   listed in `headers_to_client`).
struct AuthzService {
    addr: SocketAddr,
    checks: Arc<Mutex<Vec<Check>>>,
    task: JoinHandle<()>,
}

impl Drop for AuthzService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AuthzService {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let checks = Arc::new(Mutex::new(Vec::new()));
        let recorded = checks.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let recorded = recorded.clone();
                        async move { Ok::<_, Infallible>(decide(request, &recorded).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, checks, task }
    }

    fn checks(&self) -> Vec<Check> {
        self.checks.lock().unwrap().clone()
    }
}

async fn decide(request: Request<Incoming>, recorded: &Mutex<Vec<Check>>) -> Response<Full<Bytes>> {
    let check = Check {
        method: request.method().to_string(),
        path: request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    };
    recorded.lock().unwrap().push(check.clone());
    let answer = |status: u16| Response::builder().status(status);
    match check.header("authorization").unwrap_or("") {
        "Bearer alice" => answer(200)
            .header("x-user", "alice")
            .header("x-groups", "gold,staff")
            .header("x-plan", "gold")
            .header("x-internal", "secret")
            .body(Full::default()),
        "Bearer anonymous" => answer(204).body(Full::default()),
        "Bearer login" => answer(302)
            .header("location", "/login")
            .body(Full::default()),
        "Bearer broken" => answer(500).body(Full::from("authz crashed")),
        "Bearer slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            answer(200)
                .header("x-user", "slowpoke")
                .body(Full::default())
        }
        _ => answer(401)
            .header("www-authenticate", "Bearer realm=\"authz\"")
            .header("content-type", "application/json")
            .header("x-debug", "rule 7")
            .body(Full::from(r#"{"error":"access denied"}"#)),
    }
    .expect("valid answer")
}

fn plugin(name: &str, cluster: &str, route: &str, fail_open: bool) -> PluginSpec {
    PluginSpec::new(name, EXT_AUTHZ)
        .config(json!({
            "cluster": cluster,
            "path": "/check",
            "allowed_headers": ["authorization", "x-tenant"],
            "headers_to_upstream": ["x-user", "x-plan"],
            "consumer_header": "x-user",
            "groups_header": "x-groups",
            "timeout_ms": 300,
            "failure_mode_allow": fail_open
        }))
        .routes(&[route])
}

struct Setup {
    gateway: Running,
    authz: AuthzService,
}

async fn start() -> Setup {
    let authz = AuthzService::start().await;
    let gateway = Scenario::new()
        .echo("echo")
        .cluster_at("authz", authz.addr)
        .cluster(&format!(
            "{{ name: dead, endpoints: [{{ address: \"{}\" }}], connect_timeout: 200ms }}",
            backends::refusing_address()
        ))
        .forward("closed", "/closed", "echo")
        .forward("open", "/open", "echo")
        .forward("dead-closed", "/dead-closed", "echo")
        .forward("dead-open", "/dead-open", "echo")
        .forward("public", "/", "echo")
        .plugin(plugin("authz-closed", "authz", "closed", false))
        .plugin(plugin("authz-open", "authz", "open", true))
        .plugin(plugin("dead-closed", "dead", "dead-closed", false))
        .plugin(plugin("dead-open", "dead", "dead-open", true))
        .start()
        .await;
    Setup { gateway, authz }
}

impl Setup {
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static str,
    ) -> HttpResponse {
        let mut builder = request(method, self.gateway.listener("public"), "shop.test", path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::from(body)).expect("valid request");
        self.gateway.client().send(req).await.unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {e:#}; gateway log:\n{}",
                self.gateway.log()
            )
        })
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.send("GET", path, headers, "").await
    }
}

fn seen(response: &HttpResponse) -> Value {
    response.json()["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_requests_resume_with_the_services_headers_and_consumer() {
    let setup = start().await;

    let response = setup
        .send(
            "POST",
            "/closed/orders?id=7",
            &[
                ("authorization", "Bearer alice"),
                ("x-tenant", "acme"),
                ("cookie", "session=s3cret"),
                // Forged: replaced by what the service says, or removed.
                ("x-tollgate-consumer", "mallory"),
                ("x-plan", "platinum"),
                ("x-ext-authz-failure-mode-allowed", "true"),
                ("content-type", "text/plain"),
            ],
            "hello body",
        )
        .await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "allowed");
    let json = response.json();
    let headers = &json["headers"];
    assert_eq!(headers["x-user"], "alice", "{json}");
    assert_eq!(headers["x-plan"], "gold", "{json}");
    assert_eq!(headers["x-tollgate-consumer"], "alice", "{json}");
    assert_eq!(
        headers["x-tollgate-consumer-groups"], "gold,staff",
        "{json}"
    );
    assert!(headers.get("x-internal").is_none(), "{json}");
    assert!(
        headers.get("x-ext-authz-failure-mode-allowed").is_none(),
        "{json}"
    );
    assert_eq!(headers["authorization"], "Bearer alice", "{json}");
    assert_eq!(json["method"], "POST", "{json}");
    assert_eq!(json["path"], "/closed/orders?id=7", "{json}");
    assert_eq!(
        json["body_len"], 10,
        "the body waited for the decision: {json}"
    );

    let checks = setup.authz.checks();
    assert_eq!(checks.len(), 1, "{checks:?}");
    let check = &checks[0];
    assert_eq!(check.method, "GET", "{check:?}");
    assert_eq!(check.path, "/check", "{check:?}");
    assert_eq!(check.header("authorization"), Some("Bearer alice"));
    assert_eq!(check.header("x-tenant"), Some("acme"));
    assert_eq!(check.header("x-forwarded-method"), Some("POST"));
    assert_eq!(check.header("x-forwarded-uri"), Some("/closed/orders?id=7"));
    assert_eq!(check.header("x-forwarded-host"), Some("shop.test"));
    assert_eq!(check.header("x-forwarded-proto"), Some("http"));
    assert!(check.header("cookie").is_none(), "not allowed: {check:?}");
    assert!(check.header("x-plan").is_none(), "not allowed: {check:?}");

    // Allowed without any header: the listed headers the client sent are removed.
    let response = setup
        .get(
            "/closed/x",
            &[
                ("authorization", "Bearer anonymous"),
                ("x-user", "root"),
                ("x-tollgate-consumer", "root"),
            ],
        )
        .await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "allowed anonymously");
    let headers = seen(&response);
    for name in [
        "x-user",
        "x-plan",
        "x-tollgate-consumer",
        "x-tollgate-consumer-groups",
    ] {
        assert!(
            headers.get(name).is_none(),
            "{name} must not pass: {headers}"
        );
    }

    // Routes without the plugin are not checked.
    let before = setup.authz.checks().len();
    let response = setup.get("/public", &[]).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "route without the plugin");
    assert_eq!(setup.authz.checks().len(), before);

    let metrics = setup.gateway.metrics().await;
    assert_eq!(
        sample_sum(
            &metrics,
            "ext_authz_allowed_total",
            &[("plugin", "authz-closed")]
        ),
        Some(2.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_get_the_services_answer_and_never_reach_the_upstream() {
    let setup = start().await;

    for (what, headers) in [
        ("no credentials", vec![]),
        ("unknown token", vec![("authorization", "Bearer mallory")]),
        (
            "forged identity",
            vec![("x-tollgate-consumer", "alice"), ("x-user", "alice")],
        ),
    ] {
        let response = setup.get("/closed/secret", &headers).await;
        setup
            .gateway
            .assert_status(&response, StatusCode::UNAUTHORIZED, what);
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer realm=\"authz\""),
            "{what}"
        );
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        assert!(response.header("x-debug").is_none(), "{what}: not listed");
        assert_eq!(
            response.json(),
            json!({ "error": "access denied" }),
            "{what}"
        );
    }

    // A redirect to a login page is a denial too, with its Location.
    let response = setup
        .get("/closed/page", &[("authorization", "Bearer login")])
        .await;
    setup
        .gateway
        .assert_status(&response, StatusCode::FOUND, "redirect");
    assert_eq!(response.header("location"), Some("/login"));

    // Failure mode does not turn a denial into an allow.
    let response = setup.get("/open/secret", &[]).await;
    setup.gateway.assert_status(
        &response,
        StatusCode::UNAUTHORIZED,
        "denied with failure_mode_allow",
    );

    assert_eq!(setup.authz.checks().len(), 5);
    assert_eq!(
        setup.gateway.backend("echo").request_count(),
        0,
        "denied requests never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_answers_403_unless_failure_mode_allow() {
    let setup = start().await;

    // Fail closed (the default): 403 for a 5xx, a timeout and an unreachable service.
    for (what, path, token) in [
        ("5xx", "/closed/a", "Bearer broken"),
        ("timeout", "/closed/b", "Bearer slow"),
        ("unreachable", "/dead-closed/c", "Bearer alice"),
    ] {
        let started = Instant::now();
        let response = setup.get(path, &[("authorization", token)]).await;
        setup
            .gateway
            .assert_status(&response, StatusCode::FORBIDDEN, what);
        assert_eq!(
            response.json()["message"],
            "authorization service unavailable",
            "{what}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{what}: answered after {:?}, the timeout is 300ms",
            started.elapsed()
        );
    }
    assert_eq!(setup.gateway.backend("echo").request_count(), 0);

    // Fail open: forwarded, marked, without an identity.
    for (what, path, token) in [
        ("5xx", "/open/a", "Bearer broken"),
        ("timeout", "/open/b", "Bearer slow"),
        ("unreachable", "/dead-open/c", "Bearer alice"),
    ] {
        let response = setup
            .get(path, &[("authorization", token), ("x-user", "forged")])
            .await;
        setup.gateway.assert_status(&response, StatusCode::OK, what);
        let headers = seen(&response);
        assert_eq!(
            headers["x-ext-authz-failure-mode-allowed"], "true",
            "{what}: {headers}"
        );
        assert!(
            headers.get("x-tollgate-consumer").is_none(),
            "{what}: {headers}"
        );
    }
    assert_eq!(setup.gateway.backend("echo").request_count(), 3);

    let metrics = setup.gateway.metrics().await;
    for plugin in ["authz-closed", "authz-open"] {
        assert_eq!(
            sample_sum(&metrics, "ext_authz_failed_total", &[("plugin", plugin)]),
            Some(2.0),
            "{plugin}: {metrics}"
        );
    }
}

#[test]
fn bad_configurations_are_rejected_naming_plugin_and_field() {
    let outcome = check_plugins(&[PluginSpec::new("authz", EXT_AUTHZ).config(json!({
        "cluster": "authz", "failure_mode_alow": true
    }))]);
    assert_rejected(&outcome, &["authz", "ext-authz", "failure_mode_alow"]);

    let outcome = check_plugins(&[PluginSpec::new("authz", EXT_AUTHZ).config(json!({
        "cluster": "authz", "timeout_ms": 0
    }))]);
    assert_rejected(
        &outcome,
        &["authz", "ext-authz", "timeout_ms", "between 1 and 60000"],
    );

    let outcome = check_plugins(&[PluginSpec::new("authz", EXT_AUTHZ).config(json!({
        "cluster": "authz", "allowed_headers": ["authorization", "x-forwarded-uri"]
    }))]);
    assert_rejected(
        &outcome,
        &["authz", "allowed_headers[1]", "set by the plugin"],
    );

    let outcome = check_plugins(&[PluginSpec::new("authz", EXT_AUTHZ).config(json!({
        "headers_to_upstream": ["x-user"]
    }))]);
    assert_rejected(&outcome, &["authz", "ext-authz", "cluster"]);
}
