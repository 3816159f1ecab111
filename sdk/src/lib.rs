//! `tollgate-sdk`: the Tollgate plugin SDK.
//!
//! A thin layer over the upstream [`proxy_wasm`] crate (re-exported) with what every
//! API-gateway plugin needs. It uses only the standard proxy-wasm ABI, so a plugin built
//! with it runs unchanged in Tollgate and in Envoy/Istio.
//!
//! | module | what |
//! |---|---|
//! | [`plugin`] | the shape of every plugin: [`Plugin`], the root context [`Root`], [`plugin!`] |
//! | [`config`] | typed JSON configuration; errors name the field (`field "plans.gold.burst": ...`) |
//! | [`route`] | per-route rule tables keyed by the `xds.route_name` property |
//! | [`headers`] | header values as text, whatever bytes were sent (never a panic) |
//! | [`secret`] | secrets compared in a time that does not tell how much matched |
//! | [`property`] | properties read and written with no allocation for the path |
//! | [`consumer`] | the consumer identity set by auth plugins, read by acl, limits, billing |
//! | [`shared`] | counters, token buckets, fixed and sliding windows over shared data (CAS) |
//! | [`metrics`] | metric names with tags (`consumer`, `route`) that hosts export as labels |
//! | [`json`] | get/set/remove/rename/redact JSON fields by dotted path |
//! | [`callout`] | build `dispatch_http_call` requests and read their responses |
//! | [`usage`] | usage records and a bounded backlog for billing |
//! | [`time`] | UTC calendar arithmetic (days, months) for quotas |
//!
//! Pure logic (parsing, bucket and window math, JSON paths, backlog) is plain Rust, unit
//! tested natively; the functions that call the host are small wrappers around it.
//!
//! # Writing a plugin
//!
//! A plugin is three types: its configuration as written (serde), the plugin itself (what
//! the requests of one configuration share, built from the configuration by
//! [`Plugin::from_config`], which checks what serde cannot) and the context of one request
//! (an [`HttpContext`](proxy_wasm::traits::HttpContext)). [`Root`] is the root context: it
//! loads the configuration, refuses an invalid one with a log line naming the field
//! (`consumer-header: invalid configuration: field "header": must not be empty`), keeps
//! the plugin in an `Rc` and creates the request contexts. [`plugin!`] is the module's
//! entry point. Periodic work and shared queues are hooks of [`Plugin`] with defaults.
//!
//! ```no_run
//! use std::rc::Rc;
//!
//! use serde::Deserialize;
//! use tollgate_sdk::config::{ensure, ConfigError};
//! use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
//! use tollgate_sdk::proxy_wasm::types::Action;
//! use tollgate_sdk::Plugin;
//!
//! /// The configuration as written.
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct Config {
//!     header: String,
//! }
//!
//! /// The plugin: what every request of one configuration shares.
//! pub struct ConsumerHeader {
//!     header: String,
//! }
//!
//! impl Plugin for ConsumerHeader {
//!     const NAME: &'static str = "consumer-header";
//!     type Config = Config;
//!     type Request = Request;
//!
//!     fn from_config(config: Config) -> Result<Self, ConfigError> {
//!         ensure(!config.header.is_empty(), "header", "must not be empty")?;
//!         Ok(Self { header: config.header })
//!     }
//!
//!     fn request(plugin: &Rc<Self>, _context_id: u32) -> Request {
//!         Request { plugin: plugin.clone() }
//!     }
//! }
//!
//! /// The context of one request.
//! pub struct Request {
//!     plugin: Rc<ConsumerHeader>,
//! }
//!
//! impl Context for Request {}
//!
//! impl HttpContext for Request {
//!     fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
//!         if let Some(consumer) = tollgate_sdk::consumer::get() {
//!             self.set_http_request_header(&self.plugin.header, Some(&consumer.name));
//!         }
//!         Action::Continue
//!     }
//! }
//!
//! tollgate_sdk::plugin!(ConsumerHeader);
//! ```
//!
//! `just new-plugin NAME` scaffolds a crate of this shape, with the pure logic apart
//! (`src/logic.rs`, unit-tested natively) from the glue (`src/plugin.rs`, wasm32 only).

pub use proxy_wasm;

pub mod callout;
pub mod config;
pub mod consumer;
pub mod global_limit;
pub mod headers;
pub mod json;
pub mod metrics;
pub mod plugin;
pub mod property;
pub mod ratelimit_service;
pub mod route;
pub mod secret;
pub mod shared;
pub mod time;
pub mod usage;

pub use plugin::{Callbacks, Plugin, Root};

/// The guest's heap: blocks of up to 1 KiB from the free lists of `tollgate-heap`'s size
/// classes (a load and a store to allocate or free one, inlined into Rust's allocator entry
/// points), larger ones from dlmalloc written in Rust, in place of the C one of the WASI libc
/// that Rust's standard allocator would reach through two more forwarding functions
/// (`__rdl_alloc`, `malloc`). The host's engine checks the CPU deadline on entry to every
/// guest function, so each function an allocation does not enter is a check saved too.
#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
#[global_allocator]
static ALLOCATOR: tollgate_heap::SizeClasses<dlmalloc::GlobalDlmalloc> =
    tollgate_heap::SizeClasses::new(dlmalloc::GlobalDlmalloc);

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType};

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

/// The host's current time in whole seconds since the Unix epoch: what token lifetimes,
/// signature clocks, sunset dates and quota days are compared with.
pub fn now_secs() -> u64 {
    now_nanos() / 1_000_000_000
}

/// A counter metric (`proxy_define_metric`), e.g. `ext_authz.allowed`, shown by Tollgate
/// on `/metrics` as `ext_authz_allowed{plugin="..."}` and by Envoy among its stats. Define
/// it once (in `from_config`); counting one the host refused does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn define(name: &str) -> Self {
        Self(metrics::define(MetricType::Counter, name))
    }

    /// Adds 1.
    pub fn count(self) {
        if let Some(id) = self.0 {
            metrics::increment(id, 1);
        }
    }
}

/// A property as a string (`request.path`, `xds.route_name`, ...); `None` when missing or
/// not UTF-8.
pub fn property_string(path: &[&str]) -> Option<String> {
    let bytes = property::get(path)?;
    String::from_utf8(bytes).ok()
}

/// The name the host gave this plugin (the `plugin_name` property: the plugin's `name` in a
/// Tollgate policy, `name` in Envoy's plugin configuration), else `default`. Two instances
/// of one module have different names: prefix their shared-data keys with it.
pub fn plugin_name(default: &str) -> String {
    property_string(&["plugin_name"]).unwrap_or_else(|| default.to_owned())
}

/// A property holding an integer (Envoy encodes them as 8 bytes little-endian).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = property::get(path)?;
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

/// Writes `value` in decimal into `buffer` and returns the digits as text: a number for a
/// string without formatting machinery. For a header value, [`decimal_bytes`] saves the
/// check that the digits are UTF-8.
pub fn decimal(value: u64, buffer: &mut [u8; 20]) -> &str {
    std::str::from_utf8(decimal_bytes(value, buffer)).expect("ASCII digits")
}

/// Writes `value` in decimal into `buffer` and returns the digits: a number for a header
/// value without a `String`
/// (`set_http_response_header_bytes("ratelimit-limit", Some(decimal_bytes(n, &mut buffer)))`).
pub fn decimal_bytes(value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    // Two digits a turn: half the divisions, and half the loop turns, each of which the
    // host's engine checks against the CPU deadline.
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut at = buffer.len();
    let mut rest = value;
    while rest >= 100 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        at -= 2;
        buffer[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        let pair = rest as usize * 2;
        at -= 2;
        buffer[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buffer[at] = b'0' + rest as u8;
    }
    &buffer[at..]
}

/// Whether `name` is a header name as HTTP allows it (an RFC 9110 token): not empty, and no
/// pseudo-header (`:path`), space or separator.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
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
    fn header_names_are_tokens() {
        assert!(is_header_name("x-client-id"));
        assert!(is_header_name("X_Odd~Name"));
        assert!(!is_header_name(""));
        assert!(!is_header_name(":path"));
        assert!(!is_header_name("x user"));
    }

    #[test]
    fn decimals_fit_the_buffer() {
        let mut buffer = [0; 20];
        assert_eq!(decimal(0, &mut buffer), "0");
        assert_eq!(decimal(429, &mut buffer), "429");
        assert_eq!(decimal(u64::MAX, &mut buffer), u64::MAX.to_string());
        assert_eq!(decimal_bytes(1_000_000_007, &mut buffer), b"1000000007");
        for value in [1, 9, 10, 99, 100, 101, 999, 12_345, 1_000_000, 1 << 32] {
            assert_eq!(decimal(value, &mut buffer), value.to_string());
        }
    }

    #[test]
    fn integers_decode_little_endian() {
        assert_eq!(decode_u64(&200u64.to_le_bytes()), Some(200));
        assert_eq!(decode_u64(b"abc"), None);
    }
}
