//! `tollgate-sdk`: the Tollgate plugin SDK.
//!
//! A thin layer over the upstream [`proxy_wasm`] crate (re-exported) with what every
//! API-gateway plugin needs. It uses only the standard proxy-wasm ABI, so a plugin built
//! with it runs unchanged in Tollgate and in Envoy/Istio.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | typed JSON configuration; errors name the field (`field "plans.gold.burst": ...`) |
//! | [`route`] | per-route rule tables keyed by the `xds.route_name` property |
//! | [`consumer`] | the consumer identity set by auth plugins, read by acl, limits, billing |
//! | [`shared`] | counters, token buckets, fixed and sliding windows over shared data (CAS) |
//! | [`json`] | get/set/remove/rename/redact JSON fields by dotted path |
//! | [`callout`] | build `dispatch_http_call` requests and read their responses |
//! | [`usage`] | usage records and a bounded backlog for billing |
//! | [`time`] | UTC calendar arithmetic (days, months) for quotas |
//!
//! Pure logic (parsing, bucket and window math, JSON paths, backlog) is plain Rust, unit
//! tested natively; the functions that call the host are small wrappers around it.
//!
//! # Example: a plugin skeleton
//!
//! ```no_run
//! use serde::Deserialize;
//! use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
//! use tollgate_sdk::proxy_wasm::types::{Action, ContextType};
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config { header: String }
//!
//! struct Root { config: Option<std::rc::Rc<Config>> }
//! impl Context for Root {}
//! impl RootContext for Root {
//!     fn on_configure(&mut self, _size: usize) -> bool {
//!         // Logs `my-plugin: invalid configuration: field "header": ...` and returns None.
//!         self.config = tollgate_sdk::config::load::<Config>("my-plugin").map(Into::into);
//!         self.config.is_some()
//!     }
//!     fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
//!         Some(Box::new(Http { config: self.config.clone()? }))
//!     }
//!     fn get_type(&self) -> Option<ContextType> { Some(ContextType::HttpContext) }
//! }
//! struct Http { config: std::rc::Rc<Config> }
//! impl Context for Http {}
//! impl HttpContext for Http {
//!     fn on_http_request_headers(&mut self, _n: usize, _end: bool) -> Action {
//!         if let Some(consumer) = tollgate_sdk::consumer::get() {
//!             self.set_http_request_header(&self.config.header, Some(&consumer.name));
//!         }
//!         Action::Continue
//!     }
//! }
//! ```

pub use proxy_wasm;

pub mod callout;
pub mod config;
pub mod consumer;
pub mod json;
pub mod plugin;
pub mod route;
pub mod shared;
pub mod time;
pub mod usage;

pub use plugin::{Plugin, Root};

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

/// Logs `message` at `level` through the host (`proxy_log`); never fails.
pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// The host's current time in nanoseconds since the Unix epoch
/// (`proxy_get_current_time_nanoseconds`), 0 if the host cannot tell.
pub fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// A property as a string (`request.path`, `xds.route_name`, ...); `None` when missing or
/// not UTF-8.
pub fn property_string(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    String::from_utf8(bytes).ok()
}

/// A property holding an integer (Envoy encodes them as 8 bytes little-endian).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    decode_u64(&bytes)
}

/// Decodes an 8-byte little-endian integer property.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The client's IP address, from the `source.address` property (`ip:port`, IPv6 as
/// `[ip]:port`), without the port.
pub fn client_ip() -> Option<String> {
    let mut address = property_string(&["source", "address"])?;
    // Cut the host's copy down to the IP in place instead of copying the IP out of it.
    let ip = strip_port(&address);
    let (start, len) = (ip.as_ptr() as usize - address.as_ptr() as usize, ip.len());
    address.truncate(start + len);
    address.drain(..start);
    Some(address)
}

/// Writes `value` in decimal into `buffer` and returns the digits: a number for a header
/// value without a `String` (`set_http_response_header("ratelimit-limit", Some(decimal(n,
/// &mut buffer)))`).
pub fn decimal(value: u64, buffer: &mut [u8; 20]) -> &str {
    let mut at = buffer.len();
    let mut rest = value;
    loop {
        at -= 1;
        buffer[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[at..]).expect("ASCII digits")
}

/// `"1.2.3.4:80"` → `"1.2.3.4"`, `"[::1]:80"` → `"::1"`; anything else is returned whole.
pub fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("10.0.0.1:5678"), "10.0.0.1");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("host"), "host");
    }

    #[test]
    fn decimals_fit_the_buffer() {
        let mut buffer = [0; 20];
        assert_eq!(decimal(0, &mut buffer), "0");
        assert_eq!(decimal(429, &mut buffer), "429");
        assert_eq!(decimal(u64::MAX, &mut buffer), u64::MAX.to_string());
    }

    #[test]
    fn integers_decode_little_endian() {
        assert_eq!(decode_u64(&200u64.to_le_bytes()), Some(200));
        assert_eq!(decode_u64(b"abc"), None);
    }
}
