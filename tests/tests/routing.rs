//! Which virtual host and route a request reaches, and what the route does with it.

use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use tollgate_tests::backends;
use tollgate_tests::clients::{get_request, raw_exchange, request, tally_by_header, HttpClient};
use tollgate_tests::scenario::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_match_exact_then_suffix_then_prefix_then_any() {
    let mut virtual_hosts = String::from("virtual_hosts:\n");
    for (name, domain) in [
        ("exact", "api.shop.test"),
        ("shop-wildcard", "*.shop.test"),
        ("eu-wildcard", "*.eu.shop.test"),
        ("prefix-wildcard", "api.*"),
        ("catch-all", "*"),
    ] {
        virtual_hosts.push_str(&format!(
            "  - name: {name}\n    domains: [\"{domain}\"]\n    routes:\n      - name: {name}-route\n        \
             match: {{ path: {{ prefix: / }} }}\n        direct_response: {{ status: 200, body: {name} }}\n"
        ));
    }
    let gateway = Scenario::new()
        .policy_file("hosts.yaml", &virtual_hosts)
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    for (host, expected) in [
        ("api.shop.test", "exact"),
        ("api.shop.test:8080", "exact"),
        ("www.shop.test", "shop-wildcard"),
        ("a.b.shop.test", "shop-wildcard"),
        ("x.eu.shop.test", "eu-wildcard"),
        ("api.eu.shop.test", "eu-wildcard"),
        ("api.other.test", "prefix-wildcard"),
        ("other.test", "catch-all"),
    ] {
        let response = client.get(public, host, "/").await;
        assert_eq!(response.status, StatusCode::OK, "host {host}");
        assert_eq!(response.text(), expected, "host {host}");
    }
}

const MATCHING_ROUTES: &str = r#"
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: exact-orders
        match: { path: { exact: /orders } }
        direct_response: { status: 200, body: exact-orders }
      - name: order-by-id
        match: { path: { regex: "^/orders/[0-9]+$" } }
        direct_response: { status: 200, body: order-by-id }
      - name: orders-post
        match: { path: { prefix: /orders }, methods: [POST, PUT] }
        direct_response: { status: 200, body: orders-post }
      - name: canary
        match:
          path: { prefix: /orders }
          headers: [{ name: x-canary, exact: "1" }]
        direct_response: { status: 200, body: canary }
      - name: mobile
        match:
          path: { prefix: /orders }
          headers: [{ name: user-agent, regex: ".*Mobile.*" }]
        direct_response: { status: 200, body: mobile }
      - name: authorized
        match:
          path: { prefix: /orders }
          headers:
            - { name: authorization, present: true }
            - { name: x-debug, present: false }
        direct_response: { status: 200, body: authorized }
      - name: beta
        match:
          path: { prefix: /orders }
          query: [{ name: beta, exact: "true" }]
        direct_response: { status: 200, body: beta }
      - name: orders-prefix
        match: { path: { prefix: /orders } }
        direct_response: { status: 200, body: orders-prefix }
"#;

/// Method, path and query, request headers, and the route expected to answer.
type RouteCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_path_method_headers_and_query_in_order() {
    let gateway = Scenario::new()
        .policy_file("routes.yaml", MATCHING_ROUTES)
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    let cases: &[RouteCase] = &[
        ("GET", "/orders", &[], "exact-orders"),
        ("GET", "/orders/42", &[], "order-by-id"),
        ("GET", "/orders/42x", &[], "orders-prefix"),
        ("POST", "/orders/new", &[], "orders-post"),
        ("PUT", "/orders/7/x", &[], "orders-post"),
        ("GET", "/orders/x", &[("x-canary", "1")], "canary"),
        ("GET", "/orders/x", &[("x-canary", "2")], "orders-prefix"),
        (
            "GET",
            "/orders/x",
            &[("user-agent", "Foo Mobile Safari")],
            "mobile",
        ),
        (
            "GET",
            "/orders/x",
            &[("user-agent", "curl/8")],
            "orders-prefix",
        ),
        (
            "GET",
            "/orders/x",
            &[("authorization", "Bearer t")],
            "authorized",
        ),
        (
            "GET",
            "/orders/x",
            &[("authorization", "Bearer t"), ("x-debug", "1")],
            "orders-prefix",
        ),
        ("GET", "/orders/x?beta=true", &[], "beta"),
        ("GET", "/orders/x?a=1&beta=true", &[], "beta"),
        ("GET", "/orders/x?beta=false", &[], "orders-prefix"),
    ];
    for (method, path, headers, expected) in cases {
        let mut builder = request(method, public, "shop.test", path);
        for (name, value) in *headers {
            builder = builder.header(*name, *value);
        }
        let response = client
            .send(builder.body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            (response.status, response.text().as_str()),
            (StatusCode::OK, *expected),
            "{method} {path} {headers:?}"
        );
    }
    let unmatched = client.get(public, "shop.test", "/other").await;
    assert_eq!(
        unmatched.status,
        StatusCode::NOT_FOUND,
        "no route matches /other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_method_path_query_and_body() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file(
            "routes.yaml",
            "
clusters:
  - name: echo
    endpoints: [{ address: ${ECHO} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: all
        match: { path: { prefix: / } }
        forward: { cluster: echo }
",
        )
        .start()
        .await;
    let public = gateway.listener("public");
    let body = "x".repeat(5000);
    let post = request("POST", public, "shop.test", "/a/b?c=1&d=2")
        .body(Full::from(body.clone()))
        .unwrap();
    let response = HttpClient::http1().send(post).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-backend"), Some("echo"));
    let seen = response.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/a/b?c=1&d=2");
    assert_eq!(seen["body_len"], 5000);

    let echoed = request("PUT", public, "shop.test", "/echo-body")
        .body(Full::from(body.clone()))
        .unwrap();
    assert_eq!(HttpClient::http1().send(echoed).await.unwrap().text(), body);
}

const VERSIONS_CLUSTER: &str = "
name: versions
endpoints:
  - { address: ${V1}, labels: { version: v1 } }
  - { address: ${V2}, labels: { version: v2 } }
";

const SPLIT_HOST: &str = "
name: shop
domains: [shop.test]
routes:
  - name: by-cluster
    match: { path: { prefix: /clusters } }
    forward:
      split:
        - { cluster: v1, weight: 90 }
        - { cluster: v2, weight: 10 }
  - name: by-subset
    match: { path: { prefix: /subsets } }
    forward:
      split:
        - { cluster: versions, subset: { version: v1 }, weight: 90 }
        - { cluster: versions, subset: { version: v2 }, weight: 10 }
";

/// Two echo backends `v1` and `v2`, split 90/10 by cluster (`/clusters`) and by subset of
/// one cluster holding both (`/subsets`).
fn split_scenario() -> Scenario {
    Scenario::new()
        .echo("v1")
        .echo("v2")
        .cluster(VERSIONS_CLUSTER)
        .virtual_host(SPLIT_HOST)
}

/// 2000 requests at 10%: mean 200, standard deviation about 13.4; the bounds are about
/// 4.5 standard deviations wide, so a correct split fails them about once in 100 000 runs.
const SPLIT_REQUESTS: usize = 2000;
const MINORITY_BOUNDS: std::ops::RangeInclusive<usize> = 140..=260;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_across_clusters_is_90_10() {
    let gateway = split_scenario().start().await;
    let counts = tally_by_header(
        &HttpClient::http1(),
        gateway.listener("public"),
        "shop.test",
        "/clusters",
        SPLIT_REQUESTS,
        8,
        "x-backend",
    )
    .await;
    assert_split(&counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_across_subsets_is_90_10() {
    let gateway = split_scenario().start().await;
    let counts = tally_by_header(
        &HttpClient::http1(),
        gateway.listener("public"),
        "shop.test",
        "/subsets",
        SPLIT_REQUESTS,
        8,
        "x-backend",
    )
    .await;
    assert_split(&counts);
}

fn assert_split(counts: &std::collections::BTreeMap<String, usize>) {
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(
        v1 + v2,
        SPLIT_REQUESTS,
        "every request reaches v1 or v2: {counts:?}"
    );
    assert!(
        MINORITY_BOUNDS.contains(&v2),
        "v2 should get about 10%: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_answer_code_and_location() {
    let gateway = Scenario::new()
        .policy_file(
            "redirects.yaml",
            "
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: old-docs
        match: { path: { prefix: /docs } }
        redirect: { scheme: https, host: docs.example.com, port: 8443, prefix: /manual, code: 308 }
      - name: moved
        match: { path: { exact: /old } }
        redirect: { path: /new, strip_query: true }
",
        )
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");

    let docs = client.get(public, "shop.test", "/docs/intro?lang=en").await;
    assert_eq!(docs.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        docs.header("location"),
        Some("https://docs.example.com:8443/manual/intro?lang=en")
    );

    let moved = client.get(public, "shop.test", "/old?lang=en").await;
    assert_eq!(
        moved.status,
        StatusCode::MOVED_PERMANENTLY,
        "the default code is 301"
    );
    let location = moved
        .header("location")
        .expect("a Location header")
        .to_owned();
    // Only the path was replaced: the location may be relative or name the same host.
    assert!(
        location == "/new" || location == "http://shop.test/new",
        "Location {location:?} should be /new on shop.test without the query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_changes_prefix_and_host_seen_upstream() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file(
            "routes.yaml",
            "
clusters:
  - name: echo
    endpoints: [{ address: ${ECHO} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: api
        match: { path: { prefix: /api } }
        forward:
          cluster: echo
          rewrite: { prefix: /v2, host: internal.svc }
",
        )
        .start()
        .await;
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "shop.test", "/api/items?x=1")
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let seen = &echo.requests()[0];
    assert_eq!(seen.path, "/v2/items?x=1");
    assert_eq!(seen.host, "internal.svc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_rewrite_moves_capture_groups_and_keeps_the_query() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file(
            "routes.yaml",
            r#"
clusters:
  - name: echo
    endpoints: [{ address: ${ECHO} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: services
        match: { path: { prefix: /service/ } }
        forward:
          cluster: echo
          rewrite:
            regex: { pattern: '^/service/([^/]+)(/.*)$', substitution: '\2/instance/\1' }
      - name: dashes
        match: { path: { prefix: /dashes/ } }
        forward:
          cluster: echo
          rewrite:
            regex: { pattern: '-', substitution: '_$' }
"#,
        )
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    for (sent, seen) in [
        (
            "/service/foo/v1/api?x=1&y=a/b",
            "/v1/api/instance/foo?x=1&y=a/b",
        ),
        ("/service/bar/", "//instance/bar"),
        // No match: the path goes as it is.
        ("/service/nothing-after", "/service/nothing-after"),
        // Every match is replaced; `$` is literal.
        ("/dashes/a-b-c?q=a-b", "/dashes/a_$b_$c?q=a-b"),
    ] {
        let response = client.get(public, "shop.test", sent).await;
        assert_eq!(response.status, StatusCode::OK, "{sent}");
        assert_eq!(echo.requests().last().unwrap().path, seen, "{sent}");
    }
}

#[test]
fn regex_rewrite_errors_name_the_field() {
    let route = |rewrite: &str| {
        format!(
            "
clusters:
  - name: echo
    endpoints: [{{ address: 127.0.0.1:19001 }}]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: api
        match: {{ path: {{ prefix: /api }} }}
        forward: {{ cluster: echo, rewrite: {rewrite} }}
"
        )
    };
    for (rewrite, fragments) in [
        (
            "{ prefix: /v2, regex: { pattern: '^/api', substitution: /v2 } }",
            &[
                "virtual_hosts[0].routes[0].forward.rewrite.regex",
                "not both",
            ][..],
        ),
        (
            "{ regex: { pattern: '^/api/(', substitution: /v2 } }",
            &["rewrite.regex.pattern", "invalid regex"][..],
        ),
        (
            "{ regex: { pattern: '^/api/(.*)$', substitution: '/v2/\\2' } }",
            &["rewrite.regex.substitution", "group"][..],
        ),
    ] {
        let mut dir = tollgate_tests::gateway::PolicyDir::new();
        dir.write("routes.yaml", &route(rewrite));
        let outcome = tollgate_tests::gateway::run_check(&dir.path());
        assert_ne!(outcome.code, Some(0), "{rewrite}: {}", outcome.output);
        for fragment in fragments {
            assert!(
                outcome.output.contains(fragment),
                "{rewrite}: the error should mention {fragment:?}:\n{}",
                outcome.output
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_response_answers_status_body_and_headers() {
    let gateway = Scenario::new()
        .policy_file(
            "routes.yaml",
            r#"
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: ping
        match: { path: { exact: /ping } }
        direct_response:
          status: 200
          body: "pong\n"
          headers: { content-type: text/plain }
      - name: teapot
        match: { path: { exact: /teapot } }
        direct_response: { status: 418, body: "short and stout" }
"#,
        )
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    let ping = client.get(public, "shop.test", "/ping").await;
    assert_eq!(ping.status, StatusCode::OK);
    assert_eq!(ping.text(), "pong\n");
    assert_eq!(ping.header("content-type"), Some("text/plain"));
    let teapot = client.get(public, "shop.test", "/teapot").await;
    assert_eq!(teapot.status.as_u16(), 418);
    assert_eq!(teapot.text(), "short and stout");
}

const ECHO_ROUTE: &str = "
clusters:
  - name: echo
    endpoints: [{ address: ${ECHO} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: all
        match: { path: { prefix: / } }
        forward: { cluster: echo }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_request_id_are_set() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file("routes.yaml", ECHO_ROUTE)
        .start()
        .await;
    let client = HttpClient::http1();
    let public = gateway.listener("public");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let generated = client
        .send(
            request("GET", public, "shop.test", "/first")
                .header("traceparent", traceparent)
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(generated.status, StatusCode::OK);
    let seen = &echo.requests()[0];
    let request_id = seen
        .header("x-request-id")
        .expect("a generated x-request-id upstream");
    assert!(!request_id.is_empty());
    assert_eq!(
        generated.header("x-request-id"),
        Some(request_id),
        "the response carries the same id"
    );
    assert!(
        seen.header("x-forwarded-for")
            .is_some_and(|v| v.contains("127.0.0.1")),
        "x-forwarded-for names the client: {:?}",
        seen.header("x-forwarded-for")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.test"));
    assert_eq!(
        seen.header("traceparent"),
        Some(traceparent),
        "traceparent passes unchanged"
    );

    let kept = client
        .send(
            request("GET", public, "shop.test", "/second")
                .header("x-request-id", "abc-123")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(echo.requests()[1].header("x-request-id"), Some("abc-123"));
    assert_eq!(kept.header("x-request-id"), Some("abc-123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_consumer_identity_never_reaches_the_upstream() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file("routes.yaml", ECHO_ROUTE)
        .start()
        .await;
    let response = HttpClient::http1()
        .send(
            request("GET", gateway.listener("public"), "shop.test", "/")
                .header("x-tollgate-consumer", "admin")
                .header("x-tollgate-consumer-groups", "root")
                .header("x-other", "kept")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let seen = &echo.requests()[0];
    assert_eq!(
        seen.header("x-tollgate-consumer"),
        None,
        "a forged identity is dropped"
    );
    assert_eq!(seen.header("x-tollgate-consumer-groups"), None);
    assert_eq!(seen.header("x-other"), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_may_be_dns_names() {
    let echo = backends::echo("by-name").await;
    let by_name = format!("localhost:{}", echo.addr().port());
    let gateway = Scenario::new()
        .set("ECHO", by_name)
        .policy_file("routes.yaml", ECHO_ROUTE)
        .start()
        .await;
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "shop.test", "/")
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(response.header("x-backend"), Some("by-name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file("routes.yaml", ECHO_ROUTE)
        .start()
        .await;
    // Raw bytes, so that exactly these headers are on the wire.
    let answer = raw_exchange(
        gateway.listener("public"),
        b"GET /hop HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive, x-hop-secret\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\n\
          X-Hop-Secret: 1\r\nX-End-To-End: kept\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(answer.status, Some(200), "answer: {}", answer.text);
    let seen = &echo.requests()[0];
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    for removed in ["keep-alive", "proxy-connection", "x-hop-secret"] {
        assert_eq!(
            seen.header(removed),
            None,
            "{removed} must not reach the backend: {:?}",
            seen.headers
        );
    }
    assert!(
        matches!(seen.header("te"), None | Some("trailers")),
        "te other than trailers must not reach the backend: {:?}",
        seen.header("te")
    );
    assert!(
        !seen
            .header("connection")
            .unwrap_or_default()
            .contains("x-hop-secret"),
        "the client's Connection header must not be forwarded: {:?}",
        seen.header("connection")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_copy_with_shadow_host() {
    let primary = backends::echo("primary").await;
    let shadow = backends::echo("shadow").await;
    let gateway = Scenario::new()
        .set("PRIMARY", primary.addr())
        .set("SHADOW", shadow.addr())
        .policy_file(
            "routes.yaml",
            "
clusters:
  - name: primary
    endpoints: [{ address: ${PRIMARY} }]
  - name: shadow
    endpoints: [{ address: ${SHADOW} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: mirrored
        match: { path: { prefix: / } }
        forward:
          cluster: primary
          mirror: { cluster: shadow, percent: 100 }
",
        )
        .start()
        .await;
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "shop.test", "/m?x=1")
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.header("x-backend"),
        Some("primary"),
        "the client gets the primary's answer"
    );
    let copies = shadow.wait_for_requests(1, Duration::from_secs(3)).await;
    assert_eq!(copies.len(), 1, "the shadow cluster receives one copy");
    assert_eq!(copies[0].host, "shop.test-shadow");
    assert_eq!(copies[0].path, "/m?x=1");
    assert_eq!(primary.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_route_by_authority() {
    let echo = backends::echo("echo").await;
    let gateway = Scenario::new()
        .set("ECHO", echo.addr())
        .policy_file("routes.yaml", ECHO_ROUTE)
        .start()
        .await;
    let response = HttpClient::h2c()
        .send(get_request(
            gateway.listener("public"),
            "shop.test",
            "/h2?x=1",
        ))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.version, http::Version::HTTP_2);
    assert_eq!(response.json()["path"], "/h2?x=1");
    assert_eq!(
        echo.requests()[0].header("x-forwarded-host"),
        Some("shop.test")
    );
}
