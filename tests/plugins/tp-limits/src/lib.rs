//! `tp-limits`: drives a plugin into each of the host's `server.plugin_limits`, reporting
//! the raw status the host returns. No configuration.
//!
//! `on_vm_start` registers the shared queue `tp-limits-queue`; nothing ever dequeues it.
//!
//! Request headers (`on_http_request_headers`), each optional:
//! - `x-tp-key: V`: adds 1 to the shared decimal counter `count:V` (get, then set with the
//!   returned cas, retrying on `CasMismatch`, at most 100 tries), as a rate limit keyed by a
//!   client header would; response header `x-tp-count: <the value written>`.
//! - `x-tp-set-bytes: N`: sets shared key `blob` to N bytes with the raw
//!   `proxy_set_shared_data`; response header `x-tp-set-status: <status>`.
//! - `x-tp-enqueue: N`: resolves `tp-limits-queue` and enqueues N items with the raw
//!   `proxy_enqueue_shared_queue`, stopping at the first failure; response headers
//!   `x-tp-enqueued: <items accepted>` and `x-tp-enqueue-status: <that failure's status, or
//!   0>`.
//! - `x-tp-define: PREFIX:N`: defines counters `PREFIX_0` .. `PREFIX_<N-1>` with the raw
//!   `proxy_define_metric`, stopping at the first failure; response headers
//!   `x-tp-defined: <metrics defined>` and `x-tp-define-status: <that failure's status, or
//!   0>`.
//! - `x-tp-define-tagged: NAME:N`: as `x-tp-define`, with one name and N tags: counters
//!   `n=.=0;.;NAME` .. `n=.=<N-1>;.;NAME`, N series of one metric.
//!
//! Statuses are the ABI's numbers (0 OK, 2 BAD_ARGUMENT, 10 INTERNAL_FAILURE, ...). The raw
//! imports are used because the SDK's wrappers panic on statuses they do not expect.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

const QUEUE: &str = "tp-limits-queue";

#[allow(clashing_extern_declarations)]
extern "C" {
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
}

fn set_raw(key: &str, value: &[u8]) -> u32 {
    unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), 0) }
}

fn enqueue_raw(queue: u32, value: &[u8]) -> u32 {
    unsafe { proxy_enqueue_shared_queue(queue, value.as_ptr(), value.len()) }
}

fn define_counter_raw(name: &str) -> u32 {
    let mut id = 0u32;
    unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) }
}

/// Adds 1 to a shared decimal counter with a CAS retry loop; returns the new value.
fn increment(key: &str) -> u64 {
    for _ in 0..100 {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap();
        let current: u64 = value
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let next = current + 1;
        match hostcalls::set_shared_data(key, Some(next.to_string().as_bytes()), cas) {
            Ok(()) => return next,
            Err(Status::CasMismatch) => continue,
            Err(other) => panic!("tp-limits: set_shared_data({key}) failed: {other:?}"),
        }
    }
    panic!("tp-limits: no CAS success on {key} after 100 tries");
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.register_shared_queue(QUEUE);
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Limits {
            response_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Limits {
    response_headers: Vec<(&'static str, String)>,
}

impl Limits {
    fn number(&self, header: &str) -> Option<usize> {
        self.get_http_request_header(header)?.parse().ok()
    }
}

impl Context for Limits {}

impl HttpContext for Limits {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(key) = self.get_http_request_header("x-tp-key") {
            let count = increment(&format!("count:{key}"));
            self.response_headers
                .push(("x-tp-count", count.to_string()));
        }
        if let Some(size) = self.number("x-tp-set-bytes") {
            let status = set_raw("blob", &vec![b'x'; size]);
            self.response_headers
                .push(("x-tp-set-status", status.to_string()));
        }
        if let Some(items) = self.number("x-tp-enqueue") {
            let queue = self.resolve_shared_queue("", QUEUE).unwrap_or(0);
            let (mut accepted, mut failure) = (0, 0);
            for i in 0..items {
                let status = enqueue_raw(queue, i.to_string().as_bytes());
                if status != 0 {
                    failure = status;
                    break;
                }
                accepted += 1;
            }
            self.response_headers
                .push(("x-tp-enqueued", accepted.to_string()));
            self.response_headers
                .push(("x-tp-enqueue-status", failure.to_string()));
        }
        let define = self
            .get_http_request_header("x-tp-define")
            .map(|spec| (spec, false))
            .or_else(|| {
                self.get_http_request_header("x-tp-define-tagged")
                    .map(|spec| (spec, true))
            });
        if let Some((spec, tagged)) = define {
            let (prefix, count) = spec.split_once(':').unwrap_or((spec.as_str(), "0"));
            let count: usize = count.parse().unwrap_or(0);
            let (mut defined, mut failure) = (0, 0);
            for i in 0..count {
                let name = if tagged {
                    format!("n=.={i};.;{prefix}")
                } else {
                    format!("{prefix}_{i}")
                };
                let status = define_counter_raw(&name);
                if status != 0 {
                    failure = status;
                    break;
                }
                defined += 1;
            }
            self.response_headers
                .push(("x-tp-defined", defined.to_string()));
            self.response_headers
                .push(("x-tp-define-status", failure.to_string()));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.add_http_response_header(name, &value);
        }
        Action::Continue
    }
}
