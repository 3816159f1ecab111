//! Counters, token buckets and fixed/sliding windows over proxy-wasm shared data.
//!
//! Shared data is one key-value store per `vm_id`, shared by the plugin's VMs on every
//! worker thread (and, in Envoy, every worker). Updates use compare-and-swap: read a value
//! and its `cas`, compute the new value, write it back with that `cas`; if another VM wrote
//! in between the host answers `CAS_MISMATCH` and [`update`] starts over. Every limiter
//! here is therefore exact under concurrency: with a bucket of capacity 10 and no refill,
//! exactly 10 requests are allowed however many workers race for them.
//!
//! One wrinkle of the ABI: writing a key that does *not* exist succeeds whatever the `cas`
//! (so creation cannot be made conditional). [`update`] writes a new key with the `cas`
//! [`MISSING_CAS`] (`u32::MAX`): if another VM created the key in between, the key now has
//! a different `cas` and the write is refused with `CAS_MISMATCH` instead of overwriting
//! it. (Only a key whose host-assigned `cas` happens to be exactly `u32::MAX` could be
//! overwritten, after about four billion writes.)
//!
//! The math is pure (functions from the stored bytes and the time to the new bytes and a
//! [`Decision`]), the retry loop is generic over [`Store`], implemented by [`SharedData`]
//! (the host) and [`MemoryStore`] (same semantics in memory, for native tests).
//!
//! ```
//! use std::time::Duration;
//! use tollgate_sdk::shared::{MemoryStore, TokenBucket, counter_add};
//!
//! let store = MemoryStore::default();
//! let bucket = TokenBucket { capacity: 2, refill_per_sec: 1.0 };
//! let t0 = 1_000_000_000_000; // nanoseconds since the epoch
//! assert!(bucket.try_take(&store, "rl:alice", t0, 1).unwrap().allowed);
//! assert!(bucket.try_take(&store, "rl:alice", t0, 1).unwrap().allowed);
//! let denied = bucket.try_take(&store, "rl:alice", t0, 1).unwrap();
//! assert!(!denied.allowed);
//! assert_eq!(denied.retry_after, Duration::from_secs(1));
//! // One second later one token came back.
//! assert!(bucket.try_take(&store, "rl:alice", t0 + 1_000_000_000, 1).unwrap().allowed);
//!
//! assert_eq!(counter_add(&store, "requests", 5).unwrap(), 5);
//! assert_eq!(counter_add(&store, "requests", 1).unwrap(), 6);
//! ```
//!
//! | module | what |
//! |---|---|
//! | `store` | the [`Store`] trait, [`update`] (the compare-and-swap loop) and [`MemoryStore`] |
//! | `host` | [`SharedData`]: the host's shared data, the only code here that calls the host |
//! | `counter` | counters: add, add within a limit, subtract, read |
//! | `decision` | [`Decision`], what a limiter answers, and its header arithmetic |
//! | `bucket` | [`TokenBucket`]: the refill math on [`BucketState`], and `try_take` |
//! | `window` | [`FixedWindow`] and [`SlidingWindow`] on [`WindowState`] |

mod bucket;
mod counter;
mod decision;
mod host;
mod store;
mod window;

pub use bucket::{BucketState, TokenBucket};
pub use counter::{counter_add, counter_add_within, counter_get, counter_sub, decode_counter};
pub use decision::{header_seconds, Decision};
pub use host::SharedData;
pub use store::{update, MemoryStore, SharedError, Store, Update, MAX_ATTEMPTS, MISSING_CAS};
pub use window::{FixedWindow, SlidingWindow, WindowState};

/// Nanoseconds in a second: the limiters count time in nanoseconds since the epoch.
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// How [`mul_div`] rounds the quotient.
#[derive(Debug, Clone, Copy)]
enum Round {
    Down,
    Up,
}

/// `a × b / c` (`c` > 0), saturating at `u64::MAX`. The product is taken in u64 whenever it
/// surely fits: 128-bit multiplies and divisions are library calls on wasm32 (and so is
/// the overflow check of `checked_mul`), and the limiters' own figures (tokens, rates,
/// windows) rarely need them.
fn mul_div(a: u64, b: u64, c: u64, round: Round) -> u64 {
    // Fewer than 64 significant bits between them: the product is below 2^64.
    if a.leading_zeros() + b.leading_zeros() >= 64 {
        let product = a * b;
        return match round {
            Round::Down => product / c,
            Round::Up => product.div_ceil(c),
        };
    }
    let (product, c) = (u128::from(a) * u128::from(b), u128::from(c));
    let quotient = match round {
        Round::Down => product / c,
        Round::Up => product.div_ceil(c),
    };
    u64::try_from(quotient).unwrap_or(u64::MAX)
}

/// `a × b`, saturating at `u64::MAX`, without `saturating_mul`'s 128-bit overflow check.
fn mul_saturating(a: u64, b: u64) -> u64 {
    mul_div(a, b, 1, Round::Down)
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;

    use super::*;

    const SEC: u64 = NANOS_PER_SEC;
    const T0: u64 = 1_700_000_000 * SEC;

    #[test]
    fn mul_div_agrees_with_u128_math() {
        assert_eq!(mul_div(10, 3, 4, Round::Down), 7);
        assert_eq!(mul_div(10, 3, 4, Round::Up), 8);
        // A product past u64: worked out in u128, the same quotient.
        assert_eq!(mul_div(1 << 40, 1 << 40, 1 << 40, Round::Up), 1 << 40);
        assert_eq!(mul_div(u64::MAX, 1000, 999, Round::Down), u64::MAX);
        assert_eq!(
            mul_div(u64::MAX / 2, 3, 2, Round::Down),
            (u64::MAX / 2 / 2) * 3 + 1
        );
        assert_eq!(mul_div(3, u64::MAX, u64::MAX, Round::Up), 3);
        assert_eq!(mul_saturating(u64::MAX / 3, 3), u64::MAX / 3 * 3);
        assert_eq!(mul_saturating(u64::MAX / 3 + 1, 3), u64::MAX);
    }

    /// A store that lets "another VM" write between a read and the write that follows it.
    struct Interleaving<'a> {
        inner: &'a MemoryStore,
        before_set: RefCell<Vec<Interloper<'a>>>,
        sets: Cell<u32>,
    }

    type Interloper<'a> = Box<dyn FnOnce(&MemoryStore) + 'a>;

    impl Store for Interleaving<'_> {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SharedError> {
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
            self.sets.set(self.sets.get() + 1);
            let next = self.before_set.borrow_mut().pop();
            if let Some(interloper) = next {
                interloper(self.inner);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_write_in_between_is_retried_not_lost() {
        let store = MemoryStore::default();
        counter_add(&store, "c", 1).unwrap();
        let racing = Interleaving {
            inner: &store,
            before_set: RefCell::new(vec![Box::new(|s: &MemoryStore| {
                counter_add(s, "c", 10).unwrap();
            })]),
            sets: Cell::new(0),
        };
        assert_eq!(counter_add(&racing, "c", 100).unwrap(), 111);
        assert_eq!(
            racing.sets.get(),
            2,
            "the first write lost the race and was retried"
        );
    }

    #[test]
    fn concurrent_creation_of_a_missing_key_is_not_lost() {
        // Both "VMs" see the key missing; the other one creates it first.
        let store = MemoryStore::default();
        let racing = Interleaving {
            inner: &store,
            before_set: RefCell::new(vec![Box::new(|s: &MemoryStore| {
                let bucket = TokenBucket {
                    capacity: 2,
                    refill_per_sec: 0.0,
                };
                assert!(bucket.try_take(s, "b", T0, 1).unwrap().allowed);
            })]),
            sets: Cell::new(0),
        };
        let bucket = TokenBucket {
            capacity: 2,
            refill_per_sec: 0.0,
        };
        let d = bucket.try_take(&racing, "b", T0, 1).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 0, "the other VM's token is accounted for");
        assert!(!bucket.try_take(&store, "b", T0, 1).unwrap().allowed);
    }

    #[test]
    fn unconditional_creation_would_lose_it() {
        // The reason for MISSING_CAS: writing a missing key with cas 0 overwrites a key
        // another VM created meanwhile.
        let store = MemoryStore::default();
        store.set("k", b"theirs", Some(MISSING_CAS)).unwrap();
        assert_eq!(
            store.set("k", b"mine", Some(MISSING_CAS)),
            Err(SharedError::CasMismatch)
        );
        store.set("k", b"mine", None).unwrap();
        assert_eq!(store.get("k").unwrap().0.unwrap(), b"mine");
    }

    #[test]
    fn threads_racing_for_a_bucket_get_exactly_its_capacity() {
        let store = Arc::new(MemoryStore::default());
        let bucket = TokenBucket {
            capacity: 500,
            refill_per_sec: 0.0,
        };
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .filter(|_| bucket.try_take(&*store, "bucket", T0, 1).unwrap().allowed)
                        .count()
                })
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(allowed, 500);
    }

    #[test]
    fn threads_racing_on_a_counter_lose_nothing() {
        let store = Arc::new(MemoryStore::default());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        counter_add(&*store, "n", 1).unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(counter_get(&*store, "n").unwrap(), 4000);
    }
}
