//! jwt-auth with `jwks` through the real gateway (2 workers): the key set is fetched from a
//! loopback server that counts its requests and can switch key sets or fail. PS256, ES384
//! and EdDSA tokens verify with fetched keys (inline keys beside them), the first request
//! waits for the first key set, a rotated key is picked up by the refetch its unknown `kid`
//! asks for (one per 10 s), one fetch per `refresh_interval` happens per gateway, a server
//! down at start is answered `401` within `timeout`, and the last good keys survive failed
//! refreshes.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::StatusCode;
use serde_json::{json, Value};
use tollgate_tests::backends::{document_server, refusing_address, Backend, Document};
use tollgate_tests::bundled::JWT_AUTH;
use tollgate_tests::clients::{request, HttpResponse};
use tollgate_tests::credentials;
use tollgate_tests::plugins::PluginSpec;
use tollgate_tests::scenario::{Running, Scenario};

// Key sets and tokens (sub "fixture", aud "shop", exp 2100-01-01), printed once by
// `cargo test -p jwt-auth -- --ignored --nocapture print_jwks_fixtures`.
const JWKS_FIRST: &str = r#"{"keys":[{"e":"AQAB","kid":"ps-1","kty":"RSA","n":"xMWF9SJkDqWqTwdhqziXOH7zwvh6zizkSCbbnJfXtx18Z29RcbkRqYB67ZsO4VbFqIQ-xAbixGzeOYtCo_-Yg87nxEKJusdpYi_yYGs0VzwilUONXwWH09L3tmNB_NWwfaeA7kzMqNWQx1nk4XlwgX8QH4kaIytwgxcPRzkpZyInjOEyWyRiR_8e23HZoYoL95fGE5wBbFhgcTy14wa3V3YNODgcB3mPl4aleb5LYGjdew08lvwXeziZKBzecyJ0H0noSMpF2EK85672ACIF1bq76Ou3FaOtravezQ_R4O_Su5eQlcPPUz_lH2fwQJ6aP7wkCBdC1K4g-tx8SZY10w"},{"crv":"P-384","kid":"ec384-1","kty":"EC","x":"7SBAj4MBXgeQT_0JBpm4XsWZzcnFxwViW2Gc77XXC8q4G93Xx3EZfKOkh5X9LU7w","y":"CTlAMCbpXOqSy0NvgRQeQPszsOTL_CxD-Hfth0-8r3paEpKRE-_AKth7vJuRD5MY"},{"crv":"Ed25519","kid":"ed-1","kty":"OKP","use":"sig","x":"3mKQ0RX-dGdPC7D9594bLc-I1sLFsDuIAjhyKs088Mw"}]}"#;
const PS256_TOKEN: &str = "eyJhbGciOiJQUzI1NiIsImtpZCI6InBzLTEiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOiJzaG9wIiwiZXhwIjo0MTAyNDQ0ODAwLCJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0Iiwic3ViIjoiZml4dHVyZSJ9.C9ihm59F_FLqGsIek9jpJ23lCAv82s88MQOR8yerua_4PWR5EWh0aJ_qZ4oEL8SnC3e5UEYYBfe8GzJXN90LhOtRla2j4v6FD5-4NIK_8ol6VzeNitd7d8NNV9llrx41hAwqiDQz1d9owZd3n9izGT8F-DSQG9X62cRvlwSID-Pv9BuaZaR2wFzLpec-d1-Z6r3tU0YV_MqP1ZKoCI_YYYN7fNsJWeKmMoGCyozE5DH-9YxqeLZxDTL639H837IfLC_yIkwfZuNzMCbhXuYSXlONiqLx_KzH6bWCii46DmuCpfhh6WCRFS8ktWmz763hhr2_9vUjLmn9xVflxels9w";
const ES384_TOKEN: &str = "eyJhbGciOiJFUzM4NCIsImtpZCI6ImVjMzg0LTEiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOiJzaG9wIiwiZXhwIjo0MTAyNDQ0ODAwLCJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0Iiwic3ViIjoiZml4dHVyZSJ9.vwPV8tGUyQq56McEvkgOEzxIBqxa0iOtkaUXOS9UENqjcnLbqPbY7FjVLM8XFLSfpg3G05LiK_8lXT4o_FAg00Lbnq3yv54PYs9gm2qV1VnafY4IXXc0VfrFg1QpSDLX";
const EDDSA_TOKEN: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImVkLTEiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOiJzaG9wIiwiZXhwIjo0MTAyNDQ0ODAwLCJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0Iiwic3ViIjoiZml4dHVyZSJ9.QimQy_AZE-g6v5vcmh5kVKNXJni9w6CyQzofhnW_VWPPNl0U9NaBrslJULeASWyYI-zYql5Cvs__2m-lqleWAA";
const JWKS_ROTATED: &str = r#"{"keys":[{"alg":"EdDSA","crv":"Ed25519","kid":"ed-2","kty":"OKP","x":"WKxji3skvLjZvHbU23wUDpw_WyIT64hS9AhtAoh6exk"}]}"#;
const ROTATED_TOKEN: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImVkLTIiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOiJzaG9wIiwiZXhwIjo0MTAyNDQ0ODAwLCJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0Iiwic3ViIjoiZml4dHVyZSJ9.X5xQuq4t9hVX2ieosSnLwDWtEwREfokOOYDnUZXXc2XiEgy-PJrQKZtDeoAn6AW-PeRmRRA5GenbHHdkySn5CQ";

const HS_SECRET: &[u8] = b"an-hs256-secret-of-32-bytes-ok!!";

/// An HS256 token for the inline key `hs-1`.
fn hs256_token() -> String {
    credentials::hs256(
        HS_SECRET,
        &json!({"alg": "HS256", "kid": "hs-1"}),
        &json!({"sub": "inline", "aud": "shop", "exp": 4_102_444_800u64}),
    )
}

/// jwt-auth on the route `jwt` with an inline HS256 key and `jwks` from the cluster `idp`.
fn jwt_auth(jwks: Value) -> PluginSpec {
    PluginSpec::new("tokens", JWT_AUTH)
        .config(json!({
            "keys": [{ "kid": "hs-1", "kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(HS_SECRET) }],
            "jwks": jwks,
            "audiences": ["shop"]
        }))
        .routes(&["jwt"])
}

fn jwks(refresh_interval: &str, timeout: &str) -> Value {
    json!({ "cluster": "idp", "path": "/.well-known/jwks.json", "refresh_interval": refresh_interval, "timeout": timeout })
}

/// A gateway with 2 workers whose `idp` cluster is `idp`.
async fn start(idp: Backend, jwks: Value) -> Running {
    Scenario::new()
        .echo("echo")
        .backend("idp", idp)
        .forward("jwt", "/jwt", "echo")
        .plugin(jwt_auth(jwks))
        .workers(2)
        .start()
        .await
}

async fn call(gateway: &Running, token: &str) -> HttpResponse {
    let req = request(
        "GET",
        gateway.listener("public"),
        "shop.test",
        "/jwt/orders",
    )
    .header("authorization", format!("Bearer {token}"))
    .body(http_body_util::Full::default())
    .expect("valid request");
    gateway
        .client()
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("GET /jwt/orders: {e:#}; gateway log:\n{}", gateway.log()))
}

fn assert_accepted(gateway: &Running, response: &HttpResponse, consumer: &str, what: &str) {
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{what}: {}\n{}",
        response.text(),
        gateway.log()
    );
    assert_eq!(
        response.json()["headers"]["x-tollgate-consumer"],
        consumer,
        "{what}"
    );
}

/// Sends `token` and asserts that it was accepted as `consumer`.
async fn accepts(gateway: &Running, token: &str, consumer: &str, what: &str) {
    assert_accepted(gateway, &call(gateway, token).await, consumer, what);
}

fn assert_refused(response: &HttpResponse, reason: &str, what: &str) {
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        response.text()
    );
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(reason), "{what}: {challenge}");
}

/// A server with the first key set.
async fn idp() -> (Backend, Document) {
    document_server(StatusCode::OK, JWKS_FIRST).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_keys_verify_ps256_es384_and_eddsa_tokens_beside_inline_keys() {
    let (server, _) = idp().await;
    let gateway = start(server, jwks("10m", "5s")).await;
    // The first request may come before the key set: it waits for it.
    for (alg, token) in [
        ("PS256", PS256_TOKEN),
        ("ES384", ES384_TOKEN),
        ("EdDSA", EDDSA_TOKEN),
    ] {
        let response = call(&gateway, token).await;
        assert_accepted(&gateway, &response, "fixture", alg);
    }
    let response = call(&gateway, &hs256_token()).await;
    assert_accepted(&gateway, &response, "inline", "the inline HS256 key");
    let (head, _) = EDDSA_TOKEN.rsplit_once('.').unwrap();
    let (_, signature) = ES384_TOKEN.rsplit_once('.').unwrap();
    assert_refused(
        &call(&gateway, &format!("{head}.{signature}")).await,
        "bad signature",
        "another key's signature",
    );
    let (_, rest) = EDDSA_TOKEN.split_once('.').unwrap();
    let none = format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"ed-1"}"#)
    );
    assert_refused(
        &call(&gateway, &none).await,
        "no key for alg none",
        "alg none",
    );
    assert_eq!(
        gateway.backend("idp").request_count(),
        1,
        "one fetch for both workers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_by_the_refetch_its_kid_asks_for() {
    let (server, document) = idp().await;
    let gateway = start(server, jwks("10m", "5s")).await;
    accepts(&gateway, EDDSA_TOKEN, "fixture", "before the rotation").await;
    document.set(StatusCode::OK, JWKS_ROTATED);
    let started = Instant::now();
    let response = call(&gateway, ROTATED_TOKEN).await;
    assert_accepted(
        &gateway,
        &response,
        "fixture",
        "the new kid, after the refetch it asked for",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "picked up in {:?}",
        started.elapsed()
    );
    let idp = gateway.backend("idp");
    assert_eq!(idp.request_count(), 2, "the first fetch and the refetch");
    // The old key is gone; its kid asks for another refetch, refused within 10 s of the last.
    assert_refused(
        &call(&gateway, EDDSA_TOKEN).await,
        "no EdDSA key with kid ed-1",
        "the retired kid",
    );
    assert_eq!(idp.request_count(), 2, "no second refetch within 10 s");
    accepts(&gateway, ROTATED_TOKEN, "fixture", "the new kid again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_fetch_once_per_refresh_interval() {
    let (server, _) = idp().await;
    let gateway = start(server, jwks("1s", "5s")).await;
    accepts(&gateway, PS256_TOKEN, "fixture", "first").await;
    let started = Instant::now();
    let first = gateway.backend("idp").request_count();
    // Traffic on both workers meanwhile changes nothing: fetching is on the schedule.
    while started.elapsed() < Duration::from_millis(4_500) {
        accepts(&gateway, ES384_TOKEN, "fixture", "meanwhile").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fetches = gateway.backend("idp").request_count() - first;
    // One per second per gateway (each worker fetching would make 8 or 9).
    assert!((3..=5).contains(&fetches), "{fetches} fetches in 4.5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_server_down_at_start_is_answered_401_within_the_timeout() {
    let gateway = Scenario::new()
        .echo("echo")
        .cluster_at("idp", refusing_address())
        .forward("jwt", "/jwt", "echo")
        .plugin(jwt_auth(jwks("10m", "1500ms")))
        .workers(2)
        .start()
        .await;
    let started = Instant::now();
    let response = call(&gateway, EDDSA_TOKEN).await;
    assert_refused(&response, "signing keys not available", "no key set");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "answered in {:?}",
        started.elapsed()
    );
    let response = call(&gateway, &hs256_token()).await;
    assert_accepted(&gateway, &response, "inline", "inline keys need no key set");
    assert!(
        gateway
            .log()
            .contains("fetching the key set from cluster idp"),
        "{}",
        gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_keys_survive_failed_refreshes() {
    let (server, document) = idp().await;
    let gateway = start(server, jwks("1s", "5s")).await;
    accepts(&gateway, EDDSA_TOKEN, "fixture", "before").await;
    let idp = gateway.backend("idp");
    for (status, body) in [
        (StatusCode::SERVICE_UNAVAILABLE, "{}"),
        (StatusCode::OK, "<html>not a key set</html>"),
    ] {
        document.set(status, body);
        let count = idp.request_count();
        idp.wait_for_requests(count + 2, Duration::from_secs(5))
            .await;
        assert!(idp.request_count() >= count + 2, "refreshes went on");
        let response = call(&gateway, PS256_TOKEN).await;
        assert_accepted(
            &gateway,
            &response,
            "fixture",
            &format!("after refreshes answered {status}"),
        );
    }
    assert!(
        gateway.log().contains("the last good keys stay in use"),
        "{}",
        gateway.log()
    );
}
