//! `plugin-bench`: a proxy-wasm host in plain Rust, so that the bundled plugins' callbacks
//! can be measured natively, inside the guest code, without a wasm engine.
//!
//! The plugins call the host through the proxy-wasm ABI's imported functions
//! (`proxy_get_header_map_value`, `proxy_get_property`, `proxy_get_shared_data`, ...). In a
//! wasm module the engine provides them; here this crate defines them as native
//! `extern "C"` functions over in-memory maps ([`Host`], one per thread), and the linker
//! binds the plugin code to them. Data handed to the guest is allocated the way the
//! guest's own `proxy_on_memory_allocate` does, so that the guest frees it as usual: those
//! copies count as the guest's allocations, as they do in a real host.
//!
//! The benches (`benches/callbacks.rs`) configure a plugin's root context
//! (`PLUGIN::plugin::root_context()`, compiled natively with the plugins' `native-bench`
//! feature), set up a request with [`with_host`], and time its callbacks.
//! A [`CountingAllocator`] installed as the global allocator counts the allocations.
//! The tests (`tests/root.rs`) drive the SDK's generic root context through the same host.
#![cfg(not(target_arch = "wasm32"))]
// Safety of the ABI functions below: only the proxy-wasm crate calls them, with the
// pointers and sizes of live buffers, as a wasm engine would check them; one contract for
// all, stated here rather than on each.
#![allow(clippy::missing_safety_doc)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate_sdk::proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

/// The host's state: what the guest reads and what it did.
#[derive(Default)]
pub struct Host {
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub plugin_configuration: Vec<u8>,
    pub call_response_headers: Vec<(String, String)>,
    pub call_response_body: Vec<u8>,
    /// Property paths with their segments joined by NUL, as the ABI sends them.
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// Shared data: value and CAS.
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    pub now_nanos: u64,
    /// The status of the last local response the guest sent, if any.
    pub local_response: Option<u32>,
    pub http_calls: u32,
    pub metrics: Vec<u64>,
    pub queues: Vec<Vec<Vec<u8>>>,
    /// What the guest logged, when [`Host::keep_logs`] is set (the benches leave it off:
    /// keeping a line is an allocation).
    pub logs: Vec<(LogLevel, String)>,
    pub keep_logs: bool,
    /// The tick period the guest asked for last, in milliseconds.
    pub tick_period_ms: Option<u32>,
}

impl Host {
    /// Sets a property (`["xds", "route_name"]`) to `value`.
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.properties
            .insert(path.join("\0").into_bytes(), value.to_vec());
    }

    /// Replaces the request headers.
    pub fn set_request_headers(&mut self, headers: &[(&str, &str)]) {
        self.request_headers = owned_pairs(headers);
    }

    /// Replaces the response headers.
    pub fn set_response_headers(&mut self, headers: &[(&str, &str)]) {
        self.response_headers = owned_pairs(headers);
    }

    fn map(&mut self, map: MapType) -> &mut Vec<(String, String)> {
        match map {
            MapType::HttpRequestHeaders => &mut self.request_headers,
            MapType::HttpResponseHeaders => &mut self.response_headers,
            MapType::HttpCallResponseHeaders => &mut self.call_response_headers,
            other => panic!("the bench host has no map {other:?}"),
        }
    }

    fn buffer(&mut self, buffer: BufferType) -> &mut Vec<u8> {
        match buffer {
            BufferType::HttpRequestBody => &mut self.request_body,
            BufferType::HttpResponseBody => &mut self.response_body,
            BufferType::PluginConfiguration => &mut self.plugin_configuration,
            BufferType::HttpCallResponseBody => &mut self.call_response_body,
            other => panic!("the bench host has no buffer {other:?}"),
        }
    }
}

fn owned_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

pub fn with_host<T>(f: impl FnOnce(&mut Host) -> T) -> T {
    let start = ALLOCATIONS.load(Ordering::Relaxed);
    let handed_over = HANDED_OVER.load(Ordering::Relaxed);
    let result = HOST.with(|host| f(&mut host.borrow_mut()));
    let made = ALLOCATIONS.load(Ordering::Relaxed) - start;
    let handed_over = HANDED_OVER.load(Ordering::Relaxed) - handed_over;
    // Saturating: without the counting allocator (the tests) nothing is counted as made.
    HOST_ALLOCATIONS.fetch_add(made.saturating_sub(handed_over), Ordering::Relaxed);
    result
}

/// Counts the guest's allocations (and reallocations) made through it; the benches install
/// it as the global allocator.
pub struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Of those, the host's own (kept outside the allocator, which stays a plain counter).
static HOST_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Buffers [`give`] handed to the guest: made by host code, but the guest's.
static HANDED_OVER: AtomicU64 = AtomicU64::new(0);

/// The guest's allocations since the program started.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed) - HOST_ALLOCATIONS.load(Ordering::Relaxed)
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

// ---- the ABI: raw pointers in, guest-owned copies out ----

unsafe fn bytes<'a>(data: *const u8, size: usize) -> &'a [u8] {
    if size == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(data, size)
    }
}

unsafe fn text<'a>(data: *const u8, size: usize) -> &'a str {
    std::str::from_utf8(bytes(data, size)).expect("the guest sent UTF-8")
}

/// Hands `value` to the guest as a buffer the guest owns (it rebuilds a `Vec` from it).
/// In a wasm host this is the guest's `proxy_on_memory_allocate`: a guest allocation.
unsafe fn give(value: &[u8], return_data: *mut *mut u8, return_size: *mut usize) {
    let owned: Box<[u8]> = value.into();
    if !owned.is_empty() {
        HANDED_OVER.fetch_add(1, Ordering::Relaxed);
    }
    *return_size = owned.len();
    *return_data = Box::into_raw(owned) as *mut u8;
}

fn serialize_map(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

fn deserialize_map(data: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
    if data.is_empty() {
        return Vec::new();
    }
    let count = word(0);
    let mut pairs = Vec::with_capacity(count);
    let mut at = 4 + count * 8;
    for index in 0..count {
        let name_size = word(4 + index * 8);
        let value_size = word(8 + index * 8);
        let name = String::from_utf8_lossy(&data[at..at + name_size]).into_owned();
        at += name_size + 1;
        let value = String::from_utf8_lossy(&data[at..at + value_size]).into_owned();
        at += value_size + 1;
        pairs.push((name, value));
    }
    pairs
}

#[no_mangle]
pub unsafe extern "C" fn proxy_log(level: LogLevel, data: *const u8, size: usize) -> Status {
    let message = text(data, size);
    with_host(|host| {
        if host.keep_logs {
            host.logs.push((level, message.to_owned()));
        }
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_log_level(return_level: *mut LogLevel) -> Status {
    *return_level = LogLevel::Info;
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> Status {
    *return_time = with_host(|host| host.now_nanos);
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> Status {
    with_host(|host| host.tick_period_ms = Some(period));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_buffer_bytes(
    buffer: BufferType,
    start: usize,
    max_size: usize,
    return_data: *mut *mut u8,
    return_size: *mut usize,
) -> Status {
    with_host(|host| {
        let data = host.buffer(buffer);
        let start = start.min(data.len());
        let end = start.saturating_add(max_size).min(data.len());
        give(&data[start..end], return_data, return_size);
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_buffer_bytes(
    buffer: BufferType,
    start: usize,
    size: usize,
    data: *const u8,
    data_size: usize,
) -> Status {
    let value = bytes(data, data_size);
    with_host(|host| {
        let buffer = host.buffer(buffer);
        let start = start.min(buffer.len());
        let end = start.saturating_add(size).min(buffer.len());
        buffer.splice(start..end, value.iter().copied());
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_pairs(
    map: MapType,
    return_data: *mut *mut u8,
    return_size: *mut usize,
) -> Status {
    with_host(|host| give(&serialize_map(host.map(map)), return_data, return_size));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_header_map_pairs(
    map: MapType,
    data: *const u8,
    size: usize,
) -> Status {
    let data = bytes(data, size);
    with_host(|host| *host.map(map) = deserialize_map(data));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_value(
    map: MapType,
    key_data: *const u8,
    key_size: usize,
    return_data: *mut *mut u8,
    return_size: *mut usize,
) -> Status {
    let key = text(key_data, key_size);
    with_host(|host| {
        match host
            .map(map)
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
        {
            Some((_, value)) => {
                give(value.as_bytes(), return_data, return_size);
                Status::Ok
            }
            None => Status::NotFound,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_remove_header_map_value(
    map: MapType,
    key_data: *const u8,
    key_size: usize,
) -> Status {
    let key = text(key_data, key_size);
    with_host(|host| {
        host.map(map)
            .retain(|(name, _)| !name.eq_ignore_ascii_case(key))
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_replace_header_map_value(
    map: MapType,
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let key = text(key_data, key_size);
    let value = text(value_data, value_size);
    with_host(|host| {
        let headers = host.map(map);
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case(key));
        headers.push((key.to_owned(), value.to_owned()));
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_add_header_map_value(
    map: MapType,
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let key = text(key_data, key_size);
    let value = text(value_data, value_size);
    with_host(|host| host.map(map).push((key.to_owned(), value.to_owned())));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_property(
    path_data: *const u8,
    path_size: usize,
    return_data: *mut *mut u8,
    return_size: *mut usize,
) -> Status {
    let path = bytes(path_data, path_size);
    with_host(|host| match host.properties.get(path) {
        Some(value) => {
            give(value, return_data, return_size);
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_property(
    path_data: *const u8,
    path_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let path = bytes(path_data, path_size);
    let value = bytes(value_data, value_size);
    with_host(|host| host.properties.insert(path.to_vec(), value.to_vec()));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_shared_data(
    key_data: *const u8,
    key_size: usize,
    return_data: *mut *mut u8,
    return_size: *mut usize,
    return_cas: *mut u32,
) -> Status {
    let key = text(key_data, key_size);
    with_host(|host| match host.shared.get(key) {
        Some((value, cas)) => {
            give(value, return_data, return_size);
            *return_cas = *cas;
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_shared_data(
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
    cas: u32,
) -> Status {
    let key = text(key_data, key_size);
    let value = bytes(value_data, value_size);
    with_host(|host| match host.shared.get_mut(key) {
        Some((_, current)) if cas != 0 && cas != *current => Status::CasMismatch,
        Some((stored, current)) => {
            stored.clear();
            stored.extend_from_slice(value);
            *current += 1;
            Status::Ok
        }
        None => {
            host.shared.insert(key.to_owned(), (value.to_vec(), 1));
            Status::Ok
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_register_shared_queue(
    _name_data: *const u8,
    _name_size: usize,
    return_id: *mut u32,
) -> Status {
    *return_id = with_host(|host| {
        host.queues.push(Vec::new());
        host.queues.len() as u32 - 1
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_enqueue_shared_queue(
    queue_id: u32,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let value = bytes(value_data, value_size);
    with_host(|host| match host.queues.get_mut(queue_id as usize) {
        Some(queue) => {
            queue.push(value.to_vec());
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
pub extern "C" fn proxy_continue_stream(_stream: u32) -> Status {
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_close_stream(_stream: u32) -> Status {
    Status::Ok
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_send_local_response(
    status_code: u32,
    _details_data: *const u8,
    _details_size: usize,
    _body_data: *const u8,
    _body_size: usize,
    _headers_data: *const u8,
    _headers_size: usize,
    _grpc_status: i32,
) -> Status {
    with_host(|host| host.local_response = Some(status_code));
    Status::Ok
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn proxy_http_call(
    _upstream_data: *const u8,
    _upstream_size: usize,
    _headers_data: *const u8,
    _headers_size: usize,
    _body_data: *const u8,
    _body_size: usize,
    _trailers_data: *const u8,
    _trailers_size: usize,
    _timeout: u32,
    return_token: *mut u32,
) -> Status {
    *return_token = with_host(|host| {
        host.http_calls += 1;
        host.http_calls
    });
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_get_status(
    _return_code: *mut u32,
    _return_message_data: *mut *mut u8,
    _return_message_size: *mut usize,
) -> Status {
    Status::NotFound
}

#[no_mangle]
pub extern "C" fn proxy_set_effective_context(_context_id: u32) -> Status {
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_done() -> Status {
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_define_metric(
    _metric_type: MetricType,
    _name_data: *const u8,
    _name_size: usize,
    return_id: *mut u32,
) -> Status {
    *return_id = with_host(|host| {
        host.metrics.push(0);
        host.metrics.len() as u32 - 1
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> Status {
    match with_host(|host| host.metrics.get(metric_id as usize).copied()) {
        Some(value) => {
            *return_value = value;
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
pub extern "C" fn proxy_record_metric(metric_id: u32, value: u64) -> Status {
    with_host(|host| match host.metrics.get_mut(metric_id as usize) {
        Some(metric) => {
            *metric = value;
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
pub extern "C" fn proxy_increment_metric(metric_id: u32, offset: i64) -> Status {
    with_host(|host| match host.metrics.get_mut(metric_id as usize) {
        Some(metric) => {
            *metric = metric.wrapping_add_signed(offset);
            Status::Ok
        }
        None => Status::NotFound,
    })
}

/// ABI functions no bundled plugin calls: defined because the SDK's default trait methods
/// name them, and loud if a plugin ever does call one.
macro_rules! not_provided {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[no_mangle]
        pub extern "C" fn $name($(_: $ty),*) -> Status {
            panic!(concat!("the bench host does not provide ", stringify!($name)))
        }
    )*};
}

not_provided! {
    proxy_grpc_call(upstream: *const u8, upstream_size: usize, service: *const u8, service_size: usize, method: *const u8, method_size: usize, metadata: *const u8, metadata_size: usize, message: *const u8, message_size: usize, timeout: u32, return_id: *mut u32);
    proxy_grpc_stream(upstream: *const u8, upstream_size: usize, service: *const u8, service_size: usize, method: *const u8, method_size: usize, metadata: *const u8, metadata_size: usize, return_id: *mut u32);
    proxy_grpc_send(token: u32, message: *const u8, message_size: usize, end_stream: bool);
    proxy_grpc_cancel(token: u32);
    proxy_grpc_close(token: u32);
    proxy_resolve_shared_queue(vm_id: *const u8, vm_id_size: usize, name: *const u8, name_size: usize, return_id: *mut u32);
    proxy_dequeue_shared_queue(queue_id: u32, return_data: *mut *mut u8, return_size: *mut usize);
}

/// No foreign function, as in Envoy: a configuration telling Tollgate which callbacks it needs
/// (`tollgate.callbacks`) gets `NotFound` and goes on.
#[no_mangle]
pub extern "C" fn proxy_call_foreign_function(
    _name: *const u8,
    _name_size: usize,
    _arguments: *const u8,
    _arguments_size: usize,
    _return_data: *mut *mut u8,
    _return_size: *mut usize,
) -> Status {
    Status::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_through_the_wire_format() {
        let pairs = owned_pairs(&[(":path", "/orders"), ("x-api-key", "alice-key")]);
        assert_eq!(deserialize_map(&serialize_map(&pairs)), pairs);
        assert!(deserialize_map(&[]).is_empty());
    }
}
