//! Fixed and sliding windows: the counting math on the stored state, and the update through
//! a [`Store`].

use std::time::Duration;

use super::decision::nanos;
use super::{mul_div, update, Decision, Round, SharedError, Store, Update};

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
        let carried = mul_div(state.previous, window - into, window, Round::Up);
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
            let t = window - mul_div(room, window, state.previous, Round::Down);
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
    use crate::shared::MemoryStore;

    use super::*;
    use crate::shared::NANOS_PER_SEC;

    const SEC: u64 = NANOS_PER_SEC;

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
}
