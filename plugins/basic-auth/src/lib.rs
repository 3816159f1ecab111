//! `basic-auth`: HTTP Basic credentials identify the consumer.
//!
//! `Authorization: Basic base64(user:password)` is checked against the configured
//! consumers (plain or SHA-256-hashed passwords); a match sets the consumer identity and
//! removes the header (unless `hide_credentials: false`); anything else is answered `401`
//! with `WWW-Authenticate: Basic realm="..."`.
//!
//! ```json
//! { "realm": "shop", "consumers": [ { "name": "ann", "password_sha256": "<hex>", "groups": ["ops"] } ] }
//! ```

pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
