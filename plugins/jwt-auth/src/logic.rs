//! Pure jwt-auth logic: configuration, JWKS keys, signature and claim checks.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer;

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Inline keys tokens may be signed with.
    #[serde(default)]
    pub keys: Vec<Jwk>,
    /// A key set fetched from a cluster, beside the inline keys.
    #[serde(default)]
    pub jwks: Option<crate::jwks::JwksConfig>,
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
    /// The one algorithm the key verifies; without it, every algorithm of its type.
    #[serde(default)]
    pub alg: Option<String>,
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
    /// `EC`: affine coordinates; `OKP`: the public key (`x`), base64url.
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

/// A signature algorithm a token's `alg` can name (`none` is not one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    const ALL: [Alg; 10] = [
        Alg::Hs256,
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

    /// The algorithm a JOSE `alg` value names, if this plugin verifies it.
    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The JWK `kty` of the keys that verify this algorithm.
    fn key_type(self) -> &'static str {
        match self {
            Alg::Hs256 => "oct",
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => "RSA",
            Alg::Es256 | Alg::Es384 => "EC",
            Alg::EdDsa => "OKP",
        }
    }
}

/// A decoded verification key; each verifies only the algorithms of its type and curve.
#[derive(Clone)]
pub enum Key {
    Hmac(Vec<u8>),
    Rsa(Box<rsa::RsaPublicKey>),
    P256(Box<p256::ecdsa::VerifyingKey>),
    P384(Box<p384::ecdsa::VerifyingKey>),
    Ed25519(Box<ed25519_dalek::VerifyingKey>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Key::Hmac(_) => "oct",
            Key::Rsa(_) => "RSA",
            Key::P256(_) => "EC P-256",
            Key::P384(_) => "EC P-384",
            Key::Ed25519(_) => "OKP Ed25519",
        })
    }
}

fn rsa_verify<D>(key: &rsa::RsaPublicKey, pss: bool, message: &[u8], signature: &[u8]) -> bool
where
    D: Digest + sha2::digest::DynDigest + rsa::pkcs8::AssociatedOid + Send + Sync + 'static,
{
    let hashed = D::digest(message);
    if pss {
        key.verify(rsa::Pss::new::<D>(), &hashed, signature).is_ok()
    } else {
        key.verify(rsa::Pkcs1v15Sign::new::<D>(), &hashed, signature)
            .is_ok()
    }
}

impl Key {
    /// Whether this key can verify `alg` at all (algorithm confusion is refused here).
    fn fits(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (Key::Hmac(_), Alg::Hs256)
                | (
                    Key::Rsa(_),
                    Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
                )
                | (Key::P256(_), Alg::Es256)
                | (Key::P384(_), Alg::Es384)
                | (Key::Ed25519(_), Alg::EdDsa)
        )
    }

    /// Checks `signature` over `message` with `alg`; `false` for an algorithm that does
    /// not fit the key.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        match (self, alg) {
            (Key::Hmac(secret), Alg::Hs256) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(message);
                mac.verify_slice(signature).is_ok()
            }
            (Key::Rsa(key), Alg::Rs256) => rsa_verify::<Sha256>(key, false, message, signature),
            (Key::Rsa(key), Alg::Rs384) => rsa_verify::<Sha384>(key, false, message, signature),
            (Key::Rsa(key), Alg::Rs512) => rsa_verify::<Sha512>(key, false, message, signature),
            (Key::Rsa(key), Alg::Ps256) => rsa_verify::<Sha256>(key, true, message, signature),
            (Key::Rsa(key), Alg::Ps384) => rsa_verify::<Sha384>(key, true, message, signature),
            (Key::Rsa(key), Alg::Ps512) => rsa_verify::<Sha512>(key, true, message, signature),
            (Key::P256(key), Alg::Es256) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
            (Key::P384(key), Alg::Es384) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
            (Key::Ed25519(key), Alg::EdDsa) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_strict(message, &signature).is_ok()),
            _ => false,
        }
    }
}

fn b64(field: &str, value: Option<&String>) -> Result<Vec<u8>, ConfigError> {
    let value = value.ok_or_else(|| ConfigError::new(field, "required for this key type"))?;
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| ConfigError::new(field, format!("not base64url: {e}")))
}

/// Affine coordinates `x` and `y` of `size` bytes each, as an uncompressed SEC1 point.
fn ec_point(jwk: &Jwk, field: &str, curve: &str, size: usize) -> Result<Vec<u8>, ConfigError> {
    let x = b64(&format!("{field}.x"), jwk.x.as_ref())?;
    let y = b64(&format!("{field}.y"), jwk.y.as_ref())?;
    if x.len() != size || y.len() != size {
        return Err(ConfigError::new(
            format!("{field}.x"),
            format!("{curve} coordinates are {size} bytes each"),
        ));
    }
    Ok([&[4u8][..], &x, &y].concat())
}

/// A key with the `kid` and `alg` its JWK gave: a JWK with `alg` verifies only that one.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub kid: Option<String>,
    pub alg: Option<Alg>,
    pub key: Key,
}

impl KeyEntry {
    fn fits(&self, alg: Alg, kid: Option<&str>) -> bool {
        self.alg.is_none_or(|own| own == alg)
            && self.key.fits(alg)
            && (kid.is_none() || self.kid.as_deref() == kid)
    }
}

impl Jwk {
    /// Decodes the key; errors name the member below `field` (for example `keys[0]`).
    pub fn decode(&self, field: &str) -> Result<KeyEntry, ConfigError> {
        if let Some(use_) = &self.use_ {
            if use_ != "sig" {
                return Err(ConfigError::new(
                    format!("{field}.use"),
                    "only \"sig\" keys can verify tokens",
                ));
            }
        }
        let alg = match self.alg.as_deref() {
            None => None,
            Some(name) => Some(Alg::parse(name).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.alg"),
                    format!("{name:?} is not one of HS256, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"),
                )
            })?),
        };
        if let Some(alg) = alg {
            if alg.key_type() != self.kty {
                return Err(ConfigError::new(
                    format!("{field}.alg"),
                    format!(
                        "{} needs kty {}, not {:?}",
                        alg.name(),
                        alg.key_type(),
                        self.kty
                    ),
                ));
            }
        }
        let crv = self.crv.as_deref();
        let key = match (self.kty.as_str(), crv) {
            ("oct", _) => {
                let secret = b64(&format!("{field}.k"), self.k.as_ref())?;
                if secret.len() < 32 {
                    return Err(ConfigError::new(
                        format!("{field}.k"),
                        "an HS256 secret needs at least 32 bytes",
                    ));
                }
                Key::Hmac(secret)
            }
            ("RSA", _) => {
                let n = b64(&format!("{field}.n"), self.n.as_ref())?;
                let e = b64(&format!("{field}.e"), self.e.as_ref())?;
                let key = rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(&n),
                    rsa::BigUint::from_bytes_be(&e),
                )
                .map_err(|e| {
                    ConfigError::new(
                        format!("{field}.n"),
                        format!("not a usable RSA public key: {e}"),
                    )
                })?;
                Key::Rsa(Box::new(key))
            }
            // The curve of an EC key without `crv` follows from its `alg`.
            ("EC", Some("P-256")) | ("EC", None) if alg != Some(Alg::Es384) => {
                let point = ec_point(self, field, "P-256", 32)?;
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map_err(|_| ConfigError::new(format!("{field}.x"), "not a point on P-256"))?;
                Key::P256(Box::new(key))
            }
            ("EC", Some("P-384")) | ("EC", None) => {
                let point = ec_point(self, field, "P-384", 48)?;
                let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map_err(|_| ConfigError::new(format!("{field}.x"), "not a point on P-384"))?;
                Key::P384(Box::new(key))
            }
            ("OKP", Some("Ed25519")) => {
                let x = b64(&format!("{field}.x"), self.x.as_ref())?;
                let bytes: [u8; 32] = x.as_slice().try_into().map_err(|_| {
                    ConfigError::new(format!("{field}.x"), "an Ed25519 key is 32 bytes")
                })?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| {
                    ConfigError::new(format!("{field}.x"), "not a point on Ed25519")
                })?;
                Key::Ed25519(Box::new(key))
            }
            ("EC" | "OKP", crv) => {
                return Err(ConfigError::new(
                    format!("{field}.crv"),
                    format!(
                        "{:?} is not supported (EC: P-256, P-384; OKP: Ed25519)",
                        crv.unwrap_or("")
                    ),
                ))
            }
            (kty, _) => {
                return Err(ConfigError::new(
                    format!("{field}.kty"),
                    format!("{kty:?} is not one of oct, RSA, EC, OKP"),
                ))
            }
        };
        if let Some(alg) = alg {
            if !key.fits(alg) {
                return Err(ConfigError::new(
                    format!("{field}.alg"),
                    format!("{} does not fit a {key:?} key", alg.name()),
                ));
            }
        }
        Ok(KeyEntry {
            kid: self.kid.clone(),
            alg,
            key,
        })
    }
}

/// Decoded keys: the inline ones of the configuration, or a key set fetched from `jwks`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<KeyEntry>,
    /// Which fetched key set this is (its shared-data version); 0 for the inline keys.
    pub version: u32,
}

/// How many tokens a [`SignatureCache`] remembers.
const SIGNATURE_CACHE_SIZE: usize = 64;

/// Tokens whose signature verified, so that a token presented again skips the signature
/// check (the expensive part: an ES384 check costs milliseconds in a VM), as Envoy's
/// jwt_authn keeps a token cache. The claims are checked every time. Another fetched key
/// set empties it, so a token of a key that was rotated out verifies no more.
#[derive(Debug, Default)]
pub struct SignatureCache {
    inner: std::cell::RefCell<(Option<u32>, std::collections::VecDeque<String>)>,
}

impl SignatureCache {
    fn contains(&self, version: Option<u32>, token: &str) -> bool {
        let inner = self.inner.borrow();
        inner.0 == version && inner.1.iter().any(|known| known == token)
    }

    fn insert(&self, version: Option<u32>, token: &str) {
        let mut inner = self.inner.borrow_mut();
        if inner.0 != version {
            *inner = (version, Default::default());
        }
        if inner.1.len() == SIGNATURE_CACHE_SIZE {
            inner.1.pop_front();
        }
        inner.1.push_back(token.to_owned());
    }
}

/// The JWK members this plugin reads; a fetched key set may carry others (`x5c`, ...).
const JWK_MEMBERS: [&str; 10] = ["kid", "kty", "alg", "use", "crv", "k", "n", "e", "x", "y"];

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys this plugin cannot use (another
    /// `use`, key type or curve) are left out; a set without one usable key is an error.
    pub fn from_jwks(document: &[u8]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<Map<String, Value>>,
        }
        let document: Document =
            serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        let mut last_error = None;
        for (i, mut member) in document.keys.into_iter().enumerate() {
            member.retain(|name, _| JWK_MEMBERS.contains(&name.as_str()));
            let decoded = serde_json::from_value::<Jwk>(Value::Object(member))
                .map_err(|e| ConfigError::new(format!("keys[{i}]"), e.to_string()))
                .and_then(|jwk| jwk.decode(&format!("keys[{i}]")));
            match decoded {
                Ok(entry) => keys.push(entry),
                Err(error) => last_error = Some(error.to_string()),
            }
        }
        if keys.is_empty() {
            return Err(last_error.unwrap_or_else(|| "the key set is empty".into()));
        }
        Ok(KeySet { keys, version: 0 })
    }

    fn candidates<'a>(
        &'a self,
        alg: Alg,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a KeyEntry> + 'a {
        self.keys.iter().filter(move |entry| entry.fits(alg, kid))
    }
}

/// The validated configuration with decoded keys.
#[derive(Debug, Clone)]
pub struct JwtAuth {
    pub config: Config,
    /// The validated `jwks` settings, if any.
    pub jwks: Option<crate::jwks::Jwks>,
    keys: KeySet,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No token at all.
    Missing,
    /// A token that is malformed, badly signed or whose claims do not pass.
    Invalid(String),
    /// No key fits the token's `alg` and `kid`: a fetched key set may have it after a
    /// refetch.
    NoKey(String),
}

impl Failure {
    /// The `WWW-Authenticate` value (RFC 6750 §3).
    pub fn challenge(&self, realm: &str) -> String {
        let realm = realm.replace('"', "");
        match self {
            Failure::Missing => format!("Bearer realm=\"{realm}\""),
            Failure::Invalid(reason) | Failure::NoKey(reason) => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                reason.replace(['"', '\\'], "'")
            ),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Missing => "missing bearer token".into(),
            Failure::Invalid(reason) | Failure::NoKey(reason) => {
                format!("invalid token: {reason}")
            }
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
        if config.keys.is_empty() && config.jwks.is_none() {
            return Err(ConfigError::new(
                "keys",
                "at least one key is needed (or a jwks to fetch them from)",
            ));
        }
        let mut keys = KeySet::default();
        for (i, jwk) in config.keys.iter().enumerate() {
            keys.keys.push(jwk.decode(&format!("keys[{i}]"))?);
        }
        let jwks = match &config.jwks {
            Some(jwks) => Some(jwks.validate("jwks")?),
            None => None,
        };
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
        Ok(Self { config, jwks, keys })
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

    /// Verifies `token` at `now` (seconds since the epoch) with the inline keys and the
    /// fetched key set `fetched`, if any.
    pub fn verify(
        &self,
        token: &str,
        now: u64,
        fetched: Option<&KeySet>,
    ) -> Result<Verified, Failure> {
        self.verify_cached(token, now, fetched, &SignatureCache::default())
    }

    /// [`verify`](Self::verify), skipping the signature check of a token `cache` knows.
    pub fn verify_cached(
        &self,
        token: &str,
        now: u64,
        fetched: Option<&KeySet>,
        cache: &SignatureCache,
    ) -> Result<Verified, Failure> {
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
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let kid = header.get("kid").and_then(Value::as_str);
        // `none` and unknown algorithms have no key, so they never verify.
        let Some(alg) = Alg::parse(alg_name) else {
            return Err(invalid(format!("no key for alg {alg_name}")));
        };
        let version = fetched.map(|set| set.version);
        if !cache.contains(version, token) {
            let signature = decode(signature_b64)?;
            let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
            let mut candidates = self
                .keys
                .candidates(alg, kid)
                .chain(fetched.into_iter().flat_map(|set| set.candidates(alg, kid)))
                .peekable();
            if candidates.peek().is_none() {
                return Err(Failure::NoKey(match kid {
                    Some(kid) => format!("no {alg_name} key with kid {kid}"),
                    None => format!("no key for alg {alg_name}"),
                }));
            }
            if !candidates.any(|entry| entry.key.verify(alg, signed, &signature)) {
                return Err(invalid("bad signature"));
            }
            cache.insert(version, token);
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
        let verified = auth.verify(&hs256("h1", &claims()), NOW, None).unwrap();
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
        let check = |claims: Value, now: u64| auth.verify(&hs256("h1", &claims), now, None);
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
        assert!(auth.verify(&tampered, NOW, None).is_err());
        let (head, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            auth.verify(&format!("{head}.AAAA"), NOW, None),
            Err(invalid("bad signature"))
        );
        assert_eq!(
            auth.verify(&hs256("other", &claims()), NOW, None),
            Err(Failure::NoKey("no HS256 key with kid other".into()))
        );
        let none = format!("{}.", signing_input(&json!({"alg": "none"}), &claims()));
        assert_eq!(
            auth.verify(&none, NOW, None),
            Err(invalid("no key for alg none"))
        );
        assert_eq!(
            auth.verify("abc", NOW, None),
            Err(invalid("malformed token"))
        );
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
            auth.verify(&format!("{rs_input}.{}", enc(&rs_sig)), NOW, None)
                .unwrap()
                .consumer,
            "alice"
        );
        let es_input = signing_input(&json!({"alg": "ES256"}), &claims());
        let es_sig: p256::ecdsa::Signature = ec_key.sign(es_input.as_bytes());
        let es_token = format!("{es_input}.{}", enc(&es_sig.to_bytes()));
        assert_eq!(auth.verify(&es_token, NOW, None).unwrap().consumer, "alice");
        // An RS256 signature presented as ES256 does not verify.
        let wrong = format!(
            "{}.{}",
            signing_input(&json!({"alg": "ES256"}), &claims()),
            enc(&rs_sig)
        );
        assert_eq!(
            auth.verify(&wrong, NOW, None),
            Err(invalid("bad signature"))
        );
    }

    /// A token for `claims()` with `alg` and `kid`, signed by `sign`.
    fn token(alg: &str, kid: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = signing_input(&json!({"alg": alg, "kid": kid}), &claims());
        format!("{input}.{}", enc(&sign(input.as_bytes())))
    }

    /// The keys of one of each new key type, as JWKs without `alg`, and signers for every
    /// algorithm they verify.
    struct Signers {
        rsa: rsa::RsaPrivateKey,
        p384: p384::ecdsa::SigningKey,
        ed25519: ed25519_dalek::SigningKey,
    }

    impl Signers {
        fn new(rsa_bits: usize) -> Self {
            let mut rng = rand::thread_rng();
            Self {
                rsa: rsa::RsaPrivateKey::new(&mut rng, rsa_bits).unwrap(),
                p384: p384::ecdsa::SigningKey::random(&mut rng),
                ed25519: ed25519_dalek::SigningKey::generate(&mut rng),
            }
        }

        fn jwks(&self) -> Value {
            use rsa::traits::PublicKeyParts;
            let public = self.rsa.to_public_key();
            let point = self.p384.verifying_key().to_encoded_point(false);
            json!({"keys": [
                {"kid": "rsa", "kty": "RSA", "n": enc(&public.n().to_bytes_be()), "e": enc(&public.e().to_bytes_be()), "x5t": "ignored"},
                {"kid": "p384", "kty": "EC", "crv": "P-384", "x": enc(point.x().unwrap()), "y": enc(point.y().unwrap())},
                {"kid": "ed", "kty": "OKP", "crv": "Ed25519", "use": "sig", "x": enc(self.ed25519.verifying_key().as_bytes())},
                {"kid": "enc", "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
                {"kid": "x448", "kty": "OKP", "crv": "X448", "x": "AQAB"}
            ]})
        }

        /// The signature of `message` with `alg`.
        fn sign(&self, alg: &str, message: &[u8]) -> Vec<u8> {
            use ed25519_dalek::Signer as _;
            use sha2::{Sha384, Sha512};
            let pkcs1 = |scheme, hashed: &[u8]| self.rsa.sign(scheme, hashed).unwrap();
            let pss = |scheme, hashed: &[u8]| {
                self.rsa
                    .sign_with_rng(&mut rand::thread_rng(), scheme, hashed)
                    .unwrap()
            };
            match alg {
                "RS256" => pkcs1(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message)),
                "RS384" => pkcs1(rsa::Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(message)),
                "RS512" => pkcs1(rsa::Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(message)),
                "PS256" => pss(rsa::Pss::new::<Sha256>(), &Sha256::digest(message)),
                "PS384" => pss(rsa::Pss::new::<Sha384>(), &Sha384::digest(message)),
                "PS512" => pss(rsa::Pss::new::<Sha512>(), &Sha512::digest(message)),
                "ES384" => {
                    let signature: p384::ecdsa::Signature = self.p384.sign(message);
                    signature.to_bytes().to_vec()
                }
                "EdDSA" => self.ed25519.sign(message).to_bytes().to_vec(),
                _ => unreachable!("{alg}"),
            }
        }
    }

    const NEW_ALGS: [(&str, &str); 8] = [
        ("RS256", "rsa"),
        ("RS384", "rsa"),
        ("RS512", "rsa"),
        ("PS256", "rsa"),
        ("PS384", "rsa"),
        ("PS512", "rsa"),
        ("ES384", "p384"),
        ("EdDSA", "ed"),
    ];

    #[test]
    fn every_algorithm_verifies_and_refuses_tampering_and_other_keys() {
        // PS512 needs a modulus of at least 130 bytes (two SHA-512 lengths and 2).
        let signers = Signers::new(1280);
        let others = Signers::new(1280);
        let fetched = KeySet::from_jwks(signers.jwks().to_string().as_bytes()).unwrap();
        assert_eq!(fetched.keys.len(), 3, "the enc and X448 keys are left out");
        let other_keys = KeySet::from_jwks(others.jwks().to_string().as_bytes()).unwrap();
        let auth = auth(json!({}));
        for (alg, kid) in NEW_ALGS {
            let token = token(alg, kid, |message| signers.sign(alg, message));
            let verified = auth.verify(&token, NOW, Some(&fetched));
            assert_eq!(verified.map(|v| v.consumer), Ok("alice".into()), "{alg}");
            let (head, signature) = token.rsplit_once('.').unwrap();
            let (header, _) = head.split_once('.').unwrap();
            let mut changed = claims();
            changed["sub"] = json!("mallory");
            let tampered = format!(
                "{header}.{}.{signature}",
                enc(changed.to_string().as_bytes())
            );
            assert_eq!(
                auth.verify(&tampered, NOW, Some(&fetched)),
                Err(invalid("bad signature")),
                "{alg} tampered"
            );
            assert_eq!(
                auth.verify(&token, NOW, Some(&other_keys)),
                Err(invalid("bad signature")),
                "{alg} other key"
            );
        }
    }

    #[test]
    fn algorithms_and_key_types_must_match() {
        let signers = Signers::new(1024);
        let fetched = KeySet::from_jwks(signers.jwks().to_string().as_bytes()).unwrap();
        let auth = auth(json!({}));
        // An EdDSA signature presented as ES384 with the Ed25519 key's kid: no such key.
        let confused = token("ES384", "ed", |message| signers.sign("EdDSA", message));
        assert_eq!(
            auth.verify(&confused, NOW, Some(&fetched)),
            Err(Failure::NoKey("no ES384 key with kid ed".into()))
        );
        // HMAC over the RSA key's public modulus, the classic confusion: no HS256 key has
        // that kid.
        let hmac = hs256("rsa", &claims());
        assert!(matches!(
            auth.verify(&hmac, NOW, Some(&fetched)),
            Err(Failure::NoKey(_))
        ));
        let none = format!(
            "{}.",
            signing_input(&json!({"alg": "none", "kid": "rsa"}), &claims())
        );
        assert_eq!(
            auth.verify(&none, NOW, Some(&fetched)),
            Err(invalid("no key for alg none"))
        );
        // A JWK whose alg names another key type, or curve, is refused.
        let jwk = |value: Value| {
            serde_json::from_value::<Jwk>(value)
                .unwrap()
                .decode("keys[0]")
                .unwrap_err()
                .to_string()
        };
        let point = signers.p384.verifying_key().to_encoded_point(false);
        let e = jwk(
            json!({"kty": "EC", "crv": "P-384", "alg": "ES256", "x": enc(point.x().unwrap()), "y": enc(point.y().unwrap())}),
        );
        assert!(
            e.starts_with("field \"keys[0].alg\": ES256 does not fit"),
            "{e}"
        );
        let e = jwk(json!({"kty": "OKP", "crv": "Ed25519", "alg": "PS256", "x": enc(&[0; 32])}));
        assert!(e.contains("PS256 needs kty RSA"), "{e}");
        assert!(KeySet::from_jwks(br#"{"keys": []}"#).is_err());
        assert!(KeySet::from_jwks(b"<html>").is_err());
    }

    #[test]
    fn a_cached_signature_is_trusted_only_with_the_same_keys() {
        let signers = Signers::new(1024);
        let mut fetched = KeySet::from_jwks(signers.jwks().to_string().as_bytes()).unwrap();
        fetched.version = 7;
        let auth = auth(json!({}));
        let cache = SignatureCache::default();
        let token = token("EdDSA", "ed", |message| signers.sign("EdDSA", message));
        assert!(auth
            .verify_cached(&token, NOW, Some(&fetched), &cache)
            .is_ok());
        assert!(cache.contains(Some(7), &token));
        // Claims are checked on every use.
        assert_eq!(
            auth.verify_cached(&token, NOW + 3600, Some(&fetched), &cache),
            Err(invalid("token expired"))
        );
        // Another key set without the key: the cached signature does not count.
        let mut rotated =
            KeySet::from_jwks(Signers::new(1024).jwks().to_string().as_bytes()).unwrap();
        rotated.version = 8;
        assert_eq!(
            auth.verify_cached(&token, NOW, Some(&rotated), &cache),
            Err(invalid("bad signature"))
        );
        assert!(!cache.contains(Some(8), &token));
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

    /// Prints the key sets and tokens of tests/tests/plugin_jwks.rs (sub "fixture", aud
    /// "shop", exp in 2100): a JWKS with an RSA (kid ps-1), a P-384 (kid ec384-1) and an
    /// Ed25519 key (kid ed-1) and a token for each (PS256, ES384, EdDSA); and the rotated
    /// JWKS with one Ed25519 key (kid ed-2) and its token:
    /// `cargo test -p jwt-auth -- --ignored --nocapture print_jwks_fixtures`.
    #[test]
    #[ignore]
    fn print_jwks_fixtures() {
        let fixture = json!({"sub": "fixture", "aud": "shop", "iss": "https://issuer.test", "exp": 4_102_444_800u64});
        let sign = |signers: &Signers, alg: &str, kid: &str| {
            let input = signing_input(&json!({"alg": alg, "typ": "JWT", "kid": kid}), &fixture);
            format!("{input}.{}", enc(&signers.sign(alg, input.as_bytes())))
        };
        let first = Signers::new(2048);
        let mut jwks = first.jwks();
        let keys = jwks["keys"].as_array_mut().unwrap();
        keys.truncate(3);
        for (key, kid) in keys.iter_mut().zip(["ps-1", "ec384-1", "ed-1"]) {
            key["kid"] = json!(kid);
            key.as_object_mut().unwrap().remove("x5t");
        }
        println!("JWKS_FIRST {jwks}");
        println!("PS256_TOKEN {}", sign(&first, "PS256", "ps-1"));
        println!("ES384_TOKEN {}", sign(&first, "ES384", "ec384-1"));
        println!("EDDSA_TOKEN {}", sign(&first, "EdDSA", "ed-1"));
        let rotated = Signers::new(1024);
        let mut jwks = rotated.jwks();
        jwks["keys"] = json!([{"kid": "ed-2", "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": jwks["keys"][2]["x"]}]);
        println!("JWKS_ROTATED {jwks}");
        println!("ROTATED_TOKEN {}", sign(&rotated, "EdDSA", "ed-2"));
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
