//! The consumer identity convention shared by auth, access, limit and billing plugins.
//!
//! An **auth plugin** (key-auth, jwt-auth, basic-auth, hmac-auth, token-introspection,
//! ext-authz) that recognises a client first calls [`strip_client_supplied`] on every
//! request (so a client can never forge an identity, whether or not it authenticates) and,
//! once it knows who the client is, calls [`set`]. ([`set`] and [`set_parts`] replace both
//! headers, so a plugin that records a consumer on every request it lets through, and
//! answers the others itself, need not strip first: key-auth saves the two host calls.)
//! **Readers** (acl, rate-limit, quota, metering, transformer) call [`get`].
//!
//! The identity travels two ways:
//! - request headers [`CONSUMER_HEADER`] (`x-tollgate-consumer`: the consumer's name) and
//!   [`GROUPS_HEADER`] (`x-tollgate-consumer-groups`: comma-separated groups), which later
//!   plugins and the upstream service can read;
//! - properties [`CONSUMER_PROPERTY`] (`tollgate_consumer`) and [`GROUPS_PROPERTY`]
//!   (`tollgate_consumer_groups`), set with `proxy_set_property`: per-request values that a
//!   later plugin finds with a single-segment `get_property` (Envoy keeps them as filter
//!   state). [`get`] prefers the property and falls back to the header.
//!
//! Trust: the Tollgate host removes client-sent copies of both headers before the first
//! plugin runs. In Envoy nothing does that for you: the auth plugin's call to
//! [`strip_client_supplied`] is what protects the chain, so put an SDK auth plugin first.
//!
//! ```
//! use tollgate_sdk::consumer::{parse_groups, format_groups};
//! assert_eq!(parse_groups(" admins, ops ,,"), vec!["admins", "ops"]);
//! assert_eq!(format_groups(&["admins".to_string(), "ops".to_string()]), "admins,ops");
//! ```

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

/// Request header carrying the authenticated consumer's name.
pub const CONSUMER_HEADER: &str = "x-tollgate-consumer";
/// Request header carrying the consumer's groups, comma-separated.
pub const GROUPS_HEADER: &str = "x-tollgate-consumer-groups";
/// Property (single segment) mirroring [`CONSUMER_HEADER`].
pub const CONSUMER_PROPERTY: &str = "tollgate_consumer";
/// Property (single segment) mirroring [`GROUPS_HEADER`].
pub const GROUPS_PROPERTY: &str = "tollgate_consumer_groups";

/// An authenticated consumer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Consumer {
    pub name: String,
    pub groups: Vec<String>,
}

impl Consumer {
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> Self {
        Self {
            name: name.into(),
            groups,
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// `"a, b,,c"` → `["a", "b", "c"]`.
pub fn parse_groups(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|group| !group.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `["a", "b"]` → `"a,b"`.
pub fn format_groups(groups: &[String]) -> String {
    groups.join(",")
}

/// Whether `name` can be carried in a header value: non-empty, visible ASCII, no comma.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// Checks the groups of a consumer in a plugin configuration: each must be a valid name
/// ([`is_valid_name`]). `field` is the list's path (`consumers[0].groups`); the error names
/// the group (`consumers[0].groups[1]`).
pub fn check_groups(groups: &[String], field: &str) -> Result<(), crate::config::ConfigError> {
    match groups.iter().position(|group| !is_valid_name(group)) {
        Some(j) => Err(crate::config::ConfigError::new(
            format!("{field}[{j}]"),
            "must be visible ASCII without commas",
        )),
        None => Ok(()),
    }
}

/// Removes any consumer identity headers from the request (call first in auth plugins,
/// in `on_http_request_headers`).
pub fn strip_client_supplied() {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, CONSUMER_HEADER);
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, GROUPS_HEADER);
}

/// Records the authenticated consumer on the request (headers and properties). Call in
/// the request-headers phase (or when resuming a request paused for a callout).
pub fn set(consumer: &Consumer) {
    set_parts(&consumer.name, &format_groups(&consumer.groups));
}

/// [`set`] from borrowed parts: the name and the groups already joined as
/// [`format_groups`] does. Auth plugins that know their consumers at configuration time
/// keep both ready and record a request's consumer without allocating.
pub fn set_parts(name: &str, groups: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, CONSUMER_HEADER, Some(name));
    if groups.is_empty() {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, GROUPS_HEADER);
    } else {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, GROUPS_HEADER, Some(groups));
    }
    crate::property::set(&[CONSUMER_PROPERTY], name.as_bytes());
    crate::property::set(&[GROUPS_PROPERTY], groups.as_bytes());
}

/// The consumer an auth plugin recorded on this request, if any: the property first, then
/// the header.
pub fn get() -> Option<Consumer> {
    let from_property = crate::property_string(&[CONSUMER_PROPERTY]).filter(|n| !n.is_empty());
    if let Some(name) = from_property {
        let groups = crate::property_string(&[GROUPS_PROPERTY]).unwrap_or_default();
        return Some(Consumer::new(name, parse_groups(&groups)));
    }
    let name = crate::headers::request(CONSUMER_HEADER).filter(|name| !name.is_empty())?;
    let groups = crate::headers::request(GROUPS_HEADER).unwrap_or_default();
    Some(Consumer::new(name, parse_groups(&groups)))
}

/// Just the consumer's name (see [`get`]).
pub fn name() -> Option<String> {
    // The name alone: the groups are neither read nor split.
    let from_property = crate::property_string(&[CONSUMER_PROPERTY]).filter(|n| !n.is_empty());
    if from_property.is_some() {
        return from_property;
    }
    crate::headers::request(CONSUMER_HEADER).filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip() {
        let groups = parse_groups("admins, ops ,, billing");
        assert_eq!(groups, ["admins", "ops", "billing"]);
        assert_eq!(format_groups(&groups), "admins,ops,billing");
        assert!(parse_groups("").is_empty());
        let consumer = Consumer::new("alice", groups);
        assert!(consumer.in_group("ops"));
        assert!(!consumer.in_group("op"));
    }

    #[test]
    fn configured_groups_are_checked_by_name() {
        assert!(check_groups(&["gold".into(), "staff".into()], "consumers[0].groups").is_ok());
        let error =
            check_groups(&["gold".into(), "a,b".into()], "consumers[2].groups").unwrap_err();
        assert_eq!(error.path(), "consumers[2].groups[1]");
    }

    #[test]
    fn names_must_fit_a_header() {
        assert!(is_valid_name("alice@example.com"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a,b"));
        assert!(!is_valid_name("a\nb"));
    }
}
