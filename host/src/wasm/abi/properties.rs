//! Properties with Envoy's names and encodings: strings raw, integers as 8-byte
//! little-endian, booleans as one byte, timestamps and durations as i64 nanoseconds, maps in
//! the pairs format. `set_property` writes per-request filter state that later plugins read.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::{encode_pairs, status, HeaderList, Status};
use crate::wasm::host::{HostState, StreamState};
use crate::wasm::memory;

type Ctx<'a> = Caller<'a, HostState>;

fn int(value: i64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

fn nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn header<'a>(pairs: &'a HeaderList, name: &str) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn without_pseudo(pairs: &HeaderList) -> HeaderList {
    pairs
        .iter()
        .filter(|(k, _)| !k.starts_with(':'))
        .cloned()
        .collect()
}

fn headers_size(pairs: &HeaderList) -> u64 {
    pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

/// Looks a property up; `None` is NOT_FOUND.
pub fn lookup(state: &HostState, path: &[&str]) -> Option<Vec<u8>> {
    let plugin = &state.plugin;
    match path {
        ["plugin_name"] => return Some(plugin.name.clone().into_bytes()),
        ["plugin_root_id"] => return Some(plugin.root_id.clone().into_bytes()),
        ["plugin_vm_id"] => return Some(plugin.vm_id.clone().into_bytes()),
        _ => {}
    }
    let stream = state.streams.get(&state.effective_context)?;
    stream_property(stream, path).or_else(|| {
        // Filter state written by `set_property`: the whole path is the key.
        let key = path.join("\0");
        stream.filter_state.lock().ok()?.get(&key).cloned()
    })
}

fn stream_property(stream: &StreamState, path: &[&str]) -> Option<Vec<u8>> {
    let info = &stream.info;
    let request = &stream.request_headers;
    let response = &stream.response_headers;
    Some(match path {
        ["request", "path"] => header(request, ":path")?.to_vec(),
        ["request", "url_path"] => {
            let path = header(request, ":path")?;
            path.split(|b| *b == b'?')
                .next()
                .unwrap_or_default()
                .to_vec()
        }
        ["request", "host"] => header(request, ":authority")?.to_vec(),
        ["request", "scheme"] => header(request, ":scheme")?.to_vec(),
        ["request", "method"] => header(request, ":method")?.to_vec(),
        ["request", "headers"] => encode_pairs(&without_pseudo(request)),
        ["request", "query"] => {
            let path = header(request, ":path")?;
            let at = path.iter().position(|b| *b == b'?')?;
            path[at + 1..].to_vec()
        }
        ["request", "id"] => info.request_id.clone().into_bytes(),
        ["request", "protocol"] => info.protocol.as_bytes().to_vec(),
        ["request", "time"] => int(nanos(info.started)),
        ["request", "duration"] => {
            let finished = stream.finished?;
            int(finished
                .duration_since(info.started)
                .map_or(0, |d| d.as_nanos() as i64))
        }
        ["request", "size"] => int(stream.request_size as i64),
        ["request", "total_size"] => int((stream.request_size + headers_size(request)) as i64),
        ["response", "code"] => int(i64::from(stream.response_code?)),
        ["response", "code_details"] => stream.response_code_details.clone().into_bytes(),
        ["response", "headers"] => encode_pairs(&without_pseudo(response)),
        ["response", "trailers"] => encode_pairs(&stream.response_trailers),
        ["response", "size"] => int(stream.response_size as i64),
        ["response", "total_size"] => int((stream.response_size + headers_size(response)) as i64),
        ["response", "grpc_status"] => {
            let value = header(&stream.response_trailers, "grpc-status")
                .or_else(|| header(response, "grpc-status"))?;
            int(std::str::from_utf8(value).ok()?.parse().ok()?)
        }
        ["source", "address"] => info.downstream_remote.to_string().into_bytes(),
        ["source", "port"] => int(i64::from(info.downstream_remote.port())),
        ["destination", "address"] => info.downstream_local.to_string().into_bytes(),
        ["destination", "port"] => int(i64::from(info.downstream_local.port())),
        ["connection", "id"] => int(info.connection_id as i64),
        ["connection", "mtls"] => vec![u8::from(info.mtls)],
        ["connection", "tls_version"] => info.tls_version?.as_bytes().to_vec(),
        ["connection", "requested_server_name"] => info.server_name.clone()?.into_bytes(),
        ["upstream", "address"] => stream.upstream_address.clone()?.into_bytes(),
        ["xds", "cluster_name"] => info.cluster_name.clone().into_bytes(),
        ["xds", "route_name"] => info.route_name.clone().into_bytes(),
        _ => return None,
    })
}

fn split_path(bytes: &[u8]) -> Vec<String> {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    trimmed
        .split(|b| *b == 0)
        .map(|segment| String::from_utf8_lossy(segment).into_owned())
        .collect()
}

fn get_property(
    mut caller: Ctx<'_>,
    path_ptr: u32,
    path_len: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<u32> {
    let path = match memory::read(&mut caller, path_ptr, path_len) {
        Ok(path) => split_path(&path),
        Err(error) => return Ok(Status::from(error) as u32),
    };
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    match lookup(caller.data(), &segments) {
        Some(value) => Ok(status(
            memory::return_bytes(&mut caller, &value, ret_ptr, ret_len)?.map_err(Status::from),
        )),
        None => Ok(Status::NotFound as u32),
    }
}

fn set_property(
    mut caller: Ctx<'_>,
    path_ptr: u32,
    path_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> u32 {
    status((|| {
        let path = split_path(&memory::read(&mut caller, path_ptr, path_len)?);
        let value = memory::read(&mut caller, value_ptr, value_len)?;
        let stream = caller.data_mut().stream().ok_or(Status::NotFound)?;
        let mut state = stream
            .filter_state
            .lock()
            .map_err(|_| Status::InternalFailure)?;
        state.insert(path.join("\0"), value);
        Ok(())
    })())
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_property", get_property)?;
    linker.func_wrap("env", "proxy_set_property", set_property)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_on_nul_with_or_without_a_trailing_one() {
        assert_eq!(split_path(b"request\0path"), vec!["request", "path"]);
        assert_eq!(split_path(b"request\0path\0"), vec!["request", "path"]);
        assert_eq!(split_path(b"marker"), vec!["marker"]);
    }
}
