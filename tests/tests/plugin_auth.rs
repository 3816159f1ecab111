//! The bundled authentication plugins through the real gateway: key-auth, jwt-auth and
//! basic-auth. For each: a good credential reaches the upstream with the consumer identity
//! (and without the credential when hidden), missing / wrong credentials get `401` with a
//! `WWW-Authenticate` challenge and never reach the upstream, a client-sent identity is
//! never trusted, and a bad configuration is rejected by `tollgate check` naming the
//! plugin and the field.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};
use tollgate_tests::bundled::{BASIC_AUTH, JWT_AUTH, KEY_AUTH};
use tollgate_tests::clients::{request, HttpResponse};
use tollgate_tests::credentials::{self, unix_now};
use tollgate_tests::plugins::{assert_rejected, check_plugins, PluginSpec};
use tollgate_tests::scenario::{Running, Scenario};

const HS_SECRET: &[u8] = b"an-hs256-secret-of-32-bytes-ok!!";

// RS256 and ES256 keys and tokens (sub "fixture", aud "shop", iss "https://issuer.test",
// exp 2100-01-01), printed once by `cargo test -p jwt-auth -- --ignored print_fixtures`.
const RSA_N: &str = "0P8iYgYUpNtNRRZXIGIU8UrlUR7UkmuDHQ3-4hj-Tlvpg6qvO4M1kmlEA07J6S0v8q4oChop6v3d6W1_r9DlmZ43WFFIOg7LBufqlsuOa9JaXfMQ9f-0W-z_f10BVnuOWKvG1qpbZriZQXzpnaebbyL4oLaHugZdA-zBS5AlZc1NQqj_iR7AwKsYRp78Sg3sQkXu_Zc77leJKAekk3UtAJ-eGmxSaKgBii1hEJVK_Bv44TjVtk1c2xPnR4sBGOyhSA-zMNTSswmUG5ixFRPDGg-EwrFFbFi6tjvypE5kdMy-CDi7fI8UXA_47HvZSgqvUTNpypDFSo9X7uni0CVOtQ";
const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.eyJhdWQiOiJzaG9wIiwiZXhwIjo0MTAyNDQ0ODAwLCJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0Iiwic3ViIjoiZml4dHVyZSJ9.Usn89DWTYXrF7ZCq0a8fkuoI1UYi34TE76qeMwF8bv6ifGIMdeQWLRLl6uXyWrhuPOV1gmoG1OMshKq4C0xSHnSTD86NUkK8jjFtjZO_0L-cz42Ry2am8CvHgPk56tqv8jRMA7u5ogD-E57qJ3ZISLAz-kViO02XKSo-_phYUvCtBh0Bawc2xHNrZMBaO4qckFpMFTZnZHq5PexwZxVfIcizpK3tziCL_lpNQS4DYP2QxzcL6Vle1Yj4YZg6gGjwUvtK-oihwZ6o9jcf_vlfxLkvCqlmBYLJHQRcUXxCH06ZhSKABmYwzPbrX-hZfOIZeNStKXGyI1IeM5IzRlBOxQ";
const EC_X: &str = "2kPpuQaQuyhPrYv7K37Y1xhtHkeBOCFvUpk2GLJyQro";
const EC_Y: &str = "fxGBOYBtPi72Z0c7_mthFRr8UJIyb2gr5KNgv9rpUGE";
const ES256_TOKEN: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLTEiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOiJzaG9wIiwiZXhwIjo0MTAyNDQ0ODAwLCJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0Iiwic3ViIjoiZml4dHVyZSJ9.D-FktvbKB15pJU0K0RjpL1sExzrma1tOY90a8IDRdfAILqPqJj2NQ_RekchE2QqsSqixp7hk5bEUZT6-H_n71Q";

fn key_auth() -> PluginSpec {
    PluginSpec::new("keys", KEY_AUTH)
        .config(json!({
            "consumers": [
                { "name": "alice", "keys": ["k-alice"], "groups": ["gold", "staff"] },
                { "name": "bob", "keys": ["k-bob"] }
            ]
        }))
        .routes(&["keyed"])
}

fn jwt_auth() -> PluginSpec {
    PluginSpec::new("tokens", JWT_AUTH)
        .config(json!({
            "keys": [
                { "kid": "hs-1", "kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(HS_SECRET) },
                { "kid": "rsa-1", "kty": "RSA", "alg": "RS256", "n": RSA_N, "e": "AQAB" },
                { "kid": "ec-1", "kty": "EC", "crv": "P-256", "alg": "ES256", "x": EC_X, "y": EC_Y }
            ],
            "issuers": ["https://issuer.test"],
            "audiences": ["shop"],
            "leeway_seconds": 30,
            "claims_to_headers": { "sub": "x-user-id", "email": "x-user-email" },
            "groups_claim": "groups"
        }))
        .routes(&["jwt"])
}

fn basic_auth() -> PluginSpec {
    PluginSpec::new("passwords", BASIC_AUTH)
        .config(json!({
            "realm": "shop",
            "consumers": [
                { "name": "ann", "password": "s3cret", "groups": ["ops"] },
                // sha256("password")
                { "name": "ben", "password_sha256": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" }
            ]
        }))
        .routes(&["basic"])
}

struct Setup {
    gateway: Running,
}

async fn start(plugins: &[PluginSpec]) -> Setup {
    let gateway = Scenario::new()
        .echo("echo")
        .forward("keyed", "/keyed", "echo")
        .forward("jwt", "/jwt", "echo")
        .forward("basic", "/basic", "echo")
        .forward("open", "/", "echo")
        .plugins(plugins)
        .start()
        .await;
    Setup { gateway }
}

impl Setup {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut builder = request("GET", self.gateway.listener("public"), "shop.test", path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::default()).expect("valid request");
        self.gateway
            .client()
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}; gateway log:\n{}", self.gateway.log()))
    }
}

/// The headers the echo backend saw.
fn seen(response: &HttpResponse) -> Value {
    response.json()["headers"].clone()
}

fn hs256(header: Value, claims: Value) -> String {
    credentials::hs256(HS_SECRET, &header, &claims)
}

fn good_claims() -> Value {
    json!({ "sub": "carol", "email": "carol@shop.test", "iss": "https://issuer.test", "aud": "shop",
            "exp": unix_now() + 300, "nbf": unix_now() - 5, "groups": ["buyers", "beta"] })
}

fn hs_header() -> Value {
    json!({ "alg": "HS256", "typ": "JWT", "kid": "hs-1" })
}

// === key-auth ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_identifies_consumers_by_header_or_query_and_hides_the_key() {
    let setup = start(&[key_auth()]).await;

    let response = setup.get("/keyed/a", &[("x-api-key", "k-alice")]).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "key in x-api-key");
    let headers = seen(&response);
    assert_eq!(headers["x-tollgate-consumer"], "alice", "{headers}");
    assert_eq!(
        headers["x-tollgate-consumer-groups"], "gold,staff",
        "{headers}"
    );
    assert!(
        headers.get("x-api-key").is_none(),
        "the key is hidden: {headers}"
    );

    let response = setup.get("/keyed/b?x=1&apikey=k-bob&y=2", &[]).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "key in the query");
    let json = response.json();
    assert_eq!(json["headers"]["x-tollgate-consumer"], "bob", "{json}");
    assert!(
        json["headers"].get("x-tollgate-consumer-groups").is_none(),
        "{json}"
    );
    assert_eq!(
        json["path"], "/keyed/b?x=1&y=2",
        "the key parameter is removed: {json}"
    );

    // A forged identity next to a valid key is replaced by the real one.
    let response = setup
        .get(
            "/keyed/c",
            &[
                ("apikey", "k-bob"),
                ("x-tollgate-consumer", "alice"),
                ("x-tollgate-consumer-groups", "admins"),
            ],
        )
        .await;
    setup.gateway.assert_status(
        &response,
        StatusCode::OK,
        "forged identity with a valid key",
    );
    let headers = seen(&response);
    assert_eq!(headers["x-tollgate-consumer"], "bob", "{headers}");
    assert!(
        headers.get("x-tollgate-consumer-groups").is_none(),
        "{headers}"
    );

    // Routes without the plugin are untouched, and never carry a client-sent identity.
    let response = setup
        .get("/open", &[("x-tollgate-consumer", "alice")])
        .await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "open route");
    assert!(seen(&response).get("x-tollgate-consumer").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_refuses_missing_and_unknown_keys() {
    let setup = start(&[key_auth()]).await;
    for (what, headers, message) in [
        ("no key", vec![], "missing API key"),
        (
            "unknown key",
            vec![("x-api-key", "k-mallory")],
            "invalid API key",
        ),
        (
            "forged identity only",
            vec![("x-tollgate-consumer", "alice")],
            "missing API key",
        ),
    ] {
        let response = setup.get("/keyed/secret", &headers).await;
        setup
            .gateway
            .assert_status(&response, StatusCode::UNAUTHORIZED, what);
        assert_eq!(
            response.header("www-authenticate"),
            Some("Key realm=\"tollgate\""),
            "{what}"
        );
        assert_eq!(response.json()["message"], message, "{what}");
    }
    assert_eq!(
        setup.gateway.backend("echo").request_count(),
        0,
        "refused requests never reach the upstream"
    );
}

// === jwt-auth ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_accepts_hs256_rs256_and_es256_tokens() {
    let setup = start(&[jwt_auth()]).await;
    let token = hs256(hs_header(), good_claims());
    let response = setup
        .get(
            "/jwt/orders",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-user-id", "forged"),
            ],
        )
        .await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "HS256");
    let headers = seen(&response);
    assert_eq!(headers["x-tollgate-consumer"], "carol", "{headers}");
    assert_eq!(
        headers["x-tollgate-consumer-groups"], "buyers,beta",
        "{headers}"
    );
    assert_eq!(
        headers["x-user-id"], "carol",
        "claims to headers, the client's copy replaced: {headers}"
    );
    assert_eq!(headers["x-user-email"], "carol@shop.test", "{headers}");
    assert!(
        headers.get("authorization").is_some(),
        "the token is forwarded by default"
    );

    for (alg, token) in [("RS256", RS256_TOKEN), ("ES256", ES256_TOKEN)] {
        let response = setup
            .get(
                "/jwt/orders",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
        setup.gateway.assert_status(&response, StatusCode::OK, alg);
        let headers = seen(&response);
        assert_eq!(
            headers["x-tollgate-consumer"], "fixture",
            "{alg}: {headers}"
        );
        assert!(
            headers.get("x-user-email").is_none(),
            "{alg}: no email claim: {headers}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_refuses_bad_tokens_with_the_reason() {
    let setup = start(&[jwt_auth()]).await;
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good_claims();
        change(&mut claims);
        hs256(hs_header(), claims)
    };
    let expired = with(&|c| c["exp"] = json!(unix_now() - 120));
    let within_leeway = with(&|c| c["exp"] = json!(unix_now() - 5));
    let not_yet = with(&|c| c["nbf"] = json!(unix_now() + 600));
    let wrong_issuer = with(&|c| c["iss"] = json!("https://evil.test"));
    let wrong_audience = with(&|c| c["aud"] = json!(["billing"]));
    let (head, _) = RS256_TOKEN.rsplit_once('.').unwrap();
    let bad_signature = format!("{head}.{}", URL_SAFE_NO_PAD.encode([7u8; 256]));
    let unknown_kid = hs256(json!({ "alg": "HS256", "kid": "hs-9" }), good_claims());
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({ "alg": "none" }).to_string()),
        URL_SAFE_NO_PAD.encode(good_claims().to_string())
    );

    let response = setup
        .get(
            "/jwt/x",
            &[("authorization", &format!("Bearer {within_leeway}"))],
        )
        .await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "expired within the leeway");

    for (what, token, reason) in [
        ("expired", expired.as_str(), "token expired"),
        ("not yet valid", &not_yet, "token not yet valid"),
        ("wrong issuer", &wrong_issuer, "issuer not accepted"),
        ("wrong audience", &wrong_audience, "audience not accepted"),
        ("bad signature", &bad_signature, "bad signature"),
        ("unknown kid", &unknown_kid, "no HS256 key with kid hs-9"),
        ("alg none", &alg_none, "no key for alg none"),
        ("garbage", "not-a-jwt", "malformed token"),
    ] {
        let response = setup
            .get("/jwt/x", &[("authorization", &format!("Bearer {token}"))])
            .await;
        setup
            .gateway
            .assert_status(&response, StatusCode::UNAUTHORIZED, what);
        assert_eq!(
            response.header("www-authenticate"),
            Some(format!("Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{reason}\"").as_str()),
            "{what}"
        );
    }
    let response = setup.get("/jwt/x", &[]).await;
    setup
        .gateway
        .assert_status(&response, StatusCode::UNAUTHORIZED, "no token");
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\"")
    );
    assert_eq!(response.json()["message"], "missing bearer token");
    assert_eq!(
        setup.gateway.backend("echo").request_count(),
        1,
        "only the token within the leeway got through"
    );
}

// === basic-auth ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_checks_plain_and_hashed_passwords() {
    let setup = start(&[basic_auth()]).await;
    let basic = |credentials: &str| format!("Basic {}", STANDARD.encode(credentials));

    let response = setup
        .get("/basic/a", &[("authorization", &basic("ann:s3cret"))])
        .await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "plain password");
    let headers = seen(&response);
    assert_eq!(headers["x-tollgate-consumer"], "ann", "{headers}");
    assert_eq!(headers["x-tollgate-consumer-groups"], "ops", "{headers}");
    assert!(
        headers.get("authorization").is_none(),
        "credentials hidden: {headers}"
    );

    let response = setup
        .get("/basic/a", &[("authorization", &basic("ben:password"))])
        .await;
    setup
        .gateway
        .assert_status(&response, StatusCode::OK, "hashed password");
    assert_eq!(seen(&response)["x-tollgate-consumer"], "ben");

    for (what, headers) in [
        (
            "wrong password",
            vec![("authorization", basic("ann:S3cret"))],
        ),
        ("unknown user", vec![("authorization", basic("eve:s3cret"))]),
        ("no credentials", vec![]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = setup.get("/basic/a", &headers).await;
        setup
            .gateway
            .assert_status(&response, StatusCode::UNAUTHORIZED, what);
        assert_eq!(
            response.header("www-authenticate"),
            Some("Basic realm=\"shop\", charset=\"UTF-8\""),
            "{what}"
        );
    }
    assert_eq!(setup.gateway.backend("echo").request_count(), 2);
}

// === bad configuration ===

#[test]
fn bad_auth_configurations_are_rejected_naming_plugin_and_field() {
    let outcome = check_plugins(&[PluginSpec::new("keys", KEY_AUTH).config(
        json!({ "consumers": [{ "name": "a", "keys": ["k"] }, { "name": "b", "keys": ["k"] }] }),
    )]);
    assert_rejected(&outcome, &["keys", "key-auth", "consumers[1].keys[0]"]);

    let outcome = check_plugins(&[PluginSpec::new("keys", KEY_AUTH)
        .config(json!({ "consumers": [{ "name": "a", "keys": ["k"], "group": ["x"] }] }))]);
    assert_rejected(&outcome, &["keys", "group"]);

    let outcome = check_plugins(&[PluginSpec::new("tokens", JWT_AUTH)
        .config(json!({ "keys": [{ "kty": "oct", "alg": "HS256", "k": "c2hvcnQ" }] }))]);
    assert_rejected(&outcome, &["tokens", "jwt-auth", "keys[0].k", "32 bytes"]);

    let outcome = check_plugins(&[PluginSpec::new("tokens", JWT_AUTH).config(
        json!({ "keys": [{ "kty": "RSA", "alg": "RS256", "n": RSA_N, "e": "AQAB" }], "leeway": 5 }),
    )]);
    assert_rejected(&outcome, &["tokens", "leeway"]);

    let outcome = check_plugins(&[PluginSpec::new("passwords", BASIC_AUTH)
        .config(json!({ "consumers": [{ "name": "ann", "password_sha256": "not-hex" }] }))]);
    assert_rejected(
        &outcome,
        &["passwords", "basic-auth", "consumers[0].password_sha256"],
    );
}
