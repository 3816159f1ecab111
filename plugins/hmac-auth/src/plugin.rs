//! proxy-wasm glue for hmac-auth: the signature on the request headers, the digest at the
//! end of the body.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer;
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::Action;
use tollgate_sdk::{Callbacks, Plugin};

use crate::logic::{digest_matches, Config, Credentials, HmacAuth, Line, Refusal, REQUEST_LINE};

tollgate_sdk::plugin!(HmacAuth);
tollgate_sdk::layout!("layout.txt");

impl Plugin for HmacAuth {
    const NAME: &'static str = "hmac-auth";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS.and(Callbacks::REQUEST_BODY);

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        HmacAuth::new(config)
    }

    fn request(auth: &Rc<Self>, _context_id: u32) -> Request {
        Request {
            auth: auth.clone(),
            digest: None,
        }
    }
}

/// The context of one request.
pub struct Request {
    auth: Rc<HmacAuth>,
    /// The `Digest` the body must match (`validate_request_body`, a request with a body).
    digest: Option<String>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        consumer::strip_client_supplied();
        match self.authenticate(end_of_stream) {
            Ok(carrier) => {
                if self.auth.config.hide_credentials {
                    self.set_http_request_header(carrier, None);
                }
                Action::Continue
            }
            Err(refusal) => self.reject(refusal),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(digest) = &self.digest else {
            return Action::Continue;
        };
        // The whole body is needed: hold it until its end.
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if !digest_matches(digest, &body) {
            return self.reject("the Digest header does not match the body");
        }
        self.digest = None;
        Action::Continue
    }
}

impl Request {
    /// Checks the headers' signature and records the consumer; with
    /// `validate_request_body`, keeps the digest for the body. Returns the header that
    /// carried the signature.
    fn authenticate(&mut self, end_of_stream: bool) -> Result<&'static str, Refusal> {
        let auth = &self.auth;
        // A client behind a proxy that needs `Authorization` may sign in
        // `Proxy-Authorization` instead.
        let (carrier, authorization) = ["authorization", "proxy-authorization"]
            .into_iter()
            .find_map(|name| Some((name, headers::request(name)?)))
            .ok_or("the request is not signed (no Authorization header)")?;
        let credentials = Credentials::parse(&authorization)?;
        let algorithm = auth.admit(&credentials)?;
        let date = credentials
            .date_headers()
            .into_iter()
            .find_map(headers::request);
        let now = tollgate_sdk::now_secs();
        auth.check_date(date.as_deref(), now)?;

        // The values of the signed headers, then the lines borrowing them.
        let mut request_line = None;
        let mut values = Vec::new();
        for name in credentials.signed_headers() {
            if name.eq_ignore_ascii_case(REQUEST_LINE) {
                if request_line.is_none() {
                    request_line = Some(self.request_line_parts());
                }
                continue;
            }
            // Hosts keep `Host` as `:authority`; header names are looked up in any case.
            let lookup = if name.eq_ignore_ascii_case("host") {
                ":authority"
            } else {
                name
            };
            let value = self
                .get_http_request_header_bytes(lookup)
                .ok_or("a header the signature lists is missing from the request")?;
            // A signature binds the bytes sent: a value that is not UTF-8 is refused rather
            // than signed as text, where two such values could read alike.
            let value = String::from_utf8(value)
                .map_err(|_| "a header the signature lists is not UTF-8")?;
            values.push(value);
        }
        let mut values = values.iter();
        let lines: Vec<Line> = credentials
            .signed_headers()
            .map(|name| match &request_line {
                Some((method, path, protocol)) if name.eq_ignore_ascii_case(REQUEST_LINE) => {
                    Line::RequestLine {
                        method,
                        path,
                        protocol,
                    }
                }
                _ => Line::Header {
                    name,
                    value: values.next().expect("one value per signed header"),
                },
            })
            .collect();
        let (name, groups) = auth.verify(&credentials, algorithm, &lines)?;

        if auth.config.validate_request_body {
            let digest = headers::request("digest");
            match (digest, end_of_stream) {
                (Some(digest), true) if !digest_matches(&digest, b"") => {
                    return Err("the Digest header does not match the body")
                }
                (None, false) => return Err("a request with a body needs a Digest header"),
                (digest, false) => self.digest = digest,
                (_, true) => {}
            }
        }
        consumer::set_parts(name, groups);
        Ok(carrier)
    }

    /// Method, path (with query) and protocol of the request line.
    fn request_line_parts(&self) -> (String, String, String) {
        (
            headers::request(":method").unwrap_or_default(),
            headers::request(":path").unwrap_or_default(),
            tollgate_sdk::property_string(&["request", "protocol"])
                .unwrap_or_else(|| "HTTP/1.1".to_owned()),
        )
    }

    fn reject(&self, message: Refusal) -> Action {
        let body = format!("{{\"message\":\"{message}\"}}");
        self.send_http_response(
            401,
            vec![
                ("www-authenticate", self.auth.challenge()),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
