//! Pure jwt-auth logic: configuration, JWKS keys, signature and claim checks.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer;

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Inline JWKS: the keys tokens may be signed with.
    pub keys: Vec<Jwk>,
    /// Accepted `iss` values; empty: any (and `iss` not required).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values (one must match); empty: any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Reject tokens without `exp`.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Request header carrying `Bearer <token>`.
    #[serde(default = "default_header")]
    pub header: String,
    /// Also accept the token from this query parameter (none by default).
    #[serde(default)]
    pub query_param: Option<String>,
    /// Claim → request header; client-sent values of these headers are always removed.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// The claim naming the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// The claim listing the consumer's groups (array, or space/comma-separated string).
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Remove the token header before forwarding.
    #[serde(default)]
    pub hide_credentials: bool,
    /// Realm of the `WWW-Authenticate: Bearer` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// One JSON Web Key (RFC 7517) with the members this plugin uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwk {
    #[serde(default)]
    pub kid: Option<String>,
    pub kty: String,
    pub alg: String,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    /// `oct`: the secret, base64url.
    #[serde(default)]
    pub k: Option<String>,
    /// `RSA`: modulus and exponent, base64url big-endian.
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    /// `EC` P-256: affine coordinates, base64url.
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
}

fn default_leeway() -> u64 {
    30
}
fn yes() -> bool {
    true
}
fn default_header() -> String {
    "authorization".into()
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_realm() -> String {
    "tollgate".into()
}

/// A decoded verification key.
#[derive(Clone)]
pub enum Key {
    Hs256(Vec<u8>),
    Rs256(Box<rsa::RsaPublicKey>),
    Es256(Box<p256::ecdsa::VerifyingKey>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Key::Hs256(_) => "HS256",
            Key::Rs256(_) => "RS256",
            Key::Es256(_) => "ES256",
        })
    }
}

impl Key {
    fn alg(&self) -> &'static str {
        match self {
            Key::Hs256(_) => "HS256",
            Key::Rs256(_) => "RS256",
            Key::Es256(_) => "ES256",
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Key::Hs256(secret) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(message);
                mac.verify_slice(signature).is_ok()
            }
            Key::Rs256(key) => key
                .verify(
                    rsa::Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(message),
                    signature,
                )
                .is_ok(),
            Key::Es256(key) => match p256::ecdsa::Signature::from_slice(signature) {
                Ok(signature) => key.verify(message, &signature).is_ok(),
                Err(_) => false,
            },
        }
    }
}

fn b64(field: &str, value: Option<&String>) -> Result<Vec<u8>, ConfigError> {
    let value = value.ok_or_else(|| ConfigError::new(field, "required for this key type"))?;
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| ConfigError::new(field, format!("not base64url: {e}")))
}

impl Jwk {
    fn decode(&self, field: &str) -> Result<Key, ConfigError> {
        if let Some(use_) = &self.use_ {
            if use_ != "sig" {
                return Err(ConfigError::new(
                    format!("{field}.use"),
                    "only \"sig\" keys can verify tokens",
                ));
            }
        }
        let key = match (self.kty.as_str(), self.alg.as_str()) {
            ("oct", "HS256") => {
                let secret = b64(&format!("{field}.k"), self.k.as_ref())?;
                if secret.len() < 32 {
                    return Err(ConfigError::new(format!("{field}.k"), "an HS256 secret needs at least 32 bytes"));
                }
                Key::Hs256(secret)
            }
            ("RSA", "RS256") => {
                let n = b64(&format!("{field}.n"), self.n.as_ref())?;
                let e = b64(&format!("{field}.e"), self.e.as_ref())?;
                let key = rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(&n),
                    rsa::BigUint::from_bytes_be(&e),
                )
                .map_err(|e| ConfigError::new(format!("{field}.n"), format!("not a usable RSA public key: {e}")))?;
                Key::Rs256(Box::new(key))
            }
            ("EC", "ES256") => {
                if let Some(crv) = &self.crv {
                    if crv != "P-256" {
                        return Err(ConfigError::new(format!("{field}.crv"), format!("ES256 needs curve P-256, not {crv}")));
                    }
                }
                let x = b64(&format!("{field}.x"), self.x.as_ref())?;
                let y = b64(&format!("{field}.y"), self.y.as_ref())?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(ConfigError::new(format!("{field}.x"), "P-256 coordinates are 32 bytes each"));
                }
                let point = p256::EncodedPoint::from_affine_coordinates(
                    x.as_slice().into(),
                    y.as_slice().into(),
                    false,
                );
                let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| ConfigError::new(format!("{field}.x"), "not a point on P-256"))?;
                Key::Es256(Box::new(key))
            }
            (kty @ ("oct" | "RSA" | "EC"), alg) => {
                return Err(ConfigError::new(format!("{field}.alg"), format!("{alg:?} with kty {kty:?} is not supported (HS256 with oct, RS256 with RSA, ES256 with EC)")))
            }
            (kty, _) => return Err(ConfigError::new(format!("{field}.kty"), format!("{kty:?} is not one of oct, RSA, EC"))),
        };
        Ok(key)
    }
}

/// The validated configuration with decoded keys.
#[derive(Debug, Clone)]
pub struct JwtAuth {
    pub config: Config,
    keys: Vec<(Option<String>, Key)>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No token at all.
    Missing,
    /// A token that is malformed, badly signed or whose claims do not pass.
    Invalid(String),
}

impl Failure {
    /// The `WWW-Authenticate` value (RFC 6750 §3).
    pub fn challenge(&self, realm: &str) -> String {
        let realm = realm.replace('"', "");
        match self {
            Failure::Missing => format!("Bearer realm=\"{realm}\""),
            Failure::Invalid(reason) => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                reason.replace(['"', '\\'], "'")
            ),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Missing => "missing bearer token".into(),
            Failure::Invalid(reason) => format!("invalid token: {reason}"),
        }
    }
}

/// What a valid token yields.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub consumer: String,
    pub groups: Vec<String>,
    /// (header, value) pairs from `claims_to_headers`.
    pub headers: Vec<(String, String)>,
}

fn invalid(reason: impl Into<String>) -> Failure {
    Failure::Invalid(reason.into())
}

impl JwtAuth {
    /// Validates the configuration and decodes the keys; errors name the field.
    pub fn new(mut config: Config) -> Result<Self, ConfigError> {
        if config.keys.is_empty() {
            return Err(ConfigError::new("keys", "at least one key is needed"));
        }
        let mut keys = Vec::new();
        for (i, jwk) in config.keys.iter().enumerate() {
            keys.push((jwk.kid.clone(), jwk.decode(&format!("keys[{i}]"))?));
        }
        config.header = config.header.to_ascii_lowercase();
        if config.header.is_empty() || config.header.starts_with(':') {
            return Err(ConfigError::new("header", "must be a header name"));
        }
        let mut headers = BTreeMap::new();
        for (claim, header) in std::mem::take(&mut config.claims_to_headers) {
            let lower = header.to_ascii_lowercase();
            if lower.is_empty()
                || lower.starts_with(':')
                || !lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::new(
                    format!("claims_to_headers.{claim}"),
                    format!("{header:?} is not a header name"),
                ));
            }
            if lower.starts_with("x-tollgate-consumer") {
                return Err(ConfigError::new(
                    format!("claims_to_headers.{claim}"),
                    format!("{header} is the consumer identity; use consumer_claim"),
                ));
            }
            headers.insert(claim, lower);
        }
        config.claims_to_headers = headers;
        Ok(Self { config, keys })
    }

    /// Extracts the token from an `Authorization`-style header value or the query.
    pub fn token_from(&self, header: Option<&str>, path: &str) -> Option<String> {
        if let Some(value) = header {
            let value = value.trim();
            if let Some((scheme, token)) = value.split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                    return Some(token.trim().to_owned());
                }
            }
        }
        let name = self.config.query_param.as_deref()?;
        let query = path.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name && !value.is_empty()).then(|| value.to_owned())
        })
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, Failure> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("malformed token"));
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| invalid("malformed token"))
        };
        let header: Map<String, Value> = serde_json::from_slice(&decode(header_b64)?)
            .map_err(|_| invalid("malformed token header"))?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let kid = header.get("kid").and_then(Value::as_str);
        let signature = decode(signature_b64)?;
        let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        let mut candidates = self
            .keys
            .iter()
            .filter(|(key_id, key)| key.alg() == alg && (kid.is_none() || key_id.as_deref() == kid))
            .peekable();
        if candidates.peek().is_none() {
            return Err(invalid(match kid {
                Some(kid) => format!("no {alg} key with kid {kid}"),
                None => format!("no key for alg {alg}"),
            }));
        }
        if !candidates.any(|(_, key)| key.verify(signed, &signature)) {
            return Err(invalid("bad signature"));
        }
        let claims: Map<String, Value> = serde_json::from_slice(&decode(payload_b64)?)
            .map_err(|_| invalid("malformed claims"))?;
        self.check_claims(&claims, now)?;
        let consumer = match claims.get(&self.config.consumer_claim) {
            Some(Value::String(name)) if consumer::is_valid_name(name) => name.clone(),
            _ => {
                return Err(invalid(format!(
                    "claim {} missing or not a name",
                    self.config.consumer_claim
                )))
            }
        };
        let groups = match self
            .config
            .groups_claim
            .as_ref()
            .and_then(|claim| claims.get(claim))
        {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(list)) => list
                .split([' ', ','])
                .filter(|group| !group.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let groups = groups
            .into_iter()
            .filter(|g: &String| consumer::is_valid_name(g))
            .collect();
        let headers = self
            .config
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| Some((header.clone(), claim_text(claims.get(claim)?)?)))
            .collect();
        Ok(Verified {
            consumer,
            groups,
            headers,
        })
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), Failure> {
        let leeway = self.config.leeway_seconds;
        let number = |name: &str| -> Result<Option<u64>, Failure> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value
                    .as_f64()
                    .filter(|n| *n >= 0.0)
                    .map(|n| Some(n as u64))
                    .ok_or_else(|| invalid(format!("claim {name} is not a number"))),
            }
        };
        match number("exp")? {
            Some(exp) if now >= exp.saturating_add(leeway) => return Err(invalid("token expired")),
            None if self.config.require_exp => return Err(invalid("claim exp missing")),
            _ => {}
        }
        if let Some(nbf) = number("nbf")? {
            if now.saturating_add(leeway) < nbf {
                return Err(invalid("token not yet valid"));
            }
        }
        if let Some(iat) = number("iat")? {
            if now.saturating_add(leeway) < iat {
                return Err(invalid("token issued in the future"));
            }
        }
        if !self.config.issuers.is_empty() {
            let iss = claims.get("iss").and_then(Value::as_str);
            if !iss.is_some_and(|iss| self.config.issuers.iter().any(|i| i == iss)) {
                return Err(invalid("issuer not accepted"));
            }
        }
        if !self.config.audiences.is_empty() {
            let accepted = |aud: &str| self.config.audiences.iter().any(|a| a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err(invalid("audience not accepted"));
            }
        }
        Ok(())
    }
}

/// A claim as a header value: strings as they are, arrays of scalars comma-joined, other
/// values as JSON; `None` if the result cannot be a header value.
fn claim_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => return None,
        other => other.to_string(),
    };
    (!text.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn enc(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn signing_input(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        )
    }

    fn hs256(kid: &str, claims: &Value) -> String {
        let input = signing_input(&json!({"alg": "HS256", "typ": "JWT", "kid": kid}), claims);
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", enc(&mac.finalize().into_bytes()))
    }

    fn auth(extra: Value) -> JwtAuth {
        let mut config = json!({
            "keys": [{"kid": "h1", "kty": "oct", "alg": "HS256", "k": enc(SECRET)}],
            "issuers": ["https://issuer.test"],
            "audiences": ["shop"],
            "claims_to_headers": {"sub": "x-user-id", "roles": "x-roles"},
            "groups_claim": "groups"
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        let config: Config = tollgate_sdk::config::parse(config.to_string().as_bytes()).unwrap();
        JwtAuth::new(config).unwrap()
    }

    const NOW: u64 = 1_800_000_000;

    fn claims() -> Value {
        json!({"sub": "alice", "iss": "https://issuer.test", "aud": ["other", "shop"],
               "exp": NOW + 60, "nbf": NOW - 10, "roles": ["a", "b"], "groups": "gold staff"})
    }

    #[test]
    fn a_valid_hs256_token_yields_consumer_groups_and_headers() {
        let auth = auth(json!({}));
        let verified = auth.verify(&hs256("h1", &claims()), NOW).unwrap();
        assert_eq!(verified.consumer, "alice");
        assert_eq!(verified.groups, ["gold", "staff"]);
        assert_eq!(
            verified.headers,
            [
                ("x-roles".to_string(), "a,b".to_string()),
                ("x-user-id".to_string(), "alice".to_string())
            ]
        );
    }

    #[test]
    fn claims_are_checked_with_leeway() {
        let auth = auth(json!({"leeway_seconds": 5}));
        let check = |claims: Value, now: u64| auth.verify(&hs256("h1", &claims), now);
        let mut c = claims();
        assert!(check(c.clone(), NOW + 64).is_ok(), "inside the leeway");
        assert_eq!(check(c.clone(), NOW + 65), Err(invalid("token expired")));
        assert_eq!(
            check(c.clone(), NOW - 16),
            Err(invalid("token not yet valid"))
        );
        c["iss"] = json!("https://evil.test");
        assert_eq!(check(c.clone(), NOW), Err(invalid("issuer not accepted")));
        c = claims();
        c["aud"] = json!("other");
        assert_eq!(check(c.clone(), NOW), Err(invalid("audience not accepted")));
        c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(check(c.clone(), NOW), Err(invalid("claim exp missing")));
        c = claims();
        c.as_object_mut().unwrap().remove("sub");
        assert!(matches!(check(c, NOW), Err(Failure::Invalid(r)) if r.contains("sub")));
    }

    #[test]
    fn signatures_and_algorithms_are_enforced() {
        let auth = auth(json!({}));
        let token = hs256("h1", &claims());
        let tampered = token.replacen('.', ".e30", 1);
        assert!(auth.verify(&tampered, NOW).is_err());
        let (head, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            auth.verify(&format!("{head}.AAAA"), NOW),
            Err(invalid("bad signature"))
        );
        assert_eq!(
            auth.verify(&hs256("other", &claims()), NOW),
            Err(invalid("no HS256 key with kid other"))
        );
        let none = format!("{}.", signing_input(&json!({"alg": "none"}), &claims()));
        assert_eq!(auth.verify(&none, NOW), Err(invalid("no key for alg none")));
        assert_eq!(auth.verify("abc", NOW), Err(invalid("malformed token")));
    }

    #[test]
    fn rs256_and_es256_tokens_verify() {
        let mut rng = rand::thread_rng();
        let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let public = rsa_key.to_public_key();
        use rsa::traits::PublicKeyParts;
        let ec_key = p256::ecdsa::SigningKey::random(&mut rng);
        let point = ec_key.verifying_key().to_encoded_point(false);
        let auth = auth(json!({"keys": [
            {"kid": "r1", "kty": "RSA", "alg": "RS256", "n": enc(&public.n().to_bytes_be()), "e": enc(&public.e().to_bytes_be())},
            {"kid": "e1", "kty": "EC", "crv": "P-256", "alg": "ES256", "x": enc(point.x().unwrap()), "y": enc(point.y().unwrap())}
        ]}));
        let rs_input = signing_input(&json!({"alg": "RS256", "kid": "r1"}), &claims());
        let rs_sig = rsa_key
            .sign(
                rsa::Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(rs_input.as_bytes()),
            )
            .unwrap();
        assert_eq!(
            auth.verify(&format!("{rs_input}.{}", enc(&rs_sig)), NOW)
                .unwrap()
                .consumer,
            "alice"
        );
        let es_input = signing_input(&json!({"alg": "ES256"}), &claims());
        let es_sig: p256::ecdsa::Signature = ec_key.sign(es_input.as_bytes());
        let es_token = format!("{es_input}.{}", enc(&es_sig.to_bytes()));
        assert_eq!(auth.verify(&es_token, NOW).unwrap().consumer, "alice");
        // An RS256 signature presented as ES256 does not verify.
        let wrong = format!(
            "{}.{}",
            signing_input(&json!({"alg": "ES256"}), &claims()),
            enc(&rs_sig)
        );
        assert_eq!(auth.verify(&wrong, NOW), Err(invalid("bad signature")));
    }

    #[test]
    fn tokens_come_from_the_header_or_query() {
        let auth = auth(json!({"query_param": "access_token"}));
        assert_eq!(auth.token_from(Some("Bearer abc"), "/"), Some("abc".into()));
        assert_eq!(
            auth.token_from(Some("bearer  abc "), "/"),
            Some("abc".into())
        );
        assert_eq!(
            auth.token_from(Some("Basic abc"), "/x?access_token=t"),
            Some("t".into())
        );
        assert_eq!(auth.token_from(None, "/x?a=1"), None);
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let parse = |v: Value| {
            tollgate_sdk::config::parse::<Config>(v.to_string().as_bytes())
                .and_then(|c| JwtAuth::new(c).map(|_| ()))
                .unwrap_err()
                .to_string()
        };
        let e = parse(json!({"keys": [{"kty": "oct", "alg": "HS256", "k": "c2hvcnQ"}]}));
        assert!(e.starts_with("field \"keys[0].k"), "{e}");
        let e = parse(json!({"keys": [{"kty": "RSA", "alg": "HS256", "n": "AQAB", "e": "AQAB"}]}));
        assert!(e.starts_with("field \"keys[0].alg"), "{e}");
        let e = parse(
            json!({"keys": [{"kty": "EC", "alg": "ES256", "x": enc(&[1; 32]), "y": enc(&[2; 32])}]}),
        );
        assert!(e.starts_with("field \"keys[0].x"), "{e}");
        let e = parse(
            json!({"keys": [{"kty": "oct", "alg": "HS256", "k": enc(SECRET)}], "claims_to_headers": {"sub": "bad header"}}),
        );
        assert!(e.starts_with("field \"claims_to_headers.sub"), "{e}");
        let e = parse(json!({"keys": [], "leway": 1}));
        assert!(e.contains("leway"), "{e}");
        assert_eq!(
            Failure::Invalid("token expired".into()).challenge("api"),
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token expired\""
        );
    }

    /// Prints an RS256 and an ES256 key (as JWKs) and a token signed by each (sub
    /// "fixture", aud "shop", exp in 2100), the fixtures of tests/tests/plugin_auth.rs:
    /// `cargo test -p jwt-auth --release -- --ignored --nocapture print_fixtures`.
    #[test]
    #[ignore]
    fn print_fixtures() {
        use rsa::traits::PublicKeyParts;
        let mut rng = rand::thread_rng();
        let claims = json!({"sub": "fixture", "aud": "shop", "iss": "https://issuer.test", "exp": 4_102_444_800u64});
        let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let public = rsa_key.to_public_key();
        println!(
            "RSA_JWK n={} e={}",
            enc(&public.n().to_bytes_be()),
            enc(&public.e().to_bytes_be())
        );
        let input = signing_input(
            &json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}),
            &claims,
        );
        let sig = rsa_key
            .sign(
                rsa::Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(input.as_bytes()),
            )
            .unwrap();
        println!("RS256_TOKEN {input}.{}", enc(&sig));
        let ec_key = p256::ecdsa::SigningKey::random(&mut rng);
        let point = ec_key.verifying_key().to_encoded_point(false);
        println!(
            "EC_JWK x={} y={}",
            enc(point.x().unwrap()),
            enc(point.y().unwrap())
        );
        let input = signing_input(
            &json!({"alg": "ES256", "typ": "JWT", "kid": "ec-1"}),
            &claims,
        );
        let sig: p256::ecdsa::Signature = ec_key.sign(input.as_bytes());
        println!("ES256_TOKEN {input}.{}", enc(&sig.to_bytes()));
    }
}
