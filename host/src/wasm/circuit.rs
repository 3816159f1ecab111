//! A plugin's trap circuit: repeated traps stop the plugin from running for a while.
//!
//! A trap fails only the request that trapped, and the worker gets a fresh VM. A plugin that
//! keeps trapping (a crash loop, or a client sending one malformed request after another)
//! would then pay a VM instantiation per request; so more than `max_traps_per_minute` traps
//! within a minute *open* the circuit. While it is open, requests get the plugin's failure
//! policy answer (503 under `fail_closed`, the plugin skipped under `fail_open`) without
//! running it. After `circuit_open_time` the circuit is *half-open*: one request (the probe)
//! runs the plugin (on a fresh VM where one trapped: the replacement is not built while the
//! circuit is open); when it completes without a trap the circuit closes, when it traps the
//! circuit opens again for another `circuit_open_time`.
//!
//! The circuit is per plugin instance, shared by the workers: traps count wherever they
//! happen, so a client that traps one VM per worker opens it once, not once per worker, and
//! the probe runs on one worker only. A reload builds new instances with closed circuits.
//!
//! Cost: while closed (the steady state) admitting a request is one relaxed atomic load;
//! the lock, the clock and the trap window are touched only on a trap or while not closed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The window the trap limit counts over.
const WINDOW: Duration = Duration::from_secs(60);

pub struct Circuit {
    max_traps_per_minute: u32,
    open_time: Duration,
    state: AtomicU8,
    /// A probe request is running the plugin while half-open.
    probing: AtomicBool,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// When the recent traps happened, oldest first, at most a minute old.
    traps: VecDeque<Instant>,
    opened_at: Option<(Instant, SystemTime)>,
}

/// Whether a request may run the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Run,
    /// Run as the half-open probe: report its end with [`Circuit::probe_done`].
    Probe,
    /// The circuit is open (or another request is probing).
    Refused,
}

/// The circuit as `GET /plugins` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitView {
    pub state: &'static str,
    pub traps_in_window: usize,
    pub opened_at: Option<SystemTime>,
}

impl Circuit {
    pub fn new(max_traps_per_minute: u32, open_time: Duration) -> Self {
        Self {
            max_traps_per_minute,
            open_time,
            state: AtomicU8::new(CLOSED),
            probing: AtomicBool::new(false),
            window: Mutex::new(Window::default()),
        }
    }

    /// Whether a new request may run the plugin. Closed: yes, at the cost of one atomic load.
    pub fn admit(&self) -> Admission {
        if self.state.load(Ordering::Relaxed) == CLOSED {
            return Admission::Run;
        }
        self.admit_slow(Instant::now())
    }

    fn admit_slow(&self, now: Instant) -> Admission {
        let window = self.lock();
        match self.state.load(Ordering::Relaxed) {
            CLOSED => Admission::Run,
            OPEN => match window.opened_at {
                Some((opened, _)) if now < opened + self.open_time => Admission::Refused,
                _ => {
                    self.state.store(HALF_OPEN, Ordering::Relaxed);
                    self.probing.store(true, Ordering::Relaxed);
                    tracing::info!("plugin circuit half-open: probing with a fresh VM");
                    Admission::Probe
                }
            },
            _ if self.probing.swap(true, Ordering::Relaxed) => Admission::Refused,
            _ => Admission::Probe,
        }
    }

    /// Counts a trap; returns true when it opened the circuit. A trap while half-open opens
    /// it again at once.
    pub fn record_trap(&self) -> bool {
        self.record_trap_at(Instant::now(), SystemTime::now())
    }

    fn record_trap_at(&self, now: Instant, wall: SystemTime) -> bool {
        let mut window = self.lock();
        while window
            .traps
            .front()
            .is_some_and(|at| now.duration_since(*at) >= WINDOW)
        {
            window.traps.pop_front();
        }
        window.traps.push_back(now);
        let state = self.state.load(Ordering::Relaxed);
        let opens = match state {
            CLOSED => window.traps.len() > self.max_traps_per_minute as usize,
            HALF_OPEN => true,
            _ => false,
        };
        if opens {
            window.opened_at = Some((now, wall));
            self.probing.store(false, Ordering::Relaxed);
            self.state.store(OPEN, Ordering::Relaxed);
        }
        opens
    }

    /// The probe could not run the plugin (its VM failed to start): open again from now.
    pub fn probe_failed(&self) {
        let mut window = self.lock();
        if self.state.load(Ordering::Relaxed) == HALF_OPEN {
            window.opened_at = Some((Instant::now(), SystemTime::now()));
            self.probing.store(false, Ordering::Relaxed);
            self.state.store(OPEN, Ordering::Relaxed);
        }
    }

    /// The probe request ended. Unless it trapped (which opened the circuit again), the
    /// plugin works: the circuit closes with an empty trap window.
    pub fn probe_done(&self) {
        let mut window = self.lock();
        if self.state.load(Ordering::Relaxed) == HALF_OPEN {
            window.traps.clear();
            window.opened_at = None;
            self.probing.store(false, Ordering::Relaxed);
            self.state.store(CLOSED, Ordering::Relaxed);
            tracing::info!("plugin circuit closed: the probe succeeded");
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Relaxed) != CLOSED
    }

    pub fn view(&self) -> CircuitView {
        let mut window = self.lock();
        let now = Instant::now();
        window.traps.retain(|at| now.duration_since(*at) < WINDOW);
        CircuitView {
            state: match self.state.load(Ordering::Relaxed) {
                CLOSED => "closed",
                OPEN => "open",
                _ => "half_open",
            },
            traps_in_window: window.traps.len(),
            opened_at: window.opened_at.map(|(_, wall)| wall),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // The window holds plain data: a panic elsewhere leaves it usable.
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_limit_within_a_minute_opens() {
        let circuit = Circuit::new(2, Duration::from_secs(5));
        let start = Instant::now();
        let wall = SystemTime::now();
        assert!(!circuit.record_trap_at(start, wall));
        assert!(!circuit.record_trap_at(start, wall));
        assert_eq!(circuit.admit(), Admission::Run);
        assert!(circuit.record_trap_at(start + Duration::from_secs(1), wall));
        assert_eq!(
            circuit.admit_slow(start + Duration::from_secs(2)),
            Admission::Refused
        );
        assert_eq!(circuit.view().state, "open");
        assert_eq!(circuit.view().opened_at, Some(wall));
    }

    #[test]
    fn traps_older_than_a_minute_do_not_count() {
        let circuit = Circuit::new(2, Duration::from_secs(5));
        let start = Instant::now();
        let wall = SystemTime::now();
        circuit.record_trap_at(start, wall);
        circuit.record_trap_at(start + Duration::from_secs(30), wall);
        assert!(!circuit.record_trap_at(start + Duration::from_secs(61), wall));
        assert_eq!(circuit.admit(), Admission::Run);
    }

    #[test]
    fn one_probe_after_the_open_time_closes_it_or_reopens_it() {
        let circuit = Circuit::new(0, Duration::from_secs(5));
        let start = Instant::now();
        let wall = SystemTime::now();
        assert!(circuit.record_trap_at(start, wall));
        let later = start + Duration::from_secs(6);
        assert_eq!(circuit.admit_slow(later), Admission::Probe);
        assert_eq!(
            circuit.admit_slow(later),
            Admission::Refused,
            "one probe at a time"
        );
        assert_eq!(circuit.view().state, "half_open");
        // The probe traps: open again from now.
        assert!(circuit.record_trap_at(later, wall));
        assert_eq!(
            circuit.admit_slow(later + Duration::from_secs(1)),
            Admission::Refused
        );
        let again = later + Duration::from_secs(6);
        assert_eq!(circuit.admit_slow(again), Admission::Probe);
        circuit.probe_done();
        assert_eq!(circuit.admit(), Admission::Run);
        circuit.probe_failed();
        assert_eq!(
            circuit.admit(),
            Admission::Run,
            "only a half-open circuit reopens"
        );
        assert_eq!(circuit.view().traps_in_window, 0);
        assert!(!circuit.is_open());
    }

    #[test]
    fn a_probe_that_cannot_run_opens_it_again() {
        let circuit = Circuit::new(0, Duration::from_millis(1));
        assert!(circuit.record_trap());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(circuit.admit(), Admission::Probe);
        circuit.probe_failed();
        assert_eq!(circuit.view().state, "open");
        // A later probe_done (the request's end) does not close it.
        circuit.probe_done();
        assert_eq!(circuit.view().state, "open");
    }
}
