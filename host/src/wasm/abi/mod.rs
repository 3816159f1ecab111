//! The proxy-wasm ABI (0.2.1, 0.2.0 and the 0.1.0 subset the SDK uses) as Envoy implements
//! it: status codes, enum values, the header-map wire format, and every host function a
//! module built with the Rust SDK can import, registered on one `Linker` in one place.

mod callouts;
mod http;
mod misc;
mod properties;
mod shared;
mod wasi;

use wasmtime::Linker;

pub use wasi::{define_missing as define_missing_wasi, MODULES as WASI_MODULES};

use super::host::HostState;

/// Host function results (`WasmResult` in Envoy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl From<super::memory::MemoryError> for Status {
    fn from(_: super::memory::MemoryError) -> Self {
        Status::InvalidMemoryAccess
    }
}

/// A host function's outcome before it becomes the i32 the guest sees.
pub type AbiResult = Result<(), Status>;

pub fn status(result: AbiResult) -> u32 {
    match result {
        Ok(()) => Status::Ok as u32,
        Err(status) => status as u32,
    }
}

/// Callback results (`FilterHeadersStatus` and friends reduced to the ABI's two values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    pub fn from_raw(raw: u32) -> Self {
        // Envoy treats any non-zero value as a stop.
        if raw == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }

    /// The most verbose level the gateway's `tracing` filter lets through for plugins.
    pub fn from_tracing() -> Self {
        if tracing::enabled!(target: "plugin", tracing::Level::TRACE) {
            Self::Trace
        } else if tracing::enabled!(target: "plugin", tracing::Level::DEBUG) {
            Self::Debug
        } else if tracing::enabled!(target: "plugin", tracing::Level::INFO) {
            Self::Info
        } else if tracing::enabled!(target: "plugin", tracing::Level::WARN) {
            Self::Warn
        } else {
            Self::Error
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    CallResponseHeaders,
    CallResponseTrailers,
}

impl MapType {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::RequestHeaders,
            1 => Self::RequestTrailers,
            2 => Self::ResponseHeaders,
            3 => Self::ResponseTrailers,
            4 => Self::GrpcInitialMetadata,
            5 => Self::GrpcTrailingMetadata,
            6 => Self::CallResponseHeaders,
            7 => Self::CallResponseTrailers,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    RequestBody,
    ResponseBody,
    DownstreamData,
    UpstreamData,
    CallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::RequestBody,
            1 => Self::ResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::CallResponseBody,
            5 => Self::GrpcReceiveBuffer,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::CallData,
            _ => return None,
        })
    }
}

/// A header map as the ABI sees it: ordered pairs, lower-case keys, pseudo-headers first.
pub type HeaderList = Vec<(String, Vec<u8>)>;

/// Encodes pairs in the proxy-wasm map format: u32 count, then (u32 key length, u32 value
/// length) per pair, then each key and value followed by a NUL, all little-endian.
pub fn encode_pairs(pairs: &HeaderList) -> Vec<u8> {
    let pairs_of = || pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_slice()));
    let mut out = vec![0; encoded_pairs_len(pairs_of())];
    encode_pairs_into(pairs.len(), pairs_of(), &mut out);
    out
}

/// The length of [`encode_pairs`]'s result (0 for no pairs).
pub fn encoded_pairs_len<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> usize {
    let (count, bytes) = pairs.fold((0, 0), |(count, bytes), (k, v)| {
        (count + 1, bytes + 8 + k.len() + 1 + v.len() + 1)
    });
    if count == 0 {
        return 0;
    }
    4 + bytes
}

/// Writes the map format of `count` pairs into `out`, exactly [`encoded_pairs_len`] bytes
/// long (guest memory, say, so that the pairs are copied once), in one pass over them.
pub fn encode_pairs_into<'a>(
    count: usize,
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    out: &mut [u8],
) {
    if count == 0 {
        return;
    }
    out[..4].copy_from_slice(&(count as u32).to_le_bytes());
    let mut sizes = 4;
    let mut data = 4 + count * 8;
    for (key, value) in pairs.take(count) {
        out[sizes..sizes + 4].copy_from_slice(&(key.len() as u32).to_le_bytes());
        out[sizes + 4..sizes + 8].copy_from_slice(&(value.len() as u32).to_le_bytes());
        sizes += 8;
        for bytes in [key, value] {
            out[data..data + bytes.len()].copy_from_slice(bytes);
            out[data + bytes.len()] = 0;
            data += bytes.len() + 1;
        }
    }
}

/// Decodes the map format; `None` when the bytes do not hold what the header claims.
pub fn decode_pairs(bytes: &[u8]) -> Option<HeaderList> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let slice = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(slice.try_into().ok()?) as usize)
    };
    let count = read_u32(0)?;
    // Each pair needs at least 10 bytes (two lengths and two NULs): reject absurd counts
    // before allocating for them.
    if count.checked_mul(10)? > bytes.len() {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        sizes.push((read_u32(at)?, read_u32(at + 4)?));
    }
    let mut at = 4 + count * 8;
    let mut pairs = Vec::with_capacity(count);
    for (key_len, value_len) in sizes {
        let key = bytes.get(at..at.checked_add(key_len)?)?;
        at = at.checked_add(key_len)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(value_len)?)?;
        at = at.checked_add(value_len)?.checked_add(1)?;
        pairs.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    Some(pairs)
}

/// Registers every host function of module `env` and the WASI preview-1 functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    misc::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    shared::add_to_linker(linker)?;
    callouts::add_to_linker(linker)?;
    wasi::add_to_linker(linker)?;
    Ok(())
}

/// The 37 `env` functions a module built with the proxy-wasm Rust SDK can import.
pub const HOST_FUNCTIONS: [&str; 37] = [
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_shared_data",
    "proxy_get_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_call_foreign_function",
    "proxy_set_effective_context",
    "proxy_done",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_in_the_wire_format() {
        let pairs: HeaderList = vec![(":path".into(), b"/a".to_vec()), ("x".into(), Vec::new())];
        let bytes = encode_pairs(&pairs);
        assert_eq!(&bytes[0..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &5u32.to_le_bytes());
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(&bytes[20..], b":path\0/a\0x\0\0");
        assert_eq!(decode_pairs(&bytes), Some(pairs));
        assert!(encode_pairs(&Vec::new()).is_empty());
    }

    #[test]
    fn truncated_or_lying_maps_are_rejected() {
        let bytes = encode_pairs(&vec![("key".into(), b"value".to_vec())]);
        assert_eq!(decode_pairs(&bytes[..bytes.len() - 2]), None);
        let mut lying = bytes.clone();
        lying[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&lying), None);
        let mut huge_key = bytes;
        huge_key[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge_key), None);
    }
}
