//! The Tollgate test kit: certificates, backends, clients and a harness that runs the
//! gateway binary, for integration tests that exercise the gateway over real sockets.
//! A test describes its gateway with [`scenario::Scenario`]; `tests/README.md` shows how
//! to write one.
#![forbid(unsafe_code)]

pub mod assemblyscript;
pub mod backends;
pub mod billing;
pub mod bundled;
pub mod certs;
pub mod clients;
pub mod credentials;
pub mod fixtures;
pub mod gateway;
pub mod h2frames;
pub mod otlp;
pub mod plugins;
pub mod prometheus;
pub mod python;
pub mod ratelimit;
pub mod redis;
pub mod scenario;
