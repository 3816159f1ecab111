//! proxy-wasm glue for ext-authz: dispatch the check on the request headers, pause, and
//! act on the answer in `on_http_call_response`.

use std::rc::Rc;

use tollgate_sdk::callout::read_response;
use tollgate_sdk::config::{ConfigError, Validate};
use tollgate_sdk::consumer;
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::{Action, LogLevel, MapType};
use tollgate_sdk::{Callbacks, Counter, Plugin};

use crate::logic::{Config, Decision, LocalReply, Original, FAILURE_MODE_ALLOWED_HEADER};

tollgate_sdk::plugin!(ExtAuthz);
tollgate_sdk::layout!("layout.txt");

struct Metrics {
    allowed: Counter,
    denied: Counter,
    failed: Counter,
}

impl Metrics {
    fn define() -> Self {
        Self {
            allowed: Counter::define("ext_authz.allowed"),
            denied: Counter::define("ext_authz.denied"),
            failed: Counter::define("ext_authz.failed"),
        }
    }
}

/// What the requests of one configuration share.
pub struct ExtAuthz {
    config: Config,
    metrics: Metrics,
}

impl Plugin for ExtAuthz {
    const NAME: &'static str = "ext-authz";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS;

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            metrics: Metrics::define(),
        })
    }

    fn request(ext_authz: &Rc<Self>, _context_id: u32) -> Request {
        Request {
            ext_authz: ext_authz.clone(),
            token: None,
        }
    }
}

/// The context of one request.
pub struct Request {
    ext_authz: Rc<ExtAuthz>,
    token: Option<u32>,
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if self.token != Some(token) {
            return;
        }
        self.token = None;
        let response = read_response(num_headers, body_size);
        let decision = self.ext_authz.config.decide(&response);
        self.apply(decision, true);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        consumer::strip_client_supplied();
        self.set_http_request_header(FAILURE_MODE_ALLOWED_HEADER, None);
        let headers = headers::pairs(MapType::HttpRequestHeaders);
        let pseudo = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let original = Original {
            method: pseudo(":method"),
            path: pseudo(":path"),
            authority: pseudo(":authority"),
            scheme: pseudo(":scheme"),
            headers: headers.clone(),
        };
        let config = &self.ext_authz.config;
        match config.check_request(&original).dispatch(&config.cluster) {
            Ok(token) => {
                self.token = Some(token);
                Action::Pause
            }
            Err(status) => {
                let decision = config.on_error(format!(
                    "cannot call cluster {:?} ({status:?})",
                    config.cluster
                ));
                self.apply(decision, false)
            }
        }
    }
}

impl Request {
    /// Carries out a decision; returns what the request-headers callback should return
    /// (`Continue` when the request goes on, `Pause` after a local reply). From the callout's
    /// answer (`from_callout`) the paused request is resumed instead.
    fn apply(&self, decision: Decision, from_callout: bool) -> Action {
        let metrics = &self.ext_authz.metrics;
        match decision {
            Decision::Allow {
                set,
                remove,
                consumer,
            } => {
                metrics.allowed.count();
                for name in &remove {
                    self.set_http_request_header(name, None);
                }
                // Several values of one header: the first replaces, the others are added.
                let mut seen: Vec<&str> = Vec::new();
                for (name, value) in &set {
                    if seen.contains(&name.as_str()) {
                        self.add_http_request_header(name, value);
                    } else {
                        self.set_http_request_header(name, Some(value));
                        seen.push(name);
                    }
                }
                if let Some(consumer) = consumer {
                    consumer::set(&consumer);
                }
                self.resume(from_callout)
            }
            Decision::AllowOnError { reason } => {
                metrics.failed.count();
                tollgate_sdk::log(
                    LogLevel::Warn,
                    &format!("ext-authz: {reason}; request allowed (failure_mode_allow)"),
                );
                self.set_http_request_header(FAILURE_MODE_ALLOWED_HEADER, Some("true"));
                self.resume(from_callout)
            }
            Decision::Deny(reply) => {
                metrics.denied.count();
                self.reply(&reply)
            }
            Decision::Error { reason, reply } => {
                metrics.failed.count();
                tollgate_sdk::log(
                    LogLevel::Warn,
                    &format!("ext-authz: {reason}; answering {}", reply.status),
                );
                self.reply(&reply)
            }
        }
    }

    fn resume(&self, from_callout: bool) -> Action {
        if from_callout {
            self.resume_http_request();
        }
        Action::Continue
    }

    fn reply(&self, reply: &LocalReply) -> Action {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body = (!reply.body.is_empty()).then_some(reply.body.as_slice());
        self.send_http_response(u32::from(reply.status), headers, body);
        Action::Pause
    }
}
