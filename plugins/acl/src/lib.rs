//! `acl`: consumer groups allowed or denied per route and method.
//!
//! Runs after an auth plugin (key-auth, jwt-auth, basic-auth, hmac-auth, token-introspection,
//! ext-authz) and reads the consumer identity it recorded (`tollgate_sdk::consumer`). Rules
//! are chosen by the route name (`xds.route_name`, so one instance scopes itself per route
//! in Envoy too): the first rule whose `methods` include the request's method decides. A
//! request without a consumer is answered `401` (unless `require_consumer: false`); a
//! denied one `403`.
//!
//! ```json
//! { "routes": { "orders": [ { "methods": ["GET"], "allow": ["readers", "admins"] },
//!                           { "methods": ["POST", "DELETE"], "allow": ["admins"] } ] } }
//! ```

pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
