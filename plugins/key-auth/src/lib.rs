//! `key-auth`: an API key from a request header or query parameter identifies the consumer.
//!
//! The key is looked for in the headers named by `key_names` (default `apikey`, `x-api-key`),
//! then in query parameters of the same names. A known key sets the consumer identity
//! (`x-tollgate-consumer`, `x-tollgate-consumer-groups`, see `tollgate_sdk::consumer`) and,
//! with `hide_credentials` (default), the key is removed before the request is forwarded.
//! A missing or unknown key is answered `401` with `WWW-Authenticate: Key realm="..."`.
//!
//! ```json
//! { "consumers": [ { "name": "alice", "keys": ["k-123"], "groups": ["gold"] } ] }
//! ```
//!
//! The pure logic lives in [`logic`] (native unit tests); the proxy-wasm glue is built for
//! wasm32, and natively with the `native-bench` feature for the benches in plugins/bench.

pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
