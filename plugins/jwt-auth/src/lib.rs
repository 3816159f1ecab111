//! `jwt-auth`: a JWT bearer token (HS256, RS256/384/512, PS256/384/512, ES256, ES384 or
//! EdDSA, verified with inline keys and/or a key set fetched from a cluster) identifies
//! the consumer.
//!
//! With `jwks`, the key set is fetched from a cluster and refreshed; every worker's VM may
//! fetch, and a lease in shared data makes it one fetch per interval per gateway (see
//! [`jwks`] and the crate README).
//!
//! The token comes from `Authorization: Bearer <token>` (or another header, or a query
//! parameter). Its signature is checked with the configured key of the token's `alg` (and
//! `kid` when present); `exp`, `nbf` and `iat` are checked with `leeway_seconds`, `iss`
//! and `aud` against `issuers` and `audiences`. A valid token sets the consumer identity
//! from `consumer_claim` (and groups from `groups_claim`) and copies `claims_to_headers`
//! onto the request; anything else is answered `401` with
//! `WWW-Authenticate: Bearer realm="...", error="invalid_token", error_description="<reason>"`.
//!
//! ```json
//! { "keys": [{ "kid": "k1", "kty": "oct", "alg": "HS256", "k": "<base64url secret>" }],
//!   "issuers": ["https://id.example.com"], "audiences": ["shop"],
//!   "claims_to_headers": { "sub": "x-user-id" } }
//! ```

pub mod jwks;
pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
