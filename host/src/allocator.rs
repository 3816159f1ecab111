//! Handing the memory the gateway freed back to the system. Its allocator keeps freed memory
//! with the thread that freed it, and returns it only as that thread goes on allocating, so
//! a thread that has finished a burst of work and now waits keeps it for good. After such a
//! burst — a module compiled, a set of plugins loaded and configured, a worker's traffic
//! died down, its idle connections parked — the gateway asks for it back at once. The binary says how (its allocator's
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
    /// Connections this thread has parked (their HTTP state, buffers and all, dropped).
    static PARKED: Cell<u64> = const { Cell::new(0) };
}

/// Counts a request on the calling worker thread.
pub fn count_request() {
    REQUESTS.with(|requests| requests.set(requests.get().wrapping_add(1)));
}

/// Counts a connection parked on the calling worker thread: what it let go of is worth giving
/// back as soon as no request comes to use it again.
pub fn count_parked() {
    PARKED.with(|parked| parked.set(parked.get().wrapping_add(1)));
}

/// How many times a quiet period [`release_when_quiet`] looks at a worker's counts.
const LOOKS_PER_QUIET: u32 = 4;

/// Runs on a worker for its life and gives back what its traffic freed: once a whole `quiet`
/// period has passed without a request after some traffic, and as soon as a look finds
/// connections parked since the look before and no request (idle keep-alive connections
/// are parked within a second of their last byte, so their buffers go back then rather
/// than a quiet period later). A busy worker is never interrupted by it; an idle one looks
/// a few times a period and does nothing.
pub async fn release_when_quiet(quiet: Duration) {
    let counts = || (REQUESTS.with(Cell::get), PARKED.with(Cell::get));
    let mut watch = QuietWatch::new(counts());
    loop {
        tokio::time::sleep(quiet / LOOKS_PER_QUIET).await;
        if watch.looked(counts()) {
            release_freed_memory();
        }
    }
}

/// When a worker has freed memory it will not soon use again, from its counts of requests
/// and parked connections read a few times a quiet period.
struct QuietWatch {
    requests: u64,
    parked: u64,
    /// Looks in a row that found no new request.
    quiet_looks: u32,
    /// Nothing freed since the last release (or since the start).
    released: bool,
}

impl QuietWatch {
    fn new((requests, parked): (u64, u64)) -> Self {
        Self {
            requests,
            parked,
            quiet_looks: 0,
            released: true,
        }
    }

    /// At a look, with the counts now: whether to give memory back now.
    fn looked(&mut self, (requests, parked): (u64, u64)) -> bool {
        let newly_parked = std::mem::replace(&mut self.parked, parked) != parked;
        if std::mem::replace(&mut self.requests, requests) != requests {
            self.quiet_looks = 0;
            self.released = false;
            return false;
        }
        self.quiet_looks = self.quiet_looks.saturating_add(1);
        if newly_parked {
            self.released = true;
            return true;
        }
        self.quiet_looks >= LOOKS_PER_QUIET && !std::mem::replace(&mut self.released, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_goes_back_once_after_a_quiet_period_that_follows_traffic() {
        let quiet = |watch: &mut QuietWatch, counts| {
            (0..LOOKS_PER_QUIET)
                .map(|_| watch.looked(counts))
                .collect::<Vec<_>>()
        };
        let once = {
            let mut looks = vec![false; LOOKS_PER_QUIET as usize];
            looks[LOOKS_PER_QUIET as usize - 1] = true;
            looks
        };
        let never = vec![false; LOOKS_PER_QUIET as usize];
        let mut watch = QuietWatch::new((0, 0));
        // Idle from the start: nothing to give back.
        assert_eq!(quiet(&mut watch, (0, 0)), never);
        // Traffic at every look: never.
        assert!(!watch.looked((5, 0)));
        assert!(!watch.looked((9, 0)));
        // The first whole period without a request: once, at its end, then not again.
        assert_eq!(quiet(&mut watch, (9, 0)), once);
        assert_eq!(quiet(&mut watch, (9, 0)), never);
        // New traffic, then quiet again: once more.
        assert!(!watch.looked((10, 0)));
        assert_eq!(quiet(&mut watch, (10, 0)), once);
    }

    #[test]
    fn memory_goes_back_at_once_when_connections_park_and_no_request_follows() {
        let mut watch = QuietWatch::new((0, 0));
        assert!(!watch.looked((4, 0)));
        // Connections parked while requests still came: their memory serves the requests.
        assert!(!watch.looked((8, 2)));
        // Parked with no request since the look before: now, not a quiet period later.
        assert!(watch.looked((8, 5)));
        // More parked at the next look: again; then nothing new, and the quiet period's
        // release is not repeated for the same traffic.
        assert!(watch.looked((8, 7)));
        for _ in 0..2 * LOOKS_PER_QUIET {
            assert!(!watch.looked((8, 7)));
        }
    }

    #[test]
    fn requests_are_counted_per_thread() {
        let before = REQUESTS.with(Cell::get);
        let parked_before = PARKED.with(Cell::get);
        count_request();
        count_request();
        count_parked();
        std::thread::spawn(|| {
            count_request();
            count_parked();
        })
        .join()
        .unwrap();
        assert_eq!(REQUESTS.with(Cell::get), before + 2);
        assert_eq!(PARKED.with(Cell::get), parked_before + 1);
    }
}
