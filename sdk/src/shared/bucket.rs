//! Token buckets: the refill math on the stored state, and the update through a [`Store`].

use std::time::Duration;

use super::{
    mul_div, mul_saturating, update, Decision, Round, SharedError, Store, Update, NANOS_PER_SEC,
};

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
        mul_saturating(self.capacity, NANOS_PER_SEC)
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
        Duration::from_nanos(mul_div(nano_tokens, 1000, rate, Round::Up))
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
        let gained = mul_div(elapsed, self.milli_rate(), 1000, Round::Down);
        BucketState {
            nano_tokens: state
                .nano_tokens
                .saturating_add(gained)
                .min(self.capacity_nanos()),
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
        let wanted = mul_saturating(n, NANOS_PER_SEC);
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;
    const T0: u64 = 1_700_000_000 * SEC;

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
}
