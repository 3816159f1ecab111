//! Helpers for HTTP callouts (`proxy_http_call`).
//!
//! A callout names a cluster (Tollgate: a `clusters:` entry; Envoy: a cluster name) and
//! needs the pseudo-headers `:method`, `:path` and `:authority`; [`HttpCall`] collects them
//! with the other headers, body and timeout, and [`HttpCall::dispatch`] sends it. In the
//! context's `on_http_call_response(token, num_headers, body_size, _)`, [`read_response`]
//! gives status, headers and body; a timeout or reset arrives as status 0.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_sdk::callout::HttpCall;
//! let call = HttpCall::post("billing", "/v1/usage")
//!     .header("content-type", "application/json")
//!     .body(b"[]".to_vec())
//!     .timeout(Duration::from_secs(2));
//! let headers = call.header_list();
//! assert_eq!(headers[0], (":method", "POST"));
//! assert_eq!(headers[1], (":path", "/v1/usage"));
//! assert_eq!(headers[2], (":authority", "billing"));
//! ```

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

/// An HTTP request to send to a cluster.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub method: String,
    pub path: String,
    /// `:authority`; defaults to the cluster name.
    pub authority: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl HttpCall {
    /// A request with `method` for `path`, `:authority` = `authority`, 5 s timeout.
    pub fn new(method: &str, authority: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            authority: authority.to_owned(),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(5),
        }
    }

    pub fn get(authority: &str, path: &str) -> Self {
        Self::new("GET", authority, path)
    }

    pub fn post(authority: &str, path: &str) -> Self {
        Self::new("POST", authority, path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The header list as `dispatch_http_call` takes it: pseudo-headers first, then the
    /// headers set on the call. The body's framing (`content-length`) is the host's job.
    pub fn header_list(&self) -> Vec<(&str, &str)> {
        let mut list = vec![
            (":method", self.method.as_str()),
            (":path", self.path.as_str()),
            (":authority", self.authority.as_str()),
        ];
        list.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        list
    }

    /// Sends the request to `cluster`; the token identifies the answer in
    /// `on_http_call_response`.
    pub fn dispatch(&self, cluster: &str) -> Result<u32, Status> {
        hostcalls::dispatch_http_call(
            cluster,
            self.header_list(),
            self.body.as_deref(),
            Vec::new(),
            self.timeout,
        )
    }
}

/// The answer to a callout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallResponse {
    /// The `:status`; 0 when the call failed (timeout, reset, no endpoint).
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CallResponse {
    /// Builds a response from a header list (with `:status`) and a body.
    pub fn from_parts(headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A 2xx answer.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Reads the answer inside `on_http_call_response(_, num_headers, body_size, _)`.
pub fn read_response(num_headers: usize, body_size: usize) -> CallResponse {
    let headers = if num_headers == 0 {
        Vec::new()
    } else {
        crate::headers::pairs(MapType::HttpCallResponseHeaders)
    };
    let body = if body_size == 0 {
        Vec::new()
    } else {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    CallResponse::from_parts(headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_ordered_and_lower_case() {
        let call = HttpCall::get("authz", "/check?x=1").header("X-Api-Key", "k");
        assert_eq!(
            call.header_list(),
            [
                (":method", "GET"),
                (":path", "/check?x=1"),
                (":authority", "authz"),
                ("x-api-key", "k")
            ]
        );
    }

    #[test]
    fn responses_carry_their_status() {
        let response = CallResponse::from_parts(
            vec![(":status".into(), "204".into()), ("X-A".into(), "b".into())],
            Vec::new(),
        );
        assert_eq!(response.status, 204);
        assert!(response.is_success());
        assert_eq!(response.header("x-a"), Some("b"));
        assert_eq!(CallResponse::from_parts(Vec::new(), Vec::new()).status, 0);
    }
}
