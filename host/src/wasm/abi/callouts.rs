//! HTTP and gRPC callouts to clusters named in the policies. A call is validated and given a
//! token here; the host starts it once the current callback returns and delivers the answer
//! exactly once with `proxy_on_http_call_response` / the gRPC callbacks.

use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Caller, Linker};

use super::{decode_pairs, status, Status};
use crate::wasm::host::{HostState, PendingCallout};
use crate::wasm::memory;

type Ctx<'a> = Caller<'a, HostState>;

fn timeout(ms: u32) -> Duration {
    // Envoy's default when a plugin passes 0 would be "no timeout"; bound it instead.
    if ms == 0 {
        Duration::from_secs(60)
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    mut caller: Ctx<'_>,
    upstream_ptr: u32,
    upstream_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    body_ptr: u32,
    body_len: u32,
    trailers_ptr: u32,
    trailers_len: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> u32 {
    status((|| {
        let cluster = memory::read_string(&mut caller, upstream_ptr, upstream_len)?;
        let headers = decode_pairs(&memory::read(&mut caller, headers_ptr, headers_len)?)
            .ok_or(Status::BadArgument)?;
        let body = memory::read(&mut caller, body_ptr, body_len)?;
        let trailers = decode_pairs(&memory::read(&mut caller, trailers_ptr, trailers_len)?)
            .ok_or(Status::BadArgument)?;
        if !caller.data().plugin_clusters_contains(&cluster) {
            return Err(Status::BadArgument);
        }
        for required in [":method", ":path", ":authority"] {
            if !headers.iter().any(|(k, v)| k == required && !v.is_empty()) {
                return Err(Status::BadArgument);
            }
        }
        let state = caller.data_mut();
        let token = state.new_token();
        let context_id = state.effective_context;
        state.callouts.insert(token, context_id);
        state.pending.push(PendingCallout::Http {
            token,
            context_id,
            cluster,
            headers,
            body: Bytes::from(body),
            trailers,
            timeout: timeout(timeout_ms),
        });
        memory::write_u32(&mut caller, ret_token, token)?;
        Ok(())
    })())
}

#[allow(clippy::too_many_arguments)]
fn grpc_start(
    caller: &mut Ctx<'_>,
    upstream: (u32, u32),
    service: (u32, u32),
    method: (u32, u32),
    metadata: (u32, u32),
    message: Option<(u32, u32)>,
    timeout_ms: u32,
    ret_token: u32,
) -> Result<(), Status> {
    let cluster = memory::read_string(caller, upstream.0, upstream.1)?;
    let service = memory::read_string(caller, service.0, service.1)?;
    let method = memory::read_string(caller, method.0, method.1)?;
    let metadata =
        decode_pairs(&memory::read(caller, metadata.0, metadata.1)?).ok_or(Status::ParseFailure)?;
    let message = match message {
        Some((ptr, len)) => Some(Bytes::from(memory::read(caller, ptr, len)?)),
        None => None,
    };
    if !caller.data().plugin_clusters_contains(&cluster) {
        return Err(Status::ParseFailure);
    }
    let state = caller.data_mut();
    let token = state.new_token();
    let context_id = state.effective_context;
    state.callouts.insert(token, context_id);
    state.pending.push(PendingCallout::Grpc {
        token,
        context_id,
        cluster,
        service,
        method,
        metadata,
        message,
        timeout: timeout(timeout_ms),
    });
    memory::write_u32(caller, ret_token, token)?;
    Ok(())
}

fn grpc_end(mut caller: Ctx<'_>, token: u32) -> u32 {
    let state = caller.data_mut();
    if state.callouts.remove(&token).is_none() {
        return Status::NotFound as u32;
    }
    state.pending.push(PendingCallout::GrpcCancel { token });
    Status::Ok as u32
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_http_call", http_call)?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: Ctx<'_>,
         up: u32,
         upl: u32,
         sv: u32,
         svl: u32,
         me: u32,
         mel: u32,
         md: u32,
         mdl: u32,
         msg: u32,
         msgl: u32,
         timeout_ms: u32,
         ret: u32| {
            status(grpc_start(
                &mut caller,
                (up, upl),
                (sv, svl),
                (me, mel),
                (md, mdl),
                Some((msg, msgl)),
                timeout_ms,
                ret,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut caller: Ctx<'_>,
         up: u32,
         upl: u32,
         sv: u32,
         svl: u32,
         me: u32,
         mel: u32,
         md: u32,
         mdl: u32,
         ret: u32| {
            status(grpc_start(
                &mut caller,
                (up, upl),
                (sv, svl),
                (me, mel),
                (md, mdl),
                None,
                0,
                ret,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut caller: Ctx<'_>, token: u32, ptr: u32, len: u32, end_stream: u32| {
            status((|| {
                let message = memory::read(&mut caller, ptr, len)?;
                let state = caller.data_mut();
                if !state.callouts.contains_key(&token) {
                    return Err(Status::NotFound);
                }
                state.pending.push(PendingCallout::GrpcSend {
                    token,
                    message: Bytes::from(message),
                    end_stream: end_stream != 0,
                });
                Ok(())
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", grpc_end)?;
    linker.func_wrap("env", "proxy_grpc_close", grpc_end)?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut caller: Ctx<'_>, ret_code: u32, ret_ptr: u32, ret_len: u32| -> wasmtime::Result<u32> {
            let (code, message) = caller.data().status.clone();
            if let Err(error) = memory::write_u32(&mut caller, ret_code, code) {
                return Ok(Status::from(error) as u32);
            }
            Ok(status(
                memory::return_bytes(&mut caller, &message, ret_ptr, ret_len)?
                    .map_err(Status::from),
            ))
        },
    )?;
    Ok(())
}
