//! What the pipeline sends for the plugins: a plugin's local answer as a response (and as
//! the head the response plugins see), a header list as a header map.

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::super::{local, ResponseBody};
use crate::wasm::abi::HeaderList;
use crate::wasm::header_map::PseudoHeaderMap;
use crate::wasm::host::LocalResponse;

/// A local reply's head as the response plugins see it (`:status` first).
pub fn local_reply_head(answer: &LocalResponse) -> PseudoHeaderMap {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    PseudoHeaderMap::response(
        status,
        PseudoHeaderMap::from_pairs(&answer.headers).into_headers(),
    )
}

/// Builds the response for a local reply.
pub fn local_response(answer: &LocalResponse) -> Response<ResponseBody> {
    let mut response = Response::new(local::body(answer.body.clone()));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    if answer.grpc_status >= 0 {
        if let Ok(value) = HeaderValue::from_str(&answer.grpc_status.to_string()) {
            response.headers_mut().insert("grpc-status", value);
        }
    }
    response.extensions_mut().insert(local::LocalReply {
        grpc_status: u32::try_from(answer.grpc_status).ok(),
        message: answer.body.clone(),
    });
    response
}

/// The headers of a list but its pseudo-headers, as a `HeaderMap`; names and values `http`
/// refuses are left out.
pub fn header_map(list: &HeaderList) -> HeaderMap {
    PseudoHeaderMap::from_pairs(list).into_headers()
}
