//! Pure hmac-auth logic: configuration, the `Authorization` parameters, the signing string,
//! the signature, the date and the body digest.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::time::days_from_civil;
use tollgate_sdk::{consumer, secret};

/// The pseudo-header of the signing string that stands for `METHOD PATH HTTP/x`.
pub const REQUEST_LINE: &str = "request-line";

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub consumers: Vec<Consumer>,
    /// The algorithms a client may sign with.
    #[serde(default = "every_algorithm")]
    pub algorithms: Vec<Algorithm>,
    /// How far (seconds) the request's `X-Date` or `Date` may be from the gateway's clock.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: u64,
    /// Headers (or `request-line`) every signature must cover.
    #[serde(default)]
    pub enforce_headers: Vec<String>,
    /// Check `Digest: SHA-256=...` against the request body.
    #[serde(default)]
    pub validate_request_body: bool,
    /// Remove the `Authorization` header before forwarding.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// The realm of the `WWW-Authenticate: hmac realm="..."` challenge; none by default.
    #[serde(default)]
    pub realm: Option<String>,
}

/// A consumer: the `username` a signature names and the shared `secret` it is made with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub username: String,
    pub secret: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A signature algorithm, named as in the `algorithm` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "hmac-sha1")]
    HmacSha1,
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::HmacSha1,
    Algorithm::HmacSha256,
    Algorithm::HmacSha384,
    Algorithm::HmacSha512,
];

fn every_algorithm() -> Vec<Algorithm> {
    ALGORITHMS.to_vec()
}
fn default_clock_skew() -> u64 {
    300
}
fn yes() -> bool {
    true
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha1 => "hmac-sha1",
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha384 => "hmac-sha384",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    /// The algorithm of an `algorithm` parameter (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        ALGORITHMS
            .into_iter()
            .find(|algorithm| algorithm.name().eq_ignore_ascii_case(name))
    }

    /// Whether `signature` is this algorithm's MAC of the signing string `lines` under
    /// `secret`. The comparison takes the same time however many bytes match.
    pub fn verify(self, secret: &[u8], lines: &[Line], signature: &[u8]) -> bool {
        match self {
            Self::HmacSha1 => verify_with::<Hmac<Sha1>>(secret, lines, signature),
            Self::HmacSha256 => verify_with::<Hmac<Sha256>>(secret, lines, signature),
            Self::HmacSha384 => verify_with::<Hmac<Sha384>>(secret, lines, signature),
            Self::HmacSha512 => verify_with::<Hmac<Sha512>>(secret, lines, signature),
        }
    }

    /// The base64 signature of `lines` under `secret`: what a client sends.
    pub fn sign(self, secret: &[u8], lines: &[Line]) -> String {
        let tag = match self {
            Self::HmacSha1 => sign_with::<Hmac<Sha1>>(secret, lines),
            Self::HmacSha256 => sign_with::<Hmac<Sha256>>(secret, lines),
            Self::HmacSha384 => sign_with::<Hmac<Sha384>>(secret, lines),
            Self::HmacSha512 => sign_with::<Hmac<Sha512>>(secret, lines),
        };
        STANDARD.encode(tag)
    }
}

fn keyed<M: Mac + KeyInit>(secret: &[u8], lines: &[Line]) -> M {
    let mut mac = <M as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    feed(lines, |piece| mac.update(piece));
    mac
}

fn verify_with<M: Mac + KeyInit>(secret: &[u8], lines: &[Line], signature: &[u8]) -> bool {
    keyed::<M>(secret, lines).verify_slice(signature).is_ok()
}

fn sign_with<M: Mac + KeyInit>(secret: &[u8], lines: &[Line]) -> Vec<u8> {
    keyed::<M>(secret, lines).finalize().into_bytes().to_vec()
}

/// One line of the signing string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// `METHOD PATH HTTP/x` (the path with its query).
    RequestLine {
        method: &'a str,
        path: &'a str,
        protocol: &'a str,
    },
    /// `name: value`, the name as the signature lists it (lower case).
    Header { name: &'a str, value: &'a str },
}

/// Hands the signing string of `lines` to `sink` piece by piece: lines joined by `\n`,
/// no newline at the end. The MAC takes the pieces as they are; nothing is copied.
pub fn feed(lines: &[Line], mut sink: impl FnMut(&[u8])) {
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            sink(b"\n");
        }
        match *line {
            Line::RequestLine {
                method,
                path,
                protocol,
            } => {
                for piece in [method, " ", path, " ", protocol] {
                    sink(piece.as_bytes());
                }
            }
            Line::Header { name, value } => {
                for piece in [name, ": ", value] {
                    sink(piece.as_bytes());
                }
            }
        }
    }
}

/// The signing string of `lines` as text (for tests and for clients).
pub fn signing_string(lines: &[Line]) -> String {
    let mut text = Vec::new();
    feed(lines, |piece| text.extend_from_slice(piece));
    String::from_utf8(text).expect("pieces of UTF-8")
}

/// The parameters of an `Authorization: hmac ...` (or `Signature ...`) header, borrowed
/// from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: &'a str,
    pub algorithm: &'a str,
    /// The signed headers, space-separated; `None` when the parameter is absent (then only
    /// `date` is signed).
    pub headers: Option<&'a str>,
    pub signature: &'a str,
}

impl<'a> Credentials<'a> {
    /// Parses `hmac username="..", algorithm="..", headers="..", signature=".."`. The
    /// scheme is `hmac` or `Signature` (any case); `keyId` may stand for `username`.
    pub fn parse(authorization: &'a str) -> Result<Self, &'static str> {
        let authorization = authorization.trim();
        let (scheme, mut rest) = authorization
            .split_once(' ')
            .ok_or("the Authorization header has no HMAC parameters")?;
        if !scheme.eq_ignore_ascii_case("hmac") && !scheme.eq_ignore_ascii_case("signature") {
            return Err("the Authorization scheme is not hmac");
        }
        let (mut username, mut algorithm, mut headers, mut signature) = (None, None, None, None);
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            let (key, after) = rest
                .split_once('=')
                .ok_or("malformed HMAC parameters in the Authorization header")?;
            let (value, after) = match after.strip_prefix('"') {
                Some(quoted) => quoted
                    .split_once('"')
                    .ok_or("unterminated quoted HMAC parameter")?,
                None => after.split_once(',').unwrap_or((after, "")),
            };
            let slot = match key.trim() {
                key if key.eq_ignore_ascii_case("username")
                    || key.eq_ignore_ascii_case("keyid") =>
                {
                    &mut username
                }
                key if key.eq_ignore_ascii_case("algorithm") => &mut algorithm,
                key if key.eq_ignore_ascii_case("headers") => &mut headers,
                key if key.eq_ignore_ascii_case("signature") => &mut signature,
                _ => {
                    rest = after;
                    continue;
                }
            };
            *slot = Some(value.trim());
            rest = after;
        }
        Ok(Self {
            username: username
                .filter(|u| !u.is_empty())
                .ok_or("the HMAC parameters lack username")?,
            algorithm: algorithm.ok_or("the HMAC parameters lack algorithm")?,
            headers,
            signature: signature
                .filter(|s| !s.is_empty())
                .ok_or("the HMAC parameters lack signature")?,
        })
    }

    /// The signed header names, in order.
    pub fn signed_headers(&self) -> impl Iterator<Item = &'a str> {
        self.headers.unwrap_or("date").split_ascii_whitespace()
    }

    /// Whether the signature covers header `name`.
    pub fn signs(&self, name: &str) -> bool {
        self.signed_headers()
            .any(|signed| signed.eq_ignore_ascii_case(name))
    }

    /// The date headers to look for, in order: a signed one first (an unsigned fresh
    /// `X-Date` must not make an old signed `Date` look fresh), then `X-Date`, then `Date`.
    pub fn date_headers(&self) -> [&'static str; 2] {
        if !self.signs("x-date") && self.signs("date") {
            ["date", "x-date"]
        } else {
            ["x-date", "date"]
        }
    }
}

/// A configured consumer, ready for lookups.
#[derive(Debug, Clone)]
struct Known {
    username: String,
    secret: Vec<u8>,
    /// The groups joined for the groups header.
    groups: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct HmacAuth {
    pub config: Config,
    consumers: Vec<Known>,
    challenge: String,
}

/// Why a request is refused; the message is the body's `message`.
pub type Refusal = &'static str;

impl HmacAuth {
    /// Validates the configuration; the error names the offending field.
    pub fn new(mut config: Config) -> Result<Self, ConfigError> {
        let mut consumers: Vec<Known> = Vec::with_capacity(config.consumers.len());
        for (i, consumer) in config.consumers.iter().enumerate() {
            if !consumer::is_valid_name(&consumer.username) || consumer.username.contains('"') {
                return Err(ConfigError::new(
                    format!("consumers[{i}].username"),
                    "must be visible ASCII without commas or quotes",
                ));
            }
            if consumers.iter().any(|c| c.username == consumer.username) {
                return Err(ConfigError::new(
                    format!("consumers[{i}].username"),
                    "two consumers have this username",
                ));
            }
            if consumer.secret.is_empty() {
                return Err(ConfigError::new(
                    format!("consumers[{i}].secret"),
                    "must not be empty",
                ));
            }
            consumer::check_groups(&consumer.groups, &format!("consumers[{i}].groups"))?;
            consumers.push(Known {
                username: consumer.username.clone(),
                secret: consumer.secret.as_bytes().to_vec(),
                groups: consumer::format_groups(&consumer.groups),
            });
        }
        if config.algorithms.is_empty() {
            return Err(ConfigError::new(
                "algorithms",
                "must allow at least one algorithm",
            ));
        }
        if config.clock_skew == 0 {
            return Err(ConfigError::new("clock_skew", "must be at least 1 second"));
        }
        for (i, name) in config.enforce_headers.iter_mut().enumerate() {
            if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic() || b == b':') {
                return Err(ConfigError::new(
                    format!("enforce_headers[{i}]"),
                    format!("{name:?}: not a header name"),
                ));
            }
            *name = name.to_ascii_lowercase();
        }
        let challenge = match &config.realm {
            Some(realm) if realm.contains(['"', '\\']) => {
                return Err(ConfigError::new(
                    "realm",
                    "cannot contain quotes or backslashes",
                ))
            }
            Some(realm) => format!("hmac realm=\"{realm}\""),
            None => "hmac".to_owned(),
        };
        Ok(Self {
            config,
            consumers,
            challenge,
        })
    }

    /// The `WWW-Authenticate` challenge.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    /// What the signature may be checked with: the algorithm allowed, every enforced header
    /// signed. The consumer's name and joined groups come with the verdict of [`verify`].
    ///
    /// [`verify`]: Self::verify
    pub fn admit(&self, credentials: &Credentials) -> Result<Algorithm, Refusal> {
        let algorithm = Algorithm::parse(credentials.algorithm)
            .filter(|algorithm| self.config.algorithms.contains(algorithm))
            .ok_or("the HMAC algorithm is not allowed")?;
        for enforced in &self.config.enforce_headers {
            if !credentials.signs(enforced) {
                return Err("the HMAC signature does not cover a header it must sign");
            }
        }
        Ok(algorithm)
    }

    /// Checks the signature of `lines` and returns the consumer's name and joined groups.
    /// An unknown user and a wrong signature are refused alike, after the same work (an
    /// unknown user's signature is checked against an empty secret), so that neither the
    /// answer nor its timing tells which user names exist.
    pub fn verify(
        &self,
        credentials: &Credentials,
        algorithm: Algorithm,
        lines: &[Line],
    ) -> Result<(&str, &str), Refusal> {
        let signature = STANDARD
            .decode(credentials.signature)
            .map_err(|_| "the HMAC signature is not base64")?;
        let known = self
            .consumers
            .iter()
            .find(|known| known.username == credentials.username);
        let secret = known.map_or(&[][..], |known| known.secret.as_slice());
        let valid = algorithm.verify(secret, lines, &signature);
        match known {
            Some(known) if valid => Ok((&known.username, &known.groups)),
            _ => Err("the HMAC signature does not match"),
        }
    }

    /// Checks the request's date (`X-Date` or `Date`) against `now` (Unix seconds).
    pub fn check_date(&self, date: Option<&str>, now: u64) -> Result<(), Refusal> {
        let date = date
            .and_then(parse_http_date)
            .ok_or("a valid Date or X-Date header is required")?;
        if date.abs_diff(now) > self.config.clock_skew {
            return Err("the request's date is outside the allowed clock skew");
        }
        Ok(())
    }
}

/// Parses an HTTP date in the preferred format, `Sun, 06 Nov 1994 08:49:37 GMT`, to Unix
/// seconds.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let (_weekday, rest) = text.trim().split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let year: i64 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let mut clock = time.split(':').map(|n| n.parse::<u64>().ok());
    let (hours, minutes, seconds) = (clock.next()??, clock.next()??, clock.next()??);
    if clock.next().is_some()
        || !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || hours > 23
        || minutes > 59
        || seconds > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hours * 3_600 + minutes * 60 + seconds)
}

/// Whether a `Digest` header value (`SHA-256=<base64>`, possibly among others, separated
/// by commas) matches `body`. `SHA-256` and `SHA-512` are understood; at least one must be
/// present and every one present must match. The comparison does not stop at the first
/// differing byte.
pub fn digest_matches(digest: &str, body: &[u8]) -> bool {
    let mut checked = false;
    for entry in digest.split(',') {
        let Some((algorithm, value)) = entry.trim().split_once('=') else {
            continue;
        };
        let Ok(expected) = STANDARD.decode(value.trim()) else {
            return false;
        };
        let matches = if algorithm.eq_ignore_ascii_case("sha-256") {
            secret::same_bytes(&Sha256::digest(body), &expected)
        } else if algorithm.eq_ignore_ascii_case("sha-512") {
            secret::same_bytes(&Sha512::digest(body), &expected)
        } else {
            continue;
        };
        if !matches {
            return false;
        }
        checked = true;
    }
    checked
}

/// The `Digest` header value a client sends for `body`: `SHA-256=<base64>`.
pub fn body_digest(body: &[u8]) -> String {
    format!("SHA-256={}", STANDARD.encode(Sha256::digest(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth(config: serde_json::Value) -> Result<HmacAuth, ConfigError> {
        tollgate_sdk::config::parse::<Config>(config.to_string().as_bytes()).and_then(HmacAuth::new)
    }

    fn alice() -> HmacAuth {
        auth(
            json!({ "consumers": [{ "username": "alice", "secret": "s3cret", "groups": ["ops"] }],
                     "algorithms": ["hmac-sha256", "hmac-sha512"], "enforce_headers": ["Date"] }),
        )
        .unwrap()
    }

    const DATE: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

    fn lines() -> [Line<'static>; 2] {
        [
            Line::Header {
                name: "date",
                value: DATE,
            },
            Line::RequestLine {
                method: "GET",
                path: "/orders?id=7",
                protocol: "HTTP/1.1",
            },
        ]
    }

    #[test]
    fn the_signing_string_joins_lines() {
        assert_eq!(
            signing_string(&lines()),
            format!("date: {DATE}\nGET /orders?id=7 HTTP/1.1")
        );
    }

    #[test]
    fn the_readme_example_signature() {
        // The example of the README: secret "s3cret", hmac-sha256 over date and request-line.
        let signature = Algorithm::HmacSha256.sign(b"s3cret", &lines());
        assert_eq!(signature, "HmvlQG2tXv7/4cSTbMdkp6mbaC4ZDzgyOwS7tLDAmDs=");
    }

    #[test]
    fn credentials_parse_in_both_schemes() {
        let parsed = Credentials::parse(
            r#"hmac username="alice", algorithm="hmac-sha256", headers="date request-line", signature="c2ln""#,
        )
        .unwrap();
        assert_eq!(parsed.username, "alice");
        assert_eq!(parsed.algorithm, "hmac-sha256");
        assert_eq!(
            parsed.signed_headers().collect::<Vec<_>>(),
            ["date", "request-line"]
        );
        assert_eq!(parsed.signature, "c2ln");
        let parsed =
            Credentials::parse(r#"Signature keyId="alice",algorithm="hmac-sha1",signature="c2ln""#)
                .unwrap();
        assert_eq!(parsed.username, "alice");
        assert_eq!(parsed.signed_headers().collect::<Vec<_>>(), ["date"]);
        assert_eq!(parsed.date_headers(), ["date", "x-date"]);
        let parsed = Credentials::parse(
            r#"hmac username="alice", algorithm="hmac-sha256", headers="x-date request-line", signature="c2ln""#,
        )
        .unwrap();
        assert_eq!(parsed.date_headers(), ["x-date", "date"]);
        assert!(Credentials::parse("Basic YWxhZGRpbjpvcGVuc2VzYW1l").is_err());
        assert!(Credentials::parse(r#"hmac username="alice", algorithm="hmac-sha256""#).is_err());
        assert!(Credentials::parse(r#"hmac username="alice"#).is_err());
    }

    #[test]
    fn signatures_verify_with_the_right_secret_and_algorithm_only() {
        let auth = alice();
        let lines = lines();
        let signature = Algorithm::HmacSha256.sign(b"s3cret", &lines);
        let header = format!(
            r#"hmac username="alice", algorithm="hmac-sha256", headers="date request-line", signature="{signature}""#
        );
        let credentials = Credentials::parse(&header).unwrap();
        let algorithm = auth.admit(&credentials).unwrap();
        assert_eq!(
            auth.verify(&credentials, algorithm, &lines),
            Ok(("alice", "ops"))
        );
        // Another secret, another user, another request line.
        let forged = Algorithm::HmacSha256.sign(b"guess", &lines);
        let header = header.replace(&signature, &forged);
        let credentials = Credentials::parse(&header).unwrap();
        assert!(auth.verify(&credentials, algorithm, &lines).is_err());
        let header = format!(
            r#"hmac username="mallory", algorithm="hmac-sha256", headers="date", signature="{signature}""#
        );
        assert!(auth
            .verify(&Credentials::parse(&header).unwrap(), algorithm, &lines)
            .is_err());
        let mut other = lines;
        other[1] = Line::RequestLine {
            method: "DELETE",
            path: "/orders?id=7",
            protocol: "HTTP/1.1",
        };
        let header = format!(
            r#"hmac username="alice", algorithm="hmac-sha256", headers="date request-line", signature="{signature}""#
        );
        let credentials = Credentials::parse(&header).unwrap();
        assert!(auth.verify(&credentials, algorithm, &other).is_err());
    }

    #[test]
    fn every_algorithm_round_trips() {
        for algorithm in ALGORITHMS {
            let signature = STANDARD.decode(algorithm.sign(b"k", &lines())).unwrap();
            assert!(
                algorithm.verify(b"k", &lines(), &signature),
                "{algorithm:?}"
            );
            assert!(
                !algorithm.verify(b"K", &lines(), &signature),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn algorithms_and_enforced_headers_are_admitted_by_the_configuration() {
        let auth = alice();
        let admit = |header: &str| auth.admit(&Credentials::parse(header).unwrap());
        assert!(admit(
            r#"hmac username="a", algorithm="hmac-sha1", headers="date", signature="x""#
        )
        .is_err());
        assert!(
            admit(r#"hmac username="a", algorithm="hmac-md5", headers="date", signature="x""#)
                .is_err()
        );
        assert!(admit(
            r#"hmac username="a", algorithm="hmac-sha512", headers="request-line", signature="x""#
        )
        .is_err());
        assert_eq!(
            admit(r#"hmac username="a", algorithm="HMAC-SHA512", signature="x""#),
            Ok(Algorithm::HmacSha512)
        );
    }

    #[test]
    fn dates_must_be_within_the_clock_skew() {
        let auth = alice();
        let at = parse_http_date(DATE).unwrap();
        assert_eq!(at, 1_796_119_200);
        assert!(auth.check_date(Some(DATE), at + 300).is_ok());
        assert!(auth.check_date(Some(DATE), at - 300).is_ok());
        assert!(auth.check_date(Some(DATE), at + 301).is_err());
        assert!(auth.check_date(None, at).is_err());
        assert!(auth.check_date(Some("yesterday"), at).is_err());
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 CET"), None);
        assert_eq!(parse_http_date("Thu, 01 Foo 1970 00:00:00 GMT"), None);
    }

    #[test]
    fn digests_cover_the_body() {
        let body = b"{\"amount\":10}";
        let digest = body_digest(body);
        assert!(digest_matches(&digest, body));
        assert!(!digest_matches(&digest, b"{\"amount\":1000}"));
        assert!(!digest_matches("MD5=abc", body));
        assert!(!digest_matches("SHA-256=!!", body));
        let both = format!(
            "{digest}, SHA-512={}",
            STANDARD.encode(Sha512::digest(body))
        );
        assert!(digest_matches(&both, body));
        assert_eq!(
            body_digest(b""),
            "SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let e = auth(json!({"consumers": [{"username": "a", "secret": ""}]})).unwrap_err();
        assert_eq!(e.path(), "consumers[0].secret");
        let e = auth(json!({"consumers": [{"username": "a", "secret": "x"}, {"username": "a", "secret": "y"}]}))
            .unwrap_err();
        assert_eq!(e.path(), "consumers[1].username");
        let e = auth(json!({"consumers": [], "algorithms": []})).unwrap_err();
        assert_eq!(e.path(), "algorithms");
        let e = auth(json!({"consumers": [], "algorithms": ["hmac-md5"]})).unwrap_err();
        assert_eq!(e.path(), "algorithms[0]");
        let e = auth(json!({"consumers": [], "enforce_headers": ["bad header"]})).unwrap_err();
        assert_eq!(e.path(), "enforce_headers[0]");
        let e = auth(json!({"consumers": [], "clock_skew": 0})).unwrap_err();
        assert_eq!(e.path(), "clock_skew");
        assert_eq!(
            auth(json!({"consumers": [], "realm": "api"}))
                .unwrap()
                .challenge(),
            "hmac realm=\"api\""
        );
        assert_eq!(auth(json!({"consumers": []})).unwrap().challenge(), "hmac");
    }
}
