//! Header values as text, whatever bytes the client or the upstream sent.
//!
//! A header value may carry any byte but a control: bytes 0x80–0xFF are allowed (RFC 9110
//! calls them obs-text), and the gateway, like Envoy, passes them on. The `proxy-wasm`
//! crate's text accessors (`get_http_request_header`, `get_http_request_headers`,
//! `hostcalls::get_map_value`, `hostcalls::get_map`, and their response and callout
//! forms) panic on a value that is not UTF-8, and a panic traps the VM: the request fails,
//! so does every other request with a context in that VM, and a client that repeats such a
//! header opens the plugin's circuit. A plugin reads headers through these functions
//! instead (the plugins workspace's lints refuse the others).
//!
//! Each reads the bytes and makes text of them: a value that is UTF-8 as it is (every
//! well-behaved one) costs no copy; in one that is not, each sequence that is not UTF-8
//! becomes U+FFFD, so it matches no credential, origin or media type a configuration names.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

/// The value of `name` (lower case) in `map`, as text; `None` when absent.
pub fn value(map: MapType, name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(map, name).ok().flatten()?;
    Some(text(bytes))
}

/// The value of a request header (or pseudo-header, `:path`), as text.
pub fn request(name: &str) -> Option<String> {
    value(MapType::HttpRequestHeaders, name)
}

/// The value of a response header (or `:status`), as text.
pub fn response(name: &str) -> Option<String> {
    value(MapType::HttpResponseHeaders, name)
}

/// Every pair of `map`, in order, the values as text (names are always ASCII: the host
/// accepts no other).
pub fn pairs(map: MapType) -> Vec<(String, String)> {
    hostcalls::get_map_bytes(map)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name, text(value)))
        .collect()
}

/// Bytes as text: moved when they are UTF-8, else each sequence that is not becomes U+FFFD.
pub fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_keeps_utf8_and_replaces_the_rest() {
        assert_eq!(text(b"bench-key".to_vec()), "bench-key");
        assert_eq!(text("café".as_bytes().to_vec()), "café");
        assert_eq!(text(b"\xff\xfekey".to_vec()), "\u{fffd}\u{fffd}key");
        assert_eq!(text(b"key\x80".to_vec()), "key\u{fffd}");
        assert_eq!(text(Vec::new()), "");
    }
}
