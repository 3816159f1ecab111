//! Typed JSON configuration whose errors name the field.
//!
//! The host hands a plugin its configuration as JSON bytes (an object in `plugins[].config`
//! of a Tollgate policy, or a string holding JSON text, which arrives as its raw bytes;
//! `configuration` in Envoy). [`parse`] turns it into a serde type and, on
//! failure, says where: `field "plans.gold.requests_per_second": invalid type: string "x",
//! expected f64`. Give config structs `#[serde(deny_unknown_fields)]` so typos are errors.
//!
//! ```
//! use serde::Deserialize;
//! #[derive(Deserialize, Debug)]
//! #[serde(deny_unknown_fields)]
//! struct Plan { requests_per_second: f64 }
//! #[derive(Deserialize, Debug)]
//! #[serde(deny_unknown_fields)]
//! struct Config { plans: std::collections::BTreeMap<String, Plan> }
//!
//! let error = tollgate_sdk::config::parse::<Config>(
//!     br#"{"plans": {"gold": {"requests_per_second": "x"}}}"#).unwrap_err();
//! assert_eq!(error.path(), "plans.gold.requests_per_second");
//! assert!(error.to_string().starts_with("field \"plans.gold.requests_per_second\": invalid type"));
//!
//! // Semantic checks after parsing use the same error type:
//! let config = tollgate_sdk::config::parse::<Config>(br#"{"plans": {"gold": {"requests_per_second": 0}}}"#).unwrap();
//! let result = tollgate_sdk::config::ensure(
//!     config.plans["gold"].requests_per_second > 0.0,
//!     "plans.gold.requests_per_second", "must be greater than 0");
//! assert_eq!(result.unwrap_err().to_string(),
//!     "field \"plans.gold.requests_per_second\": must be greater than 0");
//! ```

use std::fmt;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel};
use serde::de::DeserializeOwned;

/// A configuration error: the dotted path of the field (empty for the whole document) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    /// An error about the field at `path` (dotted, e.g. `plans.gold.burst`; `""` for the
    /// configuration as a whole).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The dotted path of the offending field, `""` for the whole configuration.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error one level down: `at("plans.gold")` turns `burst` into `plans.gold.burst`.
    pub fn within(mut self, parent: &str) -> Self {
        self.path = join_path(parent, &self.path);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "field \"{}\": {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Joins two dotted paths, either of which may be empty.
pub fn join_path(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_owned(),
        (_, true) => parent.to_owned(),
        _ => format!("{parent}.{child}"),
    }
}

/// Whether the configuration bytes are absent: empty, only whitespace, or JSON `null`.
pub fn is_empty(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii();
    trimmed.is_empty() || trimmed == b"null"
}

/// Parses a JSON configuration. An absent one (see [`is_empty`]) is the error
/// `configuration is required`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    if is_empty(bytes) {
        return Err(ConfigError::new("", "configuration is required"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, strip_position(&error.inner().to_string()))
    })?;
    deserializer
        .end()
        .map_err(|error| ConfigError::new("", strip_position(&error.to_string())))?;
    Ok(value)
}

/// Like [`parse`], but an absent configuration is `T::default()`.
pub fn parse_or_default<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ConfigError> {
    if is_empty(bytes) {
        Ok(T::default())
    } else {
        parse(bytes)
    }
}

/// `Ok(())` when `condition` holds, else an error about `path`.
pub fn ensure(condition: bool, path: &str, message: &str) -> Result<(), ConfigError> {
    if condition {
        Ok(())
    } else {
        Err(ConfigError::new(path, message))
    }
}

/// Configuration types with checks serde cannot express; see [`parse_validated`].
pub trait Validate {
    /// Checks the parsed value; paths in the error are relative to the configuration root.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// [`parse`] followed by [`Validate::validate`].
pub fn parse_validated<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, ConfigError> {
    let value: T = parse(bytes)?;
    value.validate()?;
    Ok(value)
}

/// A duration as configurations write it: `250ms`, `2s`, `1.5s`, `1m`, `1h`; `None` for
/// anything else (a bare number, a negative one, another unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(number) = text.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else if let Some(number) = text.strip_suffix('h') {
        (number, 3600.0)
    } else {
        return None;
    };
    let value: f64 = number.trim().parse().ok()?;
    // `try_`: a finite value can still be past what a `Duration` holds (`1e20s`), which
    // `from_secs_f64` would answer with a panic, trapping `on_configure`.
    Duration::try_from_secs_f64(value * scale).ok()
}

/// serde_json appends ` at line 1 column 42`; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) if message[index..].contains(" column ") => message[..index].to_owned(),
        _ => message.to_owned(),
    }
}

/// The plugin configuration bytes (`on_configure`), empty when there is none.
pub fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// For `on_configure`: reads and parses the plugin configuration; on failure logs
/// `PLUGIN: invalid configuration: field "...": ...` at error level and returns `None`
/// (return `false` from `on_configure` then, which rejects the plugin).
pub fn load<T: DeserializeOwned>(plugin: &str) -> Option<T> {
    report(plugin, parse(&plugin_configuration()))
}

/// [`load`] followed by [`Validate::validate`].
pub fn load_validated<T: DeserializeOwned + Validate>(plugin: &str) -> Option<T> {
    report(plugin, parse_validated(&plugin_configuration()))
}

/// Logs the error of a configuration result as [`load`] does.
pub fn report<T>(plugin: &str, result: Result<T, ConfigError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            crate::log(
                LogLevel::Error,
                &format!("{plugin}: invalid configuration: {error}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize, Debug, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Plan {
        requests_per_second: f64,
        #[serde(default)]
        burst: Option<u64>,
    }

    #[derive(Deserialize, Debug, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        plans: BTreeMap<String, Plan>,
        #[serde(default)]
        list: Vec<Plan>,
    }

    #[test]
    fn wrong_type_names_the_nested_field() {
        let error = parse::<Config>(br#"{"plans": {"gold": {"requests_per_second": "many"}}}"#)
            .unwrap_err();
        assert_eq!(error.path(), "plans.gold.requests_per_second");
        assert_eq!(
            error.to_string(),
            "field \"plans.gold.requests_per_second\": invalid type: string \"many\", expected f64"
        );
    }

    #[test]
    fn unknown_field_names_the_parent_and_the_field() {
        let error =
            parse::<Config>(br#"{"list": [{"requests_per_second": 1, "brust": 2}]}"#).unwrap_err();
        assert_eq!(error.path(), "list[0].brust");
        assert!(error.message().contains("unknown field `brust`"), "{error}");
    }

    #[test]
    fn missing_configuration_is_required_unless_defaulted() {
        assert_eq!(
            parse::<Config>(b"").unwrap_err().to_string(),
            "configuration is required"
        );
        assert_eq!(
            parse::<Config>(b" null ").unwrap_err().to_string(),
            "configuration is required"
        );
        assert_eq!(parse_or_default::<Config>(b"").unwrap(), Config::default());
        assert_eq!(
            parse_or_default::<Config>(b"{}").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn syntax_errors_have_no_path() {
        let error = parse::<Config>(b"{\"plans\": ").unwrap_err();
        assert!(error.message().contains("EOF"), "{error}");
        let error = parse::<Config>(b"{} {}").unwrap_err();
        assert_eq!(error.path(), "");
        assert!(error.message().contains("trailing"), "{error}");
    }

    #[test]
    fn durations_have_a_unit() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1d"), None);
        // Finite but past what a duration holds: refused, not a panic.
        assert_eq!(parse_duration("1e20s"), None);
        assert_eq!(parse_duration("1e300h"), None);
        assert_eq!(parse_duration("infs"), None);
        assert_eq!(parse_duration("NaNs"), None);
    }

    #[test]
    fn validation_errors_compose_paths() {
        let error = ensure(false, "burst", "must be at least 1")
            .unwrap_err()
            .within("plans.gold");
        assert_eq!(
            error.to_string(),
            "field \"plans.gold.burst\": must be at least 1"
        );
        assert!(ensure(true, "x", "never").is_ok());
    }
}
