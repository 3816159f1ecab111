//! What a client, an upstream or a callout service hands the bundled plugins, fed to their
//! request-time logic natively (each plugin's `logic` module, the same code its wasm build
//! runs): credentials and tokens, forwarded addresses, origins, signed-request headers,
//! dates, JSON bodies, key sets, introspection and authorization answers, metric tag values.
//!
//! Checks: nothing panics (in wasm a panic traps the plugin's VM: a 503 for every request
//! with a context in it, and the plugin's circuit nearer to opening); nothing a request
//! brings is accepted without its secret (no token verifies without the key, no password or
//! HMAC signature matches but the configured one); a metric tag value reads back as itself.
//!
//! Text arrives as the plugins get it: header values as UTF-8 with what is not replaced
//! (`tollgate_sdk::headers`), bodies as bytes.

#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use sha2::Sha256;
use tollgate_sdk::callout::CallResponse;
use tollgate_sdk::config::{parse, parse_validated};

/// A fixed clock: 2026-12-01T00:00:00Z.
const NOW: u64 = 1_796_083_200;
const HS_SECRET: &[u8] = b"an-hs256-secret-of-32-bytes-ok!!";

#[derive(Arbitrary, Debug)]
enum Input {
    /// key-auth: an `x-api-key` value and a request path with its query.
    ApiKey { header: String, path: String },
    /// basic-auth: an `Authorization` value.
    Basic { authorization: String },
    /// jwt-auth: an `Authorization` value and a path, then a key set a JWKS endpoint sent.
    Jwt {
        authorization: String,
        path: String,
        jwks: Vec<u8>,
    },
    /// hmac-auth: `Authorization`, `Date`, `Digest` and a body.
    Hmac {
        authorization: String,
        date: String,
        digest: String,
        body: Vec<u8>,
    },
    /// ip-restriction: the peer and `X-Forwarded-For` values.
    ClientIp {
        peer: String,
        forwarded_for: Vec<String>,
    },
    /// cors: `Origin`, `Access-Control-Request-Method` and `-Headers`.
    Cors {
        origin: String,
        method: String,
        headers: String,
    },
    /// ext-authz: the authorization service's answer.
    Authorization {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// token-introspection: `Authorization`, then the server's answer and a cache entry.
    Introspection {
        authorization: String,
        answer: Vec<u8>,
        cached: Vec<u8>,
    },
    /// transformer: a JSON body.
    Body { body: Vec<u8> },
    /// Dates and durations of the plugins' own formats.
    Text { text: String },
    /// A metric tag value (a consumer's name from a token).
    TagValue { value: String },
}

struct Plugins {
    keys: key_auth::logic::KeyAuth,
    key_config: key_auth::logic::Config,
    basic: basic_auth::logic::BasicAuth,
    jwt: jwt_auth::logic::JwtAuth,
    hmac: hmac_auth::logic::HmacAuth,
    ips: ip_restriction::logic::IpRestriction,
    cors: cors::logic::Cors,
    authz: ext_authz::logic::Config,
    introspector: token_introspection::logic::Introspector,
    transform: transformer::logic::Config,
}

fn config<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    parse(value.to_string().as_bytes()).expect("a valid configuration")
}

fn plugins() -> &'static Plugins {
    static PLUGINS: OnceLock<Plugins> = OnceLock::new();
    PLUGINS.get_or_init(|| {
        let key_config: key_auth::logic::Config = config(json!({
            "key_names": ["x-api-key", "apikey"],
            "consumers": [{ "name": "alice", "keys": ["k-alice-0123456789"] }]
        }));
        Plugins {
            keys: key_auth::logic::KeyAuth::new(key_config.clone()).expect("key-auth"),
            key_config,
            basic: basic_auth::logic::BasicAuth::new(config(json!({
                "consumers": [{ "name": "ann", "password": "s3cret", "groups": ["ops"] }]
            })))
            .expect("basic-auth"),
            jwt: jwt_auth::logic::JwtAuth::new(config(json!({
                "keys": [{ "kid": "hs-1", "kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(HS_SECRET) }],
                "query_param": "access_token",
                "claims_to_headers": { "sub": "x-user-id", "roles": "x-roles" },
                "groups_claim": "groups",
                "leeway_seconds": 30
            })))
            .expect("jwt-auth"),
            hmac: hmac_auth::logic::HmacAuth::new(config(json!({
                "consumers": [{ "username": "alice", "secret": "s3cret", "groups": ["ops"] }],
                "enforce_headers": ["date"],
                "validate_request_body": true
            })))
            .expect("hmac-auth"),
            ips: ip_restriction::logic::IpRestriction::new(config(json!({
                "allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.9.0.0/16"], "trusted_hops": 2
            })))
            .expect("ip-restriction"),
            cors: cors::logic::Cors::new(config(json!({
                "allow_origins": ["https://app.example.com", "https://*.shop.test"],
                "allow_headers": ["content-type", "authorization"],
                "allow_credentials": true, "max_age": 600
            })))
            .expect("cors"),
            authz: parse_validated(
                json!({
                    "cluster": "authz",
                    "headers_to_upstream": ["x-user", "x-scope"],
                    "headers_to_client": ["www-authenticate"],
                    "consumer_header": "x-user",
                    "groups_header": "x-groups"
                })
                .to_string()
                .as_bytes(),
            )
            .expect("ext-authz"),
            introspector: token_introspection::logic::Introspector::new(config(json!({
                "cluster": "idp", "path": "/introspect",
                "client_id": "gateway", "client_secret": "s3cret",
                "required_scopes": ["orders:read"],
                "forward_claims": { "client_id": "x-client-id", "roles": "x-roles" }
            })))
            .expect("token-introspection"),
            transform: config::<transformer::logic::Config>(json!({
                "request": { "json": {
                    "remove": ["user.password", "items.*.card"],
                    "rename": { "user.name": "user.full_name", "items.0.sku": "items.0.id" },
                    "redact": ["payment.*"],
                    "set": { "meta.source": "gateway", "items.1.seen": true },
                    "add": { "meta.version": 2 }
                }}
            }))
            .validate()
            .expect("transformer"),
        }
    })
}

fn api_key(plugins: &Plugins, header: &str, path: &str) {
    use key_auth::logic::{find_key, percent_decode, strip_query_param};
    let found = find_key(
        &plugins.key_config,
        |name| (name == "x-api-key").then(|| header.to_owned()),
        || path.to_owned(),
    );
    if let Some((_, key)) = found {
        if plugins.keys.consumer(&key).is_some() {
            assert_eq!(key, "k-alice-0123456789", "{header:?} {path:?}");
        }
    }
    let _ = percent_decode(path);
    let _ = strip_query_param(path, "apikey");
}

fn basic(plugins: &Plugins, authorization: &str) {
    if let Some(consumer) = plugins.basic.authenticate(authorization) {
        let encoded = authorization.trim().split_once(' ').map(|(_, e)| e.trim());
        let decoded = encoded.and_then(|e| STANDARD.decode(e).ok());
        assert_eq!(
            decoded.as_deref(),
            Some(&b"ann:s3cret"[..]),
            "{authorization:?} let {consumer:?} in"
        );
    }
}

fn jwt(plugins: &Plugins, authorization: &str, path: &str, jwks: &[u8]) {
    let fetched = jwt_auth::logic::KeySet::from_jwks(jwks).ok();
    let Some(token) = plugins.jwt.token_from(Some(authorization), path) else {
        return;
    };
    let verified = plugins.jwt.verify(&token, NOW, fetched.as_ref());
    // With the fuzzer's own key set it may sign what it likes; without, only the inline
    // HS256 secret makes a token verify.
    if let (Ok(verified), None) = (verified, fetched) {
        let (input, signature) = token.rsplit_once('.').expect("three segments");
        let mut mac = Hmac::<Sha256>::new_from_slice(HS_SECRET).expect("any key length");
        mac.update(input.as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(signature).ok().as_deref(),
            Some(&mac.finalize().into_bytes()[..]),
            "{token:?} verified as {verified:?} without the secret"
        );
    }
}

fn hmac(plugins: &Plugins, authorization: &str, date: &str, digest: &str, body: &[u8]) {
    use hmac_auth::logic::{digest_matches, parse_http_date, Credentials, Line};
    let _ = parse_http_date(date);
    let _ = plugins.hmac.check_date(Some(date), NOW);
    let _ = digest_matches(digest, body);
    let Ok(credentials) = Credentials::parse(authorization) else {
        return;
    };
    let _ = credentials.date_headers();
    let _ = credentials.signs("date");
    let names: Vec<&str> = credentials.signed_headers().collect();
    let lines: Vec<Line> = names
        .iter()
        .map(|name| match *name {
            "request-line" => Line::RequestLine {
                method: "GET",
                path: "/orders?id=1",
                protocol: "HTTP/1.1",
            },
            name => Line::Header { name, value: date },
        })
        .collect();
    if let Ok(algorithm) = plugins.hmac.admit(&credentials) {
        if plugins.hmac.verify(&credentials, algorithm, &lines).is_ok() {
            // The fuzzer would have had to compute an HMAC with the secret.
            let expected = algorithm.sign(b"s3cret", &lines);
            assert_eq!(
                STANDARD.decode(credentials.signature).ok(),
                STANDARD.decode(expected).ok(),
                "{authorization:?}"
            );
        }
    }
}

fn client_ip(plugins: &Plugins, peer: &str, forwarded_for: &[String]) {
    let ip = plugins.ips.client_ip(Some(peer), forwarded_for);
    let _ = plugins.ips.allows(ip);
    let _ = ip_restriction::logic::Cidr::parse(peer);
}

fn cors(plugins: &Plugins, origin: &str, method: &str, headers: &str) {
    let _ = plugins.cors.origin_allowed(origin);
    let _ = plugins.cors.preflight(origin, method, Some(headers));
    let _ = plugins.cors.response_headers(origin);
}

fn authorization(plugins: &Plugins, status: u16, headers: Vec<(String, String)>, body: Vec<u8>) {
    let mut headers = headers;
    headers.insert(0, (":status".to_owned(), status.to_string()));
    let response = CallResponse::from_parts(headers, body);
    let _ = plugins.authz.decide(&response);
    let _ = plugins.authz.on_error("fuzzed".to_owned());
}

fn introspection(plugins: &Plugins, authorization: &str, answer: &[u8], cached: &[u8]) {
    use token_introspection::logic::{bearer_token, form_encode, Answer, CacheSlot};
    let token = bearer_token(authorization).unwrap_or("opaque");
    let _ = plugins.introspector.request(token);
    let _ = form_encode(authorization);
    let slot = CacheSlot::new("introspect", token, 1024);
    let _ = slot.decode(cached, NOW);
    let Some(answer) = Answer::parse(answer) else {
        return;
    };
    let _ = plugins.introspector.cache_until(&answer, NOW);
    let _ = plugins.introspector.verdict(&answer);
    let _ = answer.scope();
    let _ = answer.claim_text("sub");
    let _ = answer.claim_text("roles");
    let _ = slot.encode(NOW + 60, b"{}");
}

fn body(plugins: &Plugins, body: &[u8]) {
    let _ = plugins.transform.request.json.transform(body);
}

fn text(text: &str) {
    let _ = tollgate_sdk::config::parse_duration(text);
    let _ = api_lifecycle::logic::parse_rfc3339(text);
    let _ = hmac_auth::logic::parse_http_date(text);
}

/// The host's reading of a defined metric name, as far as tags go: split at `;.;`, each
/// tag at its first `=.=`.
fn tag_value(value: &str) {
    use tollgate_sdk::metrics::{metric_name, TAG_SEPARATOR, VALUE_SEPARATOR};
    let name = metric_name("usage_requests")
        .tag("consumer", value)
        .tag("route", "orders")
        .build();
    let segments: Vec<&str> = name.split(TAG_SEPARATOR).collect();
    assert_eq!(segments.len(), 3, "{value:?} → {name:?}");
    let (key, written) = segments[0]
        .split_once(VALUE_SEPARATOR)
        .expect("the consumer tag");
    assert_eq!(key, "consumer", "{value:?} → {name:?}");
    assert_eq!(segments[1], "route=.=orders", "{value:?} → {name:?}");
    assert_eq!(segments[2], "usage_requests", "{value:?} → {name:?}");
    let read = written.replace("%3B", ";").replace("%25", "%");
    assert_eq!(read, value, "{value:?} → {name:?}");
}

fuzz_target!(|input: Input| {
    let plugins = plugins();
    match input {
        Input::ApiKey { header, path } => api_key(plugins, &header, &path),
        Input::Basic { authorization } => basic(plugins, &authorization),
        Input::Jwt {
            authorization,
            path,
            jwks,
        } => jwt(plugins, &authorization, &path, &jwks),
        Input::Hmac {
            authorization,
            date,
            digest,
            body,
        } => hmac(plugins, &authorization, &date, &digest, &body),
        Input::ClientIp {
            peer,
            forwarded_for,
        } => client_ip(plugins, &peer, &forwarded_for),
        Input::Cors {
            origin,
            method,
            headers,
        } => cors(plugins, &origin, &method, &headers),
        Input::Authorization {
            status,
            headers,
            body,
        } => authorization(plugins, status, headers, body),
        Input::Introspection {
            authorization,
            answer,
            cached,
        } => introspection(plugins, &authorization, &answer, &cached),
        Input::Body { body: bytes } => body(plugins, &bytes),
        Input::Text { text: value } => text(&value),
        Input::TagValue { value } => tag_value(&value),
    }
});
