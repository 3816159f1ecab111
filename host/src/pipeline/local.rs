//! Answers the gateway gives itself: errors, direct responses and redirects, and the form
//! every such answer takes on a gRPC request.
//!
//! A gRPC client reads the outcome of a call from `grpc-status`, not from the HTTP status,
//! so an answer the gateway (or a plugin) makes to a gRPC request is sent as Envoy sends it:
//! trailers-only, that is one HEADERS frame with `:status 200`, `content-type:
//! application/grpc`, `grpc-status`, `grpc-message` (the answer's text, percent-encoded) and
//! no body. [`grpc_answer`] holds these rules; [`for_grpc`] applies them to a response.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};

use super::refusal::{GrpcCode, Refusal};
use super::ResponseBody;
use crate::config::{DirectResponse, PathMatch, Redirect};
use crate::wasm::abi::HeaderList;
use crate::wasm::host::LocalResponse;

/// Marks a response the gateway or a plugin made itself (not the upstream's), with what a
/// gRPC client gets instead of its body.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// The gRPC status the answer names; `None` derives it from the HTTP status.
    pub grpc_status: Option<u32>,
    /// The answer's text, sent as `grpc-message`.
    pub message: Bytes,
}

/// Whether a request is a gRPC call: `content-type` is `application/grpc` or one of its
/// `application/grpc+codec` forms (gRPC-Web is not: its clients read HTTP statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            let value = value.trim().to_ascii_lowercase();
            match value.strip_prefix("application/grpc") {
                Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'),
                None => false,
            }
        })
}

/// `grpc-message` encoding: every byte outside printable ASCII, and `%` itself, as `%XX`.
pub fn percent_encode_grpc_message(message: &[u8]) -> String {
    let mut out = String::with_capacity(message.len());
    for &byte in message {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A local answer in the form a gRPC client gets: `:status 200`, the answer's headers except
/// its framing, `content-type: application/grpc`, `grpc-status` (the answer's, or the one
/// its HTTP status stands for), `grpc-message` (the body, when there is one), no body.
pub fn grpc_answer(answer: &LocalResponse) -> LocalResponse {
    let grpc_status = u32::try_from(answer.grpc_status)
        .unwrap_or_else(|_| GrpcCode::from_http_status(answer.status).code());
    let mut headers: HeaderList = answer
        .headers
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "content-type" | "content-length" | "grpc-status" | "grpc-message"
            )
        })
        .cloned()
        .collect();
    headers.push(("content-type".into(), b"application/grpc".to_vec()));
    headers.push(("grpc-status".into(), grpc_status.to_string().into_bytes()));
    if !answer.body.is_empty() {
        let message = percent_encode_grpc_message(&answer.body);
        headers.push(("grpc-message".into(), message.into_bytes()));
    }
    LocalResponse {
        status: 200,
        details: answer.details.clone(),
        body: Bytes::new(),
        headers,
        grpc_status: grpc_status as i32,
    }
}

/// The response as a gRPC client must get it: a local answer becomes trailers-only (see
/// [`grpc_answer`]); the upstream's responses, and answers already converted, pass as they are.
pub fn for_grpc(response: Response<ResponseBody>) -> Response<ResponseBody> {
    let Some(local) = response.extensions().get::<LocalReply>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    let answer = LocalResponse {
        status: parts.status.as_u16(),
        details: String::new(),
        body: local.message,
        headers: crate::wasm::plugin::header_list(&parts.headers),
        grpc_status: local.grpc_status.map_or(-1, |status| status as i32),
    };
    let converted = grpc_answer(&answer);
    parts.status = StatusCode::OK;
    parts.headers = super::plugins::header_map(&converted.headers);
    parts.extensions.remove::<LocalReply>();
    Response::from_parts(parts, body(Bytes::new()))
}

pub fn body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text answer from the gateway (see `refusal::Refusal::response`): `text` and a
/// newline, for terminals; a gRPC client gets `text` and `grpc_status` instead.
pub(super) fn reply(
    status: StatusCode,
    text: &str,
    grpc_status: GrpcCode,
) -> Response<ResponseBody> {
    let mut response = Response::new(body(format!("{text}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.extensions_mut().insert(LocalReply {
        grpc_status: Some(grpc_status.code()),
        message: Bytes::copy_from_slice(text.as_bytes()),
    });
    response
}

pub fn direct_response(direct: &DirectResponse) -> Response<ResponseBody> {
    let mut response = Response::new(body(direct.body.clone()));
    *response.status_mut() = direct.status;
    for (name, value) in &direct.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// Builds the `Location` of a redirect from the request and the route's redirect fields.
pub fn redirect(
    redirect: &Redirect,
    matched: &PathMatch,
    uri: &Uri,
    authority: &str,
    scheme: &str,
) -> Result<Response<ResponseBody>, Refusal> {
    let location = location(redirect, matched, uri, authority, scheme);
    let mut response = Response::new(body(Bytes::new()));
    *response.status_mut() = redirect.code;
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
            Ok(response)
        }
        Err(_) => Err(Refusal::InvalidRedirect),
    }
}

fn location(
    redirect: &Redirect,
    matched: &PathMatch,
    uri: &Uri,
    authority: &str,
    scheme: &str,
) -> String {
    let (request_host, request_port) = split_authority(authority);
    let scheme = redirect.scheme.as_deref().unwrap_or(scheme);
    let host = redirect.host.as_deref().unwrap_or(request_host);
    // Keep the request's port only when neither scheme nor host changed; a new scheme or
    // host implies its default port unless one is given.
    let port = match redirect.port {
        Some(port) => Some(port.to_string()),
        None if redirect.scheme.is_none() && redirect.host.is_none() => {
            request_port.map(str::to_string)
        }
        None => None,
    };
    let port =
        port.filter(|port| !matches!((scheme, port.as_str()), ("http", "80") | ("https", "443")));
    let request_path = uri.path();
    let path = match (&redirect.path, &redirect.prefix, matched) {
        (Some(path), _, _) => path.clone(),
        (None, Some(prefix), PathMatch::Prefix(matched)) => {
            format!(
                "{prefix}{}",
                request_path
                    .strip_prefix(matched.as_str())
                    .unwrap_or(request_path)
            )
        }
        _ => request_path.to_string(),
    };
    let query = match uri.query() {
        Some(query) if !redirect.strip_query => format!("?{query}"),
        _ => String::new(),
    };
    match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}{query}"),
        None => format!("{scheme}://{host}{path}{query}"),
    }
}

fn split_authority(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                (host, Some(port))
            } else {
                (authority, None)
            }
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            map
        };
        assert!(is_grpc(&headers("application/grpc")));
        assert!(is_grpc(&headers("application/grpc+proto")));
        assert!(!is_grpc(&headers("application/grpc-web")));
        assert!(!is_grpc(&headers("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(
            percent_encode_grpc_message("déjà vu 100%\n".as_bytes()),
            "d%C3%A9j%C3%A0 vu 100%25%0A"
        );
    }

    fn redirect() -> Redirect {
        Redirect {
            scheme: None,
            host: None,
            port: None,
            path: None,
            prefix: None,
            code: StatusCode::MOVED_PERMANENTLY,
            strip_query: false,
        }
    }

    #[test]
    fn prefix_redirect_keeps_rest_query_and_port() {
        let r = Redirect {
            prefix: Some("/docs".into()),
            ..redirect()
        };
        let uri: Uri = "/old-docs/intro?lang=en".parse().unwrap();
        let matched = PathMatch::Prefix("/old-docs".into());
        assert_eq!(
            location(&r, &matched, &uri, "demo.local:8080", "http"),
            "http://demo.local:8080/docs/intro?lang=en"
        );
    }

    #[test]
    fn scheme_change_drops_the_port_unless_given() {
        let uri: Uri = "/a?b=1".parse().unwrap();
        let https = Redirect {
            scheme: Some("https".into()),
            strip_query: true,
            ..redirect()
        };
        assert_eq!(
            location(&https, &PathMatch::Any, &uri, "demo.local:8080", "http"),
            "https://demo.local/a"
        );
        let with_port = Redirect {
            port: Some(8443),
            ..https
        };
        assert_eq!(
            location(&with_port, &PathMatch::Any, &uri, "demo.local:8080", "http"),
            "https://demo.local:8443/a"
        );
    }

    #[test]
    fn host_and_path_replacement() {
        let r = Redirect {
            host: Some("docs.example.com".into()),
            path: Some("/".into()),
            ..redirect()
        };
        let uri: Uri = "/anything".parse().unwrap();
        assert_eq!(
            location(&r, &PathMatch::Any, &uri, "demo.local", "https"),
            "https://docs.example.com/"
        );
    }
}
