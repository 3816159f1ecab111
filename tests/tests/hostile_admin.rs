//! Hostile clients of the admin listener and of the access log: reloads without the admin
//! token, DNS rebinding through a foreign Host, a slowloris on the admin port, and API keys
//! that must never be written to the access log.

use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_tests::bundled::KEY_AUTH;
use tollgate_tests::clients::{expect_status, raw_exchange, request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::PluginSpec;
use tollgate_tests::scenario::{Running, Scenario};

const TOKEN: &str = "admin-token-7c1f0e";

const SHOP: &str = "
name: shop
domains: [shop.test]
routes:
  - name: all
    match: { path: { prefix: / } }
    forward: { cluster: echo }
";

/// The shop behind a 1s header read timeout.
fn shop() -> Scenario {
    Scenario::new()
        .server("header_read_timeout: 1s")
        .echo("echo")
        .virtual_host(SHOP)
}

/// A gateway whose admin POSTs need [`TOKEN`], read from a file with whitespace around it.
async fn start_with_token() -> (Running, tempfile::TempDir) {
    let secrets = tempfile::tempdir().expect("a directory for the token file");
    let token_file = secrets.path().join("admin.token");
    std::fs::write(&token_file, format!("  {TOKEN}\n")).expect("write the token file");
    let gateway = shop()
        .args(&[
            "--admin-token-file",
            token_file.to_str().expect("UTF-8 path"),
        ])
        .start()
        .await;
    (gateway, secrets)
}

async fn post_reload(gateway: &Gateway, authorization: Option<&str>) -> HttpResponse {
    let mut builder = request("POST", gateway.admin_addr(), "localhost", "/reload");
    if let Some(authorization) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, authorization);
    }
    HttpClient::http1()
        .send(builder.body(Full::default()).expect("valid request"))
        .await
        .expect("POST /reload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_the_admin_token_and_reads_stay_open() {
    let (gateway, _secrets) = start_with_token().await;

    let missing = post_reload(&gateway, None).await;
    assert_eq!(
        missing.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        missing.text()
    );
    assert!(
        missing
            .header("www-authenticate")
            .is_some_and(|challenge| challenge.starts_with("Bearer")),
        "a 401 names the scheme: {:?}",
        missing.headers
    );
    for wrong in [
        "Bearer not-the-token",
        &format!("Bearer {TOKEN}x"),
        &format!("Basic {TOKEN}"),
        TOKEN,
    ] {
        let refused = post_reload(&gateway, Some(wrong)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "with {wrong:?}");
    }

    let accepted = post_reload(&gateway, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text());
    assert_eq!(accepted.json()["status"], "live");

    for path in [
        "/healthz",
        "/readyz",
        "/config",
        "/metrics",
        "/plugins",
        "/clusters",
    ] {
        let read = gateway.admin_get(path).await;
        assert_eq!(read.status, StatusCode::OK, "GET {path} needs no token");
    }
    // The proxy itself is untouched by all this.
    let served = HttpClient::http1()
        .get(gateway.listener("public"), "shop.test", "/")
        .await;
    assert_eq!(served.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_is_refused_on_a_loopback_admin() {
    let gateway = shop().start().await;
    let admin = gateway.admin_addr();

    // What a browser sends after DNS rebinding: the attacker's name in Host.
    for host in [
        "rebind.attacker.example",
        "rebind.attacker.example:9901",
        "10.1.2.3",
    ] {
        let answer = raw_exchange(
            admin,
            format!("POST /reload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        expect_status(&answer, 403);
        let answer = raw_exchange(
            admin,
            format!("GET /config HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        expect_status(&answer, 403);
    }
    for host in ["localhost", &admin.to_string(), "[::1]:9901", "127.0.0.1"] {
        let answer = raw_exchange(
            admin,
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        expect_status(&answer, 200);
    }
    // Without a token file, a loopback Host may still reload (the default stays usable).
    let reload = post_reload(&gateway, None).await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_on_the_admin_port_is_cut_while_healthz_answers() {
    let (gateway, _secrets) = start_with_token().await;
    let admin = gateway.admin_addr();

    // One header line every 200 ms, never the blank line that ends the head; bounded to
    // 10 s and 50 lines.
    let slowloris = tokio::spawn(async move {
        let started = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 1024];
        for line in 0..50 {
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
            if stream
                .write_all(format!("x-slow-{line}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return started.elapsed();
            }
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                // A 408 before the close is fine; keep reading until the close.
                Ok(Ok(_)) | Err(_) => {}
            }
        }
        Duration::MAX
    });

    // Meanwhile an honest client is answered at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let health = gateway.admin_get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "/healthz took {:?} next to a slowloris",
        started.elapsed()
    );

    let cut_after = slowloris.await.unwrap();
    assert!(
        cut_after < Duration::from_secs(4),
        "the 1s header read timeout did not cut the slowloris (open for {cut_after:?})"
    );
}

const KEYED_SERVER: &str = "
access_log:
  redact_query_params: [signature]
  redact_headers: [user-agent]
";

const KEYED_SHOP: &str = "
name: shop
domains: [shop.test]
routes:
  - name: keyed
    match: { path: { prefix: /keyed } }
    forward: { cluster: echo }
  - name: open
    match: { path: { prefix: / } }
    forward: { cluster: echo }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_never_shows_keys_or_redacted_values() {
    for format in ["text", "json"] {
        let key_auth = PluginSpec::new("keys", KEY_AUTH)
            .config(json!({
                "key_names": ["x-api-key", "api_key"],
                "consumers": [{ "name": "alice", "keys": ["k-alice-secret-1"] }]
            }))
            .routes(&["keyed"]);
        let gateway = Scenario::new()
            .server(KEYED_SERVER)
            .echo("echo")
            .virtual_host(KEYED_SHOP)
            .plugin(key_auth)
            .log_format(format)
            .start()
            .await;
        let client = HttpClient::http1();
        let public = gateway.listener("public");

        // key-auth's query key on its own route, and on a route it does not guard.
        let keyed = client
            .get(
                public,
                "shop.test",
                "/keyed?api_key=k-alice-secret-1&page=2",
            )
            .await;
        assert_eq!(keyed.status, StatusCode::OK, "{format}: {}", keyed.text());
        let open = client
            .get(
                public,
                "shop.test",
                "/open?API_KEY=k-alice-secret-1&signature=sig-secret-2",
            )
            .await;
        assert_eq!(open.status, StatusCode::OK);
        let with_agent = client
            .send(
                request("GET", public, "shop.test", "/agent")
                    .header("user-agent", "agent-secret-3")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(with_agent.status, StatusCode::OK);

        let log = wait_for_access_lines(&gateway, 3).await;
        for secret in ["k-alice-secret-1", "sig-secret-2", "agent-secret-3"] {
            assert!(
                !log.contains(secret),
                "{format}: {secret} is in the log:\n{log}"
            );
        }
        let access: Vec<&str> = log
            .lines()
            .filter(|line| {
                ["/keyed", "/open", "/agent"]
                    .iter()
                    .any(|p| line.contains(p))
            })
            .collect();
        assert_eq!(access.len(), 3, "{format}: one access line each:\n{log}");
        let joined = access.join("\n");
        assert!(
            joined.contains("api_key=REDACTED&page=2"),
            "{format}: the key's value is replaced, other parameters kept:\n{joined}"
        );
        assert!(
            joined.contains("API_KEY=REDACTED&signature=REDACTED"),
            "{format}:\n{joined}"
        );
        let agent_redacted = match format {
            "json" => r#""user_agent":"REDACTED""#,
            _ => r#"user_agent="REDACTED""#,
        };
        assert!(joined.contains(agent_redacted), "{format}:\n{joined}");
    }
}

/// The gateway's output once `count` access lines are in it (or after 5 s).
async fn wait_for_access_lines(gateway: &Gateway, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = gateway.log();
        let lines = log.lines().filter(|line| line.contains("access")).count();
        if lines >= count || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
