//! The proxy-wasm glue: configuration in the root context, one bucket check per request.

use std::cell::RefCell;
use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::global_limit::Verdict;
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::{Action, LogLevel};
use tollgate_sdk::ratelimit_service::Descriptor;
use tollgate_sdk::shared::{Decision, SharedData};
use tollgate_sdk::{Callbacks, Plugin};

use crate::config::{KeySource, Limits, RawConfig, WhenMissing};
use crate::logic::{self, BucketKey, RequestFacts};

tollgate_sdk::plugin!(RateLimit);
tollgate_sdk::layout!("layout.txt");

/// The limits of one configuration.
pub struct RateLimit {
    limits: Limits,
    /// The plugin's name (`plugin_name`), the prefix of its shared-data keys.
    plugin: String,
    /// The bucket key of the request at hand, one buffer for every request.
    key: RefCell<BucketKey>,
}

impl Plugin for RateLimit {
    const NAME: &'static str = "rate-limit";
    type Config = RawConfig;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS.and(Callbacks::RESPONSE_HEADERS);

    fn from_config(config: RawConfig) -> Result<Self, ConfigError> {
        let plugin = tollgate_sdk::plugin_name(Self::NAME);
        Ok(Self {
            limits: config.validate()?,
            key: RefCell::new(BucketKey::new(&plugin)),
            plugin,
        })
    }

    fn request(rate_limit: &Rc<Self>, _context_id: u32) -> Request {
        Request {
            rate_limit: rate_limit.clone(),
            decision: None,
            plan: None,
        }
    }
}

/// The context of one request.
pub struct Request {
    rate_limit: Rc<RateLimit>,
    decision: Option<Decision>,
    /// Global mode: the plan of the request waiting for the service's answer.
    plan: Option<String>,
}

impl Request {
    fn deny(&self, decision: &Decision, plan: &str) {
        let (headers, body) = logic::deny_response(decision, plan);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(429, headers, Some(body.as_bytes()));
    }

    /// The rate limit service gave no usable answer: the failure mode decides.
    fn service_failed(&self, reason: &str) -> Action {
        match &self.rate_limit.limits.global {
            Some(global) => global.fail(&self.rate_limit.plugin, reason, "rate_limit_unavailable"),
            None => Action::Continue,
        }
    }
}

impl Context for Request {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        let (Some(global), Some(plan)) = (&self.rate_limit.limits.global, self.plan.take()) else {
            return;
        };
        match global.verdict(status_code, response_size) {
            Verdict::Allowed(decision) => {
                self.decision = Some(decision);
                self.resume_http_request();
            }
            Verdict::OverLimit(decision) => self.deny(&decision, &plan),
            Verdict::Failed(reason) => {
                if self.service_failed(&reason) == Action::Continue {
                    self.resume_http_request();
                }
            }
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only what the rules key on is read from the host (each read is a copy).
        let mut route = None;
        if self.rate_limit.limits.rules.routes().next().is_some() {
            route = tollgate_sdk::route::current_route_name();
        }
        let rules = self.rate_limit.limits.rules.get(route.as_deref());
        if route.is_none() && matches!(rules.key, KeySource::Route) {
            route = tollgate_sdk::route::current_route_name();
        }
        let consumer = match rules.key {
            KeySource::Consumer => tollgate_sdk::consumer::name(),
            _ => None,
        };
        let header = match &rules.key {
            KeySource::Header(name) => headers::request(name),
            _ => None,
        };
        let keyed_value_missing = match rules.key {
            KeySource::Consumer => consumer.as_deref().is_none_or(str::is_empty),
            KeySource::Header(_) => header.as_deref().is_none_or(str::is_empty),
            KeySource::Ip | KeySource::Route => false,
        };
        let ip = if matches!(rules.key, KeySource::Ip)
            || (rules.when_missing == WhenMissing::Ip && keyed_value_missing)
        {
            tollgate_sdk::client_ip()
        } else {
            None
        };
        let facts = RequestFacts {
            consumer: consumer.as_deref(),
            ip: ip.as_deref(),
            header: header.as_deref(),
            route: route.as_deref(),
        };
        let mut key = self.rate_limit.key.borrow_mut();
        let Some(plan) = logic::target(rules, &facts, &mut key) else {
            return Action::Continue;
        };
        if let Some(global) = &self.rate_limit.limits.global {
            // Counted by the rate limit service shared by every replica; the answer
            // resumes (or refuses) the request in `on_grpc_call_response`.
            let descriptor = Descriptor {
                entries: vec![("rate-limit".to_owned(), key.as_str().to_owned())],
                limit: Some(plan.window),
                hits: None,
            };
            return match global.dispatch(vec![descriptor]) {
                Ok(_) => {
                    self.plan = Some(plan.name.clone());
                    Action::Pause
                }
                Err(status) => self.service_failed(&format!("the call failed: {status:?}")),
            };
        }
        let decision =
            match plan
                .bucket
                .try_take(&SharedData, key.as_str(), tollgate_sdk::now_nanos(), 1)
            {
                Ok(decision) => decision,
                Err(error) => {
                    // Fail open: a limiter that cannot count must not take the API down.
                    tollgate_sdk::log(
                        LogLevel::Warn,
                        &format!("rate-limit: {error}; request allowed"),
                    );
                    return Action::Continue;
                }
            };
        if decision.allowed {
            self.decision = Some(decision);
            return Action::Continue;
        }
        self.deny(&decision, &plan.name);
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(decision), true) = (&self.decision, self.rate_limit.limits.headers) {
            let mut digits = [0; 20];
            for (name, value) in logic::allow_headers(decision) {
                let value = tollgate_sdk::decimal_bytes(value, &mut digits);
                self.set_http_response_header_bytes(name, Some(value));
            }
        }
        Action::Continue
    }
}
