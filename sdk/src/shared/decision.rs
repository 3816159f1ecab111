//! What a limiter answers.

use std::time::Duration;

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

pub(super) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_seconds_round_up() {
        assert_eq!(header_seconds(Duration::from_millis(1)), 1);
        assert_eq!(header_seconds(Duration::from_secs(2)), 2);
        assert_eq!(header_seconds(Duration::ZERO), 0);
    }
}
