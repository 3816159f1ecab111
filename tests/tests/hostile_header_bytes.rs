//! Header values that are not UTF-8, through the real gateway and the real bundled plugins.
//! RFC 9110 lets a field value carry bytes 0x80-0xFF ("obs-text"); hyper and the gateway
//! pass them on to the plugins. One gateway runs every bundled plugin that reads a header,
//! each on a route of its own and configured so that it reads the header concerned:
//! key-auth (`x-api-key`, `apikey`), basic-auth and jwt-auth (`authorization`), hmac-auth
//! (`authorization`, `proxy-authorization`, `date`, `digest`, a signed header),
//! token-introspection (`authorization`, and a header of the authorization server's answer),
//! cors (`origin`, `access-control-request-method`, `access-control-request-headers`),
//! ip-restriction (every request header, with trusted proxy hops), transformer (request and
//! response `content-type`, renamed and added headers, with and without renames),
//! rate-limit keyed by a header, acl and metering after / before key-auth, and ext-authz
//! (every request header, and headers of the service's allowing and denying answers).
//!
//! Requests carry obs-text (`\xff\xfe` after ASCII, between ASCII, a lone `\x80`) in those
//! headers, and upstreams and services answer with obs-text headers. Every such request must
//! get the answer an invalid or unmatched value gets (`401` from an auth plugin, a normal
//! CORS answer, `200` where the header does not decide anything), never a `5xx` and never
//! `plugin "..." is unavailable`; no plugin may trap (`tollgate_plugin_traps_total` stays 0
//! for every one); and an honest request on every route still succeeds afterwards. A
//! failure names the plugin and the header that broke it, and lists every failed check.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderValue, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use sha2::Sha256;
use tollgate_tests::backends::{self, Backend, ResponseBody};
use tollgate_tests::bundled::{
    ACL, BASIC_AUTH, CORS, EXT_AUTHZ, HMAC_AUTH, IP_RESTRICTION, JWT_AUTH, KEY_AUTH, METERING,
    RATE_LIMIT, TOKEN_INTROSPECTION, TRANSFORMER,
};
use tollgate_tests::clients::{request, HttpResponse};
use tollgate_tests::credentials::{self, http_date, unix_now};
use tollgate_tests::plugins::PluginSpec;
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario};

const HS_SECRET: &[u8] = b"an-hs256-secret-of-32-bytes-ok!!";
const HMAC_SECRET: &[u8] = b"alice-secret";

/// Every plugin instance of the gateway: (bundled plugin, instance name).
const INSTANCES: [(&str, &str); 15] = [
    ("key-auth", "keys"),
    ("basic-auth", "passwords"),
    ("jwt-auth", "tokens"),
    ("hmac-auth", "signatures"),
    ("token-introspection", "introspect"),
    ("cors", "cors"),
    ("ip-restriction", "ips"),
    ("transformer", "reshape"),
    ("transformer", "reshape-lite"),
    ("rate-limit", "limits"),
    ("key-auth", "guard-keys"),
    ("acl", "access"),
    ("metering", "metering"),
    ("key-auth", "meter-keys"),
    ("ext-authz", "authz"),
];

/// A header value from raw bytes; obs-text is allowed.
fn obs(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("obs-text is a valid header value")
}

/// The hostile values of a header: `prefix` then `\xff\xfe`, `prefix` then obs-text between
/// ASCII, and a lone `\x80`.
fn hostile(prefix: &str) -> Vec<HeaderValue> {
    let mut values = Vec::new();
    for tail in [&b"\xff\xfe"[..], b"a\x80b\xffc"] {
        let mut bytes = prefix.as_bytes().to_vec();
        bytes.extend_from_slice(tail);
        values.push(obs(&bytes));
    }
    values.push(obs(b"\x80"));
    values
}

fn json_body(value: &Value) -> ResponseBody {
    Full::from(value.to_string()).boxed()
}

// === the plugins ===

fn plugins() -> Vec<PluginSpec> {
    vec![
        PluginSpec::new("keys", KEY_AUTH)
            .config(json!({ "consumers": [{ "name": "alice", "keys": ["k-alice"] }] }))
            .routes(&["keyed"]),
        PluginSpec::new("passwords", BASIC_AUTH)
            .config(json!({ "consumers": [{ "name": "ann", "password": "s3cret" }] }))
            .routes(&["basic"]),
        PluginSpec::new("tokens", JWT_AUTH)
            .config(json!({
                "keys": [{ "kid": "hs-1", "kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(HS_SECRET) }],
                "claims_to_headers": { "email": "x-user-email" }
            }))
            .routes(&["jwt"]),
        PluginSpec::new("signatures", HMAC_AUTH)
            .config(json!({
                "consumers": [{ "username": "alice", "secret": "alice-secret" }],
                "enforce_headers": ["date", "request-line"],
                "validate_request_body": true
            }))
            .routes(&["signed"]),
        PluginSpec::new("introspect", TOKEN_INTROSPECTION)
            .config(json!({
                "cluster": "idp",
                "path": "/introspect",
                "timeout": "5s",
                "negative_cache_ttl": "0s",
                "forward_claims": { "username": "x-username" }
            }))
            .routes(&["introspected"]),
        PluginSpec::new("cors", CORS)
            .config(json!({
                "allow_origins": ["https://app.shop.test"],
                "allow_methods": ["GET", "POST"],
                "allow_headers": ["content-type", "authorization"]
            }))
            .routes(&["cors"]),
        // With trusted hops the plugin reads every request header (for X-Forwarded-For).
        PluginSpec::new("ips", IP_RESTRICTION)
            .config(json!({ "allow": ["127.0.0.0/8", "10.0.0.0/8"], "trusted_hops": 1 }))
            .routes(&["ip"]),
        // A rename reads and writes the whole header map.
        PluginSpec::new("reshape", TRANSFORMER)
            .config(json!({
                "request": {
                    "headers": {
                        "remove": ["x-internal"],
                        "rename": { "x-old-name": "x-new-name" },
                        "set": { "x-gateway": "tollgate" },
                        "add": { "x-default": "d" }
                    },
                    "json": { "remove": ["debug"] }
                },
                "response": {
                    "headers": { "rename": { "x-backend": "x-served-by" }, "set": { "cache-control": "no-store" } },
                    "json": { "remove": ["protocol"], "add": { "meta.gateway": "tollgate" } }
                }
            }))
            .routes(&["reshape", "oddball"]),
        // Without renames each edit is a call on one header (`add` reads it first).
        PluginSpec::new("reshape-lite", TRANSFORMER)
            .config(json!({
                "request": {
                    "headers": { "remove": ["x-internal"], "set": { "x-gateway": "tollgate" }, "add": { "x-default": "d" } },
                    "json": { "remove": ["debug"] }
                },
                "response": {
                    "headers": { "set": { "cache-control": "no-store" }, "add": { "x-odd": "even" } },
                    "json": { "add": { "meta.gateway": "tollgate" } }
                }
            }))
            .routes(&["addonly", "oddadd"]),
        PluginSpec::new("limits", RATE_LIMIT)
            .config(json!({
                "plans": {
                    "wide": { "requests_per_second": 1000, "burst": 1000 },
                    "vip": { "requests_per_second": 2000, "burst": 2000 }
                },
                "key": { "header": "x-client" },
                "consumers": { "vip-client": "vip" },
                "default_plan": "wide"
            }))
            .routes(&["limited"]),
        PluginSpec::new("guard-keys", KEY_AUTH)
            .config(json!({ "consumers": [{ "name": "gina", "keys": ["k-gold"], "groups": ["gold"] }] }))
            .routes(&["guarded"])
            .priority(100),
        PluginSpec::new("access", ACL)
            .config(json!({ "routes": { "guarded": [{ "allow": ["gold"] }] } }))
            .routes(&["guarded"])
            .priority(10),
        // Before key-auth, so that it sees (and bills) the refused requests too.
        PluginSpec::new("metering", METERING)
            .config(json!({
                "billing_cluster": "billing",
                "path": "/v1/usage",
                "flush_interval_ms": 100,
                "timeout_ms": 1000
            }))
            .routes(&["metered"])
            .priority(200),
        PluginSpec::new("meter-keys", KEY_AUTH)
            .config(json!({ "consumers": [{ "name": "mia", "keys": ["k-mia"] }] }))
            .routes(&["metered"])
            .priority(100),
        PluginSpec::new("authz", EXT_AUTHZ)
            .config(json!({
                "cluster": "authz",
                "path": "/check",
                "allowed_headers": ["authorization", "x-junk"],
                "headers_to_upstream": ["x-user", "x-plan"],
                "consumer_header": "x-user",
                "timeout_ms": 5000
            }))
            .routes(&["authz"]),
    ]
}

// === the services the plugins call, and an upstream with obs-text answers ===

/// The authorization server of token-introspection (RFC 7662): `good-token` is active
/// (`sub` alice); `odd-token` is active (`sub` olive) with obs-text in two headers of the
/// answer; any other token is inactive.
async fn introspection_server() -> Backend {
    backends::answering(|_head, body: Bytes| async move {
        let form = String::from_utf8_lossy(&body).into_owned();
        let token = form
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .unwrap_or("")
            .to_owned();
        let answer = Response::builder()
            .status(200)
            .header("content-type", "application/json");
        let exp = unix_now() + 3600;
        match token.as_str() {
            "good-token" => answer.body(json_body(
                &json!({ "active": true, "sub": "alice", "username": "alice", "exp": exp }),
            )),
            "odd-token" => answer
                .header("x-odd", obs(b"\xff\xfe"))
                .header("cache-control", obs(b"max-age=\x80"))
                .body(json_body(
                    &json!({ "active": true, "sub": "olive", "username": "olive", "exp": exp }),
                )),
            _ => answer.body(json_body(&json!({ "active": false }))),
        }
        .expect("valid answer")
    })
    .await
}

/// The ext-authz service, deciding by `authorization`: `Bearer alice` is allowed (`x-user`
/// alice, `x-plan` gold); `Bearer odd` is allowed with obs-text in `x-plan` and another
/// header; `Bearer odd-deny` is refused with obs-text in `www-authenticate`; anything else,
/// including a value that is not UTF-8, is refused `401`.
async fn authz_service() -> Backend {
    backends::answering(|head, _body| async move {
        let authorization = head
            .headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let denied = |challenge: HeaderValue| {
            Response::builder()
                .status(401)
                .header("www-authenticate", challenge)
                .header("content-type", "application/json")
                .body(json_body(&json!({ "error": "access denied" })))
        };
        match authorization.as_str() {
            "Bearer alice" => Response::builder()
                .status(200)
                .header("x-user", "alice")
                .header("x-plan", "gold")
                .body(json_body(&json!({}))),
            "Bearer odd" => Response::builder()
                .status(200)
                .header("x-user", "olive")
                .header("x-plan", obs(b"gold\xff\xfe"))
                .header("x-odd", obs(b"\x80"))
                .body(json_body(&json!({}))),
            "Bearer odd-deny" => denied(obs(b"Bearer realm=\"\xff\xfe\"")),
            _ => denied(HeaderValue::from_static("Bearer realm=\"authz\"")),
        }
        .expect("valid answer")
    })
    .await
}

/// An upstream answering `{"protocol": ..., "kept": true}` as JSON. On a path ending in
/// `/odd` its `content-type`, `x-backend` and `x-odd` carry obs-text; otherwise they are
/// plain (`application/json`, `oddball`, no `x-odd`).
async fn odd_upstream() -> Backend {
    backends::answering(|head, _body| async move {
        let answer = Response::builder().status(200);
        let answer = if head.uri.path().ends_with("/odd") {
            answer
                .header("content-type", obs(b"application/json; charset=\xff\xfe"))
                .header("x-backend", obs(b"odd\x80ball"))
                .header("x-odd", obs(b"\xff"))
        } else {
            answer
                .header("content-type", "application/json")
                .header("x-backend", "oddball")
        };
        answer
            .body(json_body(&json!({ "protocol": "HTTP/1.1", "kept": true })))
            .expect("valid answer")
    })
    .await
}

async fn start() -> Running {
    let idp = introspection_server().await;
    let authz = authz_service().await;
    let oddball = odd_upstream().await;
    Scenario::new()
        .echo("echo")
        .echo("billing")
        .backend("idp", idp)
        .backend("authz", authz)
        .backend("oddball", oddball)
        .forward("keyed", "/keyed", "echo")
        .forward("basic", "/basic", "echo")
        .forward("jwt", "/jwt", "echo")
        .forward("signed", "/signed", "echo")
        .forward("introspected", "/introspected", "echo")
        .forward("cors", "/cors", "echo")
        .forward("ip", "/ip-checked", "echo")
        .forward("reshape", "/reshape", "echo")
        .forward("oddball", "/oddball", "oddball")
        .forward("addonly", "/addonly", "echo")
        .forward("oddadd", "/oddadd", "oddball")
        .forward("limited", "/limited", "echo")
        .forward("guarded", "/guarded", "echo")
        .forward("metered", "/metered", "echo")
        .forward("authz", "/authz", "echo")
        .plugins(&plugins())
        .start()
        .await
}

// === credentials ===

fn hs256_token(claims: &Value) -> String {
    let header = json!({ "alg": "HS256", "typ": "JWT", "kid": "hs-1" });
    credentials::hs256(HS_SECRET, &header, claims)
}

/// The hmac-auth `Authorization` of alice over `lines` (already `name: value` or the
/// request line, as bytes), listing `headers`; `secret` decides whether it verifies.
fn hmac_authorization(headers: &str, lines: &[&[u8]], secret: &[u8]) -> String {
    let message = lines.join(&b"\n"[..]);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(&message);
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "hmac username=\"alice\", algorithm=\"hmac-sha256\", headers=\"{headers}\", signature=\"{signature}\""
    )
}

// === requests ===

/// One request on a plugin's route and the statuses it may get.
struct Case {
    /// The bundled plugin concerned and its instance.
    plugin: &'static str,
    instance: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, HeaderValue)>,
    body: &'static str,
    /// Where the obs-text is (request headers with their values, or a header of an answer).
    hostile: String,
    expect: &'static [u16],
}

impl Case {
    fn new(plugin: (&'static str, &'static str), method: &'static str, path: &str) -> Self {
        Self {
            plugin: plugin.0,
            instance: plugin.1,
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: "",
            hostile: String::new(),
            expect: &[200],
        }
    }

    /// A request header carrying obs-text; named in a failure.
    fn hostile(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.note(&format!("request header {name}: {value:?}"));
        self.headers.push((name, value));
        self
    }

    fn note(&mut self, what: &str) {
        if !self.hostile.is_empty() {
            self.hostile.push_str(", ");
        }
        self.hostile.push_str(what);
    }

    /// Where else the obs-text is (a header of an answer, decoded credentials, the
    /// query); named in a failure.
    fn obs_text_in(mut self, what: &str) -> Self {
        self.note(what);
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((
            name,
            HeaderValue::from_str(value).expect("a valid header value"),
        ));
        self
    }

    fn body(mut self, body: &'static str) -> Self {
        self.body = body;
        self
    }

    fn expect(mut self, statuses: &'static [u16]) -> Self {
        self.expect = statuses;
        self
    }

    fn describe(&self) -> String {
        let hostile = if self.hostile.is_empty() {
            "honest request".to_owned()
        } else {
            format!("obs-text in {}", self.hostile)
        };
        format!(
            "{} (plugin {:?}), {} {}, {hostile}",
            self.plugin, self.instance, self.method, self.path
        )
    }

    /// Sends the request; returns the response, or why the check failed.
    async fn run(&self, gateway: &Running) -> Result<HttpResponse, String> {
        let mut builder = request(
            self.method,
            gateway.listener("public"),
            "shop.test",
            &self.path,
        );
        for (name, value) in &self.headers {
            builder = builder.header(*name, value.clone());
        }
        let req = builder.body(Full::from(self.body)).expect("valid request");
        let response =
            match tokio::time::timeout(Duration::from_secs(10), gateway.client().send(req)).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Err(format!("{}: no answer: {e:#}", self.describe())),
                Err(_) => return Err(format!("{}: no answer within 10 s", self.describe())),
            };
        let text: String = response.text().chars().take(300).collect();
        let status = response.status.as_u16();
        if response.status.is_server_error() || text.contains("is unavailable") {
            return Err(format!(
                "{}: answered {status} {text:?} — the plugin failed (expected {:?})",
                self.describe(),
                self.expect
            ));
        }
        if !self.expect.contains(&status) {
            return Err(format!(
                "{}: answered {status} {text:?}, expected {:?}",
                self.describe(),
                self.expect
            ));
        }
        Ok(response)
    }
}

/// The requests carrying obs-text, route by route.
fn hostile_cases() -> Vec<Case> {
    const KEYS: (&str, &str) = ("key-auth", "keys");
    const PASSWORDS: (&str, &str) = ("basic-auth", "passwords");
    const TOKENS: (&str, &str) = ("jwt-auth", "tokens");
    const SIGNATURES: (&str, &str) = ("hmac-auth", "signatures");
    const INTROSPECT: (&str, &str) = ("token-introspection", "introspect");
    const CORS_PLUGIN: (&str, &str) = ("cors", "cors");
    const IPS: (&str, &str) = ("ip-restriction", "ips");
    const RESHAPE: (&str, &str) = ("transformer", "reshape");
    const RESHAPE_LITE: (&str, &str) = ("transformer", "reshape-lite");
    const LIMITS: (&str, &str) = ("rate-limit", "limits");
    const GUARD: (&str, &str) = ("key-auth + acl", "guard-keys, access");
    const METERED: (&str, &str) = ("metering + key-auth", "metering, meter-keys");
    const AUTHZ: (&str, &str) = ("ext-authz", "authz");

    let mut cases = Vec::new();

    // key-auth: the key headers, tried in order (`apikey`, then `x-api-key`).
    for value in hostile("k-alice") {
        cases.push(
            Case::new(KEYS, "GET", "/keyed/a")
                .hostile("x-api-key", value)
                .expect(&[401]),
        );
    }
    for value in hostile("") {
        cases.push(
            Case::new(KEYS, "GET", "/keyed/a")
                .hostile("apikey", value)
                .expect(&[401]),
        );
    }
    // A good key in the later header: refused for the first one, or found in the second.
    cases.push(
        Case::new(KEYS, "GET", "/keyed/a")
            .hostile("apikey", obs(b"\xff\xfe"))
            .header("x-api-key", "k-alice")
            .expect(&[200, 401]),
    );
    cases.push(
        Case::new(KEYS, "GET", "/keyed/a?apikey=%FF%FE%80")
            .obs_text_in("the query parameter apikey=%FF%FE%80")
            .expect(&[401]),
    );

    // basic-auth: the header, and credentials whose base64 decodes to obs-text.
    for value in hostile("Basic ") {
        cases.push(
            Case::new(PASSWORDS, "GET", "/basic/a")
                .hostile("authorization", value)
                .expect(&[401]),
        );
    }
    for credentials in [&b"ann:\xff\xfe"[..], b"\x80\xff:s3cret"] {
        let value = format!("Basic {}", STANDARD.encode(credentials));
        cases.push(
            Case::new(PASSWORDS, "GET", "/basic/a")
                .header("authorization", &value)
                .obs_text_in(&format!("the base64 credentials {credentials:?}"))
                .expect(&[401]),
        );
    }

    // jwt-auth: the header, and a token whose segments decode to obs-text.
    for value in hostile("Bearer ") {
        cases.push(
            Case::new(TOKENS, "GET", "/jwt/a")
                .hostile("authorization", value)
                .expect(&[401]),
        );
    }
    let token = format!(
        "{}.{}.AAAA",
        URL_SAFE_NO_PAD.encode(b"{\"alg\":\"HS256\xff\",\"kid\":\"hs-1\"}"),
        URL_SAFE_NO_PAD.encode(b"{\"sub\":\"\x80\"}")
    );
    cases.push(
        Case::new(TOKENS, "GET", "/jwt/a")
            .header("authorization", &format!("Bearer {token}"))
            .obs_text_in("a token whose segments decode to obs-text")
            .expect(&[401]),
    );

    // hmac-auth: the signature headers, the date, a signed header and the digest.
    for value in hostile("hmac username=\"alice\", signature=\"") {
        cases.push(
            Case::new(SIGNATURES, "GET", "/signed/a")
                .hostile("authorization", value)
                .header("date", &http_date(unix_now()))
                .expect(&[401]),
        );
    }
    for value in hostile("hmac ") {
        cases.push(
            Case::new(SIGNATURES, "GET", "/signed/a")
                .hostile("proxy-authorization", value)
                .header("date", &http_date(unix_now()))
                .expect(&[401]),
        );
    }
    for value in hostile("Tue, 01 Dec 2026 ") {
        let authorization = hmac_authorization(
            "date request-line",
            &[b"date: ?", b"GET /signed/a HTTP/1.1"],
            HMAC_SECRET,
        );
        cases.push(
            Case::new(SIGNATURES, "GET", "/signed/a")
                .hostile("date", value)
                .header("authorization", &authorization)
                .expect(&[401]),
        );
    }
    for value in hostile("") {
        // Listed in the signature, signed with the wrong secret.
        let date = http_date(unix_now());
        let mut junk_line = b"x-junk: ".to_vec();
        junk_line.extend_from_slice(value.as_bytes());
        let authorization = hmac_authorization(
            "date x-junk request-line",
            &[
                format!("date: {date}").as_bytes(),
                &junk_line,
                b"GET /signed/a HTTP/1.1",
            ],
            b"not-alice-secret",
        );
        cases.push(
            Case::new(SIGNATURES, "GET", "/signed/a")
                .hostile("x-junk", value)
                .header("date", &date)
                .header("authorization", &authorization)
                .expect(&[401]),
        );
    }
    for value in hostile("SHA-256=") {
        // A good signature: the digest is read, and cannot match the body.
        let date = http_date(unix_now());
        let authorization = hmac_authorization(
            "date request-line",
            &[
                format!("date: {date}").as_bytes(),
                b"POST /signed/a HTTP/1.1",
            ],
            HMAC_SECRET,
        );
        cases.push(
            Case::new(SIGNATURES, "POST", "/signed/a")
                .hostile("digest", value)
                .header("date", &date)
                .header("authorization", &authorization)
                .body("{\"order\":1}")
                .expect(&[401]),
        );
    }

    // token-introspection: the bearer token, and an answer with obs-text headers.
    for value in hostile("Bearer good-token") {
        cases.push(
            Case::new(INTROSPECT, "GET", "/introspected/a")
                .hostile("authorization", value)
                .expect(&[401]),
        );
    }
    cases.push(
        Case::new(INTROSPECT, "GET", "/introspected/a")
            .header("authorization", "Bearer odd-token")
            .obs_text_in("x-odd and cache-control of the introspection answer")
            .expect(&[200]),
    );

    // cors: an actual request and preflights. A value that is not UTF-8 matches nothing;
    // a plugin may also treat it as absent (then the request is not a preflight).
    for value in hostile("https://app.shop.test") {
        cases.push(
            Case::new(CORS_PLUGIN, "GET", "/cors/a")
                .hostile("origin", value.clone())
                .expect(&[200]),
        );
        cases.push(
            Case::new(CORS_PLUGIN, "OPTIONS", "/cors/a")
                .hostile("origin", value)
                .header("access-control-request-method", "GET")
                .expect(&[200, 403]),
        );
    }
    for value in hostile("GE") {
        cases.push(
            Case::new(CORS_PLUGIN, "OPTIONS", "/cors/a")
                .header("origin", "https://app.shop.test")
                .hostile("access-control-request-method", value)
                .expect(&[200, 403]),
        );
    }
    for value in hostile("content-type, ") {
        cases.push(
            Case::new(CORS_PLUGIN, "OPTIONS", "/cors/a")
                .header("origin", "https://app.shop.test")
                .header("access-control-request-method", "POST")
                .hostile("access-control-request-headers", value)
                .expect(&[204, 403]),
        );
    }

    // ip-restriction: it reads every header; an unrelated one, and X-Forwarded-For.
    for value in hostile("junk") {
        cases.push(Case::new(IPS, "GET", "/ip-checked/a").hostile("x-junk", value));
    }
    for value in hostile("10.1.2.3") {
        cases.push(
            Case::new(IPS, "GET", "/ip-checked/a")
                .hostile("x-forwarded-for", value)
                .expect(&[200, 403]),
        );
    }

    // transformer, with a rename (the whole map is read) and without (one header at a
    // time): renamed, added and unrelated headers, the request's content-type, and
    // upstream answers with obs-text in content-type and in edited headers.
    for (transformer, path) in [(RESHAPE, "/reshape/a"), (RESHAPE_LITE, "/addonly/a")] {
        for name in ["x-old-name", "x-default", "x-junk"] {
            for value in hostile("v") {
                cases.push(Case::new(transformer, "GET", path).hostile(name, value));
            }
        }
        for value in hostile("application/json; charset=") {
            cases.push(
                Case::new(transformer, "POST", path)
                    .hostile("content-type", value)
                    .body("{\"debug\":true,\"keep\":1}"),
            );
        }
    }
    cases.push(
        Case::new(RESHAPE, "GET", "/oddball/odd")
            .obs_text_in("the upstream's content-type, x-backend (renamed) and x-odd"),
    );
    cases.push(
        Case::new(RESHAPE_LITE, "GET", "/oddadd/odd")
            .obs_text_in("the upstream's content-type and x-odd (added when absent)"),
    );

    // rate-limit keyed by a header.
    for value in hostile("client-") {
        cases.push(Case::new(LIMITS, "GET", "/limited/a").hostile("x-client", value));
    }

    // acl after key-auth: a hostile key, and hostile headers beside a good key.
    for value in hostile("k-gold") {
        cases.push(
            Case::new(GUARD, "GET", "/guarded/a")
                .hostile("x-api-key", value)
                .expect(&[401]),
        );
    }
    cases.push(
        Case::new(GUARD, "GET", "/guarded/a")
            .header("x-api-key", "k-gold")
            .hostile("x-junk", obs(b"\xff\xfe"))
            .hostile("x-tollgate-consumer", obs(b"gina\x80"))
            .hostile("x-tollgate-consumer-groups", obs(b"gold\xff")),
    );

    // metering before key-auth: it sees refused requests and hostile headers too.
    for value in hostile("k-mia") {
        cases.push(
            Case::new(METERED, "GET", "/metered/a")
                .hostile("x-api-key", value)
                .expect(&[401]),
        );
    }
    cases.push(
        Case::new(METERED, "POST", "/metered/a")
            .header("x-api-key", "k-mia")
            .hostile("x-junk", obs(b"\xff\xfe"))
            .hostile("x-tollgate-consumer", obs(b"\x80"))
            .body("0123456789"),
    );

    // ext-authz: it reads every request header and forwards the listed ones; the
    // service's answers carry obs-text too.
    for value in hostile("Bearer alice") {
        cases.push(
            Case::new(AUTHZ, "GET", "/authz/a")
                .hostile("authorization", value)
                .expect(&[401]),
        );
    }
    for value in hostile("junk") {
        cases.push(
            Case::new(AUTHZ, "GET", "/authz/a")
                .header("authorization", "Bearer alice")
                .hostile("x-junk", value),
        );
    }
    cases.push(
        Case::new(AUTHZ, "GET", "/authz/a")
            .header("authorization", "Bearer odd")
            .obs_text_in("x-plan (to the upstream) and x-odd of the service's allowing answer"),
    );
    cases.push(
        Case::new(AUTHZ, "GET", "/authz/a")
            .header("authorization", "Bearer odd-deny")
            .obs_text_in("www-authenticate (to the client) of the service's denying answer")
            .expect(&[401]),
    );
    cases
}

/// What an honest answer must show: `Err` says what it lacks.
type Holds = fn(&HttpResponse) -> Result<(), String>;

/// Honest requests, one or two per route, each with what its answer must show.
fn honest_cases() -> Vec<(Case, Holds)> {
    fn consumer(response: &HttpResponse, expected: &str) -> Result<(), String> {
        let seen = &response.json()["headers"]["x-tollgate-consumer"];
        if seen == expected {
            Ok(())
        } else {
            Err(format!(
                "the upstream saw consumer {seen}, expected {expected}"
            ))
        }
    }
    fn check(holds: bool, what: &str, response: &HttpResponse) -> Result<(), String> {
        if holds {
            Ok(())
        } else {
            Err(format!(
                "{what}: headers {:?}, body {}",
                response.headers,
                response.text()
            ))
        }
    }
    let date = http_date(unix_now());
    let signed = hmac_authorization(
        "date request-line",
        &[
            format!("date: {date}").as_bytes(),
            b"GET /signed/a HTTP/1.1",
        ],
        HMAC_SECRET,
    );
    let jwt = hs256_token(&json!({ "sub": "carol", "exp": unix_now() + 300 }));
    let basic = format!("Basic {}", STANDARD.encode("ann:s3cret"));
    vec![
        (
            Case::new(("key-auth", "keys"), "GET", "/keyed/a").header("x-api-key", "k-alice"),
            |r| consumer(r, "alice"),
        ),
        (
            Case::new(("basic-auth", "passwords"), "GET", "/basic/a")
                .header("authorization", &basic),
            |r| consumer(r, "ann"),
        ),
        (
            Case::new(("jwt-auth", "tokens"), "GET", "/jwt/a")
                .header("authorization", &format!("Bearer {jwt}")),
            |r| consumer(r, "carol"),
        ),
        (
            Case::new(("hmac-auth", "signatures"), "GET", "/signed/a")
                .header("date", &date)
                .header("authorization", &signed),
            |r| consumer(r, "alice"),
        ),
        (
            Case::new(
                ("token-introspection", "introspect"),
                "GET",
                "/introspected/a",
            )
            .header("authorization", "Bearer good-token"),
            |r| consumer(r, "alice"),
        ),
        (
            Case::new(("cors", "cors"), "OPTIONS", "/cors/a")
                .header("origin", "https://app.shop.test")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .expect(&[204]),
            |r| {
                check(
                    r.header("access-control-allow-origin") == Some("https://app.shop.test"),
                    "the preflight is allowed",
                    r,
                )
            },
        ),
        (
            Case::new(("cors", "cors"), "GET", "/cors/a").header("origin", "https://app.shop.test"),
            |r| {
                check(
                    r.header("access-control-allow-origin") == Some("https://app.shop.test"),
                    "the response carries access-control-allow-origin",
                    r,
                )
            },
        ),
        (
            Case::new(("ip-restriction", "ips"), "GET", "/ip-checked/a")
                .header("x-forwarded-for", "10.1.2.3"),
            |_| Ok(()),
        ),
        (
            Case::new(("transformer", "reshape"), "POST", "/reshape/a")
                .header("content-type", "application/json")
                .header("x-old-name", "o")
                .body("{\"debug\":true,\"keep\":1}"),
            |r| {
                let json = r.json();
                check(
                    json["headers"]["x-new-name"] == "o"
                        && json["headers"]["x-gateway"] == "tollgate"
                        && json["meta"]["gateway"] == "tollgate"
                        && json.get("protocol").is_none(),
                    "the request headers are renamed and the JSON response rewritten",
                    r,
                )
            },
        ),
        (
            Case::new(("transformer", "reshape"), "GET", "/oddball/plain"),
            |r| {
                check(
                    r.header("x-served-by") == Some("oddball")
                        && r.json()["meta"]["gateway"] == "tollgate",
                    "x-backend is renamed and the JSON response rewritten",
                    r,
                )
            },
        ),
        (
            Case::new(("transformer", "reshape-lite"), "POST", "/addonly/a")
                .header("content-type", "application/json")
                .body("{\"debug\":true,\"keep\":1}"),
            |r| {
                check(
                    r.json()["headers"]["x-default"] == "d",
                    "x-default is added",
                    r,
                )
            },
        ),
        (
            Case::new(("transformer", "reshape-lite"), "GET", "/oddadd/plain"),
            |r| check(r.header("x-odd") == Some("even"), "x-odd is added", r),
        ),
        (
            Case::new(("rate-limit", "limits"), "GET", "/limited/a")
                .header("x-client", "vip-client"),
            |r| {
                check(
                    r.header("ratelimit-limit") == Some("2000"),
                    "the vip plan applies",
                    r,
                )
            },
        ),
        (
            Case::new(
                ("key-auth + acl", "guard-keys, access"),
                "GET",
                "/guarded/a",
            )
            .header("x-api-key", "k-gold"),
            |r| consumer(r, "gina"),
        ),
        (
            Case::new(
                ("metering + key-auth", "metering, meter-keys"),
                "GET",
                "/metered/a",
            )
            .header("x-api-key", "k-mia"),
            |r| consumer(r, "mia"),
        ),
        (
            Case::new(("ext-authz", "authz"), "GET", "/authz/a")
                .header("authorization", "Bearer alice"),
            |r| consumer(r, "alice"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_values_that_are_not_utf8_never_make_a_bundled_plugin_fail() {
    let gateway = start().await;
    let mut failures = Vec::new();

    for case in hostile_cases() {
        if let Err(failure) = case.run(&gateway).await {
            failures.push(failure);
        }
    }

    for (case, holds) in honest_cases() {
        match case.run(&gateway).await {
            Ok(response) => {
                if let Err(why) = holds(&response) {
                    failures.push(format!("{}: {why}", case.describe()));
                }
            }
            Err(failure) => failures.push(failure),
        }
    }

    let metrics = gateway.metrics().await;
    for (plugin, instance) in INSTANCES {
        let traps = sample_sum(
            &metrics,
            "tollgate_plugin_traps_total",
            &[("plugin", instance)],
        )
        .unwrap_or(0.0);
        if traps != 0.0 {
            failures.push(format!(
                "{plugin} (plugin {instance:?}) trapped {traps} times \
                 (tollgate_plugin_traps_total)"
            ));
        }
    }
    let all_traps = sample_sum(&metrics, "tollgate_plugin_traps_total", &[]).unwrap_or(0.0);
    if all_traps != 0.0 && failures.is_empty() {
        failures.push(format!(
            "plugins trapped {all_traps} times in all; /metrics:\n{metrics}"
        ));
    }

    assert!(
        failures.is_empty(),
        "{} checks failed:\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}
