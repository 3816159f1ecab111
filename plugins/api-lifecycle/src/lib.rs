//! `api-lifecycle`: versioning and deprecation per route.
//!
//! Per route (by `xds.route_name`): `deprecated` adds `Deprecation`, `Sunset` and
//! `Link: <...>; rel="deprecation"` response headers; `retired: true` (or a passed sunset
//! with `enforce_sunset`) answers `410 Gone` with a JSON body; `mock` answers locally for
//! APIs still in design, without calling the upstream.
//!
//! ```json
//! { "routes": { "orders-v1": { "deprecated": { "sunset": "2027-01-01T00:00:00Z", "link": "https://docs.example.com/v2" } },
//!               "orders-v0": { "retired": true },
//!               "orders-v3": { "mock": { "status": 200, "body": { "orders": [] } } } } }
//! ```

pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
