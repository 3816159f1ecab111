//! `tp-shared`: shared data with compare-and-swap, a shared queue and the tick timer.
//! No configuration.
//!
//! Root context:
//! - `on_vm_start`: registers the shared queue `tp-queue`, sets a tick period of 100 ms, and
//!   creates the shared keys `tp-counter`, `tp-dequeued`, `tp-ticks` with value `0` when they
//!   do not exist yet (so that every later write is a real compare-and-swap).
//! - `on_queue_ready`: dequeues until the queue is empty (at most 100 000 items) and adds the
//!   number of items it got to shared key `tp-dequeued`.
//! - `on_tick`: adds 1 to shared key `tp-ticks`.
//!
//! Per request (`on_http_request_headers`): adds 1 to shared key `tp-counter` (get, then set
//! with the returned cas, retrying on `CasMismatch`, at most 10 000 tries) and remembers the
//! new value; resolves `tp-queue` with vm_id `""` (its own VM) and enqueues the request's
//! `:path` (`x-tp-enqueue: not-found` / `failed-<Status>` on the request when that fails).
//!
//! Response headers: `x-tp-counter: <the value this request wrote>`, `x-tp-ticks: <tp-ticks>`
//! and `x-tp-dequeued: <tp-dequeued>` (current shared values, `0` when missing) and
//! `x-tp-cas-retries: <CasMismatch retries this request needed>`.
//!
//! Shared values are decimal ASCII.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { queue: None }) });
}}

const QUEUE: &str = "tp-queue";
const COUNTER: &str = "tp-counter";
const DEQUEUED: &str = "tp-dequeued";
const TICKS: &str = "tp-ticks";

fn read_number(key: &str) -> (u64, Option<u32>) {
    let (value, cas) = hostcalls::get_shared_data(key).unwrap();
    let number = value
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    (number, cas)
}

/// Adds `delta` to a shared decimal counter with a CAS retry loop; returns the new value and
/// the number of retries.
fn add(key: &str, delta: u64) -> (u64, u32) {
    for attempt in 0..10_000u32 {
        let (current, cas) = read_number(key);
        let next = current + delta;
        match hostcalls::set_shared_data(key, Some(next.to_string().as_bytes()), cas) {
            Ok(()) => return (next, attempt),
            Err(Status::CasMismatch) => continue,
            Err(other) => panic!("tp-shared: set_shared_data({key}) failed: {other:?}"),
        }
    }
    panic!("tp-shared: no CAS success on {key} after 10000 tries");
}

struct Root {
    queue: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.queue = Some(self.register_shared_queue(QUEUE));
        for key in [COUNTER, DEQUEUED, TICKS] {
            if self.get_shared_data(key).0.is_none() {
                let _ = self.set_shared_data(key, Some(b"0"), None);
            }
        }
        self.set_tick_period(Duration::from_millis(100));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let mut count = 0u64;
        for _ in 0..100_000 {
            match self.dequeue_shared_queue(queue_id) {
                Ok(Some(_)) => count += 1,
                _ => break,
            }
        }
        if count > 0 {
            add(DEQUEUED, count);
        }
    }

    fn on_tick(&mut self) {
        add(TICKS, 1);
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Shared {
            counter: 0,
            retries: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Shared {
    counter: u64,
    retries: u32,
}

impl Context for Shared {}

impl HttpContext for Shared {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        (self.counter, self.retries) = add(COUNTER, 1);
        let path = self.get_http_request_header(":path").unwrap_or_default();
        match self.resolve_shared_queue("", QUEUE) {
            Some(queue) => {
                if let Err(status) = self.enqueue_shared_queue(queue, Some(path.as_bytes())) {
                    self.add_http_request_header("x-tp-enqueue", &format!("failed-{status:?}"));
                }
            }
            None => self.add_http_request_header("x-tp-enqueue", "not-found"),
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-tp-counter", &self.counter.to_string());
        self.add_http_response_header("x-tp-ticks", &read_number(TICKS).0.to_string());
        self.add_http_response_header("x-tp-dequeued", &read_number(DEQUEUED).0.to_string());
        self.add_http_response_header("x-tp-cas-retries", &self.retries.to_string());
        Action::Continue
    }
}
