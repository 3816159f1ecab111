//! `hmac-auth`: requests signed with a secret the gateway shares with the consumer.
//!
//! `Authorization: hmac username="alice", algorithm="hmac-sha256", headers="date
//! request-line", signature="<base64>"` (or the scheme `Signature`) carries an HMAC of the
//! listed headers; `request-line` stands for `METHOD PATH HTTP/x`. The gateway rebuilds
//! the signing string, checks the signature with the consumer's secret, the `X-Date` /
//! `Date` against its clock and, with `validate_request_body`, the `Digest` against the
//! body. A match sets the consumer identity; anything else is answered `401` with
//! `WWW-Authenticate: hmac`.
//!
//! ```json
//! { "consumers": [ { "username": "alice", "secret": "s3cret", "groups": ["ops"] } ],
//!   "enforce_headers": ["date", "request-line"] }
//! ```
//!
//! The pure logic lives in [`logic`] (native unit tests); the proxy-wasm glue is built for
//! wasm32.

pub mod logic;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod plugin;
