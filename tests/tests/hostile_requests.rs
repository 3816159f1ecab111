//! Hostile spellings of hosts, paths and hop-by-hop headers, through real sockets (raw bytes
//! where a client library would refuse to send the form).
//!
//! The policy has a protected virtual host (`api.demo.local`) and a `/secure` route, both
//! guarded by key-auth, a legacy route that rewrites its prefix, and a catch-all route to an
//! open echo backend. Every spelling of the protected host or route must need the key, the
//! backend must receive the canonical path, malformed authorities must get 400 with the
//! reason in the access log, plugin-set headers must survive a hostile `Connection`, and
//! every `X-Forwarded-For` line must reach the backend; meanwhile an honest client on its own
//! connection keeps being served.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpStream;
use tollgate_tests::bundled::{KEY_AUTH, TRANSFORMER};
use tollgate_tests::clients::{raw_exchange, RawResponse};
use tollgate_tests::plugins::{PluginSpec, TP_HEADERS};
use tollgate_tests::scenario::{Running, Scenario};

const API_HOST: &str = "
name: api
domains: [api.demo.local]
routes:
  - { name: api, match: { path: { prefix: / } }, forward: { cluster: api } }
";

const SITE_HOST: &str = "
name: site
domains: [\"*\"]
routes:
  - { name: secure, match: { path: { prefix: /secure } }, forward: { cluster: api } }
  - name: legacy
    match: { path: { prefix: /api } }
    forward: { cluster: legacy, rewrite: { prefix: /legacy } }
  - { name: open, match: { path: { prefix: / } }, forward: { cluster: open } }
";

const KEY: &str = "k-alice";

struct Setup {
    gateway: Running,
}

async fn start() -> Setup {
    start_with(true).await
}

async fn start_with(normalize_path: bool) -> Setup {
    let plugins = [
        PluginSpec::new("keys", KEY_AUTH)
            .config(json!({ "consumers": [{ "name": "alice", "keys": [KEY] }] }))
            .routes(&["api", "secure"]),
        PluginSpec::new("stamp", TRANSFORMER)
            .config(json!({ "request": { "headers": { "set": { "x-gateway": "tollgate" } } } }))
            .routes(&["secure"]),
        // Reports the `:path` it saw and sets the one `x-tp-set-path` names.
        PluginSpec::new("paths", TP_HEADERS)
            .config(json!({ "tag": "paths" }))
            .routes(&["open"]),
    ];
    let gateway = Scenario::new()
        .server(&format!("normalize_path: {normalize_path}"))
        .echo("api")
        .echo("legacy")
        .echo("open")
        .virtual_host(API_HOST)
        .virtual_host(SITE_HOST)
        .plugins(&plugins)
        .start()
        .await;
    let setup = Setup { gateway };
    // The honest client's connection is open before the first hostile request.
    setup.assert_honest_client_served().await;
    setup
}

impl Setup {
    /// Writes one request head (lines joined with CRLF) on a new connection.
    async fn raw(&self, lines: &[&str]) -> RawResponse {
        let mut head = lines.join("\r\n");
        head.push_str("\r\n\r\n");
        raw_exchange(
            self.gateway.listener("public"),
            head.as_bytes(),
            Duration::from_secs(5),
        )
        .await
    }

    async fn get(&self, target: &str, host: &str, extra: &[&str]) -> RawResponse {
        let request_line = format!("GET {target} HTTP/1.1");
        let host_line = format!("Host: {host}");
        let mut lines = vec![request_line.as_str(), host_line.as_str()];
        lines.extend_from_slice(extra);
        self.raw(&lines).await
    }

    fn expect(&self, answer: &RawResponse, status: u16, what: &str) {
        assert_eq!(
            answer.status,
            Some(status),
            "{what}: expected {status}, got {:?}\ngateway log:\n{}",
            answer.text.chars().take(400).collect::<String>(),
            self.gateway.log()
        );
    }

    /// An ordinary request on the honest client's own (pooled) connection.
    async fn assert_honest_client_served(&self) {
        let response = self
            .gateway
            .client()
            .get(
                self.gateway.listener("public"),
                "www.demo.local",
                "/home?x=1",
            )
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", self.gateway.log());
        assert_eq!(response.header("x-backend"), Some("open"));
        assert_eq!(response.json()["path"], "/home?x=1");
    }

    fn assert_no_backend_reached(&self, what: &str) {
        assert_eq!(
            self.gateway.backend("api").request_count(),
            0,
            "{what} reached the api backend"
        );
        assert_eq!(
            self.gateway.backend("legacy").request_count(),
            0,
            "{what} reached the legacy backend"
        );
        // The honest client's requests are the only ones the open backend saw.
        let strangers: Vec<String> = self
            .gateway
            .backend("open")
            .requests()
            .into_iter()
            .filter(|request| request.path != "/home?x=1")
            .map(|request| request.path)
            .collect();
        assert!(
            strangers.is_empty(),
            "{what} reached the open backend: {strangers:?}"
        );
    }

    /// Waits for the access-log line with this detail (lines are written when the response
    /// body ends, which may be just after the client read it).
    async fn assert_logged(&self, detail: &str) {
        let wanted = format!("detail=\"{detail}\"");
        for _ in 0..50 {
            if self.gateway.log().contains(&wanted) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no access-log line with {wanted}:\n{}", self.gateway.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_the_protected_host_needs_its_key() {
    let setup = start().await;
    let forms = [
        "api.demo.local.",
        "API.DEMO.LOCAL.",
        "api.demo.local.:80",
        "Api.Demo.Local:8080",
        "api.demo.local",
    ];
    for host in forms {
        let answer = setup.get("/", host, &[]).await;
        setup.expect(&answer, 401, host);
        let answer = setup.get(&format!("http://{host}/orders"), host, &[]).await;
        setup.expect(&answer, 401, &format!("absolute-form {host}"));
    }
    setup.assert_no_backend_reached("a keyless request to the protected host");
    setup.assert_honest_client_served().await;

    // With the key, the api backend is reached, under the canonical host.
    let answer = setup
        .get("/orders", "API.demo.local.:80", &["x-api-key: k-alice"])
        .await;
    setup.expect(&answer, 200, "keyed request");
    let seen = setup.gateway.backend("api").requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].host, "api.demo.local:80");
    assert_eq!(
        seen[0].header("x-forwarded-host"),
        Some("api.demo.local:80")
    );
    assert_eq!(seen[0].path, "/orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_duplicate_and_conflicting_hosts_are_400() {
    let setup = start().await;
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "GET http://x@api.demo.local/ HTTP/1.1",
                "Host: api.demo.local",
            ],
            "host_userinfo",
        ),
        (
            &["GET / HTTP/1.1", "Host: x@api.demo.local"],
            "host_userinfo",
        ),
        (
            &[
                "GET / HTTP/1.1",
                "Host: www.demo.local",
                "Host: api.demo.local",
            ],
            "duplicate_host",
        ),
        (
            &[
                "GET / HTTP/1.1",
                "Host: api.demo.local",
                "Host: api.demo.local",
            ],
            "duplicate_host",
        ),
        (
            &[
                "GET http://www.demo.local/ HTTP/1.1",
                "Host: api.demo.local",
            ],
            "host_mismatch",
        ),
        (&["GET / HTTP/1.1", "Host: api..demo.local"], "invalid_host"),
    ];
    for (lines, detail) in cases {
        let answer = setup.raw(lines).await;
        setup.expect(&answer, 400, &lines.join(" | "));
        setup.assert_logged(detail).await;
    }
    setup.assert_no_backend_reached("a request with a malformed authority");
    setup.assert_honest_client_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_the_secure_route_needs_its_key() {
    let setup = start().await;
    let forms = [
        "/secure/x",
        "/open/../secure/x",
        "//secure/x",
        "/%73ecure/x",
        "/SECURE/../secure/x",
        "/secure/./x",
        "/%2e%2e/secure/x",
        "/open/.%2E/secure//x",
        "/open/..\\secure/x",
    ];
    for path in forms {
        let answer = setup.get(path, "www.demo.local", &[]).await;
        setup.expect(&answer, 401, path);
    }
    setup.assert_no_backend_reached("a keyless request to /secure");
    setup.assert_honest_client_served().await;

    // With the key, the backend receives the canonical path and the query as sent.
    for path in forms {
        let target = format!("{path}?next=%2F..%2Fadmin&b=1");
        let answer = setup
            .get(&target, "www.demo.local", &["x-api-key: k-alice"])
            .await;
        setup.expect(&answer, 200, &target);
    }
    let seen = setup.gateway.backend("api").requests();
    assert_eq!(seen.len(), forms.len());
    for request in &seen {
        assert_eq!(request.path, "/secure/x?next=%2F..%2Fadmin&b=1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_slashes_and_broken_paths_are_400() {
    let setup = start().await;
    for (path, detail) in [
        ("/secure%2Fx", "escaped_slash_in_path"),
        ("/open/..%2fsecure/x", "escaped_slash_in_path"),
        ("/open%5C..%5Csecure/x", "escaped_slash_in_path"),
        ("/secure/%zz", "invalid_path"),
        ("/secure/a%00b", "invalid_path"),
    ] {
        let answer = setup
            .get(path, "www.demo.local", &["x-api-key: k-alice"])
            .await;
        setup.expect(&answer, 400, path);
        setup.assert_logged(detail).await;
    }
    setup.assert_no_backend_reached("a path with an escaped slash");
    setup.assert_honest_client_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_climb_out_of_a_rewritten_prefix() {
    let setup = start().await;
    let answer = setup
        .get("/api/v1/../../admin", "www.demo.local", &[])
        .await;
    setup.expect(&answer, 200, "/api/v1/../../admin");
    assert_eq!(setup.gateway.backend("legacy").request_count(), 0);
    let seen = setup.gateway.backend("open").requests();
    assert_eq!(seen.last().map(|r| r.path.as_str()), Some("/admin"));

    let answer = setup
        .get("/api/v1/orders?id=7", "www.demo.local", &[])
        .await;
    setup.expect(&answer, 200, "/api/v1/orders");
    let seen = setup.gateway.backend("legacy").requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/legacy/v1/orders?id=7");
    setup.assert_honest_client_served().await;
}

/// With `normalize_path: false` nothing resolves the path before routing, and the rewrite
/// itself keeps the rest under the replacement prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_stays_in_its_prefix_without_path_normalization() {
    let setup = start_with(false).await;
    for path in ["/api/v1/../../admin", "/api/v1/%2e%2e/%2E%2E/admin"] {
        let answer = setup.get(path, "www.demo.local", &[]).await;
        setup.expect(&answer, 200, path);
    }
    let seen: Vec<String> = setup
        .gateway
        .backend("legacy")
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(seen, vec!["/legacy/admin", "/legacy/admin"]);
    setup.assert_honest_client_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_connection_header_cannot_strip_plugin_headers() {
    let setup = start().await;
    let answer = setup
        .get(
            "/secure/x",
            "www.demo.local",
            &[
                "x-api-key: k-alice",
                "Connection: x-tollgate-consumer, x-gateway, keep-alive",
                "x-gateway: forged",
            ],
        )
        .await;
    setup.expect(&answer, 200, "hostile Connection");
    let seen = setup.gateway.backend("api").requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-tollgate-consumer"), Some("alice"));
    assert_eq!(seen[0].header("x-gateway"), Some("tollgate"));
    assert_eq!(seen[0].header("connection"), None);

    // A client naming its own credential header only removes its own credential.
    let answer = setup
        .get(
            "/secure/x",
            "www.demo.local",
            &["x-api-key: k-alice", "Connection: x-api-key"],
        )
        .await;
    setup.expect(&answer, 401, "credential named as hop-by-hop");
    assert_eq!(setup.gateway.backend("api").request_count(), 1);
    setup.assert_honest_client_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forwarded_for_line_reaches_the_backend_in_order() {
    let setup = start().await;
    let answer = setup
        .get(
            "/home",
            "www.demo.local",
            &[
                "X-Forwarded-For: 203.0.113.7",
                "X-Forwarded-For: 198.51.100.9, 10.1.2.3",
            ],
        )
        .await;
    setup.expect(&answer, 200, "two X-Forwarded-For lines");
    let seen = setup.gateway.backend("open").requests();
    let request = seen
        .iter()
        .find(|r| r.path == "/home")
        .expect("the request reached the open backend");
    let lines: Vec<&str> = request
        .headers
        .iter()
        .filter(|(name, _)| name == "x-forwarded-for")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(
        lines,
        vec!["203.0.113.7, 198.51.100.9, 10.1.2.3, 127.0.0.1"]
    );
    setup.assert_honest_client_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_and_set_canonical_paths() {
    let setup = start().await;
    // The plugin is handed the canonical `:path`, the query as sent.
    let answer = setup
        .get("/%68ome//./x/..?q=%2F", "www.demo.local", &[])
        .await;
    setup.expect(&answer, 200, "non-canonical path to the open route");
    let seen = setup.gateway.backend("open").requests();
    let request = seen.last().expect("the open backend was reached");
    assert_eq!(request.path, "/home/?q=%2F");
    assert_eq!(request.header("x-tp-path"), Some("/home/?q=%2F"));

    // A path the plugin sets is made canonical before the route is matched again.
    let answer = setup
        .get(
            "/home",
            "www.demo.local",
            &["x-tp-set-path: /api/v1/../orders//7?z=1"],
        )
        .await;
    setup.expect(&answer, 200, "plugin-set path");
    let seen = setup.gateway.backend("legacy").requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/legacy/orders/7?z=1");

    // One that cannot be made canonical is refused like the client's own.
    for path in ["/a%2Fb", "/a%zz", "relative"] {
        let set = format!("x-tp-set-path: {path}");
        let answer = setup.get("/home", "www.demo.local", &[set.as_str()]).await;
        setup.expect(&answer, 400, &set);
    }
    setup.assert_logged("invalid_plugin_path").await;
    assert_eq!(setup.gateway.backend("legacy").request_count(), 1);
    setup.assert_honest_client_served().await;
}

/// One HTTP/2 (prior knowledge) GET with this `:authority` and, optionally, a `Host` header.
async fn h2_get(setup: &Setup, authority: &str, host: Option<&str>, path: &str) -> StatusCode {
    let tcp = TcpStream::connect(setup.gateway.listener("public"))
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let mut builder = Request::get(format!("http://{authority}{path}"));
    if let Some(host) = host {
        builder = builder.header(http::header::HOST, host);
    }
    let request = builder
        .body(Full::<Bytes>::default())
        .expect("valid request");
    sender
        .send_request(request)
        .await
        .expect("an answer")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_is_normalized_and_must_agree_with_host() {
    let setup = start().await;
    for authority in ["API.DEMO.LOCAL.", "api.demo.local.:80"] {
        let status = h2_get(&setup, authority, None, "/secure/x").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authority}");
    }
    let status = h2_get(&setup, "www.demo.local", Some("api.demo.local"), "/").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    setup.assert_logged("host_mismatch").await;
    let status = h2_get(&setup, "api.demo.local", Some("API.demo.local."), "/").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the same host, spelled another way"
    );
    setup.assert_no_backend_reached("a keyless HTTP/2 request to the protected host");
    setup.assert_honest_client_served().await;
}
