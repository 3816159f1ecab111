//! The `hmac-auth` plugin through the real gateway. Requests are signed here the way a
//! client does it (HMAC over `name: value` lines and the request line, base64): a good
//! signature reaches the upstream with the consumer identity and without the
//! `Authorization` header, in the `hmac` and the `Signature` scheme, with `Date` or
//! `X-Date`, with a body whose `Digest` matches; a wrong secret, an unknown user, an
//! algorithm outside the allow-list, an enforced header left unsigned, a stale date and a
//! body that does not match its digest get `401` with `WWW-Authenticate: hmac` and never
//! reach the upstream; a bad configuration is rejected naming the plugin and the field.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_tests::bundled::HMAC_AUTH;
use tollgate_tests::clients::{request, HttpResponse};
use tollgate_tests::credentials::{http_date, unix_now};
use tollgate_tests::plugins::{assert_rejected, check_plugins, PluginSpec};
use tollgate_tests::scenario::{Running, Scenario};

fn plugin() -> PluginSpec {
    PluginSpec::new("signatures", HMAC_AUTH)
        .config(json!({
            "consumers": [
                { "username": "alice", "secret": "alice-secret", "groups": ["ops", "billing"] },
                { "username": "bob", "secret": "bob-secret" }
            ],
            "algorithms": ["hmac-sha256", "hmac-sha512"],
            "enforce_headers": ["date", "request-line"],
            "validate_request_body": true
        }))
        .routes(&["signed"])
}

async fn start() -> Running {
    Scenario::new()
        .echo("echo")
        .forward("signed", "/signed", "echo")
        .forward("open", "/", "echo")
        .plugin(plugin())
        .start()
        .await
}

/// A request to sign: its method, path, headers, and what the signature says.
struct Signed<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, String)>,
    body: &'static str,
    scheme: &'a str,
    /// The header carrying the signature.
    carrier: &'a str,
    username: &'a str,
    secret: &'a [u8],
    algorithm: &'a str,
    signed: &'a [&'a str],
}

impl<'a> Signed<'a> {
    /// A GET from alice, hmac-sha256 over `date` and `request-line`, dated now.
    fn get(path: &'a str) -> Self {
        Self {
            method: "GET",
            path,
            headers: vec![("date", http_date(unix_now()))],
            body: "",
            scheme: "hmac",
            carrier: "authorization",
            username: "alice",
            secret: b"alice-secret",
            algorithm: "hmac-sha256",
            signed: &["date", "request-line"],
        }
    }

    /// The signing string: one line per signed header, joined by `\n`.
    fn signing_string(&self) -> String {
        self.signed
            .iter()
            .map(|name| match *name {
                "request-line" => format!("{} {} HTTP/1.1", self.method, self.path),
                "host" => "host: shop.test".to_owned(),
                name => {
                    let value = self
                        .headers
                        .iter()
                        .find(|(n, _)| n == &name)
                        .map_or("", |(_, v)| v.as_str());
                    format!("{name}: {value}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn authorization(&self) -> String {
        let message = self.signing_string();
        let signature = match self.algorithm {
            "hmac-sha512" => {
                let mut mac = Hmac::<sha2::Sha512>::new_from_slice(self.secret).unwrap();
                mac.update(message.as_bytes());
                STANDARD.encode(mac.finalize().into_bytes())
            }
            _ => {
                let mut mac = Hmac::<Sha256>::new_from_slice(self.secret).unwrap();
                mac.update(message.as_bytes());
                STANDARD.encode(mac.finalize().into_bytes())
            }
        };
        let user_parameter = if self.scheme == "Signature" {
            "keyId"
        } else {
            "username"
        };
        format!(
            "{} {user_parameter}=\"{}\", algorithm=\"{}\", headers=\"{}\", signature=\"{signature}\"",
            self.scheme,
            self.username,
            self.algorithm,
            self.signed.join(" ")
        )
    }

    async fn send(&self, gateway: &Running) -> HttpResponse {
        let mut builder = request(
            self.method,
            gateway.listener("public"),
            "shop.test",
            self.path,
        )
        .header(self.carrier, self.authorization());
        for (name, value) in &self.headers {
            builder = builder.header(*name, value.as_str());
        }
        let req = builder.body(Full::from(self.body)).expect("valid request");
        gateway.client().send(req).await.unwrap_or_else(|e| {
            panic!(
                "{} {}: {e:#}; gateway log:\n{}",
                self.method,
                self.path,
                gateway.log()
            )
        })
    }
}

fn digest(body: &str) -> String {
    format!(
        "SHA-256={}",
        STANDARD.encode(Sha256::digest(body.as_bytes()))
    )
}

fn seen(response: &HttpResponse) -> Value {
    response.json()["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_signatures_reach_the_upstream_as_the_consumer() {
    let gateway = start().await;

    let response = Signed::get("/signed/orders?id=7").send(&gateway).await;
    gateway.assert_status(&response, StatusCode::OK, "hmac, Date");
    let headers = seen(&response);
    assert_eq!(headers["x-tollgate-consumer"], "alice", "{headers}");
    assert_eq!(
        headers["x-tollgate-consumer-groups"], "ops,billing",
        "{headers}"
    );
    assert!(headers.get("authorization").is_none(), "hidden: {headers}");

    // The Signature scheme with keyId in Proxy-Authorization, X-Date beside the (enforced)
    // Date, the Host signed, hmac-sha512, bob.
    let mut signed = Signed::get("/signed/profile");
    signed.scheme = "Signature";
    signed.carrier = "proxy-authorization";
    signed.username = "bob";
    signed.secret = b"bob-secret";
    signed.algorithm = "hmac-sha512";
    signed.headers.push(("x-date", http_date(unix_now())));
    signed.signed = &["x-date", "date", "request-line", "host"];
    let response = signed.send(&gateway).await;
    gateway.assert_status(&response, StatusCode::OK, "Signature, X-Date");
    assert_eq!(seen(&response)["x-tollgate-consumer"], "bob");
    assert!(seen(&response).get("x-tollgate-consumer-groups").is_none());
    assert!(seen(&response).get("proxy-authorization").is_none());

    // A body with its digest, the digest signed.
    let mut post = Signed::get("/signed/payments");
    post.method = "POST";
    post.body = "{\"amount\":10}";
    post.headers.push(("digest", digest(post.body)));
    post.headers
        .push(("content-type", "application/json".into()));
    post.signed = &["date", "request-line", "digest"];
    let response = post.send(&gateway).await;
    gateway.assert_status(&response, StatusCode::OK, "body with digest");
    assert_eq!(response.json()["body_len"], 13);
    assert_eq!(gateway.backend("echo").request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_with_401_and_a_reason() {
    let gateway = start().await;
    let stale = http_date(unix_now() - 600);

    let mut cases: Vec<(&str, Signed, &str)> = Vec::new();
    let mut wrong_secret = Signed::get("/signed/a");
    wrong_secret.secret = b"guessed";
    cases.push(("wrong secret", wrong_secret, "does not match"));
    let mut unknown = Signed::get("/signed/a");
    unknown.username = "mallory";
    cases.push(("unknown user", unknown, "does not match"));
    let mut sha1 = Signed::get("/signed/a");
    sha1.algorithm = "hmac-sha1";
    cases.push(("disallowed algorithm", sha1, "algorithm is not allowed"));
    let mut unsigned = Signed::get("/signed/a");
    unsigned.signed = &["date"];
    cases.push(("request-line not signed", unsigned, "must sign"));
    let mut old = Signed::get("/signed/a");
    old.headers = vec![("date", stale.clone())];
    cases.push(("stale date", old, "clock skew"));
    let mut freshened = Signed::get("/signed/a");
    freshened.headers = vec![("date", stale), ("x-date", http_date(unix_now()))];
    cases.push((
        "an unsigned X-Date beside an old signed Date",
        freshened,
        "clock skew",
    ));
    let mut mismatch = Signed::get("/signed/payments");
    mismatch.method = "POST";
    mismatch.body = "{\"amount\":1000}";
    mismatch.headers.push(("digest", digest("{\"amount\":10}")));
    mismatch.signed = &["date", "request-line", "digest"];
    cases.push(("body does not match its digest", mismatch, "Digest"));
    let mut undigested = Signed::get("/signed/payments");
    undigested.method = "POST";
    undigested.body = "{\"amount\":10}";
    cases.push(("body without digest", undigested, "Digest"));

    for (what, signed, reason) in &cases {
        let response = signed.send(&gateway).await;
        gateway.assert_status(&response, StatusCode::UNAUTHORIZED, what);
        assert_eq!(response.header("www-authenticate"), Some("hmac"), "{what}");
        let message = response.json()["message"].as_str().unwrap_or("").to_owned();
        assert!(message.contains(reason), "{what}: {message}");
    }

    // No Authorization at all.
    let response = gateway.get("/signed/a").await;
    gateway.assert_status(&response, StatusCode::UNAUTHORIZED, "unsigned");
    assert_eq!(response.header("www-authenticate"), Some("hmac"));
    assert_eq!(
        gateway.backend("echo").request_count(),
        0,
        "no refused request reached the upstream"
    );
}

/// The README's example, step by step: the signing string of `date` and `request-line`,
/// HMAC-SHA256 with alice's secret, base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_signed_as_the_readme_shows_works() {
    let gateway = Scenario::new()
        .echo("echo")
        .forward("signed", "/", "echo")
        .plugin(
            PluginSpec::new("signatures", HMAC_AUTH)
                .config(json!({
                    "consumers": [{ "username": "alice", "secret": "s3cret" }],
                    "enforce_headers": ["date", "request-line"]
                }))
                .routes(&["signed"]),
        )
        .start()
        .await;
    let date = http_date(unix_now());
    let signing_string = format!("date: {date}\nGET /orders?id=7 HTTP/1.1");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(signing_string.as_bytes());
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    let req = request("GET", gateway.listener("public"), "shop.test", "/orders?id=7")
        .header("date", &date)
        .header(
            "authorization",
            format!(
                "hmac username=\"alice\", algorithm=\"hmac-sha256\", headers=\"date request-line\", signature=\"{signature}\""
            ),
        )
        .body(Full::default())
        .unwrap();
    let response = gateway.client().send(req).await.unwrap();
    gateway.assert_status(&response, StatusCode::OK, "README example");
    assert_eq!(seen(&response)["x-tollgate-consumer"], "alice");
}

#[test]
fn bad_hmac_configurations_are_rejected_naming_plugin_and_field() {
    let outcome = check_plugins(&[PluginSpec::new("signatures", HMAC_AUTH)
        .config(json!({ "consumers": [{ "username": "alice", "secret": "" }] }))]);
    assert_rejected(
        &outcome,
        &["signatures", "hmac-auth", "consumers[0].secret"],
    );
    let outcome = check_plugins(&[PluginSpec::new("signatures", HMAC_AUTH)
        .config(json!({ "consumers": [], "algorithms": ["hmac-md5"] }))]);
    assert_rejected(&outcome, &["signatures", "algorithms[0]"]);
}
