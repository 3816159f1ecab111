//! Redaction for the admin `/config` dump: secrets in plugin configuration never leave the
//! process, whatever the plugin calls them.

use serde_json::Value;

const SECRET_WORDS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "token",
    "key",
    "credential",
    "private",
    "jwks",
    "authorization",
];

pub const REDACTED: &str = "[redacted]";

/// Replaces the value of every object member whose name suggests a secret, at any depth.
pub fn redact_secrets(value: &mut Value) {
    match value {
        Value::Object(members) => {
            for (name, member) in members.iter_mut() {
                if is_secret_name(name) {
                    *member = Value::String(REDACTED.to_string());
                } else {
                    redact_secrets(member);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_nested_secret_members() {
        let mut config = json!({
            "header": "x-api-key",
            "consumers": [{"name": "alice", "api_key": "k-123"}],
            "hmac": {"secret": "s3cr3t", "algorithm": "sha256"},
            "Password": "p"
        });
        redact_secrets(&mut config);
        assert_eq!(config["consumers"][0]["api_key"], REDACTED);
        assert_eq!(config["consumers"][0]["name"], "alice");
        assert_eq!(config["hmac"]["secret"], REDACTED);
        assert_eq!(config["hmac"]["algorithm"], "sha256");
        assert_eq!(config["Password"], REDACTED);
        // "header" names a header, not a secret, and stays readable.
        assert_eq!(config["header"], "x-api-key");
    }
}
