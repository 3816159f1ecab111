//! `tp-misbehave`: a plugin that fails in a chosen way, to test the host's sandbox.
//!
//! The mode comes from JSON `{"mode": "<mode>"}`: the VM configuration (`vm_config`, read in
//! `on_vm_start`) for `panic-on-start`, the plugin configuration (read in `on_configure`) for
//! the others. Empty or `null` configuration means `ok`; an unknown mode or invalid JSON makes
//! `on_configure` return false with a log line naming the field `mode`.
//!
//! - `ok`: does nothing (every request continues).
//! - `panic`: panics in `on_http_request_headers` (message `tp-misbehave: panic mode`).
//! - `loop`: spins forever in `on_http_request_headers` (only the host's deadline stops it).
//! - `memory`: in `on_http_request_headers`, allocates 1 MiB blocks and writes to every page
//!   of each, keeping them all, until allocation fails (the VM's memory limit or 4 GiB).
//! - `bad-pointer`: in `on_http_request_headers`, calls the raw import
//!   `env.proxy_get_header_map_value(0 /* request headers */, 0xFFFF_FF00, 64, &mut ptr, &mut
//!   len)` with a key pointer far outside linear memory; the host must answer
//!   INVALID_MEMORY_ACCESS (6) or trap. The status is added as response header
//!   `x-bad-pointer-status: <number>`. Then the same call for `:path` (found) with the place
//!   for the result's pointer far outside linear memory: the status goes into
//!   `x-bad-return-pointer-status`. The request continues.
//! - `configure-false`: `on_configure` logs `tp-misbehave refuses this configuration` (level
//!   error) and returns false.
//! - `utf8-request-body`: reads the whole request body as `String::from_utf8(..).unwrap()`
//!   (pausing until its end): a body that is not UTF-8 panics (message `tp-misbehave:
//!   request body is not UTF-8`); any other body continues unchanged.
//! - `utf8-redact-response`: redacts the response body line by line, replacing `secret`
//!   with `XXXXXX` (same length): holds back an incomplete last line until its newline or
//!   the end of the body, and releases complete lines redacted. It reads the held-back text
//!   as `String::from_utf8(..).unwrap()`, so a body that is not UTF-8 panics while the
//!   plugin holds part of it back.
//! - `panic-response-headers`: panics in `on_http_response_headers`.
//! - `panic-on-start` (in `vm_config`): panics in `on_vm_start` (message
//!   `tp-misbehave: panic-on-start mode`).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { mode: Mode::Ok }) });
}}

#[link(wasm_import_module = "env")]
extern "C" {
    /// The raw host call, declared here so that the plugin can pass a pointer the SDK never
    /// would; the SDK declares the same import with its own types (same wasm signature).
    #[link_name = "proxy_get_header_map_value"]
    fn raw_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Panic,
    Loop,
    Memory,
    BadPointer,
    ConfigureFalse,
    PanicOnStart,
    Utf8RequestBody,
    Utf8RedactResponse,
    PanicResponseHeaders,
}

fn parse_mode(bytes: &[u8]) -> Result<Mode, String> {
    if bytes.is_empty() || bytes == b"null" {
        return Ok(Mode::Ok);
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("configuration is not JSON: {e}"))?;
    let mode = value.get("mode").and_then(|m| m.as_str()).unwrap_or("ok");
    Ok(match mode {
        "ok" => Mode::Ok,
        "panic" => Mode::Panic,
        "loop" => Mode::Loop,
        "memory" => Mode::Memory,
        "bad-pointer" => Mode::BadPointer,
        "configure-false" => Mode::ConfigureFalse,
        "panic-on-start" => Mode::PanicOnStart,
        "utf8-request-body" => Mode::Utf8RequestBody,
        "utf8-redact-response" => Mode::Utf8RedactResponse,
        "panic-response-headers" => Mode::PanicResponseHeaders,
        other => return Err(format!("field \"mode\": unknown mode {other:?}")),
    })
}

struct Root {
    mode: Mode,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let bytes = self.get_vm_configuration().unwrap_or_default();
        if parse_mode(&bytes) == Ok(Mode::PanicOnStart) {
            panic!("tp-misbehave: panic-on-start mode");
        }
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match parse_mode(&bytes) {
            Ok(Mode::ConfigureFalse) => {
                let _ = hostcalls::log(LogLevel::Error, "tp-misbehave refuses this configuration");
                false
            }
            Ok(mode) => {
                self.mode = mode;
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("tp-misbehave: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Misbehave {
            mode: self.mode,
            bad_pointer_status: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Misbehave {
    mode: Mode,
    /// The answers to the bad key pointer and to the bad place for the result.
    bad_pointer_status: Option<(u32, u32)>,
}

impl Context for Misbehave {}

#[inline(never)]
fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

#[inline(never)]
fn exhaust_memory() -> usize {
    const BLOCK: usize = 1 << 20;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    // At most 4096 blocks: 4 GiB, more than a wasm32 memory can hold.
    for _ in 0..4096 {
        let mut block = vec![0u8; BLOCK];
        for page in (0..BLOCK).step_by(4096) {
            block[page] = 1;
        }
        blocks.push(std::hint::black_box(block));
    }
    std::hint::black_box(&blocks).len()
}

#[inline(never)]
fn bad_pointer_call() -> u32 {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host must bounds-check the key pointer; that is what this tests. The
    // return pointers are valid locals.
    unsafe { raw_get_header_map_value(0, 0xFFFF_FF00usize as *const u8, 64, &mut data, &mut size) }
}

#[inline(never)]
fn bad_return_pointer_call() -> u32 {
    let key = b":path";
    let mut size: usize = 0;
    // SAFETY: the host must bounds-check where it writes the result's pointer; that is what
    // this tests. The key and the size's place are valid.
    unsafe {
        raw_get_header_map_value(
            0,
            key.as_ptr(),
            key.len(),
            0xFFFF_FF00usize as *mut *mut u8,
            &mut size,
        )
    }
}

impl HttpContext for Misbehave {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.mode {
            Mode::Panic => panic!("tp-misbehave: panic mode"),
            Mode::Loop => spin_forever(),
            Mode::Memory => {
                let kept = exhaust_memory();
                let _ = hostcalls::log(LogLevel::Error, &format!("tp-misbehave: kept {kept} MiB"));
            }
            Mode::BadPointer => {
                self.bad_pointer_status = Some((bad_pointer_call(), bad_return_pointer_call()))
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode != Mode::Utf8RequestBody {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let text = String::from_utf8(body).expect("tp-misbehave: request body is not UTF-8");
        std::hint::black_box(text);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.mode == Mode::PanicResponseHeaders {
            panic!("tp-misbehave: panic in response headers");
        }
        if let Some((key, result)) = self.bad_pointer_status {
            self.add_http_response_header("x-bad-pointer-status", &key.to_string());
            self.add_http_response_header("x-bad-return-pointer-status", &result.to_string());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode != Mode::Utf8RedactResponse {
            return Action::Continue;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let text = String::from_utf8(body).expect("tp-misbehave: response body is not UTF-8");
        if !end_of_stream && !text.ends_with('\n') {
            return Action::Pause;
        }
        self.set_http_response_body(0, body_size, text.replace("secret", "XXXXXX").as_bytes());
        Action::Continue
    }
}
