//! The bundled access plugins through the real gateway: acl (consumer groups per route and
//! method, after key-auth), ip-restriction (CIDR lists, X-Forwarded-For with trusted proxy
//! hops) and cors (preflights answered locally, CORS headers on responses). Allowed and
//! denied paths for each, and bad configurations rejected by `tollgate check` naming the
//! plugin and the field.

use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tollgate_tests::bundled::{ACL, CORS, IP_RESTRICTION, KEY_AUTH};
use tollgate_tests::clients::{request, HttpResponse};
use tollgate_tests::plugins::{assert_rejected, check_plugins, PluginSpec};
use tollgate_tests::scenario::{Running, Scenario};

struct Setup {
    gateway: Running,
}

async fn start(plugins: &[PluginSpec]) -> Setup {
    let gateway = Scenario::new()
        .echo("echo")
        .forward("orders", "/orders", "echo")
        .forward("admin", "/admin", "echo")
        .forward("anonymous", "/anonymous", "echo")
        .forward("ip-deny", "/ip-deny", "echo")
        .forward("ip-allow", "/ip-allow", "echo")
        .forward("xff-one", "/xff-one", "echo")
        .forward("xff-two", "/xff-two", "echo")
        .forward("cors", "/cors", "echo")
        .forward("open", "/", "echo")
        .plugins(plugins)
        .start()
        .await;
    Setup { gateway }
}

impl Setup {
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut builder = request(method, self.gateway.listener("public"), "shop.test", path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::default()).expect("valid request");
        self.gateway.client().send(req).await.unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {e:#}; gateway log:\n{}",
                self.gateway.log()
            )
        })
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

// === acl ===

fn keys() -> PluginSpec {
    PluginSpec::new("keys", KEY_AUTH)
        .config(json!({ "consumers": [
            { "name": "gina", "keys": ["k-gold"], "groups": ["gold"] },
            { "name": "sam", "keys": ["k-staff"], "groups": ["staff"] },
            { "name": "nora", "keys": ["k-none"] }
        ] }))
        .routes(&["orders", "admin"])
        .priority(100)
}

fn acl() -> PluginSpec {
    PluginSpec::new("access", ACL)
        .config(json!({
            "routes": {
                "orders": [
                    { "methods": ["GET", "HEAD"], "allow": ["gold", "staff"] },
                    { "methods": ["POST", "DELETE"], "allow": ["staff"] }
                ],
                "admin": [ { "deny": ["gold"] } ]
            }
        }))
        .routes(&["orders", "admin", "anonymous"])
        .priority(10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_allows_and_denies_consumer_groups_per_route_and_method() {
    let setup = start(&[acl(), keys()]).await;
    let cases = [
        ("GET", "/orders/1", "k-gold", StatusCode::OK),
        ("GET", "/orders/1", "k-staff", StatusCode::OK),
        ("GET", "/orders/1", "k-none", StatusCode::FORBIDDEN),
        ("POST", "/orders", "k-staff", StatusCode::OK),
        ("POST", "/orders", "k-gold", StatusCode::FORBIDDEN),
        ("PUT", "/orders/1", "k-staff", StatusCode::FORBIDDEN),
        ("GET", "/admin", "k-none", StatusCode::OK),
        ("GET", "/admin", "k-gold", StatusCode::FORBIDDEN),
    ];
    let mut allowed = 0;
    for (method, path, key, status) in cases {
        let response = setup.send(method, path, &[("x-api-key", key)]).await;
        setup.expect(&response, status, &format!("{method} {path} with {key}"));
        if status == StatusCode::OK {
            allowed += 1;
            assert!(response.json()["headers"]["x-tollgate-consumer"].is_string());
        } else {
            assert!(
                response.json()["message"].is_string(),
                "{}",
                response.text()
            );
        }
    }
    assert_eq!(
        setup.gateway.backend("echo").request_count(),
        allowed,
        "denied requests never reach the upstream"
    );

    // No auth plugin on this route: only a client-claimed identity, which the host strips.
    let response = setup
        .send(
            "GET",
            "/anonymous",
            &[
                ("x-tollgate-consumer", "sam"),
                ("x-tollgate-consumer-groups", "staff"),
            ],
        )
        .await;
    setup.expect(&response, StatusCode::UNAUTHORIZED, "no consumer");
    assert_eq!(response.json()["message"], "authentication required");
}

// === ip-restriction ===

fn ip_plugins() -> Vec<PluginSpec> {
    vec![
        PluginSpec::new("deny-loopback", IP_RESTRICTION)
            .config(json!({ "deny": ["127.0.0.0/8"], "message": "go away" }))
            .routes(&["ip-deny"]),
        PluginSpec::new("allow-loopback", IP_RESTRICTION)
            .config(json!({ "allow": ["10.0.0.0/8", "127.0.0.1/32", "::1"] }))
            .routes(&["ip-allow"]),
        PluginSpec::new("behind-one-proxy", IP_RESTRICTION)
            .config(json!({ "allow": ["203.0.113.0/24", "2001:db8::/32"], "deny": ["203.0.113.66"], "trusted_proxy_hops": 1 }))
            .routes(&["xff-one"]),
        PluginSpec::new("behind-two-proxies", IP_RESTRICTION)
            .config(json!({ "allow": ["198.51.100.0/24"], "trusted_proxy_hops": 2, "status": 451 }))
            .routes(&["xff-two"]),
    ]
}

/// (path, request headers, expected status)
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], StatusCode);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_restriction_matches_the_peer_or_the_trusted_forwarded_address() {
    let setup = start(&ip_plugins()).await;
    let cases: &[Case] = &[
        ("/ip-deny", &[], StatusCode::FORBIDDEN),
        // Without trusted hops, X-Forwarded-For is ignored.
        (
            "/ip-deny",
            &[("x-forwarded-for", "10.1.1.1")],
            StatusCode::FORBIDDEN,
        ),
        ("/ip-allow", &[], StatusCode::OK),
        (
            "/xff-one",
            &[("x-forwarded-for", "203.0.113.7")],
            StatusCode::OK,
        ),
        (
            "/xff-one",
            &[("x-forwarded-for", "2001:db8::5")],
            StatusCode::OK,
        ),
        (
            "/xff-one",
            &[("x-forwarded-for", "203.0.113.66")],
            StatusCode::FORBIDDEN,
        ),
        // The client put an allowed address first; the trusted proxy appended the real one.
        (
            "/xff-one",
            &[("x-forwarded-for", "203.0.113.7, 192.0.2.1")],
            StatusCode::FORBIDDEN,
        ),
        // No X-Forwarded-For: the peer (127.0.0.1) is judged, and it is not allowed.
        ("/xff-one", &[], StatusCode::FORBIDDEN),
        (
            "/xff-two",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.20, 10.0.0.2")],
            StatusCode::OK,
        ),
        (
            "/xff-two",
            &[("x-forwarded-for", "198.51.100.20, 6.6.6.6, 10.0.0.2")],
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
        ),
        (
            "/xff-two",
            &[("x-forwarded-for", "198.51.100.20")],
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
        ),
    ];
    let mut allowed = 0;
    for (path, headers, status) in cases {
        let response = setup.send("GET", path, headers).await;
        setup.expect(&response, *status, &format!("{path} {headers:?}"));
        if *status == StatusCode::OK {
            allowed += 1;
        }
    }
    let response = setup.send("GET", "/ip-deny", &[]).await;
    assert_eq!(response.json()["message"], "go away");
    assert_eq!(setup.gateway.backend("echo").request_count(), allowed);
}

// === cors ===

fn cors() -> PluginSpec {
    PluginSpec::new("cors", CORS)
        .config(json!({
            "allow_origins": ["https://app.shop.test", "https://*.partner.test"],
            "allow_methods": ["GET", "POST", "DELETE"],
            "allow_headers": ["content-type", "authorization"],
            "expose_headers": ["x-backend"],
            "allow_credentials": true,
            "max_age": 600
        }))
        .routes(&["cors"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_locally_and_decorates_responses() {
    let setup = start(&[cors()]).await;

    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        vec![
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", headers),
        ]
    };
    let response = setup
        .send(
            "OPTIONS",
            "/cors/items",
            &preflight("https://app.shop.test", "DELETE", "Content-Type"),
        )
        .await;
    setup.expect(&response, StatusCode::NO_CONTENT, "allowed preflight");
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.shop.test")
    );
    assert_eq!(
        response.header("access-control-allow-methods"),
        Some("GET,POST,DELETE")
    );
    assert_eq!(
        response.header("access-control-allow-headers"),
        Some("content-type,authorization")
    );
    assert_eq!(
        response.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(response.header("access-control-max-age"), Some("600"));

    let response = setup
        .send(
            "OPTIONS",
            "/cors/items",
            &preflight("https://eu.partner.test", "POST", "authorization"),
        )
        .await;
    setup.expect(&response, StatusCode::NO_CONTENT, "wildcard origin");
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://eu.partner.test")
    );

    for (what, headers) in [
        ("unknown origin", preflight("https://evil.test", "GET", "")),
        (
            "look-alike origin",
            preflight("https://evilpartner.test", "GET", ""),
        ),
        (
            "method not allowed",
            preflight("https://app.shop.test", "PUT", ""),
        ),
        (
            "header not allowed",
            preflight("https://app.shop.test", "GET", "x-secret"),
        ),
    ] {
        let response = setup.send("OPTIONS", "/cors/items", &headers).await;
        setup.expect(&response, StatusCode::FORBIDDEN, what);
        assert!(
            response.header("access-control-allow-origin").is_none(),
            "{what}"
        );
    }
    assert_eq!(
        setup.gateway.backend("echo").request_count(),
        0,
        "preflights are answered by the gateway"
    );

    let response = setup
        .send("GET", "/cors/items", &[("origin", "https://app.shop.test")])
        .await;
    setup.expect(&response, StatusCode::OK, "actual request");
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.shop.test")
    );
    assert_eq!(
        response.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        response.header("access-control-expose-headers"),
        Some("x-backend")
    );
    assert_eq!(response.header("vary"), Some("Origin"));

    let response = setup
        .send("GET", "/cors/items", &[("origin", "https://evil.test")])
        .await;
    setup.expect(
        &response,
        StatusCode::OK,
        "actual request from another origin",
    );
    assert!(response.header("access-control-allow-origin").is_none());

    // A plain OPTIONS (not a preflight) goes to the upstream.
    let response = setup
        .send(
            "OPTIONS",
            "/cors/items",
            &[("origin", "https://app.shop.test")],
        )
        .await;
    setup.expect(&response, StatusCode::OK, "plain OPTIONS");
    assert_eq!(setup.gateway.backend("echo").request_count(), 3);
}

// === bad configuration ===

#[test]
fn bad_access_configurations_are_rejected_naming_plugin_and_field() {
    let outcome = check_plugins(&[PluginSpec::new("access", ACL)
        .config(json!({ "routes": { "all": [{ "methods": ["G ET"] }] } }))]);
    assert_rejected(&outcome, &["access", "acl", "routes.all[0].methods[0]"]);

    let outcome = check_plugins(&[
        PluginSpec::new("access", ACL).config(json!({ "default": [{ "alow": ["x"] }] }))
    ]);
    assert_rejected(&outcome, &["access", "alow"]);

    let outcome = check_plugins(&[PluginSpec::new("ips", IP_RESTRICTION)
        .config(json!({ "allow": ["10.0.0.0/8", "10.0.0.1/33"] }))]);
    assert_rejected(&outcome, &["ips", "ip-restriction", "allow[1]"]);

    let outcome = check_plugins(&[
        PluginSpec::new("ips", IP_RESTRICTION).config(json!({ "deny": ["10.0.0.1/8"] }))
    ]);
    assert_rejected(&outcome, &["ips", "deny[0]", "10.0.0.0/8"]);

    let outcome = check_plugins(&[
        PluginSpec::new("cors", CORS).config(json!({ "allow_origins": ["https://*"] }))
    ]);
    assert_rejected(&outcome, &["cors", "allow_origins[0]"]);

    let outcome = check_plugins(&[PluginSpec::new("cors", CORS)
        .config(json!({ "allow_origins": ["*"], "max_age_seconds": 5 }))]);
    assert_rejected(&outcome, &["cors", "max_age_seconds"]);
}
