//! Pure token-introspection logic: configuration, the bearer token, the introspection
//! request, the answer, the verdict and the cache entries.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tollgate_sdk::callout::HttpCall;
use tollgate_sdk::config::{parse_duration, ConfigError};
use tollgate_sdk::{consumer, is_header_name};

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The authorization server's cluster.
    pub cluster: String,
    /// Path of the introspection endpoint.
    pub path: String,
    /// `:authority` of the introspection request; default: the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// The gateway's client credentials at the authorization server (HTTP Basic).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// How long to wait for the server.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// The claim that names the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Scopes a token must carry (all of them).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// The longest an active answer is kept (it is never kept past the token's `exp`).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: String,
    /// How long an inactive answer is kept.
    #[serde(default = "default_negative_cache_ttl")]
    pub negative_cache_ttl: String,
    /// The most answers kept at once (places in shared data).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u64,
    /// What to do when the server cannot answer.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Claims copied onto request headers: claim → header.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Remove the `Authorization` header before forwarding.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
}

/// What to do when the authorization server is down, slow or answers an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Answer `503`.
    #[default]
    Deny,
    /// Let the request through, without a consumer.
    Allow,
}

fn default_timeout() -> String {
    "1s".into()
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_cache_ttl() -> String {
    "5m".into()
}
fn default_negative_cache_ttl() -> String {
    "10s".into()
}
fn default_cache_entries() -> u64 {
    10_000
}
fn yes() -> bool {
    true
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Introspector {
    pub config: Config,
    pub timeout: Duration,
    /// Seconds.
    pub cache_ttl: u64,
    pub negative_cache_ttl: u64,
    /// `Basic ...` for the introspection request, when client credentials are configured.
    client_authorization: Option<String>,
    /// `Bearer error="insufficient_scope", scope="..."`.
    scope_challenge: String,
}

fn duration(text: &str, field: &str, allow_zero: bool) -> Result<Duration, ConfigError> {
    parse_duration(text)
        .filter(|d| allow_zero || !d.is_zero())
        .ok_or_else(|| {
            ConfigError::new(
                field,
                format!("{text:?} is not a duration (like 500ms, 30s, 5m or 1h)"),
            )
        })
}

impl Introspector {
    /// Validates the configuration; the error names the offending field.
    pub fn new(mut config: Config) -> Result<Self, ConfigError> {
        if config.cluster.trim().is_empty() {
            return Err(ConfigError::new(
                "cluster",
                "must name the authorization server's cluster",
            ));
        }
        if !config.path.starts_with('/') || config.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ConfigError::new(
                "path",
                format!("{:?}: must start with / and contain no spaces", config.path),
            ));
        }
        let client_authorization = match (&config.client_id, &config.client_secret) {
            (Some(id), Some(secret)) if !id.is_empty() => Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{}:{}", form_encode(id), form_encode(secret)))
            )),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(ConfigError::new("client_id", "must not be empty")),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "client_secret",
                    "client_id needs client_secret",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "client_id",
                    "client_secret needs client_id",
                ))
            }
        };
        let timeout = duration(&config.timeout, "timeout", false)?;
        if timeout > Duration::from_secs(60) {
            return Err(ConfigError::new("timeout", "must be at most 60s"));
        }
        let cache_ttl = duration(&config.cache_ttl, "cache_ttl", true)?.as_secs();
        let negative_cache_ttl =
            duration(&config.negative_cache_ttl, "negative_cache_ttl", true)?.as_secs();
        if !(1..=1_000_000).contains(&config.cache_entries) {
            return Err(ConfigError::new(
                "cache_entries",
                format!("{}: must be between 1 and 1000000", config.cache_entries),
            ));
        }
        if config.consumer_claim.is_empty() {
            return Err(ConfigError::new("consumer_claim", "must name a claim"));
        }
        for (i, scope) in config.required_scopes.iter().enumerate() {
            if scope.is_empty()
                || scope
                    .bytes()
                    .any(|b| !b.is_ascii_graphic() || b == b'"' || b == b'\\')
            {
                return Err(ConfigError::new(
                    format!("required_scopes[{i}]"),
                    format!("{scope:?}: not a scope (visible ASCII, no quotes or backslashes)"),
                ));
            }
        }
        for (claim, header) in config.forward_claims.iter_mut() {
            if !is_header_name(header) {
                return Err(ConfigError::new(
                    format!("forward_claims.{claim}"),
                    format!("{header:?}: not a valid header name"),
                ));
            }
            *header = header.to_ascii_lowercase();
        }
        let scope_challenge = format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\"",
            config.required_scopes.join(" ")
        );
        Ok(Self {
            config,
            timeout,
            cache_ttl,
            negative_cache_ttl,
            client_authorization,
            scope_challenge,
        })
    }

    /// The introspection request for `token` (RFC 7662 section 2.1).
    pub fn request(&self, token: &str) -> HttpCall {
        let authority = self
            .config
            .authority
            .as_deref()
            .unwrap_or(&self.config.cluster);
        let mut call = HttpCall::post(authority, &self.config.path)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(format!("token={}&token_type_hint=access_token", form_encode(token)).into_bytes())
            .timeout(self.timeout);
        if let Some(authorization) = &self.client_authorization {
            call = call.header("authorization", authorization);
        }
        call
    }

    /// Until when (Unix seconds) an answer may be reused; `None`: not at all.
    pub fn cache_until(&self, answer: &Answer, now: u64) -> Option<u64> {
        let until = if answer.active {
            let capped = now.saturating_add(self.cache_ttl);
            answer.exp.map_or(capped, |exp| exp.min(capped))
        } else {
            now.saturating_add(self.negative_cache_ttl)
        };
        (until > now).then_some(until)
    }

    /// What to do with a request whose token got `answer`.
    pub fn verdict<'a>(&'a self, answer: &'a Answer) -> Verdict<'a> {
        if !answer.active {
            return Verdict::Inactive;
        }
        let granted = || answer.scope().split_ascii_whitespace();
        if !self
            .config
            .required_scopes
            .iter()
            .all(|required| granted().any(|scope| scope == required))
        {
            return Verdict::InsufficientScope;
        }
        let consumer = answer
            .claim_text(&self.config.consumer_claim)
            .filter(|name| consumer::is_valid_name(name));
        let headers = self
            .config
            .forward_claims
            .iter()
            .filter_map(|(claim, header)| Some((header.as_str(), answer.claim_text(claim)?)))
            .collect();
        Verdict::Allow { consumer, headers }
    }

    /// The challenge of a `403` for missing scopes.
    pub fn scope_challenge(&self) -> &str {
        &self.scope_challenge
    }
}

/// The challenge of a `401` for a token the server does not know as active.
pub const INVALID_TOKEN_CHALLENGE: &str = "Bearer error=\"invalid_token\"";
/// The challenge of a `401` for a request without a bearer token (RFC 6750 section 3.1:
/// no error code).
pub const MISSING_TOKEN_CHALLENGE: &str = "Bearer";

/// What happens to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Forwarded, with the consumer (when the claim names one) and the forwarded claims.
    Allow {
        consumer: Option<std::borrow::Cow<'a, str>>,
        headers: Vec<(&'a str, std::borrow::Cow<'a, str>)>,
    },
    /// `401`, `error="invalid_token"`.
    Inactive,
    /// `403`, `error="insufficient_scope"`.
    InsufficientScope,
}

/// The server's answer about one token (RFC 7662 section 2.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub active: bool,
    /// Expiry, Unix seconds.
    pub exp: Option<u64>,
    pub claims: Map<String, Value>,
}

impl Answer {
    /// Parses the JSON object the server answered; only a JSON `true` makes a token active.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let Value::Object(claims) = serde_json::from_slice(body).ok()? else {
            return None;
        };
        let active = claims.get("active") == Some(&Value::Bool(true));
        let exp = claims.get("exp").and_then(Value::as_u64);
        Some(Self {
            active,
            exp,
            claims,
        })
    }

    /// The `scope` claim, space-separated; empty when absent.
    pub fn scope(&self) -> &str {
        self.claims
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// A claim as header text: a string as it is, a number or boolean written out, an
    /// array of strings joined by commas, anything else as JSON; `None` when absent.
    pub fn claim_text(&self, claim: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        let value = self.claims.get(claim)?;
        Some(match value {
            Value::String(text) => Cow::Borrowed(text.as_str()),
            Value::Null => return None,
            Value::Array(items) if items.iter().all(Value::is_string) => Cow::Owned(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            other => Cow::Owned(other.to_string()),
        })
    }
}

/// The bearer token of an `Authorization` header (RFC 6750 section 2.1), if it has one.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    let token68 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.bytes().all(token68))
        .then_some(token)
}

/// Where a token's answer is cached: one of `cache_entries` places in shared data, chosen
/// by the SHA-256 of the token, so that the cache never holds more than that many answers
/// however many tokens clients make up (shared data has no expiry or eviction). An entry
/// is the time it holds until (8 bytes, little-endian Unix seconds), the token's SHA-256
/// (another token may take the place), then the server's answer as it came; the token
/// itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSlot {
    /// The shared-data key: the plugin's name and the place's number.
    pub key: String,
    digest: [u8; 32],
}

impl CacheSlot {
    pub fn new(plugin_name: &str, token: &str, cache_entries: u64) -> Self {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let place = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % cache_entries;
        let mut number = [0; 20];
        let place = tollgate_sdk::decimal(place, &mut number);
        let mut key = String::with_capacity(plugin_name.len() + 1 + place.len());
        key.push_str(plugin_name);
        key.push(':');
        key.push_str(place);
        Self { key, digest }
    }

    /// The entry caching `answer` until `until`.
    pub fn encode(&self, until: u64, answer: &[u8]) -> Vec<u8> {
        let mut entry = Vec::with_capacity(8 + self.digest.len() + answer.len());
        entry.extend_from_slice(&until.to_le_bytes());
        entry.extend_from_slice(&self.digest);
        entry.extend_from_slice(answer);
        entry
    }

    /// The answer of an entry that is this token's and still holds at `now`.
    pub fn decode<'e>(&self, entry: &'e [u8], now: u64) -> Option<&'e [u8]> {
        let (until, rest) = entry.split_first_chunk::<8>()?;
        let (digest, answer) = rest.split_first_chunk::<32>()?;
        (u64::from_le_bytes(*until) > now && *digest == self.digest).then_some(answer)
    }
}

/// `application/x-www-form-urlencoded` encoding of a value.
pub fn form_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._*".contains(&byte) {
            encoded.push(char::from(byte));
        } else if byte == b' ' {
            encoded.push('+');
        } else {
            encoded.push('%');
            encoded.push(char::from(b"0123456789ABCDEF"[usize::from(byte >> 4)]));
            encoded.push(char::from(b"0123456789ABCDEF"[usize::from(byte & 15)]));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use serde_json::json;

    fn introspector(config: Value) -> Result<Introspector, ConfigError> {
        tollgate_sdk::config::parse::<Config>(config.to_string().as_bytes())
            .and_then(Introspector::new)
    }

    fn shop() -> Introspector {
        introspector(json!({
            "cluster": "idp", "path": "/oauth2/introspect",
            "client_id": "gateway", "client_secret": "s3cret:&",
            "required_scopes": ["orders:read"],
            "forward_claims": { "client_id": "X-Client-Id", "roles": "x-roles" },
            "cache_ttl": "60s", "negative_cache_ttl": "5s"
        }))
        .unwrap()
    }

    fn answer(value: Value) -> Answer {
        Answer::parse(value.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn bearer_tokens_come_from_the_authorization_header() {
        assert_eq!(bearer_token("Bearer abc.DEF-_~+/="), Some("abc.DEF-_~+/="));
        assert_eq!(bearer_token("bearer  xyz "), Some("xyz"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer a b"), None);
    }

    #[test]
    fn the_request_is_a_form_post_with_client_authentication() {
        let call = shop().request("t&k=n");
        assert_eq!(call.method, "POST");
        assert_eq!(call.path, "/oauth2/introspect");
        assert_eq!(call.authority, "idp");
        assert_eq!(
            call.body.as_deref(),
            Some(&b"token=t%26k%3Dn&token_type_hint=access_token"[..])
        );
        let header = |name: &str| {
            call.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        // The id and secret are form-encoded before base64 (RFC 6749 section 2.3.1).
        let basic = header("authorization")
            .unwrap()
            .strip_prefix("Basic ")
            .unwrap();
        assert_eq!(STANDARD.decode(basic).unwrap(), b"gateway:s3cret%3A%26");
        assert_eq!(call.timeout, Duration::from_secs(1));
    }

    #[test]
    fn active_tokens_with_the_scopes_are_allowed_with_their_claims() {
        let shop = shop();
        let good = answer(json!({ "active": true, "sub": "alice", "client_id": "web",
            "scope": "profile orders:read", "roles": ["buyer", "beta"], "exp": 2_000_000_000u64 }));
        assert_eq!(
            shop.verdict(&good),
            Verdict::Allow {
                consumer: Some(Cow::Borrowed("alice")),
                headers: vec![
                    ("x-client-id", Cow::Borrowed("web")),
                    ("x-roles", Cow::Owned("buyer,beta".into()))
                ],
            }
        );
        let narrow = answer(json!({ "active": true, "sub": "alice", "scope": "orders:readonly" }));
        assert_eq!(shop.verdict(&narrow), Verdict::InsufficientScope);
        assert_eq!(
            shop.scope_challenge(),
            "Bearer error=\"insufficient_scope\", scope=\"orders:read\""
        );
        // Only a JSON true is active.
        for inactive in [
            json!({ "active": false }),
            json!({ "active": "true", "scope": "orders:read" }),
            json!({}),
        ] {
            assert_eq!(shop.verdict(&answer(inactive)), Verdict::Inactive);
        }
        assert!(Answer::parse(b"[true]").is_none());
        assert!(Answer::parse(b"<html>").is_none());
    }

    #[test]
    fn the_consumer_claim_is_configurable() {
        let by_client =
            introspector(json!({ "cluster": "idp", "path": "/i", "consumer_claim": "client_id" }))
                .unwrap();
        let token = answer(json!({ "active": true, "sub": "alice", "client_id": "batch-job" }));
        let Verdict::Allow { consumer, .. } = by_client.verdict(&token) else {
            panic!("allowed");
        };
        assert_eq!(consumer.as_deref(), Some("batch-job"));
        // A claim that cannot name a consumer leaves the request without one.
        let token = answer(json!({ "active": true, "client_id": "a b" }));
        assert_eq!(
            by_client.verdict(&token),
            Verdict::Allow {
                consumer: None,
                headers: vec![]
            }
        );
    }

    #[test]
    fn answers_are_cached_until_exp_within_the_caps() {
        let shop = shop();
        let now = 1_000;
        let soon = answer(json!({ "active": true, "exp": now + 10 }));
        assert_eq!(shop.cache_until(&soon, now), Some(now + 10));
        let later = answer(json!({ "active": true, "exp": now + 3_600 }));
        assert_eq!(shop.cache_until(&later, now), Some(now + 60));
        let no_exp = answer(json!({ "active": true }));
        assert_eq!(shop.cache_until(&no_exp, now), Some(now + 60));
        let expired = answer(json!({ "active": true, "exp": now }));
        assert_eq!(shop.cache_until(&expired, now), None);
        let inactive = answer(json!({ "active": false }));
        assert_eq!(shop.cache_until(&inactive, now), Some(now + 5));
        let uncached = introspector(json!({ "cluster": "idp", "path": "/i", "cache_ttl": "0s", "negative_cache_ttl": "0s" })).unwrap();
        assert_eq!(uncached.cache_until(&later, now), None);
        assert_eq!(uncached.cache_until(&inactive, now), None);
    }

    #[test]
    fn cache_entries_hold_until_their_time_for_their_token() {
        let slot = CacheSlot::new("introspect", "secret-token", 10_000);
        let entry = slot.encode(1_010, br#"{"active":true}"#);
        assert_eq!(slot.decode(&entry, 1_009), Some(&br#"{"active":true}"#[..]));
        assert_eq!(slot.decode(&entry, 1_010), None);
        assert_eq!(slot.decode(b"short", 0), None);
        assert!(slot.key.starts_with("introspect:"));
        assert!(!entry.windows(12).any(|w| w == b"secret-token"));

        // With one place, every token shares it: the last answer there is the only one.
        let first = CacheSlot::new("introspect", "token-a", 1);
        let second = CacheSlot::new("introspect", "token-b", 1);
        assert_eq!(first.key, "introspect:0");
        assert_eq!(first.key, second.key);
        let entry = second.encode(1_010, b"{}");
        assert_eq!(first.decode(&entry, 1_000), None);
        assert_eq!(second.decode(&entry, 1_000), Some(&b"{}"[..]));
        // Places spread: 100 tokens over 10 places use more than one.
        let places: std::collections::BTreeSet<String> = (0..100)
            .map(|i| CacheSlot::new("p", &format!("t{i}"), 10).key)
            .collect();
        assert!(places.len() > 5, "{places:?}");
        assert!(places.iter().all(|key| key.len() == "p:0".len()));
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let path = |config: Value| introspector(config).unwrap_err().path().to_owned();
        assert_eq!(path(json!({ "cluster": "", "path": "/i" })), "cluster");
        assert_eq!(path(json!({ "cluster": "idp", "path": "i" })), "path");
        assert_eq!(
            path(json!({ "cluster": "idp", "path": "/i", "client_id": "x" })),
            "client_secret"
        );
        assert_eq!(
            path(json!({ "cluster": "idp", "path": "/i", "timeout": "5" })),
            "timeout"
        );
        assert_eq!(
            path(json!({ "cluster": "idp", "path": "/i", "timeout": "0s" })),
            "timeout"
        );
        assert_eq!(
            path(json!({ "cluster": "idp", "path": "/i", "cache_ttl": "soon" })),
            "cache_ttl"
        );
        assert_eq!(
            path(json!({ "cluster": "idp", "path": "/i", "cache_entries": 0 })),
            "cache_entries"
        );
        assert_eq!(
            path(json!({ "cluster": "idp", "path": "/i", "failure_mode": "open" })),
            "failure_mode"
        );
        assert_eq!(
            path(json!({ "cluster": "idp", "path": "/i", "forward_claims": { "sub": "x user" } })),
            "forward_claims.sub"
        );
        assert_eq!(
            path(json!({ "cluster": "idp", "path": "/i", "required_scopes": ["a\"b"] })),
            "required_scopes[0]"
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c/d=é"), "a+b%2Bc%2Fd%3D%C3%A9");
        assert_eq!(form_encode("A-z._*09"), "A-z._*09");
    }
}
