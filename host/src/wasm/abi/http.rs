//! Header maps, body buffers and stream control: what an HTTP filter plugin touches.

use bytes::Bytes;
use wasmtime::Caller;

use super::{
    decode_pairs, encode_pairs_into, encoded_pairs_len, status, AbiResult, BufferType, MapType,
    Status,
};
use crate::wasm::header_map::PseudoHeaderMap;
use crate::wasm::host::{HostState, LocalResponse};
use crate::wasm::memory;

type Ctx<'a> = Caller<'a, HostState>;

fn map_mut(state: &mut HostState, map: MapType) -> Option<&mut PseudoHeaderMap> {
    match map {
        MapType::CallResponseHeaders => state.call_response.as_mut().map(|r| &mut r.headers),
        MapType::CallResponseTrailers => state.call_response.as_mut().map(|r| &mut r.trailers),
        MapType::GrpcInitialMetadata => state.call_response.as_mut().map(|r| &mut r.headers),
        MapType::GrpcTrailingMetadata => state.call_response.as_mut().map(|r| &mut r.trailers),
        MapType::RequestHeaders => state.stream().map(|s| s.request_headers_mut()),
        MapType::RequestTrailers => state.stream().map(|s| &mut s.request_trailers),
        MapType::ResponseHeaders => state.stream().map(|s| s.response_headers_mut()),
        MapType::ResponseTrailers => state.stream().map(|s| &mut s.response_trailers),
    }
}

/// A map to read: outside their callbacks, the request and response headers are read where
/// the request keeps them, not copied.
fn map_ref(state: &HostState, map: MapType) -> Option<&PseudoHeaderMap> {
    let stream = || state.streams.get(&state.effective_context);
    match map {
        MapType::RequestHeaders => stream().map(|s| s.request_headers_view()),
        MapType::ResponseHeaders => stream().map(|s| s.response_headers_view()),
        MapType::RequestTrailers => stream().map(|s| &s.request_trailers),
        MapType::ResponseTrailers => stream().map(|s| &s.response_trailers),
        MapType::CallResponseHeaders | MapType::GrpcInitialMetadata => {
            state.call_response.as_ref().map(|r| &r.headers)
        }
        MapType::CallResponseTrailers | MapType::GrpcTrailingMetadata => {
            state.call_response.as_ref().map(|r| &r.trailers)
        }
    }
}

fn read_map_type(raw: u32) -> Result<MapType, Status> {
    MapType::from_raw(raw).ok_or(Status::BadArgument)
}

fn lower(key: String) -> String {
    if key.bytes().any(|b| b.is_ascii_uppercase()) {
        key.to_ascii_lowercase()
    } else {
        key
    }
}

fn get_header_map_pairs(
    mut caller: Ctx<'_>,
    map: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<u32> {
    let map = match read_map_type(map) {
        Ok(map) => map,
        Err(status) => return Ok(status as u32),
    };
    let Some(pairs) = map_ref(caller.data(), map) else {
        // No such map now (the answer of a callout that failed or timed out, a stream's map
        // read from a root context): an empty list, as Envoy answers. The proxy-wasm Rust
        // SDK's `get_map` panics on any status but OK, so NOT_FOUND here trapped a plugin
        // reading a failed callout's headers, which one slow service brings about.
        let written = memory::write_u32(&mut caller, ret_ptr, 0)
            .and_then(|()| memory::write_u32(&mut caller, ret_len, 0));
        return Ok(status(written.map_err(Status::from)));
    };
    // Serialized straight from the map into the guest's memory: no copy in the host. The
    // guest's allocator runs in between and could have changed the map (a hostile one
    // calling back into the host): then the guest gets zeros rather than a mismatched map.
    let len = encoded_pairs_len(pairs.pairs());
    let written = memory::return_with(
        &mut caller,
        len,
        ret_ptr,
        ret_len,
        |state, out| match map_ref(state, map) {
            Some(pairs) if encoded_pairs_len(pairs.pairs()) == out.len() => {
                encode_pairs_into(pairs.len(), pairs.pairs(), out)
            }
            _ => out.fill(0),
        },
    )?;
    Ok(status(written.map_err(Status::from)))
}

fn set_header_map_pairs(mut caller: Ctx<'_>, map: u32, ptr: u32, len: u32) -> u32 {
    status((|| {
        let map = read_map_type(map)?;
        let bytes = memory::read(&mut caller, ptr, len)?;
        let pairs = decode_pairs(&bytes).ok_or(Status::BadArgument)?;
        let target = map_mut(caller.data_mut(), map).ok_or(Status::NotFound)?;
        target.set_pairs(&pairs);
        Ok(())
    })())
}

fn get_header_map_value(
    mut caller: Ctx<'_>,
    map: u32,
    key_ptr: u32,
    key_len: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<u32> {
    let lookup = (|| -> Result<_, Status> {
        let map = read_map_type(map)?;
        // The key is looked up where the guest keeps it; the value found is held by count,
        // so the copy below, which runs after the guest's allocator (which could call back
        // into the host and change the map), needs no second lookup.
        memory::with_guest_bytes(&mut caller, key_ptr, key_len, |key, state| {
            let pairs = map_ref(state, map).ok_or(Status::NotFound)?;
            pairs.shared_value(key).ok_or(Status::NotFound)
        })?
    })();
    let value = match lookup {
        Ok(value) => value,
        Err(error) => return Ok(error as u32),
    };
    let written = memory::return_bytes(&mut caller, value.as_ref(), ret_ptr, ret_len)?;
    Ok(status(written.map_err(Status::from)))
}

/// An edit of one name's values: add or replace.
type MapEdit = fn(&mut PseudoHeaderMap, &[u8], &[u8]);

/// Shared by add / replace: the key and value are read where the guest keeps them, then
/// the map is edited.
fn edit_map(
    caller: &mut Ctx<'_>,
    map: u32,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
    edit: MapEdit,
) -> AbiResult {
    let map = read_map_type(map)?;
    memory::with_guest_byte_pair(
        caller,
        (key_ptr, key_len),
        (value_ptr, value_len),
        |key, value, state| {
            let pairs = map_mut(state, map).ok_or(Status::NotFound)?;
            edit(pairs, key, value);
            Ok(())
        },
    )?
}

fn remove_header_map_value(mut caller: Ctx<'_>, map: u32, key_ptr: u32, key_len: u32) -> u32 {
    status((|| {
        let map = read_map_type(map)?;
        memory::with_guest_bytes(&mut caller, key_ptr, key_len, |key, state| {
            let pairs = map_mut(state, map).ok_or(Status::NotFound)?;
            pairs.remove(key);
            Ok(())
        })?
    })())
}

/// The stream's body buffer of that type, if it is one.
fn body_mut(state: &mut HostState, buffer: BufferType) -> Option<&mut Vec<u8>> {
    let stream = state.stream()?;
    match buffer {
        BufferType::RequestBody => Some(&mut stream.request_body),
        BufferType::ResponseBody => Some(&mut stream.response_body),
        _ => None,
    }
}

fn buffer(state: &mut HostState, buffer: BufferType) -> Option<Bytes> {
    Some(match buffer {
        // Lent out by `get_buffer_bytes` (see there), never copied.
        BufferType::RequestBody | BufferType::ResponseBody => return None,
        BufferType::CallResponseBody | BufferType::GrpcReceiveBuffer => {
            state.call_response.as_ref()?.body.clone()
        }
        BufferType::VmConfiguration => state.plugin.vm_configuration.clone(),
        BufferType::PluginConfiguration => state.configuring.clone(),
        BufferType::DownstreamData | BufferType::UpstreamData | BufferType::CallData => {
            return None
        }
    })
}

fn get_buffer_bytes(
    mut caller: Ctx<'_>,
    buffer_type: u32,
    start: u32,
    max_size: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<u32> {
    let Some(buffer_type) = BufferType::from_raw(buffer_type) else {
        return Ok(Status::BadArgument as u32);
    };
    // A body is lent out of the stream state for the copy into guest memory (which calls the
    // guest's allocator, so the state cannot stay borrowed) instead of being copied first:
    // a streamed body is read this way piece by piece.
    if let Some(body) = body_mut(caller.data_mut(), buffer_type).map(std::mem::take) {
        let start = (start as usize).min(body.len());
        let end = start.saturating_add(max_size as usize).min(body.len());
        let returned = memory::return_bytes(&mut caller, &body[start..end], ret_ptr, ret_len);
        if let Some(slot) = body_mut(caller.data_mut(), buffer_type) {
            *slot = body;
        }
        return Ok(status(returned?.map_err(Status::from)));
    }
    let Some(bytes) = buffer(caller.data_mut(), buffer_type) else {
        return Ok(Status::NotFound as u32);
    };
    // Clamp to what is there, as Envoy does (also when `start + max_size` passes `u32::MAX`,
    // as `get_http_request_body(1, usize::MAX)` asks); reading past the end yields nothing.
    let start = (start as usize).min(bytes.len());
    let end = start.saturating_add(max_size as usize).min(bytes.len());
    Ok(status(
        memory::return_bytes(&mut caller, &bytes[start..end], ret_ptr, ret_len)?
            .map_err(Status::from),
    ))
}

/// Envoy's body-setting rules: `start == 0` replaces the first `size` bytes (so `size == 0`
/// prepends and `size >= len` replaces everything); `start >= len` appends; anything else
/// is a bad argument.
pub fn splice_body(body: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> AbiResult {
    if start == 0 {
        let drained = size.min(body.len());
        body.splice(0..drained, data.iter().copied());
        Ok(())
    } else if start >= body.len() {
        body.extend_from_slice(data);
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

fn set_buffer_bytes(
    mut caller: Ctx<'_>,
    buffer_type: u32,
    start: u32,
    size: u32,
    ptr: u32,
    len: u32,
) -> u32 {
    status((|| {
        let buffer_type = BufferType::from_raw(buffer_type).ok_or(Status::BadArgument)?;
        let data = memory::read(&mut caller, ptr, len)?;
        let body = body_mut(caller.data_mut(), buffer_type).ok_or(Status::NotFound)?;
        splice_body(body, start as usize, size as usize, &data)
    })())
}

fn continue_stream(mut caller: Ctx<'_>, stream_type: u32) -> u32 {
    status((|| {
        let stream = caller.data_mut().stream().ok_or(Status::NotFound)?;
        match stream_type {
            0 => stream.signals.continue_request = true,
            1 => stream.signals.continue_response = true,
            _ => return Err(Status::BadArgument),
        }
        stream.wake.notify_one();
        Ok(())
    })())
}

fn close_stream(mut caller: Ctx<'_>, stream_type: u32) -> u32 {
    status((|| {
        let stream = caller.data_mut().stream().ok_or(Status::NotFound)?;
        match stream_type {
            0 | 1 => stream.signals.reset = true,
            _ => return Err(Status::BadArgument),
        }
        stream.wake.notify_one();
        Ok(())
    })())
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    mut caller: Ctx<'_>,
    status_code: u32,
    details_ptr: u32,
    details_len: u32,
    body_ptr: u32,
    body_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    grpc_status: i32,
) -> u32 {
    status((|| {
        let details = memory::read_string(&mut caller, details_ptr, details_len)?;
        let body = memory::read(&mut caller, body_ptr, body_len)?;
        let headers = memory::read(&mut caller, headers_ptr, headers_len)?;
        let headers = decode_pairs(&headers).ok_or(Status::BadArgument)?;
        if !(100..=599).contains(&status_code) {
            return Err(Status::BadArgument);
        }
        let stream = caller.data_mut().stream().ok_or(Status::NotFound)?;
        if stream.response_started || stream.signals.local_response.is_some() {
            // Envoy refuses a second local reply and one after the response has begun.
            return Err(Status::BadArgument);
        }
        stream.signals.local_response = Some(LocalResponse {
            status: status_code as u16,
            details,
            body: Bytes::from(body),
            headers: headers.into_iter().map(|(k, v)| (lower(k), v)).collect(),
            grpc_status,
        });
        stream.wake.notify_one();
        Ok(())
    })())
}

pub fn add_to_linker(linker: &mut wasmtime::Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_header_map_pairs", get_header_map_pairs)?;
    linker.func_wrap("env", "proxy_set_header_map_pairs", set_header_map_pairs)?;
    linker.func_wrap("env", "proxy_get_header_map_value", get_header_map_value)?;
    let edits: [(&str, MapEdit); 2] = [
        ("proxy_add_header_map_value", PseudoHeaderMap::add),
        ("proxy_replace_header_map_value", PseudoHeaderMap::replace),
    ];
    for (name, edit) in edits {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: Ctx<'_>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
                status(edit_map(&mut caller, map, kp, kl, vp, vl, edit))
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        remove_header_map_value,
    )?;
    linker.func_wrap("env", "proxy_get_buffer_bytes", get_buffer_bytes)?;
    linker.func_wrap("env", "proxy_set_buffer_bytes", set_buffer_bytes)?;
    linker.func_wrap("env", "proxy_continue_stream", continue_stream)?;
    linker.func_wrap("env", "proxy_close_stream", close_stream)?;
    linker.func_wrap("env", "proxy_send_local_response", send_local_response)?;
    // ABI 0.1.0 names, for older modules.
    linker.func_wrap("env", "proxy_continue_request", |caller: Ctx<'_>| {
        continue_stream(caller, 0)
    })?;
    linker.func_wrap("env", "proxy_continue_response", |caller: Ctx<'_>| {
        continue_stream(caller, 1)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_splicing_follows_envoy() {
        let mut body = b"hello".to_vec();
        splice_body(&mut body, 0, 0, b">").unwrap();
        assert_eq!(body, b">hello");
        splice_body(&mut body, 0, 100, b"new").unwrap();
        assert_eq!(body, b"new");
        splice_body(&mut body, 3, 0, b"!").unwrap();
        assert_eq!(body, b"new!");
        splice_body(&mut body, 0, 3, b"old").unwrap();
        assert_eq!(body, b"old!");
        assert_eq!(splice_body(&mut body, 1, 1, b"x"), Err(Status::BadArgument));
    }
}
