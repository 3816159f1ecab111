//! `ip-restriction`: CIDR allow and deny lists (IPv4 and IPv6) for the client address.
//!
//! The client is the connection's peer (`source.address`) or, behind `trusted_hops`
//! trusted proxies, the Nth address from the right of `X-Forwarded-For`. `deny` is checked
//! first; a non-empty `allow` admits only its ranges. Refused requests get `403` (or
//! `status`) with a JSON body.
//!
//! ```json
//! { "allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.9.0.0/16"], "trusted_hops": 1 }
//! ```

pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
