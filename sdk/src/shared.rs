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

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// The `cas` used to create a key that was missing; see the module docs.
pub const MISSING_CAS: u32 = u32::MAX;

/// How many times [`update`] retries after `CAS_MISMATCH` before giving up.
pub const MAX_ATTEMPTS: u32 = 10_000;

const NANOS_PER_SEC: u64 = 1_000_000_000;

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

/// The host's shared data (`proxy_get_shared_data` / `proxy_set_shared_data`) of the
/// plugin's `vm_id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedData;

impl Store for SharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SharedError> {
        hostcalls::get_shared_data(key).map_err(|status| SharedError::Host(format!("{status:?}")))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedError::CasMismatch),
            Err(status) => Err(SharedError::Host(format!("{status:?}"))),
        }
    }
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

// === counters ===

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

// === decisions ===

/// The outcome of a limiter: whether the request may pass and what to tell the client
/// (the draft IETF `RateLimit-*` headers and `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The limit (bucket capacity or requests per window).
    pub limit: u64,
    /// Requests left after this one (whole tokens).
    pub remaining: u64,
    /// Until the limiter is back to its full limit (bucket refilled, window over).
    pub reset_after: Duration,
    /// When denied: until the request could pass; zero when allowed.
    pub retry_after: Duration,
}

/// Seconds for a header: rounded up, so a client waiting that long is not refused again.
pub fn header_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

// === token bucket ===

/// A token bucket: holds at most `capacity` tokens, gains `refill_per_sec` tokens per
/// second, each request takes some. Starts full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    pub capacity: u64,
    pub refill_per_sec: f64,
}

/// The stored state of a bucket: tokens in billionths (so fractional refills add up) and
/// the time they were counted, both u64 little-endian (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub nano_tokens: u64,
    pub updated_nanos: u64,
}

impl BucketState {
    pub fn encode(&self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.nano_tokens.to_le_bytes());
        bytes[8..].copy_from_slice(&self.updated_nanos.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 16 {
            return None;
        }
        Some(Self {
            nano_tokens: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            updated_nanos: u64::from_le_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

impl TokenBucket {
    /// Refill rate in thousandths of a token per second (integer math from here on).
    fn milli_rate(&self) -> u64 {
        (self.refill_per_sec.max(0.0) * 1000.0).round() as u64
    }

    fn capacity_nanos(&self) -> u64 {
        self.capacity.saturating_mul(NANOS_PER_SEC)
    }

    /// Time to gain `nano_tokens` at the refill rate (a year when the rate is zero).
    fn time_to_gain(&self, nano_tokens: u64) -> Duration {
        let rate = self.milli_rate();
        if nano_tokens == 0 {
            return Duration::ZERO;
        }
        if rate == 0 {
            return Duration::from_secs(365 * 24 * 3600);
        }
        // nano_tokens / (rate/1000 tokens per s) seconds = nano_tokens * 1000 / rate ns... in
        // billionths: nano_tokens[1e-9 token] * 1e9 ns/s / (rate * 1e6 nano-tokens per s).
        let ns = (u128::from(nano_tokens) * 1000).div_ceil(u128::from(rate));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// The state at `now`, refilled, starting full when there is none.
    pub fn refill(&self, state: Option<BucketState>, now: u64) -> BucketState {
        let Some(state) = state else {
            return BucketState {
                nano_tokens: self.capacity_nanos(),
                updated_nanos: now,
            };
        };
        let elapsed = now.saturating_sub(state.updated_nanos);
        // elapsed ns × rate/1000 tokens/s = elapsed × rate / 1000 nano-tokens.
        let gained = u128::from(elapsed) * u128::from(self.milli_rate()) / 1000;
        let tokens =
            (u128::from(state.nano_tokens) + gained).min(u128::from(self.capacity_nanos()));
        BucketState {
            nano_tokens: tokens as u64,
            updated_nanos: now.max(state.updated_nanos),
        }
    }

    /// Pure step: takes `n` tokens at time `now` (nanoseconds) if there are enough. Returns
    /// the state to store (`None`: nothing to store, the request was denied) and the decision.
    pub fn take(
        &self,
        state: Option<BucketState>,
        now: u64,
        n: u64,
    ) -> (Option<BucketState>, Decision) {
        let current = self.refill(state, now);
        let wanted = n.saturating_mul(NANOS_PER_SEC);
        let allowed = current.nano_tokens >= wanted;
        let after = if allowed {
            current.nano_tokens - wanted
        } else {
            current.nano_tokens
        };
        let decision = Decision {
            allowed,
            limit: self.capacity,
            remaining: after / NANOS_PER_SEC,
            reset_after: self.time_to_gain(self.capacity_nanos().saturating_sub(after)),
            retry_after: if allowed || wanted > self.capacity_nanos() {
                if allowed {
                    Duration::ZERO
                } else {
                    self.time_to_gain(self.capacity_nanos())
                }
            } else {
                self.time_to_gain(wanted - current.nano_tokens)
            },
        };
        let stored = allowed.then_some(BucketState {
            nano_tokens: after,
            updated_nanos: current.updated_nanos,
        });
        (stored, decision)
    }

    /// Takes `n` tokens from the bucket stored at `key`, with compare-and-swap.
    pub fn try_take<S: Store + ?Sized>(
        &self,
        store: &S,
        key: &str,
        now: u64,
        n: u64,
    ) -> Result<Decision, SharedError> {
        update(store, key, |bytes| {
            let state = bytes.and_then(BucketState::decode);
            match self.take(state, now, n) {
                (Some(next), decision) => Update::Write(next.encode(), decision),
                (None, decision) => Update::Keep(decision),
            }
        })
    }
}

// === windows ===

/// The stored state of a window limiter: the index of the current window (`now / window`),
/// the count in it, and the count in the window before (sliding windows only); three u64
/// little-endian (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowState {
    pub index: u64,
    pub current: u64,
    pub previous: u64,
}

impl WindowState {
    pub fn encode(&self) -> [u8; 24] {
        let mut bytes = [0; 24];
        for (slot, value) in
            bytes
                .chunks_exact_mut(8)
                .zip([self.index, self.current, self.previous])
        {
            slot.copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 24 {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        Some(Self {
            index: word(0),
            current: word(1),
            previous: word(2),
        })
    }

    /// The state moved to window `index`: counts of windows that ended are shifted or
    /// dropped.
    fn at(self, index: u64) -> Self {
        if self.index == index {
            self
        } else if self.index.checked_add(1) == Some(index) {
            Self {
                index,
                current: 0,
                previous: self.current,
            }
        } else {
            Self {
                index,
                current: 0,
                previous: 0,
            }
        }
    }
}

/// At most `limit` requests per window (aligned to multiples of `window` since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindow {
    pub limit: u64,
    pub window: Duration,
}

impl FixedWindow {
    /// Pure step: counts `n` hits at `now` if they fit.
    pub fn hit_state(
        &self,
        state: Option<WindowState>,
        now: u64,
        n: u64,
    ) -> (Option<WindowState>, Decision) {
        let window = nanos(self.window).max(1);
        let index = now / window;
        let state = state.unwrap_or_default().at(index);
        let reset_after = Duration::from_nanos((index + 1) * window - now);
        let allowed = state.current.saturating_add(n) <= self.limit;
        let count = if allowed {
            state.current + n
        } else {
            state.current
        };
        let decision = Decision {
            allowed,
            limit: self.limit,
            remaining: self.limit.saturating_sub(count),
            reset_after,
            retry_after: if allowed { Duration::ZERO } else { reset_after },
        };
        let stored = allowed.then_some(WindowState {
            index,
            current: count,
            previous: 0,
        });
        (stored, decision)
    }

    /// Counts `n` hits in the window stored at `key`, with compare-and-swap.
    pub fn hit<S: Store + ?Sized>(
        &self,
        store: &S,
        key: &str,
        now: u64,
        n: u64,
    ) -> Result<Decision, SharedError> {
        update(store, key, |bytes| {
            match self.hit_state(bytes.and_then(WindowState::decode), now, n) {
                (Some(next), decision) => Update::Write(next.encode(), decision),
                (None, decision) => Update::Keep(decision),
            }
        })
    }
}

/// At most `limit` requests in any window-long interval, estimated from two fixed windows:
/// the current count plus the previous window's count weighted by how much of it still
/// overlaps the sliding interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    pub limit: u64,
    pub window: Duration,
}

impl SlidingWindow {
    /// Pure step: counts `n` hits at `now` if the estimate stays within the limit.
    pub fn hit_state(
        &self,
        state: Option<WindowState>,
        now: u64,
        n: u64,
    ) -> (Option<WindowState>, Decision) {
        let window = nanos(self.window).max(1);
        let index = now / window;
        let into = now % window;
        let state = state.unwrap_or_default().at(index);
        // The previous window's share: previous × (window - into) / window, rounded up.
        let carried = (u128::from(state.previous) * u128::from(window - into))
            .div_ceil(u128::from(window)) as u64;
        let estimate = carried.saturating_add(state.current);
        let allowed = estimate.saturating_add(n) <= self.limit;
        let used = if allowed { estimate + n } else { estimate };
        let to_window_end = Duration::from_nanos(window - into);
        let retry_after = if allowed {
            Duration::ZERO
        } else if state.current.saturating_add(n) <= self.limit && state.previous > 0 {
            // Wait until the previous window's share has shrunk enough:
            // previous × (window - t) / window <= limit - current - n.
            let room = self.limit - state.current - n;
            let t = window
                - (u128::from(room) * u128::from(window) / u128::from(state.previous)) as u64;
            Duration::from_nanos(t.saturating_sub(into).max(1))
        } else {
            to_window_end
        };
        let decision = Decision {
            allowed,
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset_after: if state.current > 0 || allowed {
                to_window_end + self.window
            } else {
                to_window_end
            },
            retry_after,
        };
        let stored = allowed.then_some(WindowState {
            index,
            current: state.current + n,
            previous: state.previous,
        });
        (stored, decision)
    }

    /// Counts `n` hits in the sliding window stored at `key`, with compare-and-swap.
    pub fn hit<S: Store + ?Sized>(
        &self,
        store: &S,
        key: &str,
        now: u64,
        n: u64,
    ) -> Result<Decision, SharedError> {
        update(store, key, |bytes| {
            match self.hit_state(bytes.and_then(WindowState::decode), now, n) {
                (Some(next), decision) => Update::Write(next.encode(), decision),
                (None, decision) => Update::Keep(decision),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;

    use super::*;

    const SEC: u64 = NANOS_PER_SEC;
    const T0: u64 = 1_700_000_000 * SEC;

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

    #[test]
    fn bucket_starts_full_refills_and_caps() {
        let bucket = TokenBucket {
            capacity: 3,
            refill_per_sec: 2.0,
        };
        let (state, d) = bucket.take(None, T0, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset_after, Duration::from_millis(500));
        let (state, _) = bucket.take(state, T0, 2);
        let (none, denied) = bucket.take(state, T0, 1);
        assert!(none.is_none() && !denied.allowed);
        assert_eq!(denied.remaining, 0);
        assert_eq!(denied.retry_after, Duration::from_millis(500));
        assert_eq!(denied.reset_after, Duration::from_millis(1500));
        // 250 ms later half a token: still denied, retry in 250 ms.
        let (_, d) = bucket.take(state, T0 + SEC / 4, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(250));
        // An hour later: full again, never more than the capacity.
        let (_, d) = bucket.take(state, T0 + 3600 * SEC, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn fractional_refills_add_up() {
        let bucket = TokenBucket {
            capacity: 1,
            refill_per_sec: 0.5,
        };
        let (mut state, _) = bucket.take(None, T0, 1);
        // 2000 steps of 1 ms: exactly one token after 2 s, none lost to rounding.
        let mut now = T0;
        for _ in 0..1999 {
            now += SEC / 1000;
            let (_, d) = bucket.take(state, now, 1);
            assert!(!d.allowed);
            state = Some(bucket.refill(state, now));
        }
        let (_, d) = bucket.take(state, now + SEC / 1000, 1);
        assert!(d.allowed);
    }

    #[test]
    fn asking_for_more_than_capacity_is_never_allowed() {
        let bucket = TokenBucket {
            capacity: 2,
            refill_per_sec: 1.0,
        };
        let (_, d) = bucket.take(None, T0, 3);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(2));
    }

    #[test]
    fn clock_going_backwards_does_not_mint_tokens() {
        let bucket = TokenBucket {
            capacity: 1,
            refill_per_sec: 1.0,
        };
        let (state, _) = bucket.take(None, T0, 1);
        let (_, d) = bucket.take(state, T0 - SEC, 1);
        assert!(!d.allowed);
    }

    #[test]
    fn fixed_window_resets_at_the_boundary() {
        let limiter = FixedWindow {
            limit: 2,
            window: Duration::from_secs(60),
        };
        let store = MemoryStore::default();
        let start = 1_000 * 60 * SEC + 10 * SEC;
        assert!(limiter.hit(&store, "w", start, 1).unwrap().allowed);
        let d = limiter.hit(&store, "w", start, 1).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d = limiter.hit(&store, "w", start + SEC, 1).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(49));
        assert!(
            limiter
                .hit(&store, "w", start + 50 * SEC, 1)
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let limiter = SlidingWindow {
            limit: 10,
            window: Duration::from_secs(10),
        };
        let store = MemoryStore::default();
        let start = 100 * 10 * SEC;
        for _ in 0..10 {
            assert!(limiter.hit(&store, "s", start + SEC, 1).unwrap().allowed);
        }
        assert!(
            !limiter
                .hit(&store, "s", start + 2 * SEC, 1)
                .unwrap()
                .allowed
        );
        // 3 s into the next window 70 % of the previous 10 still count: 3 more fit.
        let next = start + 13 * SEC;
        for _ in 0..3 {
            assert!(limiter.hit(&store, "s", next, 1).unwrap().allowed);
        }
        let d = limiter.hit(&store, "s", next, 1).unwrap();
        assert!(!d.allowed);
        // One more fits once 60 % remain: at 4 s, one second from now.
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert!(
            limiter
                .hit(&store, "s", start + 14 * SEC, 1)
                .unwrap()
                .allowed
        );
        // Two windows later everything is forgotten.
        let d = limiter.hit(&store, "s", start + 40 * SEC, 1).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
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

    #[test]
    fn header_seconds_round_up() {
        assert_eq!(header_seconds(Duration::from_millis(1)), 1);
        assert_eq!(header_seconds(Duration::from_secs(2)), 2);
        assert_eq!(header_seconds(Duration::ZERO), 0);
    }
}
