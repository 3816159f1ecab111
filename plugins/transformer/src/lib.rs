//! `transformer`: changes request and response headers and JSON bodies.
//!
//! Headers: `remove`, `rename`, `set` (replace), `add` (only when absent), in that order.
//! JSON bodies (content type `application/json` or `application/*+json`): `remove`,
//! `rename`, `redact`, `set`, `add` on dotted paths such as `user.address.city` or
//! `items.0.id` (`*` matches every element in `remove` and `redact`). When a JSON body will
//! be rewritten, `content-length` is removed in the headers phase and the gateway (or Envoy)
//! frames the new body; other bodies pass through untouched, as do bodies that fail to parse.
//!
//! ```json
//! { "request":  { "headers": { "set": { "x-gateway": "tollgate" } } },
//!   "response": { "json": { "redact": ["user.password"], "remove": ["internal"] } } }
//! ```

pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
