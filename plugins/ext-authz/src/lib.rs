//! `ext-authz`: an external HTTP authorization service decides every request.
//!
//! On the request headers the plugin sends a check request (`proxy_http_call`) to the
//! configured cluster, carrying the client's `allowed_headers` and the original method,
//! path, host and scheme as `x-forwarded-method`, `x-forwarded-uri`, `x-forwarded-host`,
//! `x-forwarded-proto`, and pauses the request until the answer:
//! - `2xx`: allowed; the `headers_to_upstream` of the answer are set on the request (and
//!   `consumer_header` / `groups_header` become the SDK consumer identity), then it resumes;
//! - `3xx` / `4xx`: denied; the client gets that status, the answer's body and its
//!   `headers_to_client`;
//! - `5xx`, a timeout, a reset or a failed dispatch: an error; `failure_mode_allow` lets the
//!   request through (marked `x-ext-authz-failure-mode-allowed: true`), else the client gets
//!   `status_on_error` (default `403`, as Envoy's ext_authz).
//!
//! ```json
//! { "cluster": "authz", "path": "/check", "allowed_headers": ["authorization"],
//!   "headers_to_upstream": ["x-user"], "consumer_header": "x-user", "timeout_ms": 200 }
//! ```
//!
//! The pure logic lives in [`logic`] (native unit tests); the proxy-wasm glue is built for
//! wasm32, and natively with the `native-bench` feature for the benches in plugins/bench.

pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
