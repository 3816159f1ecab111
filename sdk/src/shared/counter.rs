//! Counters: 8-byte little-endian integers updated with compare-and-swap.

use super::{update, SharedError, Store, Update};

/// Decodes a counter value (8 bytes little-endian; anything else counts as 0).
pub fn decode_counter(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Adds `delta` to the counter at `key` (created at 0) and returns the new value.
pub fn counter_add<S: Store + ?Sized>(
    store: &S,
    key: &str,
    delta: u64,
) -> Result<u64, SharedError> {
    update(store, key, |bytes| {
        let next = decode_counter(bytes).saturating_add(delta);
        Update::Write(next.to_le_bytes(), next)
    })
}

/// Subtracts `delta` from the counter at `key` (not below 0) and returns the new value; to
/// undo a [`counter_add_within`] whose request was refused by a later check.
pub fn counter_sub<S: Store + ?Sized>(
    store: &S,
    key: &str,
    delta: u64,
) -> Result<u64, SharedError> {
    update(store, key, |bytes| {
        let next = decode_counter(bytes).saturating_sub(delta);
        Update::Write(next.to_le_bytes(), next)
    })
}

/// The counter at `key` (0 when missing).
pub fn counter_get<S: Store + ?Sized>(store: &S, key: &str) -> Result<u64, SharedError> {
    Ok(decode_counter(store.get(key)?.0.as_deref()))
}

/// Adds `n` to the counter at `key` only if the result stays within `limit`; returns
/// whether it did and the counter's value afterwards.
pub fn counter_add_within<S: Store + ?Sized>(
    store: &S,
    key: &str,
    n: u64,
    limit: u64,
) -> Result<(bool, u64), SharedError> {
    update(store, key, |bytes| {
        let current = decode_counter(bytes);
        match current.checked_add(n).filter(|next| *next <= limit) {
            Some(next) => Update::Write(next.to_le_bytes(), (true, next)),
            None => Update::Keep((false, current)),
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::shared::MemoryStore;

    use super::*;

    #[test]
    fn counters_add_and_respect_limits() {
        let store = MemoryStore::default();
        assert_eq!(counter_get(&store, "c").unwrap(), 0);
        assert_eq!(counter_add(&store, "c", 3).unwrap(), 3);
        assert_eq!(counter_add(&store, "c", 4).unwrap(), 7);
        assert_eq!(counter_add_within(&store, "c", 3, 10).unwrap(), (true, 10));
        assert_eq!(counter_add_within(&store, "c", 1, 10).unwrap(), (false, 10));
        assert_eq!(counter_get(&store, "c").unwrap(), 10);
        assert_eq!(counter_sub(&store, "c", 4).unwrap(), 6);
        assert_eq!(counter_sub(&store, "c", 40).unwrap(), 0);
    }
}
