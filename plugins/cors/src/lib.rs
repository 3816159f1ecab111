//! `cors`: answers CORS preflights locally and adds CORS headers to responses.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//! `204` with `Access-Control-Allow-*` headers when origin, method and requested headers
//! are allowed, `403` otherwise; it never reaches the upstream. Other requests with an
//! allowed `Origin` get `Access-Control-Allow-Origin` (and credentials / expose headers)
//! on their response, plus `Vary: Origin`.
//!
//! ```json
//! { "allow_origins": ["https://app.example.com", "https://*.example.com"],
//!   "allow_methods": ["GET", "POST"], "allow_credentials": true, "max_age": 600 }
//! ```

pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
