//! Handing the memory the gateway freed back to the system. Its allocator keeps freed memory
//! with the thread that freed it, and returns it only as that thread goes on allocating, so
//! a thread that has finished a burst of work and now waits keeps it for good. After such a
//! burst — a module compiled, a set of plugins loaded and configured, a worker's traffic
//! died down — the gateway asks for it back at once. The binary says how (its allocator's
//! collection); without that, nothing is collected.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Sets what gives the calling thread's freed memory, and every free page of the allocator,
/// back to the system.
pub fn set_release_freed_memory(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Hands the memory freed by the work just done back to the system, if the binary said how.
pub fn release_freed_memory() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}

thread_local! {
    /// Requests this thread has taken: a worker's traffic, as [`release_when_quiet`] sees it.
    static REQUESTS: Cell<u64> = const { Cell::new(0) };
}

/// Counts a request on the calling worker thread.
pub fn count_request() {
    REQUESTS.with(|requests| requests.set(requests.get().wrapping_add(1)));
}

/// Runs on a worker for its life: once a whole `quiet` period has passed without a request
/// after some traffic, gives back what that traffic freed, once. A busy worker is never
/// interrupted by it; an idle one looks once a period and does nothing.
pub async fn release_when_quiet(quiet: Duration) {
    let requests = || REQUESTS.with(Cell::get);
    let mut watch = QuietWatch::new(requests());
    loop {
        tokio::time::sleep(quiet).await;
        if watch.period_ended(requests()) {
            release_freed_memory();
        }
    }
}

/// When a worker's traffic has died down, from its request count read once a period.
struct QuietWatch {
    seen: u64,
    /// Nothing freed since the last release (or since the start).
    released: bool,
}

impl QuietWatch {
    fn new(requests: u64) -> Self {
        Self {
            seen: requests,
            released: true,
        }
    }

    /// At the end of a period, with the count now: whether to give memory back now.
    fn period_ended(&mut self, requests: u64) -> bool {
        if requests != self.seen {
            self.seen = requests;
            self.released = false;
            return false;
        }
        !std::mem::replace(&mut self.released, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_goes_back_once_after_a_quiet_period_that_follows_traffic() {
        let mut watch = QuietWatch::new(0);
        // Idle from the start: nothing to give back.
        assert!(!watch.period_ended(0));
        assert!(!watch.period_ended(0));
        // Traffic in every period: never.
        assert!(!watch.period_ended(5));
        assert!(!watch.period_ended(9));
        // The first whole period without a request: once, then not again while quiet.
        assert!(watch.period_ended(9));
        assert!(!watch.period_ended(9));
        assert!(!watch.period_ended(9));
        // New traffic, then quiet again: once more.
        assert!(!watch.period_ended(10));
        assert!(watch.period_ended(10));
        assert!(!watch.period_ended(10));
    }

    #[test]
    fn requests_are_counted_per_thread() {
        let before = REQUESTS.with(Cell::get);
        count_request();
        count_request();
        std::thread::spawn(count_request).join().unwrap();
        assert_eq!(REQUESTS.with(Cell::get), before + 2);
    }
}
