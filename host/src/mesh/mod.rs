//! Taking the policies to a mesh and back: `tollgate export envoy` writes an Envoy v3
//! bootstrap, `tollgate export istio` Istio resources, and `tollgate import istio` turns an
//! Istio ingress gateway's resources into a policies folder.
//!
//! A translation never drops what it cannot express: every such field becomes a
//! [`Loss`], printed on stderr as a warning, or under `--strict` an error that fails the
//! command before anything is written.

pub mod envoy;
mod istio;
pub mod istio_export;
pub mod istio_import;

use std::fmt;

/// A field of the source that the target cannot express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// Where the field is in the source, e.g. `routes.yaml: virtual_hosts[0].routes[2].fault`
    /// or `VirtualService shop: spec.http[0].corsPolicy`.
    pub field: String,
    /// Why it cannot be carried over, and what the output does instead.
    pub reason: String,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The losses of one translation, collected while it runs.
#[derive(Debug, Default)]
pub struct Losses(Vec<Loss>);

impl Losses {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a field the target cannot express.
    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Loss {
            field: field.into(),
            reason: reason.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Loss> {
        self.0.iter()
    }
}

/// What a translation produced: the output, and what it could not carry over.
#[derive(Debug)]
pub struct Translation<T> {
    pub output: T,
    pub losses: Losses,
}
