//! The compare-and-swap store: the trait, the retry loop, and an in-memory store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

/// The `cas` used to create a key that was missing; see the module docs.
pub const MISSING_CAS: u32 = u32::MAX;

/// How many times [`update`] retries after `CAS_MISMATCH` before giving up.
pub const MAX_ATTEMPTS: u32 = 10_000;

/// Errors of shared-data operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedError {
    /// The `cas` was stale: another VM wrote the key since it was read.
    CasMismatch,
    /// [`MAX_ATTEMPTS`] compare-and-swap attempts all lost the race.
    Contention { key: String },
    /// The host refused the operation.
    Host(String),
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CasMismatch => write!(f, "compare-and-swap mismatch"),
            Self::Contention { key } => write!(
                f,
                "shared key {key:?}: no compare-and-swap succeeded in {MAX_ATTEMPTS} attempts"
            ),
            Self::Host(message) => write!(f, "shared data: {message}"),
        }
    }
}

impl std::error::Error for SharedError {}

/// A key-value store with compare-and-swap, the shape of proxy-wasm shared data.
pub trait Store {
    /// The value and its `cas`; `(None, None)` when the key is missing.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SharedError>;
    /// Writes `value` if `cas` is `None` (unconditional), the key's current `cas`, or the
    /// key is missing; else [`SharedError::CasMismatch`].
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError>;
}

/// An in-memory [`Store`] with the host's semantics (each write gets a new non-zero cas; a
/// missing key is created whatever the cas). For native tests; `Sync`, so threads can race.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<(Entries, u32)>,
}

/// key → (value, cas)
type Entries = HashMap<String, (Vec<u8>, u32)>;

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SharedError> {
        let inner = self.inner.lock().expect("memory store lock");
        Ok(match inner.0.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        let mut inner = self.inner.lock().expect("memory store lock");
        let (map, next) = &mut *inner;
        let cas = cas.unwrap_or(0);
        if let Some((_, current)) = map.get(key) {
            if cas != 0 && cas != *current {
                return Err(SharedError::CasMismatch);
            }
        }
        *next = next.wrapping_add(1).max(1);
        map.insert(key.to_owned(), (value.to_vec(), *next));
        Ok(())
    }
}

/// What an [`update`] step decided. The bytes to write are anything that is bytes
/// (`Vec<u8>` by default; the counters, buckets and windows write fixed-size arrays, so a
/// write allocates nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<R, B = Vec<u8>> {
    /// Write these bytes (compare-and-swap) and return `R` once the write succeeded.
    Write(B, R),
    /// Leave the value as it is and return `R`.
    Keep(R),
}

/// Read-modify-write of one key with compare-and-swap, retried on conflicts (at most
/// [`MAX_ATTEMPTS`] times). `step` sees the current bytes (`None` when missing) and may run
/// several times; only the result of the step whose write succeeded is returned.
pub fn update<S: Store + ?Sized, R, B: AsRef<[u8]>>(
    store: &S,
    key: &str,
    mut step: impl FnMut(Option<&[u8]>) -> Update<R, B>,
) -> Result<R, SharedError> {
    for _ in 0..MAX_ATTEMPTS {
        let (value, cas) = store.get(key)?;
        match step(value.as_deref()) {
            Update::Keep(result) => return Ok(result),
            Update::Write(bytes, result) => {
                let cas = if value.is_none() {
                    Some(MISSING_CAS)
                } else {
                    cas
                };
                match store.set(key, bytes.as_ref(), cas) {
                    Ok(()) => return Ok(result),
                    Err(SharedError::CasMismatch) => continue,
                    Err(other) => return Err(other),
                }
            }
        }
    }
    Err(SharedError::Contention {
        key: key.to_owned(),
    })
}
