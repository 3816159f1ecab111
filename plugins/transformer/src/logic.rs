//! Pure transformer logic: configuration, header operations and JSON body operations.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::json;

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Changes to the request before it is forwarded.
    #[serde(default)]
    pub request: Phase,
    /// Changes to the response before it is returned to the client.
    #[serde(default)]
    pub response: Phase,
}

/// Header and JSON body changes for one direction.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    #[serde(default)]
    pub headers: HeaderOps,
    #[serde(default)]
    pub json: JsonOps,
}

/// Header operations, applied in the order remove, rename, set, add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
    /// old name → new name (every value moves).
    #[serde(default, deserialize_with = "header_pairs")]
    pub rename: HeaderPairs,
    /// name → value, replacing any present value.
    #[serde(default, deserialize_with = "header_pairs")]
    pub set: HeaderPairs,
    /// name → value, only when the header is absent.
    #[serde(default, deserialize_with = "header_pairs")]
    pub add: HeaderPairs,
}

/// Header operations as (name, value) pairs, one per name, in name order: written as a map,
/// kept as a list, which every request walks more cheaply than a map.
pub type HeaderPairs = Vec<(String, String)>;

fn header_pairs<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<HeaderPairs, D::Error> {
    BTreeMap::<String, String>::deserialize(deserializer).map(|map| map.into_iter().collect())
}

/// JSON body operations on dotted paths (`user.address.city`, `items.0.id`; `*` matches
/// every element of an array or object in `remove` and `redact`), applied in the order
/// remove, rename, redact, set, add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonOps {
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    #[serde(default)]
    pub redact: Vec<String>,
    /// The value written over redacted fields.
    #[serde(default = "default_redaction")]
    pub redact_with: Value,
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    #[serde(default)]
    pub add: BTreeMap<String, Value>,
}

fn default_redaction() -> Value {
    Value::String("[REDACTED]".into())
}

impl JsonOps {
    /// Whether any body operation is configured.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.redact.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}

impl Config {
    /// Checks names and paths; the error names the field. Lower-cases header names.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        for (phase_name, phase) in [
            ("request", &mut self.request),
            ("response", &mut self.response),
        ] {
            phase.headers.validate(&format!("{phase_name}.headers"))?;
            phase.json.validate(&format!("{phase_name}.json"))?;
        }
        Ok(self)
    }
}

fn check_header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    if !tollgate_sdk::is_header_name(name) {
        return Err(ConfigError::new(
            field,
            format!("{name:?} is not a valid header name (pseudo-headers cannot be changed)"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower == "content-length" || lower == "transfer-encoding" {
        return Err(ConfigError::new(
            field,
            format!("{name} is managed by the gateway and cannot be changed"),
        ));
    }
    Ok(lower)
}

fn check_header_value(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(ConfigError::new(
            field,
            "header values cannot contain CR, LF or NUL",
        ));
    }
    Ok(())
}

fn lower_map(
    field: &str,
    map: &mut HeaderPairs,
    values_are_names: bool,
) -> Result<(), ConfigError> {
    // Names that differ only in case become one: the last in name order wins.
    let mut out = BTreeMap::new();
    for (name, value) in std::mem::take(map) {
        let key = check_header_name(&format!("{field}.{name}"), &name)?;
        let value = if values_are_names {
            check_header_name(&format!("{field}.{name}"), &value)?
        } else {
            check_header_value(&format!("{field}.{name}"), &value)?;
            value
        };
        out.insert(key, value);
    }
    *map = out.into_iter().collect();
    Ok(())
}

impl HeaderOps {
    fn validate(&mut self, field: &str) -> Result<(), ConfigError> {
        for (i, name) in self.remove.iter_mut().enumerate() {
            *name = check_header_name(&format!("{field}.remove[{i}]"), name)?;
        }
        lower_map(&format!("{field}.rename"), &mut self.rename, true)?;
        lower_map(&format!("{field}.set"), &mut self.set, false)?;
        lower_map(&format!("{field}.add"), &mut self.add, false)?;
        Ok(())
    }

    /// Applies the operations to a header list (lower-case names; pseudo-headers untouched),
    /// its values text or bytes.
    pub fn apply<V: for<'a> From<&'a str>>(&self, headers: &mut Vec<(String, V)>) {
        headers.retain(|(name, _)| !self.remove.contains(name));
        for (from, to) in &self.rename {
            if headers.iter().any(|(name, _)| name == from) {
                headers.retain(|(name, _)| name != to);
                for (name, _) in headers.iter_mut() {
                    if name == from {
                        *name = to.clone();
                    }
                }
            }
        }
        for (name, value) in &self.set {
            headers.retain(|(n, _)| n != name);
            headers.push((name.clone(), V::from(value)));
        }
        for (name, value) in &self.add {
            if !headers.iter().any(|(n, _)| n == name) {
                headers.push((name.clone(), V::from(value)));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}

fn check_path(field: &str, path: &str, wildcard: bool) -> Result<(), ConfigError> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(ConfigError::new(
            field,
            format!("{path:?} is not a dotted path like \"user.address.city\""),
        ));
    }
    if !wildcard && path.split('.').any(|s| s == "*") {
        return Err(ConfigError::new(
            field,
            format!("{path:?}: `*` is only allowed in remove and redact"),
        ));
    }
    Ok(())
}

impl JsonOps {
    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        for (i, path) in self.remove.iter().enumerate() {
            check_path(&format!("{field}.remove[{i}]"), path, true)?;
        }
        for (i, path) in self.redact.iter().enumerate() {
            check_path(&format!("{field}.redact[{i}]"), path, true)?;
        }
        for (from, to) in &self.rename {
            check_path(&format!("{field}.rename.{from}"), from, false)?;
            check_path(&format!("{field}.rename.{from}"), to, false)?;
        }
        for path in self.set.keys() {
            check_path(&format!("{field}.set.{path}"), path, false)?;
        }
        for path in self.add.keys() {
            check_path(&format!("{field}.add.{path}"), path, false)?;
        }
        Ok(())
    }

    /// Applies the operations to a parsed document.
    pub fn apply(&self, doc: &mut Value) {
        for path in &self.remove {
            json::remove(doc, path);
        }
        for (from, to) in &self.rename {
            if let Some(value) = json::get(doc, from).cloned() {
                json::remove(doc, from);
                json::set(doc, to, value);
            }
        }
        for path in &self.redact {
            json::redact(doc, path, self.redact_with.clone());
        }
        for (path, value) in &self.set {
            json::set(doc, path, value.clone());
        }
        for (path, value) in &self.add {
            if json::get(doc, path).is_none() {
                json::set(doc, path, value.clone());
            }
        }
    }

    /// Transforms a JSON body; `None` when it is not valid JSON (pass it through untouched).
    pub fn transform(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut doc = json::parse_body(body)?;
        self.apply(&mut doc);
        serde_json::to_vec(&doc).ok()
    }
}

/// Whether a `content-type` is JSON (`application/json`, `application/*+json`).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(json::is_json_content_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(json: Value) -> Result<Config, String> {
        tollgate_sdk::config::parse::<Config>(json.to_string().as_bytes())
            .and_then(Config::validate)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn header_operations_in_order() {
        let cfg = config(json!({"request": {"headers": {
            "remove": ["X-Drop"], "rename": {"x-old": "x-new"},
            "set": {"x-set": "s"}, "add": {"x-add": "a", "x-keep": "no"}
        }}}))
        .unwrap();
        let mut headers: Vec<(String, String)> = [
            (":path", "/"),
            ("x-drop", "1"),
            ("x-old", "o1"),
            ("x-old", "o2"),
            ("x-new", "gone"),
            ("x-set", "before"),
            ("x-keep", "yes"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        cfg.request.headers.apply(&mut headers);
        let find = |n: &str| {
            headers
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert!(find("x-drop").is_empty());
        assert_eq!(find("x-new"), ["o1", "o2"]);
        assert!(find("x-old").is_empty());
        assert_eq!(find("x-set"), ["s"]);
        assert_eq!(find("x-add"), ["a"]);
        assert_eq!(find("x-keep"), ["yes"]);
        assert_eq!(find(":path"), ["/"]);
    }

    #[test]
    fn header_operations_on_bytes_leave_values_that_are_not_utf8_as_they_came() {
        // A rename reads and writes the whole map: every other value, text or not, goes
        // back byte for byte.
        let cfg = config(json!({"request": {"headers": {
            "rename": {"x-old": "x-new"}, "set": {"x-set": "s"}
        }}}))
        .unwrap();
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            ("x-old".into(), b"o\xff".to_vec()),
            ("x-junk".into(), b"\xfe\x80 junk".to_vec()),
        ];
        cfg.request.headers.apply(&mut headers);
        assert_eq!(
            headers,
            [
                ("x-new".to_string(), b"o\xff".to_vec()),
                ("x-junk".to_string(), b"\xfe\x80 junk".to_vec()),
                ("x-set".to_string(), b"s".to_vec()),
            ]
        );
    }

    #[test]
    fn json_operations_on_nested_paths() {
        let cfg = config(json!({"response": {"json": {
            "remove": ["internal", "items.*.secret"],
            "rename": {"user.mail": "user.email"},
            "redact": ["user.password", "cards.*.number"],
            "set": {"meta.version": 2},
            "add": {"meta.source": "gw", "user.name": "ignored"}
        }}}))
        .unwrap();
        let mut doc = json!({
            "internal": true,
            "items": [{"id": 1, "secret": "a"}, {"id": 2, "secret": "b"}],
            "user": {"name": "ann", "mail": "a@x", "password": "pw"},
            "cards": [{"number": "4111"}]
        });
        cfg.response.json.apply(&mut doc);
        assert_eq!(
            doc,
            json!({
                "items": [{"id": 1}, {"id": 2}],
                "user": {"name": "ann", "email": "a@x", "password": "[REDACTED]"},
                "cards": [{"number": "[REDACTED]"}],
                "meta": {"version": 2, "source": "gw"}
            })
        );
    }

    #[test]
    fn non_json_passes_through() {
        let ops = config(json!({"request": {"json": {"remove": ["a"]}}}))
            .unwrap()
            .request
            .json;
        assert_eq!(ops.transform(b"not json"), None);
        assert_eq!(ops.transform(br#"{"a":1,"b":2}"#).unwrap(), br#"{"b":2}"#);
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(is_json(Some("application/problem+json")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }

    #[test]
    fn array_indices_and_missing_paths() {
        let ops = config(
            json!({"request": {"json": {"remove": ["a.1"], "set": {"b.0.c": 1, "s.x": 1}}}}),
        )
        .unwrap()
        .request
        .json;
        let mut doc = json!({"a": [1, 2, 3], "b": [{}], "s": "scalar"});
        ops.apply(&mut doc);
        assert_eq!(doc, json!({"a": [1, 3], "b": [{"c": 1}], "s": "scalar"}));
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let e = config(json!({"request": {"headers": {"set": {":path": "/x"}}}})).unwrap_err();
        assert!(e.starts_with("field \"request.headers.set.:path\""), "{e}");
        let e = config(json!({"response": {"json": {"remove": ["a..b"]}}})).unwrap_err();
        assert!(e.starts_with("field \"response.json.remove[0]\""), "{e}");
        let e = config(json!({"response": {"json": {"set": {"a.*": 1}}}})).unwrap_err();
        assert!(e.starts_with("field \"response.json.set.a.*\""), "{e}");
        let e = config(json!({"request": {"header": {}}})).unwrap_err();
        assert!(e.contains("header"), "{e}");
        let e = config(json!({"request": {"headers": {"add": {"x": "a\nb"}}}})).unwrap_err();
        assert!(e.starts_with("field \"request.headers.add.x\""), "{e}");
    }
}
