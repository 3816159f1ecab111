//! Policies: reading the policy folder, merging its files and validating them into the typed
//! model the gateway runs on.
//!
//! The layers follow the data, each file depending only on those before it:
//!
//! | file | role |
//! |---|---|
//! | [`raw`] | the documents as written (serde, unknown fields rejected) |
//! | [`model`] | what survives validation: durations parsed, regexes compiled, names resolved; no serde types |
//! | [`effective`] | the effective view admin `/config` shows: merged, secrets redacted, defaults filled in |
//! | [`validate`] | raw → model, every error naming its file and field path |
//! | [`load`] | reading the folder (or documents in memory), parsing, then validating |
//!
//! The engine never sees YAML.

pub mod duration;
mod effective;
mod error;
mod load;
pub mod model;
pub mod raw;
mod redact;
mod validate;

pub use error::{ConfigError, ConfigErrors, Origin};
pub use load::{load_dir, load_documents, PolicyDocument};
pub use model::*;
