//! Pure basic-auth logic: credentials parsing and password checks.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::{consumer, secret};

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub consumers: Vec<Consumer>,
    /// The realm of the `WWW-Authenticate: Basic realm="..."` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Remove the `Authorization` header before forwarding.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
}

/// A consumer: its name is the user name; exactly one of `password` (plain text) or
/// `password_sha256` (hex SHA-256 of the password) is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub name: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_sha256: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

fn default_realm() -> String {
    "tollgate".into()
}
fn yes() -> bool {
    true
}

/// The validated configuration: password digests per user.
#[derive(Debug, Clone)]
pub struct BasicAuth {
    pub config: Config,
    digests: Vec<[u8; 32]>,
}

impl BasicAuth {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let mut digests = Vec::new();
        for (i, consumer) in config.consumers.iter().enumerate() {
            if !consumer::is_valid_name(&consumer.name) || consumer.name.contains(':') {
                return Err(ConfigError::new(
                    format!("consumers[{i}].name"),
                    "must be visible ASCII without commas or colons",
                ));
            }
            if config.consumers[..i]
                .iter()
                .any(|c| c.name == consumer.name)
            {
                return Err(ConfigError::new(
                    format!("consumers[{i}].name"),
                    "two consumers have this name",
                ));
            }
            consumer::check_groups(&consumer.groups, &format!("consumers[{i}].groups"))?;
            let digest = match (&consumer.password, &consumer.password_sha256) {
                (Some(password), None) => Sha256::digest(password.as_bytes()).into(),
                (None, Some(hex)) => parse_hex(hex).ok_or_else(|| {
                    ConfigError::new(
                        format!("consumers[{i}].password_sha256"),
                        "must be 64 hexadecimal digits",
                    )
                })?,
                _ => {
                    return Err(ConfigError::new(
                        format!("consumers[{i}].password"),
                        "give exactly one of password and password_sha256",
                    ))
                }
            };
            digests.push(digest);
        }
        if config.realm.contains(['"', '\\']) {
            return Err(ConfigError::new(
                "realm",
                "cannot contain quotes or backslashes",
            ));
        }
        Ok(Self { config, digests })
    }

    /// The consumer whose credentials an `Authorization: Basic ...` value carries.
    pub fn authenticate(&self, authorization: &str) -> Option<&Consumer> {
        let (scheme, encoded) = authorization.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = STANDARD.decode(encoded.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let index = self.config.consumers.iter().position(|c| c.name == user)?;
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        secret::same_bytes(&digest, &self.digests[index]).then(|| &self.config.consumers[index])
    }

    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.config.realm)
    }
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth(config: serde_json::Value) -> Result<BasicAuth, ConfigError> {
        tollgate_sdk::config::parse::<Config>(config.to_string().as_bytes())
            .and_then(BasicAuth::new)
    }

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", STANDARD.encode(user_pass))
    }

    #[test]
    fn plain_and_hashed_passwords() {
        let hashed = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"; // "password"
        let a = auth(
            json!({"consumers": [{"name": "ann", "password": "s3cret", "groups": ["ops"]},
                                          {"name": "bob", "password_sha256": hashed}]}),
        )
        .unwrap();
        assert_eq!(
            a.authenticate(&basic("ann:s3cret")).unwrap().groups,
            ["ops"]
        );
        assert_eq!(a.authenticate(&basic("bob:password")).unwrap().name, "bob");
        assert!(a.authenticate(&basic("bob:Password")).is_none());
        assert!(a.authenticate(&basic("eve:s3cret")).is_none());
        assert!(a.authenticate("Bearer x").is_none());
        assert!(a.authenticate("Basic !!!").is_none());
        assert_eq!(a.challenge(), "Basic realm=\"tollgate\", charset=\"UTF-8\"");
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let e =
            auth(json!({"consumers": [{"name": "a", "password": "x", "password_sha256": "00"}]}))
                .unwrap_err();
        assert_eq!(e.path(), "consumers[0].password");
        let e = auth(json!({"consumers": [{"name": "a", "password_sha256": "zz"}]})).unwrap_err();
        assert_eq!(e.path(), "consumers[0].password_sha256");
        let e = auth(json!({"consumers": [{"name": "a:b", "password": "x"}]})).unwrap_err();
        assert_eq!(e.path(), "consumers[0].name");
        assert!(auth(json!({"consumers": [], "realms": "x"}))
            .unwrap_err()
            .to_string()
            .contains("realms"));
    }
}
