//! proxy-wasm glue for token-introspection: the cache in shared data on the request
//! headers, else the introspection callout, and the verdict in `on_http_call_response`.

use std::rc::Rc;

use tollgate_sdk::callout::read_response;
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer;
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::hostcalls;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::{Action, LogLevel};
use tollgate_sdk::shared::{SharedData, Store};
use tollgate_sdk::{Callbacks, Counter, Plugin};

use crate::logic::{
    bearer_token, Answer, CacheSlot, Config, FailureMode, Introspector, Verdict,
    INVALID_TOKEN_CHALLENGE, MISSING_TOKEN_CHALLENGE,
};

tollgate_sdk::plugin!(TokenIntrospection);
tollgate_sdk::layout!("layout.txt");

/// What the requests of one configuration share.
pub struct TokenIntrospection {
    introspector: Introspector,
    /// The prefix of this instance's cache keys.
    name: String,
    metrics: Metrics,
}

struct Metrics {
    /// Requests let through with an active token.
    allowed: Counter,
    /// Requests answered `401` or `403` for their token.
    denied: Counter,
    /// Requests the server could not decide (`503`, or let through by `failure_mode`).
    failed: Counter,
    /// Answers taken from the cache.
    cache_hits: Counter,
    /// Introspection requests sent.
    calls: Counter,
}

impl Metrics {
    fn define() -> Self {
        Self {
            allowed: Counter::define("token_introspection.allowed"),
            denied: Counter::define("token_introspection.denied"),
            failed: Counter::define("token_introspection.failed"),
            cache_hits: Counter::define("token_introspection.cache_hits"),
            calls: Counter::define("token_introspection.calls"),
        }
    }
}

impl Plugin for TokenIntrospection {
    const NAME: &'static str = "token-introspection";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS;

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        Ok(Self {
            introspector: Introspector::new(config)?,
            name: tollgate_sdk::plugin_name(Self::NAME),
            metrics: Metrics::define(),
        })
    }

    fn request(plugin: &Rc<Self>, _context_id: u32) -> Request {
        Request {
            plugin: plugin.clone(),
            call: None,
        }
    }
}

/// The context of one request.
pub struct Request {
    plugin: Rc<TokenIntrospection>,
    /// The introspection call in flight and the cache place of its token.
    call: Option<(u32, CacheSlot)>,
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((_, slot)) = self.call.take_if(|(call, _)| *call == token) else {
            return;
        };
        let response = read_response(num_headers, body_size);
        let answer = (response.status == 200)
            .then(|| Answer::parse(&response.body))
            .flatten();
        let Some(answer) = answer else {
            let reason = match response.status {
                0 => "no answer (timeout, reset or unreachable)".to_owned(),
                200 => "an answer that is not a JSON object".to_owned(),
                status => format!("status {status}"),
            };
            self.fail(&reason, true);
            return;
        };
        if let Some(until) = self
            .plugin
            .introspector
            .cache_until(&answer, tollgate_sdk::now_secs())
        {
            // An answer larger than the shared data allows is refused, not cached.
            let _ = SharedData.set(&slot.key, &slot.encode(until, &response.body), None);
        }
        self.apply(&answer, true);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        consumer::strip_client_supplied();
        let introspector = &self.plugin.introspector;
        for header in introspector.config.forward_claims.values() {
            self.set_http_request_header(header, None);
        }
        let authorization = headers::request("authorization");
        let Some(token) = authorization.as_deref().and_then(bearer_token) else {
            return self.reply(401, MISSING_TOKEN_CHALLENGE, "a bearer token is required");
        };
        let slot = CacheSlot::new(&self.plugin.name, token, introspector.config.cache_entries);
        if let Ok((Some(entry), _)) = hostcalls::get_shared_data(&slot.key) {
            if let Some(answer) = slot
                .decode(&entry, tollgate_sdk::now_secs())
                .and_then(Answer::parse)
            {
                self.plugin.metrics.cache_hits.count();
                return self.apply(&answer, false);
            }
        }
        match introspector
            .request(token)
            .dispatch(&introspector.config.cluster)
        {
            Ok(call) => {
                self.plugin.metrics.calls.count();
                self.call = Some((call, slot));
                Action::Pause
            }
            Err(status) => self.fail(
                &format!(
                    "cannot call cluster {:?} ({status:?})",
                    introspector.config.cluster
                ),
                false,
            ),
        }
    }
}

impl Request {
    /// Carries out the verdict on `answer`; returns what the request-headers callback
    /// returns. From the callout's answer (`from_callout`) the paused request is resumed.
    fn apply(&self, answer: &Answer, from_callout: bool) -> Action {
        let introspector = &self.plugin.introspector;
        let metrics = &self.plugin.metrics;
        match introspector.verdict(answer) {
            Verdict::Allow { consumer, headers } => {
                metrics.allowed.count();
                for (header, value) in &headers {
                    self.set_http_request_header(header, Some(value));
                }
                if let Some(name) = consumer {
                    consumer::set_parts(&name, "");
                }
                self.resume(from_callout)
            }
            Verdict::Inactive => {
                metrics.denied.count();
                self.reply(401, INVALID_TOKEN_CHALLENGE, "the token is not active")
            }
            Verdict::InsufficientScope => {
                metrics.denied.count();
                self.reply(
                    403,
                    introspector.scope_challenge(),
                    "the token lacks a required scope",
                )
            }
        }
    }

    /// The authorization server could not answer: `failure_mode` decides.
    fn fail(&self, reason: &str, from_callout: bool) -> Action {
        self.plugin.metrics.failed.count();
        let allow = self.plugin.introspector.config.failure_mode == FailureMode::Allow;
        tollgate_sdk::log(
            LogLevel::Warn,
            &format!(
                "{}: token introspection failed: {reason}; request {}",
                self.plugin.name,
                if allow {
                    "allowed (failure_mode: allow)"
                } else {
                    "answered 503"
                }
            ),
        );
        if !allow {
            let body = br#"{"message":"the authorization server is unavailable"}"#;
            self.send_http_response(503, vec![("content-type", "application/json")], Some(body));
            return Action::Pause;
        }
        self.resume(from_callout)
    }

    fn resume(&self, from_callout: bool) -> Action {
        if self.plugin.introspector.config.hide_credentials {
            self.set_http_request_header("authorization", None);
        }
        if from_callout {
            self.resume_http_request();
        }
        Action::Continue
    }

    fn reply(&self, status: u32, challenge: &str, message: &str) -> Action {
        let body = format!("{{\"message\":\"{message}\"}}");
        self.send_http_response(
            status,
            vec![
                ("www-authenticate", challenge),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
