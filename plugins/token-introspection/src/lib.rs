//! `token-introspection`: OAuth 2.0 bearer tokens checked with the authorization server's
//! introspection endpoint (RFC 7662).
//!
//! The token of `Authorization: Bearer ...` is posted to `path` on `cluster`
//! (`token=...&token_type_hint=access_token`, the gateway's client credentials in HTTP
//! Basic). An active token with the `required_scopes` lets the request through with the
//! consumer named by `consumer_claim` and the claims of `forward_claims` as headers; an
//! inactive one is answered `401` (`WWW-Authenticate: Bearer error="invalid_token"`),
//! missing scopes `403` (`error="insufficient_scope"`). Answers are cached in shared data
//! (all workers), in at most `cache_entries` places chosen by a hash of the token: active
//! ones until `exp`, at most `cache_ttl`; inactive ones for `negative_cache_ttl`. A server that is down or too slow gets the
//! request `503` (`failure_mode: deny`) or lets it through (`allow`).
//!
//! ```json
//! { "cluster": "idp", "path": "/oauth2/introspect", "client_id": "gateway",
//!   "client_secret": "s3cret", "required_scopes": ["orders:read"] }
//! ```
//!
//! The pure logic lives in [`logic`] (native unit tests); the proxy-wasm glue is built for
//! wasm32.

pub mod logic;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod plugin;
